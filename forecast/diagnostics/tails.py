"""How far into the tails an ensemble samples (issue #14, "Huge Ensembles" Part II).

- `standardised_anomalies`: per point, the verification's anomaly from the ensemble mean in
  ensemble standard deviations, z_y = (y − x̄)/s, and the largest one any member has,
  z_max = max_i |x_i − x̄|/s = max(x_max − x̄, x̄ − x_min)/s ("the ensemble samples events
  z_max σ from its mean"); s with ddof = 1. For a calibrated ensemble z_y is distributed like
  a member's, and |z_y| > z_max exactly where y is an outlier.
- `anomaly_distribution`: the area-weighted distribution of such a field over the globe
  (a histogram whose weights sum to 1 per remaining coordinate).
- `exceedance_probability`: the fraction of members above a threshold (e.g. an M-climate
  percentile), the probability the Brier score, the reliability diagram and the ROC score.
- `roc_area`: the area under the ROC curve of a probability forecast of a binary event,
  weighted (cell areas): the probability that a random event point got a higher forecast
  probability than a random non-event point, ties counting one half (Mann–Whitney). 1 for a
  perfect forecast, 0.5 for one unrelated to the events. `roc_curve` gives the curve itself
  (hit rate against false-alarm rate at every probability threshold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

# Bins centred on round values, so that no edge sits at a value fields take exactly (an
# anomaly or an EFI of 0: a verification equal to the ensemble mean, a degenerate climate),
# where rounding alone would move points between bins.
ANOMALY_EDGES = np.linspace(-8.125, 8.125, 66)  # standardised anomalies: centres -8, -7.75, ..., 8
EFI_EDGES = np.linspace(-1.05, 1.05, 22)  # centres -1, -0.9, ..., 1


def bin_centres(edges: np.ndarray) -> np.ndarray:
    """The centre of each bin between consecutive `edges`."""
    return 0.5 * (edges[1:] + edges[:-1])


def probability_edges(members: int) -> np.ndarray:
    """Bins of the exceedance probability k/m of m members, one per k = 0..m."""
    return (np.arange(members + 2) - 0.5) / members


PROBABILITY_BINS = 100
# What the scores stores keep: bins centred on 0, 1, ..., 100 %, so a store's layout does not
# depend on its member count. For m <= 100 members each k/m has a bin of its own (the ROC area
# from the bins is the exact one); above, the ROC is the one at 1 % thresholds.
PROBABILITY_EDGES = probability_edges(PROBABILITY_BINS)


def standardised_anomalies(forecast: xr.DataArray, observation: xr.DataArray, member_dim: str = "member") -> xr.Dataset:
    """z_y = (y − x̄)/s and z_max = max_i |x_i − x̄|/s per point (NaN where s = 0 or y is NaN),
    in float64 whatever the members' dtype."""
    forecast = forecast.astype(np.float64)
    mean = forecast.mean(member_dim)
    s = forecast.std(member_dim, ddof=1)
    s = s.where(s > 0)
    largest = np.maximum(forecast.max(member_dim) - mean, mean - forecast.min(member_dim))
    return xr.Dataset(
        {
            "verification_anomaly": ((observation - mean) / s).assign_attrs(
                long_name="(y - ensemble mean) / ensemble std (ddof 1)"
            ),
            "largest_member_anomaly": (largest / s).assign_attrs(
                long_name="max over members of |x_i - ensemble mean| / ensemble std (ddof 1)"
            ),
        }
    )


