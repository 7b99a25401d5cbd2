"""Open reanalysis sources and bring them to one canonical form.

Canonical form: an xarray Dataset per source hypercube whose variables carry our vocabulary's
short names and units, with dims `time`, optional `level` (hPa), `lat` (decreasing) and `lon`
(0..360, increasing). Handles CDS NetCDF in the legacy (`time`/`level`, int16 packed) and the
2024 (`valid_time`/`pressure_level`/`expver`) layouts, GRIB through cfgrib (several hypercubes
per file), ARCO-ERA5 / WeatherBench2 Zarr stores, fsspec URLs, longitudes in -180..180 and
either latitude order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import fsspec
import numpy as np
import xarray as xr

from forecast import vocabulary
from forecast.vocabulary import GEOPOTENTIAL_HEIGHT_NAMES, GRAVITY, Variable

log = logging.getLogger(__name__)

TIME_NAMES = ("valid_time", "time")
LEVEL_NAMES = ("pressure_level", "level", "isobaricInhPa", "plev", "pressure", "air_pressure", "lev")
LAT_NAMES = ("latitude", "lat")
LON_NAMES = ("longitude", "lon")
PA_UNITS = {"pa", "pascal", "pascals"}
HPA_UNITS = {"hpa", "mbar", "millibars", "millibar", "mb"}


class IngestError(ValueError):
    """Bad input: names the file, the variable and the problem."""

    def __init__(self, file: str, variable: str | None, problem: str):
        self.file, self.variable, self.problem = str(file), variable, problem
        where = f"{file}" + (f": variable {variable!r}" if variable else "")
        super().__init__(f"{where}: {problem}")


class MemberMissing(IngestError):
    """A hypercube without the requested ensemble member (another hypercube may have it)."""


@dataclasses.dataclass
class Source:
    """One opened source: its canonical datasets and what we need for provenance."""

    location: str
    datasets: list[xr.Dataset]
    checksum: str


def kind_of(location: str) -> str:
    name = location.rstrip("/").lower()
    if name.endswith(".zarr") or name.endswith(".zarr/"):
        return "zarr"
    if name.endswith((".grib", ".grib1", ".grib2", ".grb", ".grb2")):
        return "grib"
    if name.endswith((".nc", ".nc4", ".netcdf", ".cdf")):
        return "netcdf"
    fs, path = fsspec.core.url_to_fs(location)
    if fs.isdir(path) and (fs.exists(f"{path}/zarr.json") or fs.exists(f"{path}/.zgroup")):
        return "zarr"
    with fs.open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"GRIB"):
        return "grib"
    if head.startswith((b"CDF", b"\x89HDF")):
        return "netcdf"
    raise IngestError(location, None, "unrecognised format: expected NetCDF, GRIB or a Zarr store")


def checksum(location: str) -> str:
    """sha256 of a file, or of a Zarr store's metadata and chunk listing (stores are big)."""
    fs, path = fsspec.core.url_to_fs(location)
    h = hashlib.sha256()
    if fs.isdir(path):
        for p in sorted(fs.find(path)):
            info = fs.info(p)
            h.update(f"{p[len(path) :]}:{info.get('size')}\n".encode())
            if p.endswith(("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")):
                h.update(fs.cat_file(p))
        return "sha256-tree:" + h.hexdigest()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _local_path(location: str) -> str | None:
    if "://" not in location or location.startswith("file://"):
        return location.removeprefix("file://")
    return None


def open_raw(location: str) -> list[xr.Dataset]:
    """Open a source without interpreting it; GRIB files may give several hypercubes."""
    kind = kind_of(location)
    try:
        if kind == "zarr":
            return [xr.open_zarr(location, consolidated=None, decode_timedelta=False)]
        if kind == "grib":
            return _open_grib(location)
        local = _local_path(location)
        if local is not None:
            return [xr.open_dataset(local, engine="netcdf4", decode_timedelta=False)]
        # Remote NetCDF through fsspec: h5netcdf reads NetCDF4 from a file object.
        f = fsspec.open(location, "rb").open()
        return [xr.open_dataset(f, engine="h5netcdf", decode_timedelta=False)]
    except IngestError:
        raise
    except Exception as e:  # the reader's own message, with the file named
        raise IngestError(location, None, f"cannot be read as {kind}: {type(e).__name__}: {e}") from e


