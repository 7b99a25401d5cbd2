"""The M-climate: the model's own climate at each lead time, from its hindcasts (DESIGN §3.4).

For a target date D, every member of every hindcast init whose calendar day lies within
`window_days` of D's (any year, wrapping at the year's end) is pooled per lead time and grid
point, and the quantiles 0, 1, ..., 100 % of the pool are kept (linear interpolation between
order statistics, numpy's default). The EFI and the SOT of a forecast from D compare its
members with these quantiles at the same lead.

Memory is bounded by one lead and one latitude tile (DESIGN §5), never by the lead or member
count: the pool of one (lead, tile) is read from every hindcast store (the complete members
only, a few rows of each member's chunk: preads or byte ranges where the store's chunks are
uncompressed, as `ForecastStore` writes them), its quantiles are computed channel by channel
and written as one chunk of the side store. At 0.25° with 21 channels and 8-row tiles that is
a ~100 MB chunk, where one lead's quantiles would be 8.8 GB.

Where it lives: the archive's side store, a Zarr group `<archive>.side.zarr` beside the
archive (not inside it: the archive's transactional appends and rollbacks stay about the
archive alone). Group `mclimate`, array `quantiles` with dims (target, lead_time, channel,
quantile, lat, lon), one chunk per (target, lead_time, latitude tile of `TILE_ROWS` rows):
all channels and quantiles of those rows; `target` holds day-of-year dates as `MM-DD`
strings. Rebuilding a target date overwrites only its chunks. A target is readable once its
record (`targets` in the group's attributes: window, sample count, inits) is written, which
happens after its last chunk: a build that stopped half-way reads as no M-climate, and a
rebuild drops the old record first.

Side stores written before the tiling (one chunk per (target, lead_time), all latitudes) are
still read (`load_mclimate`), but building into one whose chunks are taller than
`MAX_TILE_ROWS` (any grid but the smallest) is refused with a message: writing it tile by
tile would decode and rewrite a whole lead's quantiles per tile, and rechunking it in place
would hold one of those whole-lead chunks. Remove its `mclimate` group and build the target
dates again (the message lists them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import dask.array
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.codecs import BytesCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from forecast.ensemble.store import ForecastStore

log = logging.getLogger(__name__)
LEVELS = np.linspace(0.0, 1.0, 101)
TILE_ROWS = 8  # latitude rows per side-store chunk and per computed tile
MAX_TILE_ROWS = 32  # a side store with taller chunks (the untiled layout) is not built into
DIMS = ("target", "lead_time", "channel", "quantile", "lat", "lon")


def side_store_path(archive: str) -> str:
    return str(Path(archive)).rstrip("/").removesuffix(".zarr") + ".side.zarr"


def _day_distance(a: np.ndarray, b: pd.Timestamp) -> np.ndarray:
    doy = pd.DatetimeIndex(a).dayofyear.to_numpy()
    d = np.abs(doy - b.dayofyear)
    return np.minimum(d, 365 - d)


@dataclasses.dataclass
class HindcastPool:
    """The hindcast members of one target date, not read yet: `sources` holds (fields array,
    init index, complete members) per hindcast init used; `read` reads one (lead, tile)."""

    inits: list[str]
    sources: list[tuple[zarr.Array, int, np.ndarray]]
    lead_hours: np.ndarray
    channels: list[str]
    lat: np.ndarray
    lon: np.ndarray

    @property
    def samples(self) -> int:
        return int(sum(len(members) for _, _, members in self.sources))

    def read(self, lead: int, rows: slice) -> np.ndarray:
        """(samples, channel, rows, lon) float32: every pooled member at lead index `lead`,
        latitude rows `rows`, in the order of `sources`."""
        return np.concatenate([_read_rows(f, i, members, lead, rows) for f, i, members in self.sources])


def hindcast_pool(stores: Sequence[str], target: str, window_days: int) -> HindcastPool:
    """The complete members of every hindcast init within `window_days` of `target`'s
    calendar day (never the target's own date) in `stores`, which must share lead times,
    channels and grid."""
    when = pd.Timestamp(target)
    sources, used, first = [], [], None
    for path in stores:
        store = ForecastStore.open(path)
        if not store.store_members:
            raise ValueError(f"{path}: this hindcast kept statistics only; the M-climate needs its members")
        lat, lon = store.group["lat"][:], store.group["lon"][:]
        here = (tuple(store.lead_hours), tuple(store.channels), lat.shape, lon.shape)
        if first is not None and here != first[0]:
            raise ValueError(f"{path}: lead times, channels or grid differ from {stores[0]}'s")
        first = first or (here, store, lat, lon)
        for i in np.flatnonzero(_day_distance(store.init_times, when) <= window_days):
            if pd.Timestamp(store.init_times[i]).normalize() == when.normalize():
                continue  # never the forecast's own date
            complete = np.flatnonzero(store.complete(int(i)))
            if not len(complete):
                continue
            sources.append((store.group["fields"], int(i), complete))
            used.append(str(store.init_times[i]))
    if not sources:
        raise ValueError(
            f"no complete hindcast init within {window_days} days of {when:%m-%d} in {list(stores)}: "
            "run hindcasts for those dates first"
        )
    _, store, lat, lon = first
    return HindcastPool(used, sources, np.asarray(store.lead_hours), list(store.channels), lat, lon)


def _plain_chunks(fields: zarr.Array) -> bool:
    """True where a chunk is one (init, member, lead) of all channels and the whole grid,
    stored as raw bytes (no filter, no compression): then rows are byte ranges of it."""
    shape, chunks = fields.shape, fields.chunks
    return (
        isinstance(fields.serializer, BytesCodec)
        and not fields.filters
        and not fields.compressors
        and tuple(chunks[:3]) == (1, 1, 1)
        and tuple(chunks[3:]) == tuple(shape[3:])
    )


def _read_rows(fields: zarr.Array, init: int, members: np.ndarray, lead: int, rows: slice) -> np.ndarray:
    """fields[init, members, lead, :, rows] (member, channel, rows, lon) as float32, reading
    only those rows: from raw chunks, one `pread` per (member, channel) on a local store and
    byte ranges on any other; else zarr's own selection (which decodes a whole chunk per
    member, a few at a time, and keeps only the rows)."""
    a, b, _ = rows.indices(fields.shape[4])
    if not _plain_chunks(fields):
        return np.asarray(fields.get_orthogonal_selection((init, members, lead, slice(None), slice(a, b))), np.float32)
    channels, nlat, nlon = fields.shape[3:]
    endian = getattr(fields.serializer.endian, "value", "little")  # None for one-byte types
    dtype = np.dtype(fields.dtype).newbyteorder("<" if endian == "little" else ">")
    out = np.full((len(members), channels, b - a, nlon), np.nan, np.float32)
    if b <= a:
        return out
    keys = [fields.metadata.encode_chunk_key((init, int(m), lead, 0, 0, 0)) for m in members]
    starts = [((c * nlat + a) * nlon) * dtype.itemsize for c in range(channels)]
    size = (b - a) * nlon * dtype.itemsize
    root = _local_root(fields)
    if root is not None:
        _read_local_rows(root, keys, starts, size, dtype, out)
    else:
        _read_ranged_rows(fields, keys, starts, size, dtype, out)
    return out


def _local_root(fields: zarr.Array) -> Path | None:
    """The directory of the array's chunk files where its store is a local directory."""
    store = fields.store_path.store
    if not isinstance(store, LocalStore):
        return None
    return Path(store.root) / fields.store_path.path


