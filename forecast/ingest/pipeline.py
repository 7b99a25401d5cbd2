"""Ingest: validate sources, plan the new time steps, regrid, and append to the archive.

Everything that can be checked from metadata (variables, levels, times, grids, units) is
checked before the archive is touched. Values (NaN) are checked per time step as they are
read, before that step is written; any failure rolls the archive back to its last commit, so
a failed ingest leaves the archive as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from forecast import vocabulary
from forecast.archive import Archive
from forecast.grid import ConservativeRegridder, LatLonGrid, covers_globe, parse_grid
from forecast.ingest.sources import IngestError, Source, checksum, open_source, read_values

log = logging.getLogger(__name__)
# Time steps read per source request and written per zarr call: as many as fit in this many
# bytes of all channels (at least 1), so a 0.25-degree archive reads a step or two at a time.
BATCH_BYTES = 32 * 2**20


@dataclasses.dataclass
class Piece:
    """One channel's data in one source: `variable` (lazy, (time, [level,] lat, lon)) at
    `level_index` for pressure-level channels. Channels of one variable share its array,
    so a batch reads each variable once for all its levels."""

    file: str
    variable: str
    data: xr.DataArray
    level_index: int | None = None

    @functools.cached_property
    def grid(self) -> LatLonGrid:
        return LatLonGrid(lat=self.data["lat"].values, lon=self.data["lon"].values)


@dataclasses.dataclass
class IngestReport:
    archive: str
    added: int
    skipped_sources: list[str]
    skipped_times: int
    channels: list[str]
    first: str | None
    last: str | None

    def summary(self) -> str:
        span = f" ({self.first} .. {self.last})" if self.added else ""
        return (
            f"{self.archive}: added {self.added} time steps{span}, {len(self.channels)} channels; "
            f"{self.skipped_times} already present, {len(self.skipped_sources)} sources already ingested"
        )


def expand_sources(sources: Sequence[str | Path]) -> list[str]:
    """Directories (other than Zarr stores) stand for the NetCDF and GRIB files inside them."""
    out: list[str] = []
    for s in map(str, sources):
        fs, path = fsspec.core.url_to_fs(s)
        if fs.isdir(path) and not (fs.exists(f"{path}/zarr.json") or fs.exists(f"{path}/.zgroup")):
            found = sorted(
                p for p in fs.ls(path, detail=False) if p.endswith((".nc", ".grib", ".grib2", ".grb", ".grb2"))
            )
            if not found:
                raise IngestError(s, None, "directory holds no .nc or .grib files")
            out += [p if "://" not in s else f"{s.split('://')[0]}://{p}" for p in found]
        else:
            out.append(s)
    return out


def group_sources(locations: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Group files by the year-month in their names (YYYYMM), in time order.

    Files of one month (pressure-level and single-level, say) must go in together, as every
    time step needs all channels. Undated files (static fields) join the first group.
    """
    import re

    dated: dict[str, list[str]] = {}
    undated: list[str] = []
    for loc in locations:
        m = re.search(r"(?<!\d)((?:19|20)\d{2})[-_]?(0[1-9]|1[0-2])(?!\d)", Path(loc).name)
        if m:
            dated.setdefault(m.group(1) + m.group(2), []).append(loc)
        else:
            undated.append(loc)
    groups = [(k, dated[k]) for k in sorted(dated)]
    if not groups:
        return [("all", undated)] if undated else []
    groups[0] = (groups[0][0], undated + groups[0][1])
    return groups


def _pieces(sources: list[Source]) -> tuple[dict[str, list[Piece]], dict[str, Piece]]:
    fields: dict[str, list[Piece]] = {}
    statics: dict[str, Piece] = {}
    for src in sources:
        for ds in src.datasets:
            for short, da in ds.data_vars.items():
                v = vocabulary.by_short(short)
                if v.kind == "static":
                    statics[v.channel] = Piece(src.location, da.attrs["source_name"], da.isel(time=0))
                elif v.kind == "pressure":
                    for k, level in enumerate(da["level"].values):
                        ch = vocabulary.channel_name(v, float(level))
                        fields.setdefault(ch, []).append(Piece(src.location, da.attrs["source_name"], da, k))
                else:
                    fields.setdefault(v.channel, []).append(Piece(src.location, da.attrs["source_name"], da))
    return fields, statics


