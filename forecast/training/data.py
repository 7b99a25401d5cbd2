"""Training samples straight from the archive: lazy, batched, prefetched.

A sample is a window of consecutive archive steps: the input state at t and the targets at
t + 1 .. t + k steps (k > 1 for rollout fine-tuning). Batches are read as they are needed, the
next one in a background thread while the model trains on the current one; the archive is
never loaded whole.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from forecast import vocabulary
from forecast.archive import Archive, to_hours
from forecast.model import ForecastModel, ModelConfig


@dataclasses.dataclass
class Batch:
    state: torch.Tensor  # (batch, channel, lat, lon)
    time_hours: torch.Tensor  # (batch,) hours since 1970 of `state`
    targets: torch.Tensor  # (batch, steps, channel, lat, lon)


class ArchiveWindows:
    """Windows of `1 + rollout_steps` consecutive committed steps whose start lies in [start, end]."""

    def __init__(self, location: str, start: str | None = None, end: str | None = None, rollout_steps: int = 1):
        if rollout_steps < 1:
            raise ValueError(f"rollout_steps must be >= 1, got {rollout_steps}")
        self.archive = Archive.open(str(location))
        self.rollout_steps = rollout_steps
        times = self.archive.times
        lo = 0 if start is None else int(np.searchsorted(times, np.datetime64(start, "h")))
        hi = len(times) if end is None else int(np.searchsorted(times, np.datetime64(end, "h"), side="right"))
        last_start = len(times) - 1 - rollout_steps
        self.starts = np.arange(lo, min(hi, last_start + 1))
        if len(self.starts) == 0:
            raise ValueError(f"{location}: no {1 + rollout_steps}-step windows start in [{start}, {end}]")
        self.hours = to_hours(times)

    def __len__(self) -> int:
        return len(self.starts)

    def read(self, positions: np.ndarray) -> Batch:
        """The windows at `positions` (indices into this split), read from the archive."""
        starts = self.starts[np.asarray(positions)]
        k = self.rollout_steps
        fields = self.archive.fields
        parts = [fields[s : s + k + 1] for s in starts]
        short = [int(s) for s, p in zip(starts, parts, strict=True) if len(p) != k + 1]
        if short:
            raise ValueError(f"{self.archive.location}: windows at steps {short} run past the archive's end")
        windows = np.stack(parts)
        return Batch(
            state=torch.from_numpy(windows[:, 0]),
            time_hours=torch.from_numpy(self.hours[starts].astype(np.float64)),
            targets=torch.from_numpy(windows[:, 1:]),
        )

    def order(self, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """A shuffled order of this split's windows, the same for a given (seed, epoch) on every
        rank; each rank takes every `world_size`-th, truncated so all ranks take as many."""
        perm = np.random.default_rng([seed, epoch]).permutation(len(self))
        per_rank = len(perm) // world_size
        return perm[rank : per_rank * world_size : world_size]

    def batches(
        self, batch_size: int, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1, prefetch: int = 2
    ) -> Iterator[Batch]:
        """Shuffled batches (the last, short one dropped), prefetched in a background thread."""
        order = self.order(seed, epoch, rank, world_size)
        groups = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        done = object()
        stop = threading.Event()  # set when the consumer leaves early (a capped epoch)

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for g in groups:
                    if not put(self.read(g)):
                        return
            except BaseException as e:  # surfaced in the consumer
                put(e)
                return
            put(done)

        worker = threading.Thread(target=produce, daemon=True)
        worker.start()
        try:
            while (item := q.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()


def model_from_archive(location: str, config: ModelConfig) -> tuple[ForecastModel, torch.Tensor]:
    """A fresh model for an archive's channels and grid, normalised with its statistics.
    Returns the model and the raw static fields it was given (orography in m, land-sea mask)."""
    archive = Archive.open(str(location))
    if not archive.statistics_are_current():
        raise ValueError(f"{location}: statistics are stale or missing; run `forecast stats {location}`")
    group = archive.group
    grid = archive.grid
    statics = [
        np.asarray(group[name][:], np.float32) if name in group else np.zeros(grid.shape, np.float32)
        for name in ("orography", "land_sea_mask")
    ]
    static = torch.from_numpy(np.stack(statics))
    diff_std = np.asarray(group["diff_std"][:])
    if not np.all(np.isfinite(diff_std)):
        raise ValueError(f"{location}: diff_std is undefined (one time step?): too little data to train on")
    model = ForecastModel(
        config,
        archive.channels,
        torch.from_numpy(grid.lat),
        torch.from_numpy(grid.lon),
        mean=torch.from_numpy(np.asarray(group["mean"][:])),
        std=torch.from_numpy(np.asarray(group["std"][:])),
        diff_std=torch.from_numpy(diff_std),
        static=static,
        non_negative=[vocabulary.is_non_negative(c) for c in archive.channels],
    )
    return model, static


def load_for_archive(package: str, archive: str, map_location: str = "cpu"):
    """Load a model package to run on `archive`, refusing one made for other channels, another
    grid or another time step (PackageError with the reason)."""
    from forecast.model import load_package

    a = Archive.open(str(archive))
    grid = a.grid
    return load_package(
        package,
        map_location=map_location,
        channels=a.channels,
        lat=grid.lat,
        lon=grid.lon,
        time_step_hours=a.time_step_hours,
    )