def _read_local_rows(root: Path, keys: list[str], starts: list[int], size: int, dtype: np.dtype, out: np.ndarray):
    """The rows of every (member, channel) by `os.pread` from the chunk files. Why not zarr's
    byte ranges: each is an asyncio round trip of ~0.3 ms, and an M-climate tile is thousands
    of them (47 of the demo's 58 s); a pread of the same bytes is a few microseconds."""
    for j, key in enumerate(keys):
        path = root / key
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):  # an unwritten chunk stays NaN (the fill value)
            continue
        try:
            for c, start in enumerate(starts):
                raw = os.pread(fd, size, start)
                if len(raw) != size:
                    raise OSError(f"{path}: {len(raw)} bytes at {start} where {size} were expected (a damaged chunk)")
                out[j, c] = np.frombuffer(raw, dtype).reshape(out.shape[2:])
        finally:
            os.close(fd)


def _read_ranged_rows(fields: zarr.Array, keys: list[str], starts: list[int], size: int, dtype: np.dtype, out):
    """The rows of every (member, channel) as byte-range gets through the zarr store."""
    prototype = default_buffer_prototype()

    async def one(j: int, c: int) -> None:
        start = starts[c]
        buf = await (fields.store_path / keys[j]).get(
            prototype=prototype, byte_range=RangeByteRequest(start, start + size)
        )
        if buf is None:  # an unwritten chunk stays NaN (the fill value)
            return
        raw = buf.to_bytes()
        if len(raw) != size:
            where = f"{fields.store_path}/{keys[j]}"
            raise OSError(f"{where}: {len(raw)} bytes where {size} were expected (a damaged chunk)")
        out[j, c] = np.frombuffer(raw, dtype).reshape(out.shape[2:])

    async def every() -> None:
        await asyncio.gather(*(one(j, c) for j in range(len(keys)) for c in range(len(starts))))

    sync(every())


