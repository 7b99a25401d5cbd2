"""Scores kept while the ensemble runs (the engine's `Accumulator` protocol, forecast.ensemble.online).

Each accumulator holds the verification for its leads, (lead, channel, lat, lon), and sees
the members block by block. What it keeps does not grow with the member count:

- `RankCounts`: per point, how many members fell below the verification and how many tied
  with it; the rank histogram (ties split evenly, as `rank_histogram`) and the outlier
  fraction follow exactly at the end.
- `MeanSkill`: member sums and sums of squares per point (float64, Chan's pairwise merge, as
  `EnsembleMoments`); the ensemble-mean RMSE and the spread-skill ratio follow with area
  weights at the end, equal to the offline functions on the same members.

CRPS is not among them: its spread term Σ_i Σ_j |x_i − x_j| pairs members across blocks, so it
needs a tile's members together (to come, by spatial tiles).
"""

from __future__ import annotations

import numpy as np
import torch

from forecast.ensemble.online import EnsembleMoments


class RankCounts:
    name = "rank_counts"

    def __init__(self, verification: np.ndarray):
        self.verification = torch.as_tensor(np.asarray(verification, np.float32))
        shape = self.verification.shape
        self.below = torch.zeros(shape, dtype=torch.int64)
        self.ties = torch.zeros(shape, dtype=torch.int64)
        self.members = torch.zeros(shape[0], dtype=torch.int64)

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        x = members.detach().cpu().float()
        y = self.verification[lead_index][None]
        self.below[lead_index] += (x < y).sum(0)
        self.ties[lead_index] += (x == y).sum(0)
        self.members[lead_index] += x.shape[0]

    def merge(self, other: RankCounts) -> None:
        self.below += other.below
        self.ties += other.ties
        self.members += other.members

    def state(self) -> dict[str, torch.Tensor]:
        return {"below": self.below, "ties": self.ties, "members": self.members}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            setattr(self, key, value.clone())

    def histogram(self) -> np.ndarray:
        """(lead, channel, rank) counts over the grid, ties split evenly; m + 1 ranks."""
        m = int(self.members.max())
        if not (self.members == m).all():
            raise ValueError(f"leads saw different member counts {self.members.tolist()}: the run is not complete")
        below, ties = self.below.numpy(), self.ties.numpy()
        ok = ~np.isnan(self.verification.numpy())
        share = np.where(ok, 1.0 / (ties + 1.0), 0.0)
        # a difference array over ranks: +share at `below`, -share after `below + ties`
        diff = np.zeros((*below.shape, m + 2))
        np.put_along_axis(diff, below[..., None], share[..., None], axis=-1)
        idx = (below + ties + 1)[..., None]
        np.put_along_axis(diff, idx, np.take_along_axis(diff, idx, -1) - share[..., None], axis=-1)
        per_point = np.cumsum(diff, axis=-1)[..., : m + 1]
        return per_point.sum(axis=(-3, -2))

    def result(self) -> dict:
        hist = self.histogram()
        m = hist.shape[-1] - 1
        outliers = (hist[..., 0] + hist[..., -1]) / hist.sum(-1)
        return {
            "rank_histogram": (("lead_time", "channel", "rank"), hist, {"ties": "split evenly", "bins": m + 1}),
            "outlier_fraction": (("lead_time", "channel"), outliers, {"expected": 2.0 / (m + 1)}),
        }


class MeanSkill:
    name = "mean_skill"

    def __init__(self, verification: np.ndarray, area_weights: np.ndarray):
        self.verification = np.asarray(verification, np.float64)
        self.weights = np.asarray(area_weights, np.float64)  # per latitude row
        leads, *shape = self.verification.shape
        self.moments = EnsembleMoments(leads, shape)

    def update(self, lead_index: int, members: torch.Tensor) -> None:
        self.moments.update(lead_index, members)

    def merge(self, other: MeanSkill) -> None:
        self.moments.merge(other.moments)

    def state(self) -> dict[str, torch.Tensor]:
        return self.moments.state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.moments.load_state(state)

    def _area_mean(self, field: np.ndarray) -> np.ndarray:
        """(lead, channel, lat, lon) -> (lead, channel), cell-area weighted, NaN skipped."""
        w = np.broadcast_to(self.weights[:, None], field.shape[-2:])
        ok = ~np.isnan(field)
        return (np.where(ok, field, 0.0) * w).sum((-2, -1)) / (ok * w).sum((-2, -1))

    def result(self) -> dict:
        mean = self.moments.mean.numpy()
        n = self.moments.count.numpy()[:, None, None, None]
        variance = self.moments.m2.numpy() / (n - 1)
        err2 = (mean - self.verification) ** 2
        rmse = np.sqrt(self._area_mean(err2))
        m = n[:, 0, 0, 0][:, None]
        ratio = np.sqrt((m + 1) / m) * np.sqrt(self._area_mean(np.where(np.isnan(err2), np.nan, variance))) / rmse
        return {
            "ensemble_mean_rmse": (("lead_time", "channel"), rmse, {"estimator": "sqrt of the area-weighted mean"}),
            "spread_skill_ratio": (
                ("lead_time", "channel"),
                ratio,
                {"estimator": "sqrt((m+1)/m) sqrt(<s2>)/sqrt(<err2>)"},
            ),
        }
