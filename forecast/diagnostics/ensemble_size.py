"""What more members buy (issue #14, "Huge Ensembles" Part II): ensemble-size curves.

For ensemble sizes m' = 2, 4, 8, … up to the member count, scores of member subsets:

- subsets keep whole ± pairs (a pair is one perturbation of one checkpoint, both signs) and
  sample the checkpoints evenly: the pairs are ordered round-robin over the checkpoints (the
  checkpoints' order and each checkpoint's pair order drawn from a seeded generator), and the
  subset of size m' is the first m'/2 pairs. The subsets are therefore *nested*: a member's
  place in the order (`subset_ranks`) says which subsets hold it, which is what lets a
  statistics-only run keep the curves online (`forecast.diagnostics.online.SubsetExtremes`).
  Several draws (seeds) average out which members happen to come first.
- `outlier_fraction`: the area-weighted fraction of points where the verification y lies
  strictly outside the subset's range (y < min or y > max; a member equal to y counts as
  covering it), beside 2/(m'+1), its value for a calibrated ensemble of exchangeable members.
- `best_member_error`: the area mean of min_i |x_i − y|, the error of the best member at each
  point. It can only fall as the subsets grow (they are nested).
- `crps_fair` and `crps_ensemble`: the fair CRPS, whose expectation does not depend on m' for
  exchangeable members, and the empirical-CDF CRPS, which falls as (1 + 1/m') × the fair
  spread term: the gap is what a finite ensemble costs in the ecdf score.
- with a threshold field (e.g. the M-climate's 99th percentile): `missed_extreme_fraction`,
  the area-weighted fraction of points where y exceeds the threshold while no member of the
  subset does, and the counts of such points (`missed_extreme_count`) and of points where y
  exceeds it at all (`observed_extreme_count`).

Errors are computed in the members' own dtype (as the online accumulator does), so the
offline and online curves agree to rounding of the area means alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from forecast.diagnostics.scores import _reduce, crps


def ensemble_sizes(members: int, smallest: int = 2) -> tuple[int, ...]:
    """2, 4, 8, … below `members`, then `members` itself (an even count: whole pairs)."""
    if members < smallest:
        raise ValueError(f"an ensemble-size curve needs at least {smallest} members, got {members}")
    sizes, m = [], smallest
    while m < members:
        sizes.append(m)
        m *= 2
    return (*sizes, members)


def _pairs(checkpoint: np.ndarray, pair: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The members of each (checkpoint, pair) in order of first appearance, and each pair's checkpoint."""
    keys = list(zip(checkpoint.tolist(), pair.tolist(), strict=True))
    index: dict = {}
    for i, k in enumerate(keys):
        index.setdefault(k, []).append(i)
    groups = [np.asarray(v) for v in index.values()]
    return groups, np.asarray([k[0] for k in index])


def subset_ranks(checkpoint: Sequence, pair: Sequence, seed: int = 0) -> np.ndarray:
    """Each member's place in the nested order of one draw: the subset of size m' is the
    members of rank < m'. `checkpoint` and `pair` label each member (a ± pair shares both);
    pairs are dealt round-robin over the checkpoints, in an order drawn from `seed`."""
    checkpoint, pair = np.asarray(checkpoint), np.asarray(pair)
    if checkpoint.shape != pair.shape or checkpoint.ndim != 1:
        raise ValueError("checkpoint and pair label each member: two 1-d arrays of the same length")
    groups, owner = _pairs(checkpoint, pair)
    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys(owner.tolist()))
    queues = [list(rng.permutation(np.flatnonzero(owner == c))) for c in names]
    queues = [queues[i] for i in rng.permutation(len(names))]
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    ranks = np.empty(len(checkpoint), np.int64)
    position = 0
    for g in order:
        members = groups[g]
        ranks[members] = position + np.arange(len(members))
        position += len(members)
    return ranks


def member_labels(forecast: xr.DataArray, member_dim: str = "member") -> tuple[np.ndarray, np.ndarray]:
    """(checkpoint, pair) of each member: from the forecast store's member coordinates
    (`checkpoint`, `perturbation`), else consecutive members (0, 1), (2, 3), … as pairs of
    one checkpoint."""
    m = forecast.sizes[member_dim]
    coords = forecast.coords
    if "checkpoint" in coords and "perturbation" in coords and coords["checkpoint"].dims == (member_dim,):
        return np.asarray(coords["checkpoint"].values), np.asarray(coords["perturbation"].values)
    return np.zeros(m, np.int64), np.arange(m) // 2


