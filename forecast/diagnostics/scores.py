"""Ensemble scores on labelled arrays (DESIGN §3.2).

Every function takes xarray DataArrays with named dims (numpy- or dask-backed) and returns a
DataArray. The member dim is reduced; `dims` (with optional `weights`, e.g. `area_weights`)
are averaged after the per-point score.

NaN policy: NaN members are dropped point by point (m is the count of valid members there);
where the observation is NaN, or too few members are valid (2 for the fair CRPS and the
spread), the score is NaN. Means over `dims` skip NaN points.

CRPS uses the sorted form S = Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − m − 1) x_(i): O(m log m) time
and O(m) memory per point, never the m × m pairwise matrix. Members are centred on their
median (read off the sorted members) and everything accumulates in float64, so 7,424 members
keep ~1e-15 relative accuracy instead of float32's ~1e-5.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr

from forecast.diagnostics._crps_kernel import crps_sums
from forecast.grid import cell_area_weights

ESTIMATORS = ("fair", "ensemble", "almost_fair")


def area_weights(lat: xr.DataArray | np.ndarray) -> xr.DataArray:
    """Cell-area weights per latitude row (sin of the cell edges, not raw cos(lat)), summing to 1."""
    values = np.asarray(lat, np.float64)
    w = cell_area_weights(values)
    return xr.DataArray(w / w.sum(), dims=("lat",), coords={"lat": values}, name="area_weight")


def _reduce(score: xr.DataArray, weights: xr.DataArray | None, dims: Sequence[str] | None) -> xr.DataArray:
    if not dims:
        return score
    if weights is None:
        return score.mean(dims, skipna=True)
    return score.weighted(weights.fillna(0)).mean(dims, skipna=True)


_ROWS_PER_TASK = 96  # points per sort task: the float64 copy of 96 x 7,424 members stays in cache


def _combine(skill, spread, m, estimator: str, alpha: float):
    with np.errstate(invalid="ignore", divide="ignore"):
        ecdf = skill - spread / (2.0 * m**2)
        fair = np.where(m >= 2, skill - spread / (2.0 * m * (m - 1.0)), np.nan)
    if estimator == "fair":
        return fair
    if estimator == "ensemble":
        return ecdf
    return alpha * fair + (1.0 - alpha) * ecdf


def _crps_complete(x: np.ndarray, y: np.ndarray, estimator: str, alpha: float) -> np.ndarray:
    """The fast path, no NaN member anywhere: x (points, m), y (points,). Rows are sorted in
    their own dtype (numpy's SIMD sort is ~3x faster on float32, the members' storage type;
    the order is the same), then centred and summed in float64, in row blocks on all cores."""
    points, m = x.shape
    out = np.empty(points, np.float64)
    weights = 2.0 * np.arange(1, m + 1, dtype=np.float64) - m - 1.0

    def block(lo: int) -> None:
        hi = min(lo + _ROWS_PER_TASK, points)
        xs = np.sort(x[lo:hi], axis=-1)
        centre = xs[:, (m - 1) // 2].astype(np.float64)
        xc = xs.astype(np.float64)
        xc -= centre[:, None]
        yc = y[lo:hi] - centre
        skill = np.abs(xc - yc[:, None]).sum(axis=-1) / m
        spread = 2.0 * (xc @ weights)
        out[lo:hi] = _combine(skill, spread, float(m), estimator, alpha)

    starts = range(0, points, _ROWS_PER_TASK)
    workers = min(len(starts), os.cpu_count() or 1)
    if workers > 1:  # numpy's sort, BLAS and ufuncs release the GIL
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(block, starts))
    else:
        for lo in starts:
            block(lo)
    return np.where(np.isnan(y), np.nan, out)


def _crps_sorted(x: np.ndarray, y: np.ndarray, estimator: str, alpha: float) -> np.ndarray:
    """x (..., m) members, y (...) observation -> CRPS (...), float64."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    y = np.broadcast_to(np.asarray(y, np.float64), x.shape[:-1])
    if x.shape[-1] >= 2 and x.ndim >= 1:
        rows = x.reshape(-1, x.shape[-1])  # a view when the leading dims merge (the usual case)
        sums = crps_sums(rows, y.reshape(-1))
        if sums is not None:
            skill, spread, has_nan = sums
            out = _combine(skill, spread, float(x.shape[-1]), estimator, alpha)
            if has_nan.any():  # the NaN policy on those rows only
                out[has_nan] = _crps_sorted_numpy(rows[has_nan], y.reshape(-1)[has_nan], estimator, alpha)
            return np.where(np.isnan(y.reshape(-1)), np.nan, out).reshape(x.shape[:-1])
    return _crps_sorted_numpy(x, y, estimator, alpha)