def pooled_quantiles(samples: np.ndarray, levels: np.ndarray = LEVELS) -> np.ndarray:
    """np.quantile(samples, levels, axis=0) (linear interpolation), bit for bit up to the sign
    of a zero (numpy may return -0.0 where this gives +0.0), in float64:
    one sort of each point's pool, then numpy's own interpolation formula (`_lerp`: from the
    lower neighbour below gamma 0.5, from the upper one from 0.5 on). Why not np.quantile:
    it partitions the pool once per distinct order statistic (up to 202 of them), several
    times the cost of one sort. A point with a NaN in its pool gets NaN, as in numpy."""
    x = np.asarray(samples, np.float64)
    n = x.shape[0]
    if n == 0:
        raise ValueError("pooled_quantiles: an empty pool")
    flat = np.sort(x.reshape(n, -1).T, axis=1)  # (points, n): NaN sorts last
    virtual = (n - 1) * np.asarray(levels, np.float64)
    below = np.floor(virtual).astype(np.intp)
    above = np.minimum(below + 1, n - 1)
    gamma = virtual - below
    lo, hi = flat[:, below], flat[:, above]  # (points, level)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN here as in numpy
        diff = hi - lo
        out = lo + diff * gamma
        upper = gamma >= 0.5
        out[:, upper] = hi[:, upper] - diff[:, upper] * (1 - gamma[upper])
    out[np.isnan(flat[:, -1])] = np.nan
    return np.ascontiguousarray(out.T).reshape(len(virtual), *x.shape[1:])


def _side_array(path: str, archive: str, pool: HindcastPool, tile_rows: int) -> tuple[zarr.Group, zarr.Array]:
    """The side store's `mclimate` group and `quantiles` array, created tiled if new, checked
    against the hindcasts' axes (and the tiled layout) if not."""
    root = zarr.open_group(path, mode="a")
    root.attrs.setdefault("archive", str(Path(archive).resolve()))
    group = root.require_group("mclimate")
    shape = (len(pool.lead_hours), len(pool.channels), len(LEVELS), len(pool.lat), len(pool.lon))
    if "quantiles" not in group:
        for name, values, dtype in (
            ("lead_time", pool.lead_hours, "int64"),
            ("channel", pool.channels, str),
            ("quantile", LEVELS, "float64"),
            ("lat", pool.lat, "float64"),
            ("lon", pool.lon, "float64"),
        ):
            arr = group.create_array(name, shape=(len(values),), dtype=dtype, dimension_names=[name])
            arr[...] = np.asarray(values).astype(dtype)
        group.create_array("target", shape=(0,), chunks=(366,), dtype=str, dimension_names=["target"])
        group.create_array(
            "quantiles",
            shape=(0, *shape),
            chunks=(1, 1, shape[1], shape[2], min(tile_rows, shape[3]), shape[4]),
            dtype="float32",
            fill_value=np.nan,
            compressors=None,  # as the archive and the forecast stores: float32 fields barely compress
            dimension_names=list(DIMS),
            attributes={"long_name": "M-climate quantiles of the model's hindcasts", "interpolation": "linear"},
        )
    quantiles = group["quantiles"]
    if list(group["lead_time"][:]) != list(pool.lead_hours) or [str(c) for c in group["channel"][:]] != pool.channels:
        raise ValueError(f"{path}: its M-climate has other lead times or channels than the hindcasts")
    if tuple(quantiles.shape[1:]) != shape or not (
        np.allclose(group["lat"][:], pool.lat) and np.allclose(group["lon"][:], pool.lon)
    ):
        raise ValueError(f"{path}: its M-climate is on another grid than the hindcasts")
    rows = quantiles.chunks[4]
    if rows > MAX_TILE_ROWS or tuple(quantiles.chunks[:4]) != (1, 1, shape[1], shape[2]):
        targets = sorted(group.attrs.get("targets", {}))
        raise ValueError(
            f"{path}: its M-climate is chunked {quantiles.chunks} (one chunk per target and lead time, "
            f"written before the latitude tiling), which cannot be built into with bounded memory; "
            f"remove {path}/mclimate and build the M-climate again for {targets}"
        )
    return group, quantiles


