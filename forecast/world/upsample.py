"""The built-in world at another resolution: its monthly NetCDF files interpolated onto a finer
equiangular grid with poles (e.g. 721 × 1440, ERA5's 0.25°), in the same CDS-2024 layout.

This is a *test* data set for scale, not a reanalysis: bilinear interpolation (periodic in
longitude) adds no small-scale weather, but the files have ERA5's shape, names, units and
layout, so every step downstream (ingest, training, runs, scores, M-climate) sees what it
would see with real 0.25° ERA5. Used by the 0.25° chain test and `benchmarks/bench_scale.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr


def _bilinear(values: np.ndarray, lat: np.ndarray, lon: np.ndarray, nlat: int, nlon: int) -> np.ndarray:
    """(..., lat, lon) on an equiangular grid with poles -> (..., nlat, nlon), lat 90 -> -90."""
    new_lat = np.linspace(90.0, -90.0, nlat)
    new_lon = np.arange(nlon) * (360.0 / nlon)
    # latitude: descending source rows; np.interp needs ascending positions
    pos = np.interp(-new_lat, -lat, np.arange(len(lat)))
    lo = np.floor(pos).astype(int).clip(0, len(lat) - 2)
    w = (pos - lo)[:, None]
    step = 360.0 / len(lon)
    q = (new_lon - lon[0]) / step
    left = np.floor(q).astype(int) % len(lon)
    right = (left + 1) % len(lon)
    v = (q - np.floor(q))[None, :]
    rows = values[..., lo, :] * (1 - w) + values[..., lo + 1, :] * w  # (..., nlat, lon)
    return (rows[..., left] * (1 - v) + rows[..., right] * v).astype(np.float32)


def upsample_world(world_dir: str | Path, out_dir: str | Path, nlat: int = 721, nlon: int = 1440,
                   days: int | None = None) -> list[Path]:  # fmt: skip
    """Interpolate every `era5_world_*.nc` file of a world directory (the first `days` days of
    each time series when given) onto nlat × nlon; returns the files written."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(world_dir.glob("era5_world_*.nc")):
        with xr.open_dataset(path) as ds:
            if days is not None and "valid_time" in ds.dims:
                ds = ds.isel(valid_time=slice(0, days * 24 // _step_hours(ds) + 1))
                if ds.sizes["valid_time"] == 0:
                    continue
            ds = ds.load()
        lat, lon = ds.latitude.values, ds.longitude.values
        new = ds.drop_vars(["latitude", "longitude"]).drop_dims(["latitude", "longitude"])
        coords = {"latitude": np.linspace(90.0, -90.0, nlat), "longitude": np.arange(nlon) * (360.0 / nlon)}
        new = new.assign_coords(coords)
        new.latitude.attrs, new.longitude.attrs = ds.latitude.attrs, ds.longitude.attrs
        for name, da in ds.data_vars.items():
            if "latitude" not in da.dims:
                new[name] = da
                continue
            other = [d for d in da.dims if d not in ("latitude", "longitude")]
            values = _bilinear(da.transpose(*other, "latitude", "longitude").values, lat, lon, nlat, nlon)
            new[name] = xr.DataArray(values, dims=(*other, "latitude", "longitude"), attrs=da.attrs)
            new[name].encoding = {"dtype": "float32", "zlib": False}
        target = out_dir / path.name
        new.attrs = {**ds.attrs, "history": f"bilinear interpolation to {nlat}x{nlon} (forecast.world.upsample)"}
        new.to_netcdf(target.with_suffix(".nc.partial"), format="NETCDF4")
        target.with_suffix(".nc.partial").replace(target)
        written.append(target)
    return written


def _step_hours(ds: xr.Dataset) -> int:
    t = ds.valid_time.values
    if len(t) < 2:
        return 6
    dt = np.diff(t[:2])[0]
    return int(dt / np.timedelta64(1, "h")) if np.issubdtype(np.asarray(t).dtype, np.datetime64) else int(dt // 3600)