def _open_grib(location: str) -> list[xr.Dataset]:
    import cfgrib

    local = _local_path(location)
    if local is None:
        raise IngestError(location, None, "GRIB is read from local files only; copy it first")
    # A reduced or octahedral Gaussian grid has no regular lat/lon structure: refuse it before
    # cfgrib builds a 1-D `values` dimension that would look like something else.
    _check_grib_integrity(local)
    _refuse_unstructured_grib(local)
    # indexpath="" keeps cfgrib from writing a .idx next to the file (shared data is read-only).
    return cfgrib.open_datasets(local, backend_kwargs={"indexpath": ""}, decode_timedelta=False)


def _refuse_unstructured_grib(path: str) -> None:
    import eccodes

    with open(path, "rb") as f:
        while True:
            try:
                msg = eccodes.codes_grib_new_from_file(f)
            except Exception:  # corrupt messages are reported by the integrity check
                return
            if msg is None:
                return
            try:
                grid_type = eccodes.codes_get(msg, "gridType")
                if grid_type.startswith("reduced"):
                    octa = grid_type == "reduced_gg" and eccodes.codes_get(msg, "isOctahedral") == 1
                    name = eccodes.codes_get(msg, "shortName")
                    kind = "an octahedral reduced Gaussian" if octa else f"a reduced ({grid_type}) Gaussian"
                    raise IngestError(
                        path,
                        name,
                        f"is on {kind} grid, which is not supported: regrid it to a "
                        "regular latitude-longitude grid first (e.g. with MIR or CDO)",
                    )
                if grid_type not in ("regular_ll", "regular_gg"):
                    raise IngestError(
                        path,
                        eccodes.codes_get(msg, "shortName"),
                        f"grid type {grid_type!r} is not supported (regular_ll or regular_gg only)",
                    )
            finally:
                eccodes.codes_release(msg)


def _check_grib_integrity(path: str) -> None:
    """cfgrib skips corrupted messages with a log line; we refuse the file instead."""
    import eccodes

    count = 0
    with open(path, "rb") as f:
        while True:
            try:
                msg = eccodes.codes_grib_new_from_file(f)
            except Exception as e:
                raise IngestError(
                    path, None, f"corrupted GRIB message after {count} good ones: {type(e).__name__}: {e}"
                ) from e
            if msg is None:
                break
            eccodes.codes_release(msg)
            count += 1
    if count == 0:
        raise IngestError(path, None, "contains no GRIB messages")


def _find(names: tuple[str, ...], candidates) -> str | None:
    for n in names:
        if n in candidates:
            return n
    return None


def _units(da: xr.DataArray) -> str:
    return str(da.attrs.get("units", da.attrs.get("GRIB_units", ""))).strip()


def _identify(name: str, da: xr.DataArray, has_level: bool) -> tuple[Variable | None, bool]:
    """Vocabulary entry for a data variable, and whether it holds geopotential height."""
    keys = [
        name,
        da.attrs.get("GRIB_shortName", ""),
        da.attrs.get("GRIB_cfVarName", ""),
        da.attrs.get("standard_name", ""),
        da.attrs.get("long_name", ""),
    ]
    for key in keys:
        key = str(key).lower()
        if key in GEOPOTENTIAL_HEIGHT_NAMES:
            return vocabulary.by_short("z" if has_level else "z_surface"), True
    for key in keys:
        v = vocabulary.lookup(str(key)) if key else None
        if v is not None:
            if v.short == "z":
                height = da.attrs.get("standard_name") == "geopotential_height" or _units(da).lower() in ("m", "gpm")
                return (v if has_level else vocabulary.by_short("z_surface")), height
            return v, False
    return None, False


