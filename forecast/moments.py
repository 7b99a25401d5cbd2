"""Running, mergeable sums for the archive statistics (mean, std, std of step differences).

Kept in float64 and updated block by block as an ingest writes, so statistics over a growing
archive never need the archive re-read; the sums are stored beside the statistics.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Moments:
    weights: np.ndarray  # (lat, lon), summing to 1
    sums: np.ndarray  # (4, channel): Σx, Σx², Σd, Σd² of area means, d = x(t) - x(t - 1 step)
    count: int = 0
    diff_count: int = 0
    last: np.ndarray | None = None  # the latest step (channel, lat, lon), for the next difference

    @classmethod
    def empty(cls, weights: np.ndarray, channels: int) -> Moments:
        return cls(weights=weights, sums=np.zeros((4, channels)))

    def add(self, x: np.ndarray) -> None:
        """Fold in consecutive steps (time, channel, lat, lon) that follow `last`."""
        x = np.asarray(x, dtype=np.float64)
        w = self.weights
        self.sums[0] += np.einsum("tcij,ij->c", x, w)
        self.sums[1] += np.einsum("tcij,ij->c", x * x, w)
        self.count += len(x)
        full = x if self.last is None else np.concatenate([self.last[None], x])
        d = np.diff(full, axis=0)
        self.sums[2] += np.einsum("tcij,ij->c", d, w)
        self.sums[3] += np.einsum("tcij,ij->c", d * d, w)
        self.diff_count += len(d)
        self.last = x[-1]

    def result(self) -> dict[str, np.ndarray]:
        mean = self.sums[0] / self.count
        std = np.sqrt(np.maximum(self.sums[1] / self.count - mean**2, 0.0))
        if self.diff_count:
            dmean = self.sums[2] / self.diff_count
            diff_std = np.sqrt(np.maximum(self.sums[3] / self.diff_count - dmean**2, 0.0))
        else:  # one time step: no differences to take
            diff_std = np.full(len(mean), np.nan)
        return {"mean": mean, "std": std, "diff_std": diff_std}