def _channel_order(channel: str) -> tuple:
    v, level = vocabulary.parse_channel(channel)
    return (vocabulary.VARIABLES.index(v), level or 0)


def _check_times(channel: str, pieces: list[Piece]) -> dict[np.datetime64, tuple[int, int]]:
    """time -> (piece index, index within piece); refuses unordered and duplicate times."""
    index: dict[np.datetime64, tuple[int, int]] = {}
    for p_i, p in enumerate(pieces):
        t = p.data["time"].values.astype("datetime64[h]")
        if len(t) > 1 and np.any(np.diff(t) <= np.timedelta64(0, "h")):
            bad = int(np.argmax(np.diff(t) <= np.timedelta64(0, "h")))
            what = "duplicate" if t[bad] == t[bad + 1] else "unordered"
            raise IngestError(p.file, p.variable, f"{what} times: {t[bad]} is followed by {t[bad + 1]}")
        for j, tt in enumerate(t):
            if tt in index:
                other = pieces[index[tt][0]].file
                raise IngestError(p.file, p.variable, f"duplicate time {tt} (also in {other}) for channel {channel}")
            index[tt] = (p_i, j)
    return index


# The time steps an archive may have: those that divide a day, so that every cycle hour and
# every whole-day lead (the 24/48/72 h of skill.json) is a whole number of steps.
TIME_STEPS = (1, 2, 3, 4, 6, 8, 12, 24)


def fitting_steps(times: Sequence[np.datetime64]) -> list[int]:
    """The archive time steps (hours, dividing 24) on which `times` form a series without gaps,
    finest first. As ingest does, times off a step's cadence (00 UTC based) are left out; a
    step that keeps a single time of several (or none) does not fit."""
    hours = np.unique(np.asarray(times, dtype="datetime64[h]").astype(np.int64))
    out = []
    for step in TIME_STEPS:
        on = hours[hours % step == 0]
        if len(on) >= min(2, len(hours)) and np.all(np.diff(on) == step):
            out.append(step)
    return out


def _step_hint(times: Sequence[np.datetime64], step: int, existing: bool) -> str:
    """What to say about the time step when `times` do not fit a `step`-hour archive."""
    fits = [s for s in fitting_steps(times) if s != step]
    if not fits:
        return (
            f"; no time step of {', '.join(map(str, TIME_STEPS))} h makes these times gap-free: "
            "the source is missing times"
        )
    s = fits[0]
    if existing:
        return (
            f"; this archive steps {step} h and keeps that step: these times fit a new archive "
            f"ingested with --time-step {s} (time_step_hours={s})"
        )
    return f"; these times are every {s} h: pass --time-step {s} (time_step_hours={s})"


def _remove_store(location: str, storage_options: dict | None) -> None:
    fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _missing_channel_error(channel: str, fields: dict[str, list[Piece]], files: list[str]) -> IngestError:
    v, level = vocabulary.parse_channel(channel)
    same_var = sorted(c for c in fields if vocabulary.parse_channel(c)[0] is v)
    where = (
        files[0]
        if len(files) == 1
        else f"{len(files)} sources ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
    )
    if same_var:
        return IngestError(
            where, v.short, f"missing level {level} hPa for channel {channel}; levels present: {same_var}"
        )
    return IngestError(where, v.short, f"missing variable for channel {channel} (found channels: {sorted(fields)})")


