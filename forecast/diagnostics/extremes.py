"""Extreme Forecast Index and Shift of Tails against an M-climate (DESIGN §3.4).

The M-climate is the model's own hindcast quantiles at levels p_0 = 0 < ... < p_n = 1 (0, 1,
..., 100 %). F(p) is the fraction of members at or below the climate's p-quantile, taken as
linear in p between levels. Then

    EFI = (2/π) ∫₀¹ (p − F(p)) / sqrt(p(1 − p)) dp

is integrated exactly on each interval: with F = F_a + s (p − p_a) there, the integrand is
((1 − s) p − (F_a − s p_a)) / sqrt(p(1 − p)), whose antiderivatives are
−2 arccos(√p) (for 1/sqrt(p(1−p))) and −sqrt(p(1−p)) − arccos(√p) (for p/sqrt(p(1−p))).
A trapezoid rule over 1–99 % would cap |EFI| near 0.875. With `eps > 0` (precipitation-like
fields) only intervals whose upper climate quantile exceeds eps count, and the sum is
normalised by the largest value it could take over the same intervals (F = 0 there), floored
at eps: the convention of ECMWF's products (earthkit-meteo).

SOT(90) = (Q_f(90) − Q_c(99)) / (Q_c(99) − Q_c(90)), and SOT(10) likewise with Q_c(1) and
Q_c(10); Q_f is interpolated linearly between sorted members; |Q_c tail − Q_c| ≤ max(eps, 0)
gives NaN; the result is bounded to [−10, 10].

NaN policy: NaN members are dropped; a NaN climate quantile or no valid member gives NaN.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

SOT_BOUND = 10.0


SMALL_ENSEMBLE = 128  # members up to which the EFI counts by comparison rather than by search


def _efi_core(clim: np.ndarray, ens: np.ndarray, eps: float) -> np.ndarray:
    """clim (..., n+1) quantiles at 0..1, ens (..., m) -> EFI (...)."""
    clim = np.asarray(clim, np.float64)
    ens = np.asarray(ens, np.float64)
    valid = ~np.isnan(ens)
    m = valid.sum(-1)
    members = np.where(valid, ens, np.inf)
    if ens.shape[-1] <= SMALL_ENSEMBLE:
        # F at each level for all points at once, one member at a time: m x levels
        # comparisons per point, no per-point Python (the search below costs ~1 s per 10^5
        # points, 20 minutes for one 0.25° lead of 21 channels); the same integer counts
        below = np.zeros(clim.shape, np.float64)
        for i in range(ens.shape[-1]):
            below += members[..., i, None] <= clim
        return efi_from_counts(clim, below, m, eps)
    members = np.sort(members, axis=-1)
    # F at each level: members <= quantile (sorted search per point; measured faster than one
    # stable sort of members and quantiles together for all points, benchmarks/bench_extremes.py)
    below = np.empty(clim.shape, np.float64)
    for idx in np.ndindex(clim.shape[:-1]):
        below[idx] = np.searchsorted(members[idx], clim[idx], side="right")
    return efi_from_counts(clim, below, m, eps)


def _nan_percentile(x: np.ndarray, q: float) -> np.ndarray:
    """np.nanpercentile(x, q, axis=-1) (linear between sorted values) without its per-point
    Python loop: NaNs sort last, each point interpolates among its own valid values."""
    s = np.sort(x, axis=-1)
    n = (~np.isnan(x)).sum(-1)
    position = np.maximum(n - 1, 0) * (q / 100.0)
    lo = np.floor(position).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    a = np.take_along_axis(s, lo[..., None], -1)[..., 0]
    b = np.take_along_axis(s, hi[..., None], -1)[..., 0]
    t = position - lo
    out = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)  # numpy's lerp, both halves
    return np.where(n == 0, np.nan, out)


def interval_integrals(levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, J0, J1) for `levels` equally spaced quantile levels 0..1: over each interval,
    J0 = ∫ dp / sqrt(p(1-p)) and J1 = ∫ p dp / sqrt(p(1-p)), from their closed forms."""
    p = np.linspace(0.0, 1.0, levels)
    d_acos = np.diff(np.arccos(np.sqrt(p)))
    d_root = np.diff(np.sqrt(p * (1.0 - p)))
    return p, -2.0 * d_acos, -d_root - d_acos


