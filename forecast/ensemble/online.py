"""Online reduction: statistics over members, kept while the engine runs, so a run can keep
statistics instead of members (DESIGN §5).

An accumulator is a recipe for the state of ONE lead time: `empty()` makes it, `update`
folds one block's members at that lead into it, `result` turns a complete lead's state into
arrays. The engine keeps the state of each (init time, lead) in the forecast store and
updates it lead by lead (`forecast.ensemble.state`), so memory is one lead's state however
many leads and members a run has, blocks computed by different processes combine through the
store, and an interrupted run resumes. States are plain tensors, kept as Zarr arrays (no
pickle) whose shapes do not depend on the member count. The diagnostics add scores through
the same protocol (`forecast.diagnostics.online`); a scored run is handed them by its caller
as a `ScoreFactory` (`forecast.diagnostics.online_scores.hindcast_scores`), so the engine never
imports the diagnostics.

An accumulator may name others in `reads`: its `update` and `result` then also see their
state, under "name.key" (the same tensors, not copies), so a score built on the ensemble
mean and variance keeps no second copy of them (at 0.25° each is 0.17 GB per lead, in
memory and on disk).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from forecast.ensemble.engine import Plan

Result = dict[str, tuple[tuple[str, ...], np.ndarray, dict]]


@runtime_checkable
class Accumulator(Protocol):
    name: str

    def empty(self) -> dict[str, torch.Tensor]:
        """The state of one lead before any member (the same shapes for every lead)."""

    def update(self, state: dict[str, torch.Tensor], lead_index: int, members: torch.Tensor, first: int) -> None:
        """Fold members (block members, channel, lat, lon) at one lead into `state`, in place;
        `first` is the block's first member index."""

    def result(self, state: dict[str, torch.Tensor], lead_index: int) -> Result:
        """Named arrays of one complete lead: (dims, values, attributes), dims without lead_time."""


class ScoreFactory(Protocol):
    def __call__(self, plan: Plan, channels: list[str], store_location: str) -> list[Accumulator]:
        """The score accumulators of one run and init time (`plan`), for its output channels;
        `store_location` is the forecast store's (for scratch files beside it)."""


def check_reads(accumulators: Sequence[Accumulator]) -> None:
    """Every state an accumulator `reads` is kept by another accumulator of the same run."""
    names = [acc.name for acc in accumulators]
    for acc in accumulators:
        missing = [n for n in getattr(acc, "reads", ()) if n not in names or n == acc.name]
        if missing:
            raise ValueError(
                f"{acc.name} reads the state of {missing}, which this run does not keep (it keeps {names})"
            )


def state_views(accumulators: Sequence[Accumulator], states: Sequence[dict[str, torch.Tensor]]) -> list[dict]:
    """What each accumulator's `update` and `result` see: its own state and, for the names in
    its `reads`, theirs under "name.key". Only the own keys are saved (`states`)."""
    by_name = {acc.name: state for acc, state in zip(accumulators, states, strict=True)}
    views = []
    for acc, state in zip(accumulators, states, strict=True):
        view = dict(state)
        for other in getattr(acc, "reads", ()):
            view.update({f"{other}.{key}": tensor for key, tensor in by_name[other].items()})
        views.append(view)
    return views


def fixed_arrays(accumulator: Accumulator) -> Result:
    """Arrays that do not depend on the lead (e.g. threshold labels), if the accumulator has any."""
    return accumulator.fixed() if hasattr(accumulator, "fixed") else {}


def combine_moments(state: dict[str, torch.Tensor], members: torch.Tensor) -> None:
    """Chan et al.'s pairwise update of count, mean and M2 (float64) with a block's members:
    the result does not depend on how members were split into blocks (to rounding). One
    channel at a time (members (m, channel, ...)): the float64 temporaries are a few fields
    of one channel, not a few copies of the block (at 0.25° that was ~1 GB per lead)."""
    members = members.detach().cpu()
    n_a, n_b = float(state["count"]), float(members.shape[0])
    n = n_a + n_b
    for c in range(members.shape[1]):
        x = members[:, c].to(torch.float64)
        mean_b = x.mean(dim=0)
        m2_b = (x - mean_b).square().sum(dim=0)
        delta = mean_b - state["mean"][c]
        state["mean"][c] += delta * (n_b / n)
        state["m2"][c] += m2_b + delta.square() * (n_a * n_b / n)
    state["count"].fill_(n)


