"""The archive: one Zarr v3 store per dataset (DESIGN §2.1), written transactionally.

Layout: `fields` float32 (time, channel, lat, lon), one chunk per time step; coordinates
`time` (int64 hours since 1970-01-01), `channel` (strings), `lat` (90 -> -90), `lon` (0 ->);
static fields `orography` and `land_sea_mask` (lat, lon) where the source has them; statistics
`mean`, `std`, `diff_std` (channel) over a stated period; provenance in the root attributes.

Commit protocol: the root attribute `committed_times` counts the leading time steps that are
complete. An append first grows the arrays, writes every new chunk, and only then raises
`committed_times` (one atomic metadata write on a local store). `open_archive` shows only
committed steps, so a crash mid-append leaves an archive that opens and looks exactly as before;
the next append rewrites everything past the commit. A failed append rolls back to the commit.
A write killed before zarr's rename leaves a temporary file beside its object (forecast.storage);
the next append removes those of the objects it rewrites.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterable
from importlib import metadata

import numpy as np
import xarray as xr
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from forecast import __version__
from forecast.grid import LatLonGrid, cell_area_weights
from forecast.moments import Moments
from forecast.storage import remove_temp_files

log = logging.getLogger(__name__)

CONTRACT = "forecast-archive/1"
TIME_UNITS = "hours since 1970-01-01 00:00:00"
STATIC_NAMES = ("orography", "land_sea_mask")
# Shards along time hold up to this many steps and about this many bytes: a year of a 5.625°
# archive is a dozen objects instead of 1,460 files, while appending to a partly filled shard
# (which zarr rewrites whole) stays cheap. At 0.25° a step is 87 MB, so shards stay off.
MAX_SHARD_STEPS = 124
SHARD_BYTES = 64 * 2**20


def shard_steps(step_bytes: int) -> int:
    return int(max(1, min(MAX_SHARD_STEPS, SHARD_BYTES // max(step_bytes, 1))))


class ArchiveError(RuntimeError):
    pass


def to_hours(times: np.ndarray) -> np.ndarray:
    return (np.asarray(times, dtype="datetime64[h]") - np.datetime64("1970-01-01T00", "h")).astype("int64")


def from_hours(hours: np.ndarray) -> np.ndarray:
    return np.datetime64("1970-01-01T00", "h") + np.asarray(hours, dtype="int64").astype("timedelta64[h]")


def library_versions() -> dict[str, str]:
    out = {"forecast": __version__}
    for name in ("xarray", "zarr", "numpy", "netCDF4", "cfgrib", "dask"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class Archive:
    """A handle on an archive store. Create with `Archive.create`, open with `Archive.open`."""

    def __init__(self, group: zarr.Group, location: str):
        self.group = group
        self.location = location
        attrs = group.attrs.asdict()
        if attrs.get("contract") != CONTRACT:
            raise ArchiveError(f"{location}: not a forecast archive (contract attribute is {attrs.get('contract')!r})")

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def exists(cls, location: str, storage_options: dict | None = None) -> bool:
        try:
            zarr.open_group(location, mode="r", storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError):
            return False
        return True

    @classmethod
    def open(cls, location: str, mode: str = "r", storage_options: dict | None = None) -> Archive:
        try:
            group = zarr.open_group(location, mode=mode, storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise ArchiveError(f"{location}: no archive there ({e})") from e
        return cls(group, str(location))

    @classmethod
    def create(
        cls,
        location: str,
        grid: LatLonGrid,
        channels: list[str],
        time_step_hours: int,
        attrs: dict | None = None,
        storage_options: dict | None = None,
    ) -> Archive:
        group = zarr.open_group(location, mode="w-", storage_options=storage_options)
        nlat, nlon = grid.shape
        steps = shard_steps(len(channels) * nlat * nlon * 4)
        group.create_array(
            "fields",
            shape=(0, len(channels), nlat, nlon),
            chunks=(1, len(channels), nlat, nlon),
            shards=(steps, len(channels), nlat, nlon) if steps > 1 else None,
            # Uncompressed: lossless zstd saves only ~14 % on float32 weather fields and costs
            # CPU on every read, and the archive is read many times over in training.
            compressors=None,
            dtype="float32",
            fill_value=np.nan,
            dimension_names=["time", "channel", "lat", "lon"],
            attributes={"long_name": "analysed fields", "coordinates": "time channel lat lon"},
        )
        t = group.create_array(
            "time",
            shape=(0,),
            chunks=(4096,),
            dtype="int64",
            dimension_names=["time"],
            attributes={"units": TIME_UNITS, "calendar": "proleptic_gregorian", "standard_name": "time"},
        )
        del t
        c = group.create_array("channel", shape=(len(channels),), dtype=str, dimension_names=["channel"])
        c[:] = np.asarray(channels, dtype=object).astype(str)
        lat = group.create_array(
            "lat",
            shape=(nlat,),
            dtype="float64",
            dimension_names=["lat"],
            attributes={"units": "degrees_north", "standard_name": "latitude"},
        )
        lat[:] = grid.lat
        lon = group.create_array(
            "lon",
            shape=(nlon,),
            dtype="float64",
            dimension_names=["lon"],
            attributes={"units": "degrees_east", "standard_name": "longitude"},
        )
        lon[:] = grid.lon
        group.attrs.update(
            {
                "contract": CONTRACT,
                "committed_times": 0,
                "time_step_hours": int(time_step_hours),
                "grid": grid.describe(),
                "sources": [],
                "software": library_versions(),
                **(attrs or {}),
            }
        )
        return cls(group, str(location))

    # -- properties ----------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return self.group.attrs.asdict()

    @property
    def committed(self) -> int:
        return int(self.attrs["committed_times"])

    @property
    def channels(self) -> list[str]:
        return [str(c) for c in self.group["channel"][:]]

    @property
    def grid(self) -> LatLonGrid:
        return LatLonGrid(lat=np.asarray(self.group["lat"][:]), lon=np.asarray(self.group["lon"][:]))

    @property
    def time_step_hours(self) -> int:
        return int(self.attrs["time_step_hours"])

    @property
    def times(self) -> np.ndarray:
        n = self.committed
        return from_hours(self.group["time"][:n]) if n else np.array([], dtype="datetime64[h]")

    @property
    def fields(self) -> zarr.Array:
        return self.group["fields"]

    # -- writing -------------------------------------------------------------------------
    @property
    def steps_per_object(self) -> int:
        """Time steps per stored object of `fields`: the shard length, or 1 without shards."""
        shards = self.fields.shards
        return shards[0] if shards else 1

    def _object_key(self, index: int) -> str:
        prefix = f"{self.group.path + '/' if self.group.path else ''}fields/c/"
        return f"{prefix}{index}/0/0/0"

    def _delete_chunks_from(self, start: int) -> None:
        """Remove stored objects of `fields` that hold only time indices >= start (left by a
        crash or a rollback). An object that also holds committed steps is kept."""
        store = self.group.store
        prefix = f"{self.group.path + '/' if self.group.path else ''}fields/c/"
        per = self.steps_per_object

        async def collect():
            return [k async for k in store.list_prefix(prefix)]

        for key in sync(collect()):
            index = key[len(prefix) :].split("/")[0]
            if index.isdigit() and int(index) * per >= start:
                sync(store.delete(key))

    def _remove_temp_files(self, n: int, k: int) -> list[str]:
        """Remove the temporary files a killed append left (forecast.storage): those of the
        objects an append of `k` steps after commit `n` rewrites, i.e. the `fields` objects
        from the one holding step n (the partly filled shard, which `_delete_chunks_from`
        keeps) to the last, the `time` chunks from step n, and the `zarr.json` documents of
        the root, `fields` and `time` (resizes and the commit). Objects past the commit,
        temporary files included, are deleted by `_delete_chunks_from` anyway. Only these are
        touched: an append is the one writer of `fields`, `time` and the commit (the commit
        protocol admits one appender at a time), and readers leave no temporary files."""
        prefix = f"{self.group.path + '/' if self.group.path else ''}"
        per, tchunk = self.steps_per_object, self.group["time"].chunks[0]
        last = max(n + k - 1, n)
        keys = [self._object_key(i) for i in range(n // per, last // per + 1)]
        keys += [f"{prefix}time/c/{j}" for j in range(n // tchunk, last // tchunk + 1)]
        keys += [f"{prefix}{node}zarr.json" for node in ("", "fields/", "time/")]
        return remove_temp_files(self.group.store, keys=keys, what="archive append")

    def _boundary_object(self, n: int) -> tuple[str, bytes | None] | None:
        """The stored object holding both committed steps and room for new ones (a partly
        filled shard), with its bytes, so that a rollback can put it back exactly."""
        per = self.steps_per_object
        if per == 1 or n % per == 0:
            return None
        key = self._object_key(n // per)
        buf = sync(self.group.store.get(key, prototype=default_buffer_prototype()))
        return key, None if buf is None else buf.to_bytes()

    def append(self, times: np.ndarray, blocks: Iterable[np.ndarray], sources: list[dict]) -> int:
        """Append time steps transactionally. `blocks` yields float32 arrays of consecutive
        time steps, (steps, channel, lat, lon); it may raise to abort (the archive then rolls
        back). Returns the number of steps added."""
        n = self.committed
        k = len(times)
        if k == 0:
            return 0
        expected = self.fields.shape[1:]
        moments = self._running_moments()
        self._remove_temp_files(n, k)
        self._delete_chunks_from(n)
        boundary = self._boundary_object(n)
        self.fields.resize((n + k, *expected))
        self.group["time"].resize((n + k,))
        written = 0
        try:
            for block in blocks:
                if block.shape[1:] != expected or written + len(block) > k:
                    raise ArchiveError(
                        f"block of shape {block.shape} at step {written} does not fit {k} steps of {expected}"
                    )
                # One setitem per block: zarr writes its chunks concurrently.
                self.fields[n + written : n + written + len(block)] = block
                written += len(block)
                if moments is not None:
                    moments.add(block)
            if written != k:
                raise ArchiveError(f"expected {k} time steps, got {written}")
            # Written last, so that a rollback finds the time chunk as it was.
            self.group["time"][n:] = to_hours(times)
        except BaseException:
            self.rollback(n, boundary)
            # zarr removes its temporary file when a write raises an Exception, not on a
            # KeyboardInterrupt or other BaseException
            self._remove_temp_files(n, k)
            raise
        self.group.attrs.update(
            {
                "committed_times": n + k,
                "sources": self.attrs.get("sources", []) + sources,
                "last_ingest": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        # Statistics follow the commit; a crash in between leaves them marked stale
        # (their `committed_times` differs), and the next ingest recomputes them.
        if moments is not None:
            self._store_statistics(moments, 0, n + k)
        else:
            self.compute_statistics()
        return k

    def rollback(self, n: int, boundary: tuple[str, bytes | None] | None = None) -> None:
        """Shrink back to the first `n` steps, delete anything written past them and restore
        the partly committed shard's bytes."""
        self.fields.resize((n, *self.fields.shape[1:]))
        self.group["time"].resize((n,))
        self._delete_chunks_from(n)
        if boundary is not None:
            key, data = boundary
            if data is None:
                sync(self.group.store.delete(key))
            else:
                sync(self.group.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def _clear(self, name: str) -> None:
        """Delete the array `name` before it is written anew, and the temporary files a killed
        first write of it left where no array is yet (its writer, the ingest or `forecast
        stats`, is the only one)."""
        if name in self.group:
            del self.group[name]
        remove_temp_files(self.group.store, under=[f"{self.group.path + '/' if self.group.path else ''}{name}"])

    def write_static(self, name: str, values: np.ndarray, attrs: dict) -> None:
        if name not in STATIC_NAMES:
            raise ArchiveError(f"unknown static field {name!r}")
        if name in self.group:
            old = self.group[name][:]
            if old.shape == values.shape and np.array_equal(old, values, equal_nan=True):
                return
        self._clear(name)
        arr = self.group.create_array(
            name,
            shape=values.shape,
            dtype="float32",
            dimension_names=["lat", "lon"],
            attributes=attrs,
            fill_value=np.nan,
        )
        arr[:] = values.astype(np.float32)

    # -- statistics ----------------------------------------------------------------------
    def statistics_are_current(self) -> bool:
        return "mean" in self.group and self.attrs.get("statistics", {}).get("committed_times") == self.committed

    def _weights(self) -> np.ndarray:
        w = cell_area_weights(self.grid.lat)[:, None] * np.ones(self.grid.shape[1])
        return w / w.sum()

    def _running_moments(self) -> Moments | None:
        """Sums to continue from on append: empty for a new archive, the stored ones when they
        cover the whole (current) archive, else None (the caller recomputes)."""
        n = self.committed
        if n == 0:
            return Moments.empty(self._weights(), len(self.channels))
        info = self.attrs.get("statistics", {})
        if not (self.statistics_are_current() and info.get("whole_archive") and "statistics_sums" in self.group):
            return None
        return Moments(
            weights=self._weights(),
            sums=np.asarray(self.group["statistics_sums"][:]),
            count=int(info["time_steps"]),
            diff_count=int(info["diff_count"]),
            last=np.asarray(self.fields[n - 1]),
        )

    def _store_statistics(self, moments: Moments, lo: int, hi: int) -> dict:
        result = moments.result()
        c = len(self.channels)
        descriptions = {
            "mean": "area-weighted mean",
            "std": "area-weighted standard deviation",
            "diff_std": f"standard deviation of {self.time_step_hours}-hour differences",
        }
        for name, desc in descriptions.items():
            self._clear(name)
            arr = self.group.create_array(
                name, shape=(c,), dtype="float64", dimension_names=["channel"], attributes={"long_name": desc}
            )
            arr[:] = result[name]
        self._clear("statistics_sums")
        sums = self.group.create_array(
            "statistics_sums",
            shape=(4, c),
            dtype="float64",
            dimension_names=["moment", "channel"],
            attributes={"long_name": "running sums of area means: x, x**2, dx, dx**2"},
        )
        sums[:] = moments.sums
        times = self.group["time"]
        info = {
            "period_start": str(from_hours(times[lo])),
            "period_end": str(from_hours(times[hi - 1])),
            "time_steps": hi - lo,
            "diff_count": moments.diff_count,
            "whole_archive": lo == 0 and hi == self.committed,
            "committed_times": self.committed,
            "diff_hours": self.time_step_hours,
            "weights": "cell area (sin of cell edges)",
        }
        self.group.attrs.update({"statistics": info})
        return {**result, **info}

    def compute_statistics(self, start: str | None = None, end: str | None = None, batch: int = 64) -> dict:
        """Area-weighted per-channel mean and std, and std of differences over one time step,
        over the committed steps in [start, end] (default: all), read batch by batch.
        Stored as arrays `mean`, `std`, `diff_std`, with the period in the attributes."""
        times = self.times
        if len(times) == 0:
            raise ArchiveError(f"{self.location}: no committed time steps to compute statistics from")
        lo = 0 if start is None else int(np.searchsorted(times, np.datetime64(start, "h")))
        hi = len(times) if end is None else int(np.searchsorted(times, np.datetime64(end, "h"), side="right"))
        if hi - lo < 1:
            raise ArchiveError(f"{self.location}: no time steps between {start} and {end}")
        moments = Moments.empty(self._weights(), len(self.channels))
        for i in range(lo, hi, batch):
            moments.add(self.fields[i : min(i + batch, hi)])
        return self._store_statistics(moments, lo, hi)


def open_archive(location: str, storage_options: dict | None = None) -> xr.Dataset:
    """The archive as a labelled, lazy xarray Dataset holding only committed time steps."""
    archive = Archive.open(location, storage_options=storage_options)
    n = archive.committed
    ds = (
        xr.open_zarr(location, consolidated=False, storage_options=storage_options, decode_times=False)
        if archive.fields.shape[0] == archive.group["time"].shape[0]
        else None
    )
    if ds is None:
        # Mid-append shapes disagree: build the view from the arrays themselves.
        import dask.array as da

        ds = xr.Dataset(
            {"fields": (("time", "channel", "lat", "lon"), da.from_zarr(archive.fields)[:n])},
            coords={"time": ("time", archive.group["time"][:n], archive.group["time"].attrs.asdict())},
        )
        for name in STATIC_NAMES + ("mean", "std", "diff_std", "statistics_sums"):
            if name in archive.group:
                arr = archive.group[name]
                ds[name] = (tuple(arr.metadata.dimension_names), arr[:], arr.attrs.asdict())
        ds = ds.assign_coords(channel=archive.channels, lat=archive.grid.lat, lon=archive.grid.lon)
    ds = ds.isel(time=slice(0, n))
    ds = xr.decode_cf(ds)
    ds.attrs = archive.attrs
    return ds


def describe(location: str) -> str:
    """A short human-readable summary of an archive."""
    a = Archive.open(location)
    t = a.times
    span = f"{t[0]} .. {t[-1]}" if len(t) else "empty"
    stats = a.attrs.get("statistics")
    lines = [
        f"archive   {location}",
        f"times     {len(t)} steps, {span}, every {a.time_step_hours} h",
        f"channels  {len(a.channels)}: {' '.join(a.channels)}",
        f"grid      {a.attrs['grid']} ({a.steps_per_object} steps per stored object)",
        f"static    {', '.join(n for n in STATIC_NAMES if n in a.group) or 'none'}",
        f"sources   {len(a.attrs.get('sources', []))} files",
    ]
    if stats:
        current = "current" if a.statistics_are_current() else "STALE: run `forecast stats`"
        lines.append(
            f"stats     {stats['period_start']} .. {stats['period_end']} ({stats['time_steps']} steps, {current})"
        )
    return "\n".join(lines)
