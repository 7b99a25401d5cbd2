"""Small synthetic CDS-layout NetCDF files for ingest tests (fast, fully controlled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

LEVELS = (500.0, 850.0)


def fields(times: np.ndarray, nlat: int = 9, nlon: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic smooth-ish values per variable, (time, [level,] lat, lon)."""
    rng = np.random.default_rng(seed)
    t = len(times)
    base = rng.standard_normal((t, len(LEVELS), nlat, nlon)).astype(np.float32)
    return {
        "z": (50_000 + 500 * base).astype(np.float32),
        "t": (260 + 5 * base[:, ::-1]).astype(np.float32),
        "msl": (101_000 + 800 * base[:, 0]).astype(np.float32),
    }


def write_cds(
    path: Path,
    times,
    nlat: int = 9,
    nlon: int = 16,
    seed: int = 0,
    *,
    nan_at: int | None = None,
    lon180: bool = False,
    ascending_lat: bool = False,
    msl_hpa: bool = False,
    drop: tuple[str, ...] = (),
    levels: tuple[float, ...] = LEVELS,
    height: bool = False,
) -> Path:
    """A 2024-CDS-style NetCDF (valid_time, pressure_level, latitude, longitude)."""
    times = np.asarray(times, dtype="datetime64[ns]")
    f = fields(times, nlat, nlon, seed)
    lat = np.linspace(90, -90, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    if nan_at is not None:
        f["t"][nan_at, 1, 2, 3] = np.nan
    z, zunits = (f["z"] / 9.80665, "m") if height else (f["z"], "m**2 s**-2")
    msl, munits = (f["msl"] / 100.0, "hPa") if msl_hpa else (f["msl"], "Pa")
    lev_index = [LEVELS.index(level) for level in levels]
    ds = xr.Dataset(
        {
            "z": (
                ("valid_time", "pressure_level", "latitude", "longitude"),
                z[:, lev_index],
                {"units": zunits, "standard_name": "geopotential_height" if height else "geopotential"},
            ),
            "t": (("valid_time", "pressure_level", "latitude", "longitude"), f["t"][:, lev_index], {"units": "K"}),
            "msl": (("valid_time", "latitude", "longitude"), msl, {"units": munits}),
        },
        coords={
            "valid_time": times,
            "pressure_level": ("pressure_level", list(levels), {"units": "hPa"}),
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", lon, {"units": "degrees_east"}),
        },
    ).drop_vars(list(drop))
    if lon180:
        ds = ds.assign_coords(longitude=((ds.longitude + 180) % 360) - 180).sortby("longitude")
    if ascending_lat:
        ds = ds.sortby("latitude")
    ds.to_netcdf(path)
    return path


def six_hourly(start: str, n: int) -> np.ndarray:
    return np.datetime64(start, "h") + np.arange(n) * np.timedelta64(6, "h")