def anomaly_distribution(
    values: xr.DataArray,
    edges: Sequence[float] | np.ndarray,
    weights: xr.DataArray | None = None,
    dims: Sequence[str] = ("lat", "lon"),
) -> xr.DataArray:
    """The (area-)weighted histogram of `values` over `dims` on bins `edges` (values outside
    them go to the end bins), normalised to sum to 1; dims (*others, bin) with the bin centres."""
    edges = np.asarray(edges, np.float64)
    dims = list(dims)
    w = xr.ones_like(values, dtype=np.float64) if weights is None else weights.broadcast_like(values).astype(np.float64)

    def hist(v: np.ndarray, wv: np.ndarray) -> np.ndarray:
        v, wv = v.reshape(*v.shape[: -len(dims)], -1), wv.reshape(*wv.shape[: -len(dims)], -1)
        out = np.zeros((*v.shape[:-1], len(edges) - 1))
        for idx in np.ndindex(v.shape[:-1]):
            ok = ~np.isnan(v[idx])
            counts = np.bincount(_bin_index(v[idx][ok], edges), wv[idx][ok], minlength=len(edges) - 1)
            total = counts.sum()
            out[idx] = counts / total if total > 0 else np.nan
        return out

    out = xr.apply_ufunc(
        hist, values, w, input_core_dims=[dims, dims], output_core_dims=[["bin"]],
        dask="parallelized", output_dtypes=[np.float64], dask_gufunc_kwargs={"output_sizes": {"bin": len(edges) - 1}},
    )  # fmt: skip
    return out.assign_coords(bin=bin_centres(edges)).assign_attrs(
        long_name="area-weighted distribution", edges=edges.tolist()
    )


def exceedance_probability(
    forecast: xr.DataArray, threshold: xr.DataArray | float, member_dim: str = "member"
) -> xr.DataArray:
    """The fraction of (valid) members above `threshold` (a number or a field, e.g. an M-climate percentile)."""
    hit = (forecast > threshold).where(forecast.notnull())
    return hit.mean(member_dim, skipna=True).assign_attrs(long_name="fraction of members above the threshold")


def _roc_area_1d(p: np.ndarray, o: np.ndarray, w: np.ndarray) -> float:
    ok = ~(np.isnan(p) | np.isnan(o))
    p, o, w = p[ok], o[ok] > 0.5, w[ok]
    events, others = w[o].sum(), w[~o].sum()
    if events <= 0 or others <= 0:
        return np.nan
    values, inverse = np.unique(p, return_inverse=True)
    hit = np.bincount(inverse, w * o, minlength=len(values))
    miss = np.bincount(inverse, w * ~o, minlength=len(values))
    others_below = np.concatenate([[0.0], np.cumsum(miss)[:-1]])
    return float((hit * (others_below + 0.5 * miss)).sum() / (events * others))


def roc_area(
    probability: xr.DataArray,
    event: xr.DataArray,
    weights: xr.DataArray | None = None,
    dims: Sequence[str] = ("lat", "lon"),
) -> xr.DataArray:
    """Weighted area under the ROC curve over `dims` (see the module's docstring): event is
    1/0 (NaN skipped); NaN where `dims` hold no event or no non-event."""
    dims = list(dims)
    w = xr.ones_like(probability, dtype=np.float64) if weights is None else weights.broadcast_like(probability)

    def area(p: np.ndarray, o: np.ndarray, wv: np.ndarray) -> np.ndarray:
        shape = p.shape[: -len(dims)]
        p, o, wv = (a.reshape(*shape, -1).astype(np.float64) for a in (p, o, wv))
        out = np.empty(shape)
        for idx in np.ndindex(shape):
            out[idx] = _roc_area_1d(p[idx], o[idx], wv[idx])
        return out

    event = event.astype(np.float64).where(event.notnull())
    out = xr.apply_ufunc(
        area, probability, event, w.astype(np.float64), input_core_dims=[dims, dims, dims],
        dask="parallelized", output_dtypes=[np.float64],
    )  # fmt: skip
    return out.assign_attrs(long_name="area under the ROC curve", estimator="weighted Mann-Whitney, ties 1/2")