def build_mclimate(
    archive: str,
    hindcasts: Sequence[str],
    target: str,
    window_days: int = 15,
    min_samples: int = 20,
    tile_rows: int = TILE_ROWS,
) -> str:
    """Compute and store the M-climate quantiles for `target`'s calendar day, one (lead,
    latitude tile) at a time. `tile_rows` sets the tile of a new side store (an existing one
    keeps its own). Returns the side store's path."""
    if not 1 <= tile_rows <= MAX_TILE_ROWS:
        raise ValueError(f"tile_rows must be in 1..{MAX_TILE_ROWS}, got {tile_rows}")
    pool = hindcast_pool(hindcasts, target, window_days)
    if pool.samples < min_samples:
        raise ValueError(
            f"M-climate for {target}: only {pool.samples} hindcast members within {window_days} days "
            f"(need {min_samples}); widen the window or add hindcasts"
        )
    path = side_store_path(archive)
    group, quantiles = _side_array(path, archive, pool, tile_rows)
    key = pd.Timestamp(target).strftime("%m-%d")
    targets = [str(t) for t in group["target"][:]]
    if key in targets:
        index = targets.index(key)
    else:
        index = len(targets)
        group["target"].resize((index + 1,))
        group["target"][index] = key
        quantiles.resize((index + 1, *quantiles.shape[1:]))
    record = dict(group.attrs.get("targets", {}))
    if record.pop(key, None) is not None:
        group.attrs["targets"] = record  # unreadable while it is rebuilt
    rows = quantiles.chunks[4]
    n_channel, n_level, n_lat, n_lon = quantiles.shape[2:]
    for k in range(len(pool.lead_hours)):
        for a in range(0, n_lat, rows):
            b = min(a + rows, n_lat)
            samples = pool.read(k, slice(a, b))  # (samples, channel, rows, lon)
            q = np.empty((n_channel, n_level, b - a, n_lon), np.float32)
            for c in range(n_channel):  # the same quantiles per point as np.quantile over the whole pool
                q[c] = pooled_quantiles(samples[:, c])
            quantiles[index, k, :, :, a:b, :] = q  # one whole chunk
    record[key] = {"window_days": window_days, "samples": pool.samples, "inits": pool.inits}
    group.attrs["targets"] = record
    log.info("M-climate %s: %d members from %d hindcast inits -> %s", key, pool.samples, len(pool.inits), path)
    return path


class _TargetSlab:
    """One target's (lead_time, channel, quantile, lat, lon) of the side array, read on
    indexing only: what dask's blocks read."""

    def __init__(self, array: zarr.Array, index: int):
        self.array, self.index = array, index
        self.shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return self.array[(self.index, *key)]


def load_mclimate(archive: str, init_time: str | np.datetime64) -> xr.DataArray | None:
    """The M-climate for the init time's calendar day: (lead_time, channel, quantile, lat,
    lon), lazy (dask, one block per side-store chunk: `.isel(lead_time=k, lat=slice(a, b))
    .values` reads only those chunks), or None where none was built (or its build did not
    finish)."""
    path = side_store_path(archive)
    if not Path(path).exists():
        return None
    group = zarr.open_group(path, mode="r")
    if "mclimate" not in group or "quantiles" not in group["mclimate"]:
        return None
    g = group["mclimate"]
    key = pd.Timestamp(init_time).strftime("%m-%d")
    targets = [str(t) for t in g["target"][:]]
    record = g.attrs.get("targets", {})
    if key not in targets:
        return None
    if key not in record:
        log.warning("%s: the M-climate for %s was not finished (a build stopped); build it again", path, key)
        return None
    quantiles = g["quantiles"]
    lazy = dask.array.from_array(
        _TargetSlab(quantiles, targets.index(key)), chunks=quantiles.chunks[1:], name=False, lock=False, asarray=True
    )
    out = xr.DataArray(
        lazy,
        dims=DIMS[1:],
        coords={
            "lead_time": g["lead_time"][:],
            "channel": [str(c) for c in g["channel"][:]],
            "quantile": g["quantile"][:],
            "lat": g["lat"][:],
            "lon": g["lon"][:],
        },
        attrs={"target": key, **record[key]},
    )
    out.name = None  # not dask's block name
    return out
