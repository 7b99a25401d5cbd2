"""Online reduction: statistics over members, kept while the engine runs, so a run can keep
statistics instead of members (DESIGN §5).

The engine hands each finished (block, lead) to every accumulator's `update`. Accumulators
merge (`merge`), so blocks computed in different processes combine, and save and load their
state as plain tensors (safetensors, no pickle), so an interrupted run resumes. Their memory and
disk use depend on the grid and the lead times, never on the member count. The diagnostics
issue adds scores through the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Accumulator(Protocol):
    name: str

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        """members: (block members, channel, lat, lon) at one lead time."""

    def merge(self, other: Accumulator) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def result(self) -> dict[str, tuple[tuple[str, ...], np.ndarray, dict]]:
        """Named arrays: (dims, values, attributes), dims among (lead_time, channel, lat, lon, ...)."""


class EnsembleMoments:
    """Count, mean, variance (ddof = 1), min and max over members, per lead and grid point.
    Mean and M2 in float64, merged with Chan et al.'s pairwise update, so the result does
    not depend on how members were split into blocks (to rounding)."""

    name = "moments"

    def __init__(self, leads: int, shape: Sequence[int]):
        full = (leads, *shape)
        self.count = torch.zeros(leads, dtype=torch.float64)
        self.mean = torch.zeros(full, dtype=torch.float64)
        self.m2 = torch.zeros(full, dtype=torch.float64)
        self.min = torch.full(full, torch.inf, dtype=torch.float32)
        self.max = torch.full(full, -torch.inf, dtype=torch.float32)

    def _combine(self, k: int, n_b: float, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        n_a = float(self.count[k])
        n = n_a + n_b
        delta = mean_b - self.mean[k]
        self.mean[k] += delta * (n_b / n)
        self.m2[k] += m2_b + delta.square() * (n_a * n_b / n)
        self.count[k] = n

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        x = members.detach().to("cpu", torch.float64)
        mean_b = x.mean(dim=0)
        self._combine(lead_index, float(x.shape[0]), mean_b, (x - mean_b).square().sum(dim=0))
        self.min[lead_index] = torch.minimum(self.min[lead_index], members.detach().cpu().float().amin(dim=0))
        self.max[lead_index] = torch.maximum(self.max[lead_index], members.detach().cpu().float().amax(dim=0))

    def merge(self, other: EnsembleMoments) -> None:
        for k in range(len(self.count)):
            if other.count[k] > 0:
                self._combine(k, float(other.count[k]), other.mean[k], other.m2[k])
        self.min = torch.minimum(self.min, other.min)
        self.max = torch.maximum(self.max, other.max)

    def state(self) -> dict[str, torch.Tensor]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "min": self.min, "max": self.max}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

    def result(self) -> dict:
        n = self.count.view(-1, *([1] * (self.mean.ndim - 1)))
        variance = torch.where(n > 1, self.m2 / (n - 1).clamp_min(1), torch.nan)
        dims = ("lead_time", "channel", "lat", "lon")
        return {
            "ensemble_mean": (dims, self.mean.float().numpy(), {"long_name": "ensemble mean"}),
            "ensemble_variance": (
                dims,
                variance.float().numpy(),
                {"long_name": "ensemble variance", "ddof": 1, "estimator": "sum of squared deviations / (m - 1)"},
            ),
            "ensemble_min": (dims, self.min.numpy(), {"long_name": "ensemble minimum"}),
            "ensemble_max": (dims, self.max.numpy(), {"long_name": "ensemble maximum"}),
            "member_count": (("lead_time",), self.count.numpy().astype(np.int64), {"long_name": "members accumulated"}),
        }


class ExceedanceCounts:
    """How many members exceed each threshold (`>`), per lead, threshold and grid point.
    thresholds: {channel: [values in the channel's units]}."""

    name = "exceedance"

    def __init__(
        self, leads: int, channels: Sequence[str], shape: Sequence[int], thresholds: dict[str, Sequence[float]]
    ):
        unknown = set(thresholds) - set(channels)
        if unknown:
            raise ValueError(f"exceedance thresholds name channels not in the output: {sorted(unknown)}")
        pairs = [(c, float(v)) for c in sorted(thresholds) for v in thresholds[c]]
        self.channel_index = torch.tensor([list(channels).index(c) for c, _ in pairs], dtype=torch.long)
        self.values = torch.tensor([v for _, v in pairs], dtype=torch.float32)
        self.labels = [f"{c}>{v:g}" for c, v in pairs]
        self.counts = torch.zeros((leads, len(pairs), *shape[-2:]), dtype=torch.int64)

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        if not len(self.labels):
            return
        x = members.detach().cpu().float()[:, self.channel_index]  # (m, threshold, lat, lon)
        self.counts[lead_index] += (x > self.values.view(1, -1, 1, 1)).sum(dim=0)

    def merge(self, other: ExceedanceCounts) -> None:
        self.counts += other.counts

    def state(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.counts = state["counts"].clone()

    def result(self) -> dict:
        return {
            "threshold": (("threshold",), np.asarray(self.labels, dtype=str), {"long_name": "channel > value"}),
            "exceedance_count": (
                ("lead_time", "threshold", "lat", "lon"),
                self.counts.numpy(),
                {"long_name": "members above the threshold", "comparison": ">"},
            ),
        }