class EnsembleMoments:
    """Count, mean, variance (ddof = 1), min and max over members, per grid point."""

    name = "moments"

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(shape)

    def empty(self) -> dict[str, torch.Tensor]:
        return {
            "count": torch.zeros((), dtype=torch.float64),
            "mean": torch.zeros(self.shape, dtype=torch.float64),
            "m2": torch.zeros(self.shape, dtype=torch.float64),
            "min": torch.full(self.shape, torch.inf, dtype=torch.float32),
            "max": torch.full(self.shape, -torch.inf, dtype=torch.float32),
        }

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        combine_moments(state, members)
        x = members.detach().cpu().float()
        torch.minimum(state["min"], x.amin(dim=0), out=state["min"])
        torch.maximum(state["max"], x.amax(dim=0), out=state["max"])

    def result(self, state, lead_index: int) -> Result:
        n = float(state["count"])
        variance = state["m2"] / (n - 1) if n > 1 else torch.full_like(state["m2"], torch.nan)
        dims = ("channel", "lat", "lon")
        return {
            "ensemble_mean": (dims, state["mean"].float().numpy(), {"long_name": "ensemble mean"}),
            "ensemble_variance": (
                dims,
                variance.float().numpy(),
                {"long_name": "ensemble variance", "ddof": 1, "estimator": "sum of squared deviations / (m - 1)"},
            ),
            "ensemble_min": (dims, state["min"].numpy(), {"long_name": "ensemble minimum"}),
            "ensemble_max": (dims, state["max"].numpy(), {"long_name": "ensemble maximum"}),
            "member_count": ((), np.asarray(int(n), np.int64), {"long_name": "members accumulated"}),
        }


class ExceedanceCounts:
    """How many members exceed each threshold (`>`), per threshold and grid point.
    thresholds: {channel: [values in the channel's units]}."""

    name = "exceedance"

    def __init__(self, channels: Sequence[str], shape: Sequence[int], thresholds: dict[str, Sequence[float]]):
        unknown = set(thresholds) - set(channels)
        if unknown:
            raise ValueError(f"exceedance thresholds name channels not in the output: {sorted(unknown)}")
        pairs = [(c, float(v)) for c in sorted(thresholds) for v in thresholds[c]]
        self.channel_index = torch.tensor([list(channels).index(c) for c, _ in pairs], dtype=torch.long)
        self.values = torch.tensor([v for _, v in pairs], dtype=torch.float32)
        self.labels = [f"{c}>{v:g}" for c, v in pairs]
        self.shape = (len(pairs), *tuple(shape)[-2:])

    def empty(self) -> dict[str, torch.Tensor]:
        return {"counts": torch.zeros(self.shape, dtype=torch.int32)} if self.labels else {}

    def update(self, state, lead_index: int, members: torch.Tensor, first: int = 0) -> None:
        if not self.labels:
            return
        x = members.detach().cpu().float()[:, self.channel_index]  # (m, threshold, lat, lon)
        state["counts"] += (x > self.values.view(1, -1, 1, 1)).sum(dim=0, dtype=torch.int32)

    def fixed(self) -> Result:
        if not self.labels:
            return {}
        return {"threshold": (("threshold",), np.asarray(self.labels, dtype=str), {"long_name": "channel > value"})}

    def result(self, state, lead_index: int) -> Result:
        if not self.labels:
            return {}
        return {
            "exceedance_count": (
                ("threshold", "lat", "lon"),
                state["counts"].numpy().astype(np.int64),
                {"long_name": "members above the threshold", "comparison": ">"},
            ),
        }