def nested_subsets(ranks: np.ndarray, sizes: Sequence[int]) -> dict[int, np.ndarray]:
    """{m': the member indices of rank < m'} (sorted)."""
    return {int(s): np.flatnonzero(np.asarray(ranks) < s) for s in sizes}


def ensemble_size_curves(
    forecast: xr.DataArray,
    observation: xr.DataArray,
    sizes: Sequence[int] | None = None,
    draws: int = 4,
    seed: int = 0,
    weights: xr.DataArray | None = None,
    dims: Sequence[str] = ("lat", "lon"),
    extreme_threshold: xr.DataArray | None = None,
    member_dim: str = "member",
    estimators: Sequence[str] = ("fair", "ensemble"),
) -> xr.Dataset:
    """The curves of the module's docstring, with dims (draw, ensemble_size, *the forecast's
    other dims but `dims`); average over `draw` for the curve, its spread over draws is the
    sampling noise of which members came first. Draw d uses `subset_ranks(..., seed + d)`.
    `estimators`: the CRPS forms to compute per subset (each sorts every subset's members)."""
    m = forecast.sizes[member_dim]
    sizes = tuple(int(s) for s in (sizes or ensemble_sizes(m)))
    if any(s < 2 or s > m or s % 2 for s in sizes):
        raise ValueError(f"ensemble sizes must be even (whole pairs) and 2..{m}, got {list(sizes)}")
    checkpoint, pair = member_labels(forecast, member_dim)
    dims = list(dims)
    valid = observation.notnull()
    if extreme_threshold is not None:
        observed = (observation > extreme_threshold) & valid & extreme_threshold.notnull()
    per_draw = []
    for d in range(draws):
        ranks = subset_ranks(checkpoint, pair, seed + d)
        per_size = []
        for idx in nested_subsets(ranks, sizes).values():
            x = forecast.isel({member_dim: idx})
            lo, hi = x.min(member_dim), x.max(member_dim)
            outside = ((observation < lo) | (observation > hi)).where(valid)
            best = abs(x - observation).min(member_dim)
            out = {
                "outlier_fraction": _reduce(outside.astype(np.float64).where(valid), weights, dims),
                "best_member_error": _reduce(best.astype(np.float64), weights, dims),
                **{f"crps_{e}": crps(x, observation, member_dim, e, weights=weights, dims=dims) for e in estimators},
            }
            if extreme_threshold is not None:
                missed = observed & ~(hi > extreme_threshold)
                out["missed_extreme_fraction"] = _reduce(missed.astype(np.float64).where(valid), weights, dims)
                out["missed_extreme_count"] = missed.sum(dims)
            per_size.append(xr.Dataset({k: v.drop_attrs() for k, v in out.items()}))
        per_draw.append(xr.concat(per_size, dim="ensemble_size"))
    ds = xr.concat(per_draw, dim="draw").assign_coords(ensemble_size=list(sizes), draw=np.arange(draws))
    ds["outlier_expected"] = (("ensemble_size",), 2.0 / (np.asarray(sizes) + 1.0))
    if extreme_threshold is not None:
        ds["observed_extreme_count"] = observed.sum(dims)
    attrs = {
        "outlier_fraction": "area-weighted fraction of points with y < min or y > max over the subset",
        "outlier_expected": "2/(m'+1): a calibrated ensemble of exchangeable members",
        "best_member_error": "area mean of min over the subset of |x_i - y|",
        "crps_fair": "fair CRPS of the subset (expectation independent of m' for exchangeable members)",
        "crps_ensemble": "empirical-CDF CRPS of the subset",
        "missed_extreme_fraction": "area-weighted fraction of points with y > threshold and no member > threshold",
        "missed_extreme_count": "points with y > threshold and no member of the subset > threshold",
        "observed_extreme_count": "points with y > threshold",
    }
    for k in ds.data_vars:
        ds[k].attrs["long_name"] = attrs[k]
    ds.attrs.update(
        subsets="nested; whole +/- pairs; checkpoints dealt round-robin in a seeded order", seed=seed, draws=draws
    )
    return ds