def efi_from_counts(clim: np.ndarray, below: np.ndarray, m: np.ndarray, eps: float = -0.1) -> np.ndarray:
    """The EFI integral from `below` (..., n+1): how many of the m members are ≤ each climate
    quantile. Shared by `efi` and the engine's online EFI counts, so both are the same sum."""
    clim = np.asarray(clim, np.float64)
    below = np.asarray(below, np.float64)
    m = np.asarray(m)
    p, j0, j1 = interval_integrals(clim.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = below / m[..., None]
    fa, fb = frac[..., :-1], frac[..., 1:]
    pa = p[:-1]
    slope = (fb - fa) / np.diff(p)
    pieces = (1.0 - slope) * j1 + (slope * pa - fa) * j0
    if eps > 0:
        counted = clim[..., 1:] > eps
        total = np.where(counted, pieces, 0.0).sum(-1)
        largest = np.maximum(np.where(counted, j1, 0.0).sum(-1), eps)
        out = total / largest
    else:
        out = (2.0 / np.pi) * pieces.sum(-1)
    bad = np.isnan(clim).any(-1) | (m == 0)
    return np.where(bad, np.nan, out)


def efi(
    climate_quantiles: xr.DataArray,
    forecast: xr.DataArray,
    quantile_dim: str = "quantile",
    member_dim: str = "member",
    eps: float = -0.1,
) -> xr.DataArray:
    """Extreme Forecast Index in [−1, 1]. `climate_quantiles` holds the M-climate at equally
    spaced levels 0..1 along `quantile_dim` (101 for 0, 1, ..., 100 %), sorted."""
    out = xr.apply_ufunc(
        _efi_core,
        climate_quantiles,
        forecast,
        kwargs={"eps": eps},
        input_core_dims=[[quantile_dim], [member_dim]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    return out.assign_attrs(
        long_name="Extreme Forecast Index",
        estimator="exact integral per quantile interval, F linear in p between levels",
        eps=eps,
    )


def _sot_core(clim: np.ndarray, ens: np.ndarray, percentile: int, eps: float) -> np.ndarray:
    clim = np.asarray(clim, np.float64)
    ens = np.asarray(ens, np.float64)
    tail = 99 if percentile > 50 else 1
    qc = clim[..., percentile]
    if eps > 0:
        ens = np.where(ens < eps, 0.0, ens)
        qc = np.where(qc < eps, 0.0, qc)
    with np.errstate(invalid="ignore"):
        qf = _nan_percentile(ens, percentile)  # linear between sorted members
    qt = clim[..., tail]
    with np.errstate(invalid="ignore", divide="ignore"):
        sot = np.where(np.abs(qt - qc) > max(eps, 0.0), (qf - qt) / (qt - qc), np.nan)
    return np.clip(sot, -SOT_BOUND, SOT_BOUND)


def sot(
    climate_quantiles: xr.DataArray,
    forecast: xr.DataArray,
    percentile: int = 90,
    quantile_dim: str = "quantile",
    member_dim: str = "member",
    eps: float = -1e-4,
) -> xr.DataArray:
    """Shift of Tails at `percentile` (2..98, not 50) against a 101-level M-climate."""
    if not isinstance(percentile, (int, np.integer)) or not 2 <= percentile <= 98 or percentile == 50:
        raise ValueError(f"percentile must be an integer in 2..98 other than 50, got {percentile!r}")
    if climate_quantiles.sizes[quantile_dim] != 101:
        raise ValueError(f"SOT needs the 101 climate percentiles 0..100, got {climate_quantiles.sizes[quantile_dim]}")
    out = xr.apply_ufunc(
        _sot_core,
        climate_quantiles,
        forecast,
        kwargs={"percentile": int(percentile), "eps": eps},
        input_core_dims=[[quantile_dim], [member_dim]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    return out.assign_attrs(long_name=f"Shift of Tails ({percentile})", bounds=[-SOT_BOUND, SOT_BOUND], eps=eps)