def _unit_conversion(da: xr.DataArray, v: Variable, height: bool, file: str, name: str) -> tuple[float, float]:
    """(scale, offset) taking the source's units to the vocabulary's, or a clear refusal.

    Returned rather than applied, so that the data stay lazy until ingest reads a batch."""
    units = _units(da)
    low = units.lower().replace(" ", "")
    if v.short in ("z", "z_surface"):
        if height:
            return GRAVITY, 0.0
        if low in ("m**2s**-2", "m2s-2", "m^2/s^2", "m2/s2", "m^2s^-2", "m**2/s**2"):
            return 1.0, 0.0
        raise IngestError(
            file, name, f"geopotential has units {units!r}; expected m**2 s**-2 (or metres for geopotential height)"
        )
    if v.short in ("msl", "sp"):
        if low in PA_UNITS:
            return 1.0, 0.0
        if low in HPA_UNITS:
            return 100.0, 0.0
        raise IngestError(file, name, f"pressure has units {units!r}; expected Pa or hPa")
    if v.units == "K":
        if low in ("k", "kelvin", "degk"):
            return 1.0, 0.0
        if low in ("degc", "celsius", "°c", "c", "degrees_celsius"):
            return 1.0, 273.15
        raise IngestError(file, name, f"temperature has units {units!r}; expected K or degC")
    if v.units == "m s**-1" and low not in ("ms**-1", "m/s", "ms-1", "m.s-1", "m s-1"):
        raise IngestError(file, name, f"wind has units {units!r}; expected m s**-1")
    if not units and v.units != "1":
        raise IngestError(file, name, f"has no units attribute; expected {v.units}")
    return 1.0, 0.0


def read_values(da: xr.DataArray) -> np.ndarray:
    """Load a canonical variable (or a selection of it) as float32 in the vocabulary's units."""
    values = np.asarray(da.values, dtype=np.float32)
    scale, offset = da.attrs["scale"], da.attrs["offset"]
    if scale != 1.0:
        values = values * np.float32(scale)
    if offset != 0.0:
        values = values + np.float32(offset)
    return values


def _level_values(coord: xr.DataArray, file: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(coord.values, dtype=np.float64))
    units = str(coord.attrs.get("units", "")).lower()
    if units in PA_UNITS or (not units and values.max() > 1100):
        values = values / 100.0
    elif units and units not in HPA_UNITS:
        raise IngestError(file, coord.name, f"pressure levels in units {units!r}; expected hPa or Pa")
    return values