def roc_curve(
    probability: np.ndarray, event: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate, hit rate) at every probability threshold, from (0, 0) up to (1, 1):
    the points the trapezoid `roc_area` integrates."""
    p, o = np.asarray(probability, np.float64).ravel(), np.asarray(event, np.float64).ravel()
    w = (
        np.ones_like(p)
        if weights is None
        else np.broadcast_to(np.asarray(weights, np.float64), np.shape(probability)).ravel()
    )
    ok = ~(np.isnan(p) | np.isnan(o))
    p, o, w = p[ok], o[ok] > 0.5, w[ok]
    values, inverse = np.unique(p, return_inverse=True)
    n = len(values)
    return roc_points(np.bincount(inverse, w * o, minlength=n), np.bincount(inverse, w * ~o, minlength=n))


def roc_points(event_weight: np.ndarray, other_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate, hit rate) of binned event and non-event weights (bins in increasing
    order of the score), from (0, 0) at the highest threshold to (1, 1): one point per bin."""
    hit = np.concatenate([[0.0], np.cumsum(np.asarray(event_weight, np.float64)[::-1])])
    far = np.concatenate([[0.0], np.cumsum(np.asarray(other_weight, np.float64)[::-1])])
    return far / max(far[-1], 1e-300), hit / max(hit[-1], 1e-300)


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each value on `edges`, values beyond them in the end bins."""
    return np.clip(np.digitize(values, edges[1:-1]), 0, len(edges) - 2)


def binned_event_weights(
    score: xr.DataArray,
    event: xr.DataArray,
    edges: Sequence[float] | np.ndarray,
    weights: xr.DataArray | None = None,
    dims: Sequence[str] = ("lat", "lon"),
) -> xr.Dataset:
    """Per bin of `score` (a probability, the EFI, …; values beyond `edges` go to the end
    bins) the (area-)weighted fractions of the valid points that are events and non-events
    (together 1), dims (*others, bin): sums over init times pool exactly (each init time
    weighing the same), and the ROC area (`roc_area_from_bins`), the ROC curve, the
    reliability diagram and the Brier score of a probability follow from them."""
    edges = np.asarray(edges, np.float64)
    nbins, dims = len(edges) - 1, list(dims)
    w = xr.ones_like(score, dtype=np.float64) if weights is None else weights.broadcast_like(score).astype(np.float64)
    o = event.astype(np.float64).where(event.notnull())

    def sums(v: np.ndarray, ov: np.ndarray, wv: np.ndarray) -> np.ndarray:
        shape = v.shape[: -len(dims)]
        v, ov, wv = (a.reshape(*shape, -1).astype(np.float64) for a in (v, ov, wv))
        out = np.zeros((*shape, 2, nbins))
        for idx in np.ndindex(shape):
            ok = ~(np.isnan(v[idx]) | np.isnan(ov[idx]))
            which = _bin_index(v[idx][ok], edges)
            hit = ov[idx][ok] > 0.5
            total = wv[idx][ok].sum()
            if total <= 0:  # nothing to verify (no threshold, no analysis yet): NaN, not 0
                out[idx] = np.nan
                continue
            out[idx][0] = np.bincount(which, wv[idx][ok] * hit, minlength=nbins) / total
            out[idx][1] = np.bincount(which, wv[idx][ok] * ~hit, minlength=nbins) / total
        return out

    both = xr.apply_ufunc(
        sums, score, o, w, input_core_dims=[dims, dims, dims], output_core_dims=[["kind", "bin"]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"kind": 2, "bin": nbins}},
    )  # fmt: skip
    centres = bin_centres(edges)
    return xr.Dataset(
        {
            "event_weight": both.isel(kind=0).assign_attrs(long_name="weight of event points per bin"),
            "other_weight": both.isel(kind=1).assign_attrs(long_name="weight of non-event points per bin"),
        },
        coords={"bin": centres},
        attrs={"edges": edges.tolist()},
    )


def roc_area_from_bins(event_weight: xr.DataArray, other_weight: xr.DataArray, dim: str = "bin") -> xr.DataArray:
    """The ROC area of binned weights (bins in increasing order of the score; points in one bin
    tie, counting one half): equal to `roc_area` when every bin holds one score value (a
    probability k/m of m members), NaN without events or non-events."""
    e, n = event_weight.fillna(0), other_weight.fillna(0)
    below = n.cumsum(dim) - n
    with np.errstate(invalid="ignore", divide="ignore"):
        area = (e * (below + 0.5 * n)).sum(dim) / (e.sum(dim) * n.sum(dim))
    return area.where((e.sum(dim) > 0) & (n.sum(dim) > 0)).assign_attrs(long_name="area under the ROC curve")
