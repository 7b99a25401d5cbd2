"""Angular power spectra on the sphere (DESIGN §3.3) and the HENS spectral diagnostics.

P(l) = |c_l0|² + 2 Σ_{m≥1} |c_lm|² from torch-harmonics' `RealSHT` with `norm="ortho"`, the
data's grid type and an explicit `lmax`/`mmax` (the library's default truncation changed in
0.9). With the ortho norm Σ_l P(l) = ∫ f² dΩ over the unit sphere (Parseval) for a field the
transform resolves. The default `lmax` is the largest the grid's quadrature resolves exactly:
(nlat + 1) // 2 on the equiangular grid with poles, nlat on the Gauss grid.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import xarray as xr
from torch_harmonics import RealSHT

from forecast.harmonics import build, default_lmax


@functools.lru_cache(maxsize=8)
def _transform(nlat: int, nlon: int, lmax: int, grid: str) -> RealSHT:
    mmax = min(lmax, nlon // 2 + 1)
    return build(RealSHT, nlat, nlon, lmax=lmax, mmax=mmax, grid=grid, norm="ortho").double()


_BATCH_BYTES = 64 << 20  # float64 fields per transform call: bounds torch's temporaries


def _power(values: np.ndarray, lmax: int, grid: str) -> np.ndarray:
    """(..., lat, lon) -> (..., l) in float64. The fields go through the transform in batches
    of at most 64 MB (8 fields at 0.25°; every field at once on the 5.625° grid), so its
    temporaries (about 3x its input) do not grow with the member count."""
    x = np.asarray(values)
    nlat, nlon = x.shape[-2:]
    fields = x.reshape(-1, nlat, nlon)
    sht = _transform(nlat, nlon, lmax, grid)
    per_call = max(1, _BATCH_BYTES // (nlat * nlon * 8))
    out = np.empty((len(fields), lmax), np.float64)
    with torch.no_grad():
        for lo in range(0, len(fields), per_call):
            batch = np.ascontiguousarray(fields[lo : lo + per_call], dtype=np.float64)  # float64 a batch at a time
            c = sht(torch.from_numpy(batch)).abs().square()
            out[lo : lo + per_call] = (c[..., 0] + 2.0 * c[..., 1:].sum(-1)).numpy()
    return out.reshape(*x.shape[:-2], lmax)


def power_spectrum(
    field: xr.DataArray, grid: str = "equiangular", lmax: int | None = None, lat_dim: str = "lat", lon_dim: str = "lon"
) -> xr.DataArray:
    """Angular power per total wavenumber `l` of each (lat, lon) field; lat must run north to
    south (the archive's convention)."""
    lat = np.asarray(field[lat_dim].values) if lat_dim in field.coords else None
    if lat is not None and len(lat) > 1 and lat[0] < lat[-1]:
        raise ValueError(f"{lat_dim} must run from north to south for the transform (got {lat[0]} .. {lat[-1]})")
    nlat = field.sizes[lat_dim]
    lmax = lmax or default_lmax(nlat, grid)
    out = xr.apply_ufunc(
        _power,
        field,
        kwargs={"lmax": lmax, "grid": grid},
        input_core_dims=[[lat_dim, lon_dim]],
        output_core_dims=[["l"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"l": lmax}},
    )
    return out.assign_coords(l=np.arange(lmax)).assign_attrs(
        long_name="angular power spectrum",
        estimator="P(l) = |c_l0|^2 + 2 sum_m>=1 |c_lm|^2, RealSHT norm=ortho",
        grid=grid,
        lmax=lmax,
    )


def ensemble_spectra(
    forecast: xr.DataArray,
    verification: xr.DataArray | None = None,
    member_dim: str = "member",
    grid: str = "equiangular",
    lmax: int | None = None,
) -> xr.Dataset:
    """The HENS spectral diagnostics: the member-mean spectrum mean_k P(x_k), the spectrum of
    the ensemble mean P(x̄), the mean spectrum of the perturbations mean_k P(x_k − x̄) and, if
    given, the verification's. mean_k P(x_k) = P(x̄) + mean_k P(x_k − x̄) holds exactly (the
    cross terms cancel because the perturbations sum to zero)."""
    forecast = forecast.astype(np.float64)  # the mean of thousands of float32 members in float64
    mean = forecast.mean(member_dim)
    out = xr.Dataset(
        {
            "member_mean_spectrum": power_spectrum(forecast, grid, lmax).mean(member_dim),
            "ensemble_mean_spectrum": power_spectrum(mean, grid, lmax),
            "perturbation_spectrum": power_spectrum(forecast - mean, grid, lmax).mean(member_dim),
        }
    )
    if verification is not None:
        out["verification_spectrum"] = power_spectrum(verification, grid, lmax)
    return out