def canonical(ds: xr.Dataset, file: str, member: int = 0) -> xr.Dataset:
    """Rename, reorder and convert a raw dataset into the canonical form (lazy where possible)."""
    dims = set(ds.dims) | set(ds.coords)
    if "values" in ds.dims:
        raise IngestError(file, None, "data are on an unstructured (reduced Gaussian) grid; not supported")
    lat = _find(LAT_NAMES, dims)
    lon = _find(LON_NAMES, dims)
    if lat is None or lon is None or lat not in ds.dims or lon not in ds.dims:
        raise IngestError(file, None, "no latitude/longitude dimensions: only regular lat-lon grids are supported")
    ds = ds.rename({lat: "lat", lon: "lon"})

    # Time: prefer the valid time (analysis time + step).
    if "valid_time" in ds.coords and "valid_time" not in ds.dims:
        vt = ds["valid_time"]
        if vt.ndim == 0:
            ds = ds.drop_vars([c for c in ("time", "step") if c in ds.coords and ds[c].ndim == 0])
            ds = ds.expand_dims("valid_time") if "valid_time" not in ds.dims else ds
        elif vt.ndim == 1:
            ds = ds.swap_dims({vt.dims[0]: "valid_time"})
            ds = ds.drop_vars([c for c in ("time", "step") if c in ds.coords and c not in ds.dims])
        else:
            raise IngestError(
                file,
                None,
                "holds forecasts from several start times (2-D valid_time); ingest analyses or one forecast at a time",
            )
    tname = _find(TIME_NAMES, set(ds.dims))
    if tname is None:
        if "time" in ds.coords and ds["time"].ndim == 0:
            ds = ds.expand_dims("time")
            tname = "time"
        else:
            extra = [d for d in ds.dims if d not in ("lat", "lon")]
            raise IngestError(file, None, f"no time axis (dimensions {extra}): an archive needs dated fields")
    ds = ds.rename({tname: "time"})
    drop = [c for c in ds.coords if c not in ("time", "lat", "lon") and c not in ds.dims and c not in LEVEL_NAMES]
    ds = ds.drop_vars(drop)
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        ds = xr.decode_cf(ds)
        if not np.issubdtype(ds["time"].dtype, np.datetime64):
            raise IngestError(file, "time", f"time values could not be decoded (units {ds['time'].attrs})")

    # Ensemble members: take one (the archive holds a single analysis).
    if "number" in ds.coords and ds["number"].ndim == 0 and int(ds["number"]) != member:
        raise MemberMissing(file, "number", f"holds member {int(ds['number'])} only, not member {member}")
    if "number" in ds.dims:
        if member not in ds["number"].values:
            raise MemberMissing(file, "number", f"member {member} not among {ds['number'].values.tolist()}")
        log.info("%s: %d ensemble members, taking member %d", file, ds.sizes["number"], member)
        ds = ds.sel(number=member, drop=True)
    if "expver" in ds.dims:
        # Legacy CDS files mixing ERA5 and ERA5T: one of the two is NaN at each time.
        ds = ds.max("expver", skipna=True, keep_attrs=True)

    level = _find(LEVEL_NAMES, set(ds.dims))
    scalar_level = _find(LEVEL_NAMES, set(ds.coords)) if level is None else None
    if scalar_level is not None and ds[scalar_level].ndim == 0:
        ds = ds.expand_dims(scalar_level)
        level = scalar_level
    if level is not None:
        levels = _level_values(ds[level], file)
        ds = ds.rename({level: "level"}).assign_coords(level=levels)

    out = {}
    for name, da in ds.data_vars.items():
        if not {"time", "lat", "lon"} <= set(da.dims):
            continue  # bounds and other helpers
        has_level = "level" in da.dims
        v, height = _identify(name, da, has_level)
        if v is None:
            log.warning("%s: variable %r is not in the vocabulary; skipped", file, name)
            continue
        if v.kind == "pressure" and not has_level:
            raise IngestError(file, name, "pressure-level variable without a pressure level coordinate")
        scale, offset = _unit_conversion(da, v, height, file, name)
        # Lazy: nothing is read here; `read_values` converts when a batch is loaded.
        da.attrs = {"units": v.units, "source_name": name, "source_file": str(file), "scale": scale, "offset": offset}
        if v.short in out:
            raise IngestError(file, name, f"two variables map to {v.short!r}")
        out[v.short] = da.transpose("time", *(["level"] if has_level else []), "lat", "lon")
    if not out:
        raise IngestError(file, None, f"none of the variables {list(ds.data_vars)} is in the vocabulary")
    res = xr.Dataset(out)

    lon_values = np.asarray(res["lon"].values, dtype=np.float64)
    if np.any(lon_values < 0) or np.any(lon_values >= 360):
        res = res.assign_coords(lon=np.mod(lon_values, 360.0))
    res = res.sortby("lon")
    lat_values = np.asarray(res["lat"].values, dtype=np.float64)
    if lat_values[0] < lat_values[-1]:
        res = res.isel(lat=slice(None, None, -1))
    res = res.assign_coords(
        lat=np.asarray(res["lat"].values, np.float64), lon=np.asarray(res["lon"].values, np.float64)
    )
    return res


def open_source(location: str | Path, member: int = 0, digest: str | None = None) -> Source:
    """Open and canonicalise one source; `digest` is its checksum if already computed."""
    location = str(location)
    raw = open_raw(location)
    datasets, missing = [], []
    for ds in raw:
        try:
            datasets.append(canonical(ds, location, member))
        except MemberMissing as e:
            missing.append(e)
    if not datasets:
        raise missing[0]
    return Source(location=location, datasets=datasets, checksum=digest or checksum(location))