def plan_grid(
    pieces: list[Piece], target: LatLonGrid | None, allow_regrid: bool = True
) -> tuple[LatLonGrid, dict[int, ConservativeRegridder]]:
    """Check every piece's grid; return the target grid and a regridder per distinct source grid.

    Without `allow_regrid` (an archive kept on its sources' native grid), a source on another
    grid is an error rather than something to regrid silently."""
    grids: list[LatLonGrid] = []
    checked: set[int] = set()
    for p in pieces:
        if id(p.data) in checked:  # the levels of one variable share its grid
            continue
        checked.add(id(p.data))
        g = p.grid
        if len(g.lat) < 2 or len(g.lon) < 2:
            raise IngestError(p.file, p.variable, f"grid {g.describe()} is too small to be a global field")
        dlon = np.diff(g.lon)
        if not np.allclose(dlon, dlon[0], rtol=1e-4) or not covers_globe(g):
            raise IngestError(
                p.file,
                p.variable,
                f"grid {g.describe()} is regional or irregular; the archive holds global fields on a regular grid",
            )
        if not any(g.same_as(other) for other in grids):
            grids.append(g)
    if target is None:
        if len(grids) > 1:
            raise IngestError(
                pieces[0].file,
                None,
                f"sources are on {len(grids)} different grids "
                f"({'; '.join(g.describe() for g in grids)}); pass --grid to regrid them to one",
            )
        if not grids[0].is_equiangular_with_poles:
            raise IngestError(
                pieces[0].file,
                None,
                f"grid {grids[0].describe()} is not equiangular with poles "
                "(the archive contract); pass --grid, e.g. --grid 33x64 or --grid 1.0",
            )
        target = grids[0]
    by_grid: dict[str, ConservativeRegridder] = {}
    regridders = {}
    on_target: dict[int, bool] = {}
    for p in pieces:
        if id(p.data) not in on_target:
            on_target[id(p.data)] = p.grid.same_as(target)
        if not on_target[id(p.data)]:
            if not allow_regrid:
                raise IngestError(
                    p.file,
                    p.variable,
                    f"grid {p.grid.describe()} differs from the archive's grid "
                    f"{target.describe()}; pass --grid to regrid",
                )
            key = p.grid.describe()
            if key not in by_grid:
                by_grid[key] = ConservativeRegridder(p.grid, target)
            regridders[id(p)] = by_grid[key]
    return target, regridders