def _crps_sorted_numpy(x: np.ndarray, y: np.ndarray, estimator: str, alpha: float) -> np.ndarray:
    """The numpy path (no numba, or rows with NaN members)."""
    if x.shape[-1] and not np.isnan(x).any():
        flat = _crps_complete(x.reshape(-1, x.shape[-1]), y.reshape(-1), estimator, alpha)
        return flat.reshape(x.shape[:-1])
    xs = np.sort(np.asarray(x, np.float64), axis=-1)  # NaN sort last
    y = np.asarray(y, np.float64)
    valid = ~np.isnan(xs)
    m = valid.sum(axis=-1)
    mid = np.clip((m - 1) // 2, 0, xs.shape[-1] - 1)
    centre = np.take_along_axis(xs, mid[..., None], axis=-1)[..., 0]
    centre = np.where(m > 0, centre, 0.0)
    xc = np.where(valid, xs - centre[..., None], 0.0)
    yc = y - centre
    with np.errstate(invalid="ignore", divide="ignore"):
        skill = np.where(valid, np.abs(xc - yc[..., None]), 0.0).sum(axis=-1) / m
        i = np.arange(1, xs.shape[-1] + 1, dtype=np.float64)
        spread = 2.0 * ((2.0 * i - m[..., None] - 1.0) * xc).sum(axis=-1)  # S; invalid xc are 0
    out = _combine(skill, spread, m.astype(np.float64), estimator, alpha)
    return np.where(np.isnan(y) | (m == 0), np.nan, out)


def crps(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    member_dim: str = "member",
    estimator: str = "fair",
    alpha: float = 0.95,
    weights: xr.DataArray | None = None,
    dims: Sequence[str] | None = None,
) -> xr.DataArray:
    """Continuous ranked probability score of an ensemble.

    estimator: "fair" (mean|x_i − y| − S/(2m(m−1)), unbiased for the ensemble's distribution;
    needs m ≥ 2), "ensemble" (the empirical-CDF form, − S/(2m²)) or "almost_fair"
    (α·fair + (1−α)·ensemble, AIFS). Dask-backed input is scored chunk by chunk in parallel
    over the other dims; the member dim must be one chunk.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if member_dim not in forecast.dims:
        raise ValueError(f"forecast has no member dim {member_dim!r} (dims {forecast.dims})")
    if forecast.chunks is not None:
        forecast = forecast.chunk({member_dim: -1})
    score = xr.apply_ufunc(
        _crps_sorted,
        forecast,
        observation,
        kwargs={"estimator": estimator, "alpha": alpha},
        input_core_dims=[[member_dim], []],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    score.attrs = {"long_name": "CRPS", "crps_estimator": estimator, "units": forecast.attrs.get("units", "")}
    if estimator == "almost_fair":
        score.attrs["alpha"] = alpha
    return _reduce(score, weights, dims).assign_attrs(score.attrs)


def ensemble_mean_rmse(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    member_dim: str = "member",
    weights: xr.DataArray | None = None,
    dims: Sequence[str] | None = None,
) -> xr.DataArray:
    """sqrt of the (weighted) mean over `dims` of (ensemble mean − observation)²; the mean in
    float64 (float32 sums of thousands of members lose ~1e-4 relative, more than the error at
    short leads)."""
    forecast = forecast.astype(np.float64)
    err2 = (forecast.mean(member_dim, skipna=True) - observation) ** 2
    out = np.sqrt(_reduce(err2, weights, dims))
    return out.assign_attrs(long_name="ensemble-mean RMSE", estimator="sqrt of the weighted mean square error")


def spread_skill_ratio(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    member_dim: str = "member",
    weights: xr.DataArray | None = None,
    dims: Sequence[str] | None = None,
) -> xr.DataArray:
    """sqrt((m+1)/m) · sqrt(⟨s²⟩) / sqrt(⟨(x̄ − y)²⟩), s² with ddof = 1, the means over `dims`
    taken before the square roots; 1 for a calibrated ensemble."""
    forecast = forecast.astype(np.float64)
    m = forecast.count(member_dim)
    # the spread where the skill is measured: no variance where the observation is missing
    variance = forecast.var(member_dim, ddof=1, skipna=True).where(observation.notnull())
    err2 = (forecast.mean(member_dim, skipna=True) - observation) ** 2
    mf = _reduce(m.astype(np.float64), weights, dims)
    ratio = np.sqrt((mf + 1) / mf) * np.sqrt(_reduce(variance, weights, dims)) / np.sqrt(_reduce(err2, weights, dims))
    return ratio.assign_attrs(
        long_name="spread-skill ratio",
        estimator="sqrt((m+1)/m) sqrt(mean variance ddof=1) / sqrt(mean squared error of the ensemble mean)",
    )


def _below_and_ties(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (..., m), y (...) -> members below the observation (int64) and tied with it
    (float64, NaN where the observation or a member is NaN). Compared in the members' own
    dtype against the float64 observation: no float64 copy of the members."""
    y = np.asarray(y, np.float64)[..., None]
    ok = ~(np.isnan(y[..., 0]) | np.isnan(x).any(axis=-1))
    below = (x < y).sum(axis=-1)
    ties = np.where(ok, (x == y).sum(axis=-1), np.nan)
    return below, ties


def _rank_counts(below: np.ndarray, ties: np.ndarray, m: int) -> np.ndarray:
    """(..., m + 1) per point: 1/(ties + 1) on each rank below .. below + ties."""
    r = np.arange(m + 1)
    inside = (r >= below[..., None]) & (r <= (below + np.nan_to_num(ties))[..., None])
    with np.errstate(invalid="ignore"):
        return np.where(inside & ~np.isnan(ties)[..., None], 1.0 / (ties[..., None] + 1.0), 0.0)


def _rank_sums(below: np.ndarray, ties: np.ndarray, m: int, n_dims: int) -> np.ndarray:
    """The per-point counts summed over the last `n_dims` axes without the per-point
    (points, m + 1) array: points without ties add 1 at their rank (an integer bincount,
    exact); points with ties (rare for continuous fields, many for dry precipitation) add
    their shares 65,536 points at a time."""
    lead = below.shape[: below.ndim - n_dims]
    rows = int(np.prod(lead, dtype=np.int64))
    b = below.reshape(rows, -1)
    t = ties.reshape(rows, -1)
    row = np.arange(rows)[:, None]
    plain = t == 0  # False where NaN
    hist = np.bincount((row * (m + 1) + b)[plain], minlength=rows * (m + 1)).astype(np.float64)
    hist = hist.reshape(rows, m + 1)
    tied_row, tied_point = np.nonzero(t > 0)
    step = 1 << 16
    for lo in range(0, len(tied_row), step):
        r, p = tied_row[lo : lo + step], tied_point[lo : lo + step]
        np.add.at(hist, r, _rank_counts(b[r, p], t[r, p], m))
    return hist.reshape(*lead, m + 1)


def rank_histogram(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    member_dim: str = "member",
    dims: Sequence[str] | None = None,
) -> xr.DataArray:
    """Counts of the observation's rank among m members: m + 1 bins (dim `rank`, 0..m). Ties
    are split evenly: an observation equal to k members adds 1/(k+1) to each of the k + 1
    ranks it could take. Points with NaN observation or members are skipped (m must be the
    same at every point scored). Memory: two numbers per point, not m + 1 (numpy input
    reduced over `dims`; integer counts are exact, split ties agree with the per-point sum to
    rounding)."""
    m = forecast.sizes[member_dim]
    below, ties = xr.apply_ufunc(
        _below_and_ties,
        forecast,
        observation,
        input_core_dims=[[member_dim], []],
        output_core_dims=[[], []],
        dask="parallelized",
        output_dtypes=[np.int64, np.float64],
    )
    if dims and below.chunks is None:
        hist = xr.apply_ufunc(
            _rank_sums,
            below,
            ties,
            kwargs={"m": m, "n_dims": len(dims)},
            input_core_dims=[list(dims), list(dims)],
            output_core_dims=[["rank"]],
        )
    else:
        per_point = xr.apply_ufunc(
            _rank_counts,
            below,
            ties,
            kwargs={"m": m},
            output_core_dims=[["rank"]],
            dask="parallelized",
            output_dtypes=[np.float64],
            dask_gufunc_kwargs={"output_sizes": {"rank": m + 1}},
        )
        hist = per_point.sum(list(dims)) if dims else per_point
    return hist.assign_coords(rank=np.arange(m + 1)).assign_attrs(
        long_name="rank histogram", ties="split evenly over the tied ranks", bins=m + 1
    )


RANK_BINS = 100  # the stored rank histogram's bins of the normalised rank (1 % each)
RANK_COORD_ATTRS = {"long_name": "normalised rank of the verification (bin centre)", "bins": RANK_BINS}


def rank_bin_shares(m: int, bins: int = RANK_BINS) -> np.ndarray:
    """(m + 1, bins): the share of rank k (the interval [k, k+1)/(m+1) of the normalised rank)
    that falls in bin j ([j, j+1)/bins). Each row sums to 1, each column to (m+1)/bins."""
    a = np.arange(m + 2) / (m + 1)
    b = np.arange(bins + 1) / bins
    overlap = np.minimum(a[1:, None], b[None, 1:]) - np.maximum(a[:-1, None], b[None, :-1])
    return np.clip(overlap, 0.0, None) * (m + 1)


def normalised_rank_histogram(hist: xr.DataArray, bins: int = RANK_BINS) -> xr.DataArray:
    """The rank histogram of m members (dim `rank`, m + 1 counts) on `bins` equal bins of the
    normalised rank u in [0, 1]: rank k stands for u in [k, k+1)/(m+1), and its count is shared
    among the bins it overlaps in proportion to the overlap (the non-randomised PIT histogram of
    Czado, Gneiting & Held 2009, Biometrics 65). The total is kept, a flat histogram stays
    exactly flat (each bin then holds total/bins), and the size no longer depends on m: the
    scores stores of 50 and of 7,424 members have the same layout and pool along init_time. The
    exact counts stay recoverable where m + 1 <= bins/2 (every rank then covers a whole bin of
    its own); the outlier fraction is kept exactly beside it (`outlier_fraction`, from the m + 1
    counts). Dim `rank`, coordinate the bins' centres."""
    m = hist.sizes["rank"] - 1
    shares = xr.DataArray(rank_bin_shares(m, bins), dims=("rank", "rank_bin"))
    out = xr.dot(hist.drop_vars("rank", errors="ignore"), shares, dim="rank").rename(rank_bin="rank")
    return out.assign_coords(rank=(np.arange(bins) + 0.5) / bins).assign_attrs(
        long_name="rank histogram on the normalised rank (non-randomised PIT)",
        ties="split evenly over the tied ranks",
        members=m,
        bins=bins,
    )


def outlier_fraction(hist: xr.DataArray) -> xr.Dataset:
    """The fraction of observations outside the ensemble (first + last rank bins), beside the
    calibrated expectation 2/(m+1)."""
    total = hist.sum("rank")
    m = hist.sizes["rank"] - 1
    frac = (hist.isel(rank=0) + hist.isel(rank=-1)) / total
    return xr.Dataset(
        {
            "outlier_fraction": frac.assign_attrs(long_name="observations outside the ensemble range"),
            "outlier_expected": xr.full_like(frac, 2.0 / (m + 1)).assign_attrs(
                long_name="calibrated expectation 2/(m+1)"
            ),
        }
    )


def _event_name(threshold: float | xr.DataArray, comparison: str) -> str:
    return f"value {comparison} {threshold}" if np.ndim(threshold) == 0 else f"value {comparison} a threshold field"


def _exceeds(x: xr.DataArray, threshold: float | xr.DataArray, comparison: str) -> xr.DataArray:
    if comparison not in (">", ">="):
        raise ValueError(f"comparison must be '>' or '>=', got {comparison!r}")
    hit = x > threshold if comparison == ">" else x >= threshold
    if isinstance(threshold, xr.DataArray):  # no threshold at a point (no M-climate there): no event either way
        hit = hit.where(threshold.notnull())
    return hit.where(x.notnull())


def brier_score(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    threshold: float | xr.DataArray,
    member_dim: str = "member",
    comparison: str = ">",
    fair: bool = True,
    weights: xr.DataArray | None = None,
    dims: Sequence[str] | None = None,
) -> xr.DataArray:
    """Brier score of the event `value {comparison} threshold`, p = fraction of members. The
    fair form subtracts p(1 − p)/(m − 1), the expected excess of a finite ensemble (Ferro 2014)."""
    p_hit = _exceeds(forecast, threshold, comparison)
    m = p_hit.count(member_dim)
    p = p_hit.mean(member_dim, skipna=True)
    o = _exceeds(observation, threshold, comparison)
    score = (p - o) ** 2
    if fair:
        score = score - p * (1 - p) / (m - 1).where(m > 1)
    out = _reduce(score, weights, dims)
    return out.assign_attrs(
        long_name="Brier score", event=_event_name(threshold, comparison), estimator="fair" if fair else "ensemble"
    )


def reliability(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    threshold: float | xr.DataArray,
    member_dim: str = "member",
    comparison: str = ">",
    bins: int = 10,
    weights: xr.DataArray | None = None,
) -> xr.Dataset:
    """Reliability diagram data: per forecast-probability bin, the (weighted) observed
    frequency, the mean forecast probability and the weight of cases in the bin."""
    p = _exceeds(forecast, threshold, comparison).mean(member_dim, skipna=True)
    o = _exceeds(observation, threshold, comparison)
    w = xr.ones_like(p) if weights is None else weights.broadcast_like(p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    pv, ov, wv = (np.asarray(a.values, np.float64).ravel() for a in xr.broadcast(p, o, w))
    ok = ~(np.isnan(pv) | np.isnan(ov))
    which = np.clip(np.digitize(pv[ok], edges[1:-1]), 0, bins - 1)
    weight = np.bincount(which, wv[ok], minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.bincount(which, wv[ok] * ov[ok], minlength=bins) / weight
        forecast_p = np.bincount(which, wv[ok] * pv[ok], minlength=bins) / weight
    centre = 0.5 * (edges[1:] + edges[:-1])
    coords = {"probability_bin": centre}
    return xr.Dataset(
        {
            "observed_frequency": ("probability_bin", observed),
            "forecast_probability": ("probability_bin", forecast_p),
            "weight": ("probability_bin", weight),
        },
        coords=coords,
        attrs={"event": _event_name(threshold, comparison), "bins": bins},
    )
