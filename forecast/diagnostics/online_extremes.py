"""Online extremes scores (issue #14): the ensemble-size curves and the tails of a hindcast,
kept through the engine's accumulator protocol (`forecast.ensemble.online`) so a
statistics-only run of thousands of members yields them without its members.

- `SubsetExtremes`: outliers, best-member error and missed extremes of nested member subsets
  (`forecast.diagnostics.ensemble_size`), exact in a state of a few fields per ensemble size.
- `TailScores`: the standardised-anomaly distributions (`forecast.diagnostics.tails`), exact
  from the run's moments (mean, M2, min, max); the exceedance probability of the M-climate's
  99th percentile from one count per point, and so its binned event weights and fair Brier
  score; the EFI's binned event weights from the run's online EFI.

Each `result` wraps the state in labelled arrays and calls the same functions `diagnose`
uses on the members, so online and offline agree to rounding (tests/test_ensemble_size.py,
tests/test_diagnostics_verify.py).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from forecast.diagnostics.online import EFIWeights, LeadVerification, _area_mean
from forecast.diagnostics.tails import (
    ANOMALY_EDGES,
    EFI_EDGES,
    PROBABILITY_EDGES,
    anomaly_distribution,
    bin_centres,
    binned_event_weights,
)
from forecast.ensemble.online import EnsembleMoments, Result


class SubsetExtremes:
    """The ensemble-size curves that need less than the members (`forecast.diagnostics.
    ensemble_size`), exact online for one draw of nested subsets: `ranks` gives each member's
    place in the nested order (`subset_ranks`), the subset of size m' is the members of rank
    < m'. Per point the state holds the smallest rank of a member at or below the verification
    and of one at or above it (y is outside subset m' exactly when one of them is ≥ m'), the
    smallest rank of a member above the extreme threshold, and per group of ranks
    [m'_{k−1}, m'_k) the best member's error min |x_i − y| (in the members' dtype): the state
    grows with the number of sizes (log₂ of the members), never with the members."""

    name = "subset_extremes"

    def __init__(
        self,
        truth: LeadVerification,
        area_weights: np.ndarray,
        ranks: np.ndarray,
        sizes: tuple[int, ...],
        threshold=None,
    ):
        """`threshold`: None, or lead index -> (channel, lat, lon) array (NaN: none there) or
        None (no threshold at that lead: its missed-extreme arrays are NaN)."""
        self.truth, self.weights = truth, np.asarray(area_weights, np.float64)
        self.ranks, self.sizes = torch.as_tensor(np.asarray(ranks), dtype=torch.int32), tuple(int(s) for s in sizes)
        if list(self.sizes) != sorted(set(self.sizes)) or self.sizes[-1] > len(ranks):
            raise ValueError(f"sizes must increase and stay within the {len(ranks)} members, got {self.sizes}")
        self.group = torch.as_tensor(np.searchsorted(self.sizes, np.asarray(ranks), side="right"), dtype=torch.long)
        self.threshold = threshold
        self.none = torch.iinfo(torch.int32).max

    def empty(self) -> dict[str, torch.Tensor]:
        shape = self.truth.shape
        state = {
            "first_at_or_below": torch.full(shape, self.none, dtype=torch.int32),
            "first_at_or_above": torch.full(shape, self.none, dtype=torch.int32),
            "best_error": torch.full((len(self.sizes), *shape), torch.inf, dtype=torch.float32),
        }
        if self.threshold is not None:
            state["first_above_threshold"] = torch.full(shape, self.none, dtype=torch.int32)
        return state

    def _first(self, state: torch.Tensor, hit: torch.Tensor, ranks: torch.Tensor) -> None:
        """state (lat, lon) <- min(state, the smallest rank of a member where `hit` (m, lat, lon))."""
        r = torch.where(hit, ranks.view(-1, 1, 1), self.none).amin(dim=0)
        torch.minimum(state, r.to(torch.int32), out=state)

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        x_all = members.detach().cpu()
        stop = first + x_all.shape[0]
        ranks, groups = self.ranks[first:stop], self.group[first:stop]
        in_group = [(g, groups == g) for g in torch.unique(groups).tolist() if g < len(self.sizes)]
        truth = torch.from_numpy(self.truth(lead_index).astype(np.float32))
        q = self.threshold(lead_index) if self.threshold is not None else None
        q = None if q is None else torch.from_numpy(np.asarray(q, np.float32))
        for c in range(x_all.shape[1]):  # a channel at a time: temporaries of one field per member
            x, y = x_all[:, c].float(), truth[c][None]
            self._first(state["first_at_or_below"][c], x <= y, ranks)
            self._first(state["first_at_or_above"][c], x >= y, ranks)
            error = (x - y).abs().nan_to_num(nan=torch.inf)  # a NaN member covers nothing, as skipna offline
            for g, mine in in_group:  # members beyond the largest size are in no subset
                best = state["best_error"][g, c]
                torch.fmin(best, error[mine].amin(dim=0), out=best)
            if q is not None:
                self._first(state["first_above_threshold"][c], x > q[c][None], ranks)

    def result(self, state, lead_index: int) -> Result:
        y = self.truth(lead_index)
        valid = ~np.isnan(y)
        below, above = state["first_at_or_below"].numpy(), state["first_at_or_above"].numpy()
        best = np.minimum.accumulate(state["best_error"].numpy(), axis=0)  # nested: the best so far
        sizes = np.asarray(self.sizes)
        outliers, best_error = np.empty((len(sizes), len(y))), np.empty((len(sizes), len(y)))
        for k, s in enumerate(sizes):
            outside = np.where(valid, ((below >= s) | (above >= s)).astype(np.float64), np.nan)
            outliers[k] = _area_mean(outside, self.weights)
            best_error[k] = _area_mean(np.where(valid, best[k].astype(np.float64), np.nan), self.weights)
        dims = ("ensemble_size", "channel")
        out = {
            "subset_outlier_fraction": (
                dims, outliers, {"long_name": "fraction of points with y outside the nested subset's range"},
            ),
            "subset_best_member_error": (
                dims, best_error, {"long_name": "area mean of min over the nested subset of |x_i - y|"},
            ),
        }  # fmt: skip
        if self.threshold is None:
            return out
        q = self.threshold(lead_index)  # None: no threshold at this lead (NaN, not "none missed")
        q = np.full(y.shape, np.nan, np.float32) if q is None else np.asarray(q, np.float32)
        have = ~np.isnan(q).all((-2, -1))  # (channel,)
        observed = valid & ~np.isnan(q) & (y.astype(np.float32) > q)
        first = state["first_above_threshold"].numpy()
        missed = np.stack([observed & (first >= s) for s in sizes])  # (size, channel, lat, lon)
        fraction = np.stack([_area_mean(np.where(valid, mk.astype(np.float64), np.nan), self.weights) for mk in missed])
        counts = np.where(have, missed.sum((-2, -1)), np.nan)
        out["subset_missed_extreme_fraction"] = (
            dims,
            np.where(have, fraction, np.nan),
            {"long_name": "fraction of points with y above the threshold and no member of the subset above it"},
        )
        out["subset_missed_extreme_count"] = (dims, counts, {"long_name": "points missed so (NaN: no threshold)"})
        out["observed_extreme_count"] = (
            ("channel",),
            np.where(have, observed.sum((-2, -1)), np.nan),
            {"long_name": "points with y above the threshold (NaN: no threshold)"},
        )
        return out

    def fixed(self) -> Result:
        return {"ensemble_size": (("ensemble_size",), np.asarray(self.sizes, np.int64), {"nested": "by member rank"})}


class TailScores:
    """The tail scores of the module's docstring; `threshold` as `SubsetExtremes`' (the
    M-climate's 99th percentile per lead), `efi` the run's `EFIWeights` (its state is read)."""

    name = "tails"

    def __init__(
        self,
        truth: LeadVerification,
        area_weights: np.ndarray,
        threshold=None,
        efi: EFIWeights | None = None,
    ):
        self.truth, self.threshold, self.efi = truth, threshold, efi
        self.weights = np.asarray(area_weights, np.float64)
        self.reads = (EnsembleMoments.name, *((EFIWeights.name,) if efi is not None else ()))

    def empty(self) -> dict[str, torch.Tensor]:
        return {"above_threshold": torch.zeros(self.truth.shape, dtype=torch.int32)} if self.threshold else {}

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        q = self.threshold(lead_index) if self.threshold is not None else None
        if q is None:
            return
        q = torch.from_numpy(np.asarray(q, np.float32))
        x = members.detach().cpu()
        for c in range(x.shape[1]):  # a channel at a time: one field per member of temporaries
            state["above_threshold"][c] += (x[:, c].float() > q[c][None]).sum(0, dtype=torch.int32)

    def _fields(self, values: np.ndarray) -> xr.DataArray:
        return xr.DataArray(values, dims=("channel", "lat", "lon"))

    def result(self, state, lead_index: int) -> Result:
        y = self.truth(lead_index).astype(np.float64)
        w = xr.DataArray(self.weights, dims=("lat",))
        m = float(state["moments.count"])
        mean = state["moments.mean"].numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.sqrt(state["moments.m2"].numpy() / (m - 1)) if m > 1 else np.full_like(mean, np.nan)
            s = np.where(s > 0, s, np.nan)
            largest = np.maximum(state["moments.max"].numpy() - mean, mean - state["moments.min"].numpy()) / s
            anomaly = (y - mean) / s
        out: Result = {}
        for name, values in (("verification_anomaly", anomaly), ("largest_member_anomaly", largest)):
            dist = anomaly_distribution(self._fields(values), ANOMALY_EDGES, w)
            out[f"{name}_distribution"] = (("channel", "anomaly"), dist.values, {"edges": ANOMALY_EDGES.tolist()})
        q = self.threshold(lead_index) if self.threshold is not None else None
        if q is None:
            return out
        q = np.asarray(q, np.float32)
        has_q = ~np.isnan(q)
        event = np.where(~np.isnan(y) & has_q, (y.astype(np.float32) > q).astype(np.float64), np.nan)
        p = np.where(has_q, state["above_threshold"].numpy() / m, np.nan)
        binned = binned_event_weights(self._fields(p), self._fields(event), PROBABILITY_EDGES, w)
        for name, da in binned.data_vars.items():
            out[f"q99_{name}"] = (("channel", "probability"), da.values, {})
        brier = np.where(np.isnan(event), np.nan, (p - event) ** 2 - p * (1 - p) / (m - 1))
        out["q99_brier_score"] = (("channel",), _area_mean(brier, self.weights), {"estimator": "fair"})
        if self.efi is not None:
            efi_state = {"weighted": state["efi.weighted"], "count": state["efi.count"]}
            efi_map = self.efi.result(efi_state, lead_index)["efi"][1]
            binned = binned_event_weights(self._fields(efi_map), self._fields(event), EFI_EDGES, w)
            for name, da in binned.data_vars.items():
                out[f"efi_q99_{name}"] = (("channel", "efi_bin"), da.values, {})
        return out

    def fixed(self) -> Result:
        out = {
            "anomaly": (("anomaly",), bin_centres(ANOMALY_EDGES), {"edges": ANOMALY_EDGES.tolist()}),
            "efi_bin": (("efi_bin",), bin_centres(EFI_EDGES), {"edges": EFI_EDGES.tolist()}),
        }
        if self.threshold is not None:
            edges = {"edges": PROBABILITY_EDGES.tolist()}
            out["probability"] = (("probability",), bin_centres(PROBABILITY_EDGES), edges)
        return out