def ingest(
    sources: Sequence[str | Path],
    archive: str | Path,
    *,
    grid: str | None = None,
    channels: Sequence[str] | None = None,
    time_step_hours: int = 6,
    member: int = 0,
    progress: bool = True,
    storage_options: dict | None = None,
) -> IngestReport:
    """Ingest reanalysis files (NetCDF, GRIB, Zarr; paths or fsspec URLs) into an archive.

    Idempotent: sources whose checksum the archive already records are skipped, and so are
    time steps it already holds; later time steps are appended. See the module docstring for
    the validation and crash-safety guarantees.
    """
    archive = str(archive)
    locations = expand_sources(sources)
    existing = (
        Archive.open(archive, mode="r+", storage_options=storage_options)
        if Archive.exists(archive, storage_options)
        else None
    )
    known = {s["checksum"] for s in existing.attrs.get("sources", [])} if existing else set()
    if existing is None and int(time_step_hours) not in TIME_STEPS:
        raise IngestError(
            archive, None, f"time step {time_step_hours} h: it must divide 24 h ({', '.join(map(str, TIME_STEPS))})"
        )

    opened: list[Source] = []
    skipped_sources: list[str] = []
    # Checksums (a full read of each file) run in the background while sources are opened.
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = {loc: pool.submit(checksum, loc) for loc in locations}
        for loc in locations:
            try:
                digest = digests[loc].result()
            except FileNotFoundError as e:
                raise IngestError(loc, None, f"no such file or store ({e})") from e
            if digest in known:
                log.info("%s: already ingested (checksum %s), skipped", loc, digest[:19])
                skipped_sources.append(loc)
                continue
            opened.append(open_source(loc, member=member, digest=digest))
    if not opened:
        return IngestReport(archive, 0, skipped_sources, 0, existing.channels if existing else [], None, None)

    fields, statics = _pieces(opened)
    if existing is not None:
        wanted = existing.channels
    elif channels:
        wanted = list(channels)
    else:
        wanted = sorted(fields, key=_channel_order)
    if not wanted:
        raise IngestError(opened[0].location, None, "no time-dependent fields found")
    for ch in wanted:
        vocabulary.parse_channel(ch)  # a clear error for unknown names
        if ch not in fields:
            raise _missing_channel_error(ch, fields, [s.location for s in opened])

    pieces = [p for ch in wanted for p in fields[ch]] + list(statics.values())
    target = existing.grid if existing else (parse_grid(grid) if grid else None)
    if existing is not None and grid and not parse_grid(grid).same_as(existing.grid):
        raise IngestError(archive, None, f"--grid {grid} differs from the archive's grid {existing.grid.describe()}")
    allow_regrid = bool(grid) or bool(existing is not None and existing.attrs.get("grid_spec"))
    target, regridders = plan_grid(pieces, target, allow_regrid)

    # Times: every channel must have exactly the same steps on the archive's cadence.
    step = existing.time_step_hours if existing else int(time_step_hours)
    indices = {ch: _check_times(ch, fields[ch]) for ch in wanted}
    on_cadence = {ch: {t for t in idx if (t.astype("int64") % step) == 0} for ch, idx in indices.items()}
    reference = wanted[0]
    all_times = set().union(*on_cadence.values())
    for ch in wanted:
        lacking = sorted(all_times - on_cadence[ch])
        if lacking:
            p = fields[ch][0]
            raise IngestError(
                p.file,
                p.variable,
                f"missing times for channel {ch}: {len(lacking)} steps, first {lacking[0]} (other variables have them)",
            )
    times = np.array(sorted(all_times), dtype="datetime64[h]")
    source_times = sorted(set().union(*indices.values()))  # before leaving out off-cadence ones
    dropped = len(indices[reference]) - len(times)
    if dropped:
        log.info("dropped %d time steps that are not on the %d-hour cadence", dropped, step)
    if len(times) == 0:
        p = fields[reference][0]
        raise IngestError(
            p.file,
            p.variable,
            f"no time step falls on the {step}-hour cadence (00 UTC based)"
            + _step_hint(source_times, step, existing is not None),
        )
    gaps = np.nonzero(np.diff(times) != np.timedelta64(step, "h"))[0]
    if len(gaps):
        g = gaps[0]
        raise IngestError(
            fields[reference][0].file,
            None,
            f"missing times: gap between {times[g]} and {times[g + 1]} (expected every {step} h)"
            + _step_hint(source_times, step, existing is not None),
        )

    skipped_times = 0
    if existing is not None and existing.committed:
        have = existing.times.astype("datetime64[h]")
        old = times[times <= have[-1]]
        if len(old):
            absent = np.setdiff1d(old, have)
            if len(absent):
                raise IngestError(
                    fields[reference][0].file,
                    None,
                    f"times {absent[0]}.. lie inside the archive's span but are not in it; the archive only appends",
                )
            skipped_times = len(old)
        times = times[times > have[-1]]
        if len(times) and times[0] != have[-1] + np.timedelta64(step, "h"):
            raise IngestError(
                fields[reference][0].file,
                None,
                f"missing times: archive ends at {have[-1]}, new data start at {times[0]}",
            )

    created = existing is None
    if created:
        existing = Archive.create(
            archive,
            target,
            wanted,
            step,
            storage_options=storage_options,
            attrs={
                "title": "forecast archive",
                "grid_spec": grid,
                "regridding": "none (native grid)"
                if not grid
                else f"first-order conservative (forecast.grid) to {target.describe()} where a source grid differs",
            },
        )

    provenance = [
        {
            "file": s.location,
            "checksum": s.checksum,
            "variables": sorted({str(ds[v].attrs["source_name"]) for ds in s.datasets for v in ds.data_vars}),
            "regridded_from": sorted(
                {p.grid.describe() for ch in wanted for p in fields[ch] if p.file == s.location and id(p) in regridders}
            ),
        }
        for s in opened
    ]

    try:
        if len(times):
            layout = (existing.committed, existing.steps_per_object)
            blocks = _blocks(times, wanted, fields, indices, regridders, target.shape, layout, progress)
            existing.append(times, blocks, provenance)
            log.info("appended %d time steps to %s", len(times), archive)
        else:
            existing.group.attrs.update({"sources": existing.attrs.get("sources", []) + provenance})
    except BaseException:
        if created:  # a failed first ingest leaves no archive behind, not an empty one
            _remove_store(archive, storage_options)
        raise
    # Static fields only after the time steps are committed, so a failed ingest leaves them too.
    for name, p in statics.items():
        values = read_values(p.data)
        if id(p) in regridders:
            values = regridders[id(p)](values)
        if name == "orography":
            values = values / vocabulary.GRAVITY
        existing.write_static(name, values, {"source_file": p.file, "units": "m" if name == "orography" else "1"})

    if not existing.statistics_are_current():
        existing.compute_statistics()
    return IngestReport(
        archive,
        len(times),
        skipped_sources,
        skipped_times,
        wanted,
        str(times[0]) if len(times) else None,
        str(times[-1]) if len(times) else None,
    )


