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

    def add(self, x: np.ndarray, piece: int = 16) -> None:
        """Fold in consecutive steps (time, channel, lat, lon) that follow `last`.

        Works through `piece` steps at a time: small float64 temporaries are recycled by the
        allocator, where block-sized ones cost more in fresh pages than in arithmetic."""
        c = x.shape[1]
        w = self.weights.reshape(-1).astype(np.float64)
        for start in range(0, len(x), piece):
            part = np.asarray(x[start : start + piece])
            flat = part.reshape(len(part), c, -1).astype(np.float64)
            # Area means as matrix-vector products (BLAS), squares and differences in float64.
            self.sums[0] += (flat @ w).sum(axis=0)
            self.sums[1] += (np.square(flat) @ w).sum(axis=0)
            self.count += len(part)
            if self.last is not None:
                flat = np.concatenate([np.asarray(self.last, np.float64).reshape(1, c, -1), flat])
            d = np.diff(flat, axis=0)
            self.sums[2] += (d @ w).sum(axis=0)
            self.sums[3] += (np.square(d) @ w).sum(axis=0)
            self.diff_count += len(d)
            self.last = np.array(part[-1])  # a copy: the caller may reuse its buffer

    def result(self) -> dict[str, np.ndarray]:
        mean = self.sums[0] / self.count
        std = np.sqrt(np.maximum(self.sums[1] / self.count - mean**2, 0.0))
        if self.diff_count:
            dmean = self.sums[2] / self.diff_count
            diff_std = np.sqrt(np.maximum(self.sums[3] / self.diff_count - dmean**2, 0.0))
        else:  # one time step: no differences to take
            diff_std = np.full(len(mean), np.nan)
        return {"mean": mean, "std": std, "diff_std": diff_std}