def _read_batch(batch, channels, fields, indices, regridders, buffer: np.ndarray) -> np.ndarray:
    """Read, regrid and check one batch of consecutive steps into `buffer`; returns the filled
    (steps, channel, lat, lon) view."""
    out = buffer[: len(batch)]
    loaded: dict[tuple, np.ndarray] = {}  # one read per source variable and time selection
    for c, ch in enumerate(channels):
        by_piece: dict[int, list[tuple[int, int]]] = {}
        for b, t in enumerate(batch):
            p_i, j = indices[ch][t]
            by_piece.setdefault(p_i, []).append((b, j))
        for p_i, pairs in by_piece.items():
            piece = fields[ch][p_i]
            js = [j for _, j in pairs]
            key = (id(piece.data), js[0], js[-1], len(js))
            if key not in loaded:
                # A contiguous slice reads far faster than a list of indices from NetCDF.
                sel = slice(js[0], js[-1] + 1) if js == list(range(js[0], js[-1] + 1)) else js
                loaded[key] = read_values(piece.data.isel(time=sel))
            values = loaded[key] if piece.level_index is None else loaded[key][:, piece.level_index]
            if id(piece) in regridders:
                values = regridders[id(piece)](values)
            finite = np.isfinite(values).all(axis=(-2, -1))
            if not finite.all():
                k = int(np.argmin(finite))
                bad = int(np.count_nonzero(~np.isfinite(values[k])))
                raise IngestError(
                    piece.file, piece.variable, f"{bad} NaN/inf values at {batch[pairs[k][0]]} (channel {ch})"
                )
            out[[b for b, _ in pairs], c] = values
    return out


def batch_bounds(n_times: int, step_bytes: int, start: int = 0, per_object: int = 1) -> list[tuple[int, int]]:
    """[begin, end) batches of about BATCH_BYTES that end on the archive's object (shard)
    boundaries, counted from archive index `start`: zarr then writes each shard once instead
    of reading back and rewriting shards that two batches share."""
    size = max(1, BATCH_BYTES // step_bytes)
    if per_object > 1:
        size = max(per_object, size // per_object * per_object)
    bounds, begin = [], 0
    first = (-start) % per_object if per_object > 1 else 0  # completes a partly filled shard
    if first:
        bounds.append((0, min(first, n_times)))
        begin = bounds[-1][1]
    while begin < n_times:
        bounds.append((begin, min(begin + size, n_times)))
        begin = bounds[-1][1]
    return bounds


def _blocks(
    times, channels, fields, indices, regridders, grid_shape, layout: tuple[int, int], progress
) -> Iterator[np.ndarray]:
    """Yield (steps, channel, lat, lon) blocks in time order. The next batch is read in a
    background thread while the archive writes the current one (I/O and codecs release the GIL),
    into one of two buffers used in turn: fresh memory for every batch costs more in page
    faults than the copying itself."""
    step_bytes = 4 * len(channels) * grid_shape[0] * grid_shape[1]
    batches = [times[b:e] for b, e in batch_bounds(len(times), step_bytes, *layout)]
    longest = max(len(b) for b in batches)
    buffers = [np.empty((longest, len(channels), *grid_shape), np.float32) for _ in range(2)]
    bar = tqdm(total=len(times), desc="ingest", unit="step", disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as pool:

        def read(i: int):
            return pool.submit(_read_batch, batches[i], channels, fields, indices, regridders, buffers[i % 2])

        pending = read(0)
        for i in range(len(batches)):
            block = pending.result()
            if i + 1 < len(batches):
                # The consumer is done with batch i - 1, whose buffer this read refills.
                pending = read(i + 1)
            yield block
            bar.update(len(block))
    bar.close()
