"""A checkpoint's own skill on validation data: area-weighted RMSE per channel and lead time,
beside persistence and climatology (DESIGN §2.2, `skill.json`).

Climatology here is the time-mean map of each channel over the training period (a constant
forecast); persistence is the initial state. Bred-vector amplitudes are scaled from the
48-hour RMSE, so 24, 48 and 72 h are always scored.

The model steps at the archive's time step (`Archive.time_step_hours`), so a lead of h hours is
h / step model steps. Every step that divides 24 h (1, 2, 3, 4, 6, 8, 12, 24: the steps ingest
accepts) divides 24, 48 and 72; an archive of another step (9 h, say) is refused with an error
that names the lead, rather than scored at a nearby lead under the wrong key.
"""

from __future__ import annotations

import numpy as np
import torch

from forecast.archive import Archive
from forecast.grid import cell_area_weights
from forecast.model import ForecastModel
from forecast.training.data import ArchiveWindows

LEADS_HOURS = (24, 48, 72)
STABILITY_DAYS = 15


def spread(n: int, k: int) -> np.ndarray:
    """Up to k indices spread evenly over range(n), first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def climatology_map(archive: str, start: str | None, end: str | None, batch: int = 64) -> np.ndarray:
    """Time-mean (channel, lat, lon) over [start, end], accumulated in float64 batch by batch."""
    a = Archive.open(str(archive))
    times = a.times
    lo = 0 if start is None else int(np.searchsorted(times, np.datetime64(start, "h")))
    hi = len(times) if end is None else int(np.searchsorted(times, np.datetime64(end, "h"), side="right"))
    total = np.zeros(a.fields.shape[1:], np.float64)
    batch = _batch_for(a.fields.shape[1:], batch)
    for i in range(lo, hi, batch):
        total += a.fields[i : min(i + batch, hi)].astype(np.float64).sum(axis=0)
    return (total / max(hi - lo, 1)).astype(np.float32)


def lead_steps(leads_hours: tuple[int, ...], step_hours: int) -> dict[int, int]:
    """{lead hours: model steps}; a lead that is not a whole number of steps is an error."""
    if step_hours <= 0:
        raise ValueError(f"the time step must be a positive number of hours, got {step_hours}")
    bad = [h for h in leads_hours if h % step_hours]
    if bad:
        raise ValueError(
            f"skill leads {list(leads_hours)} h must be whole multiples of the {step_hours}-hour time step "
            f"(not {bad}): train on an archive whose step divides 24 h (1, 2, 3, 4, 6, 8, 12 or 24)"
        )
    return {h: h // step_hours for h in leads_hours}


def _batch_for(field_shape, largest: int, fields_per_item: int = 3, budget: int = 2**30) -> int:
    """Items per batch so that `fields_per_item` float32 fields per item stay within `budget`
    bytes: the same batches as before at 5.625°, one or two windows at a time at 0.25°."""
    field = 4 * int(np.prod(field_shape))
    return max(1, min(largest, budget // (fields_per_item * field)))


class _SquaredErrors:
    """Per-channel sums of the cell-area-weighted squared error, per key (a kind and a lead):
    RMSE over many initial times without keeping their error fields."""

    def __init__(self, weights: np.ndarray):
        self.w = weights
        self.sums: dict = {}
        self.counts: dict = {}

    def add(self, key, err: np.ndarray) -> None:
        """err (batch, channel, lat, lon)."""
        part = np.einsum("ncij,i->c", err.astype(np.float64) ** 2, self.w)
        self.sums[key] = self.sums.get(key, 0.0) + part
        self.counts[key] = self.counts.get(key, 0.0) + err.shape[0] * err.shape[3] * self.w.sum()

    def rmse(self, key) -> np.ndarray:
        return np.sqrt(self.sums[key] / self.counts[key])


def _targets(windows: ArchiveWindows, starts: np.ndarray, k: int) -> np.ndarray:
    """The analyses k steps after each start (batch, channel, lat, lon): one step read at a time."""
    return np.stack([np.asarray(windows.archive.fields[int(s) + k]) for s in starts])


def _streamed_rollout(model, windows: ArchiveWindows, positions: np.ndarray, steps: int, step_hours: int, batch: int):
    """Yield (k, starts, state k steps on (numpy), analyses at step k) for k = 0..steps, batch
    by batch: memory is a batch of fields, not a batch of trajectories."""
    device = next(model.parameters()).device
    for i in range(0, len(positions), batch):
        starts = windows.starts[positions[i : i + batch]]
        state = torch.from_numpy(_targets(windows, starts, 0)).to(device)
        hours = torch.from_numpy(windows.hours[starts].astype(np.float64)).to(device)
        yield 0, starts, state.cpu().numpy(), None
        # a stochastic checkpoint is scored as one member per initial time (noise seed: its start)
        noise = model.noise_stream([int(x) for x in starts], step_hours)
        for k in range(1, steps + 1):
            state = model(state, hours + (k - 1) * step_hours, noise.current)
            noise.advance()
            yield k, starts, state.cpu().numpy(), _targets(windows, starts, k)


@torch.no_grad()
def score(
    model: ForecastModel,
    archive: str,
    valid_start: str | None,
    valid_end: str | None,
    climatology: np.ndarray,
    leads_hours: tuple[int, ...] = LEADS_HOURS,
    max_inits: int = 32,
    batch_size: int = 8,
    step_hours: int | None = None,
    stability: bool = True,
) -> dict:
    """RMSE per channel and lead for the model, persistence and climatology. The model steps
    `step_hours` (default: the archive's time step) from each initial time; errors are summed
    step by step, so memory is a batch of fields whatever the grid. `stability=False` skips
    the 15-day rollout (`rollout_15d` then says why): for a first training stage, whose
    weights only start the next one, which is checked."""
    if step_hours is None:
        step_hours = Archive.open(str(archive)).time_step_hours
    k_of = lead_steps(leads_hours, step_hours)
    lead_of = {k: h for h, k in k_of.items()}
    steps = max(k_of.values())
    windows = ArchiveWindows(archive, valid_start, valid_end, rollout_steps=steps)
    positions = spread(len(windows), max_inits)
    w = cell_area_weights(model.lat.cpu().numpy())
    errors = _SquaredErrors(w)
    model.eval()
    batch = _batch_for(climatology.shape, batch_size, fields_per_item=4)
    initial = None
    for k, _, state, truth in _streamed_rollout(model, windows, positions, steps, step_hours, batch):
        if k == 0:
            initial = state
            continue
        if k in lead_of:
            h = lead_of[k]
            errors.add(("model", h), state - truth)
            errors.add(("persistence", h), initial - truth)
            errors.add(("climatology", h), climatology[None] - truth)
    out: dict = {}
    for kind in ("model", "persistence", "climatology"):
        table = {h: errors.rmse((kind, h)) for h in leads_hours}
        out[kind] = {c: {str(h): float(table[h][j]) for h in leads_hours} for j, c in enumerate(model.channels)}
    if stability:
        rollout = rollout_stability(model, archive, valid_start, valid_end, climatology, step_hours=step_hours)
    else:
        rollout = {"days": STABILITY_DAYS, "skipped": "a first training stage: the final package is checked"}
    return {
        "rollout_15d": rollout,
        "rmse": out["model"],
        "persistence": out["persistence"],
        "climatology": out["climatology"],
        "valid_period": [str(windows.archive.times[windows.starts[0]]), str(windows.archive.times[windows.starts[-1]])],
        "inits": len(positions),
        "step_hours": int(step_hours),
        "estimator": "sqrt of the cell-area-weighted mean square error over the grid and the initial times",
    }


@torch.no_grad()
def rollout_stability(
    model: ForecastModel,
    archive: str,
    valid_start: str | None,
    valid_end: str | None,
    climatology: np.ndarray,
    days: int = STABILITY_DAYS,
    inits: int = 8,
    step_hours: int | None = None,
) -> dict:
    """A `days`-long autoregressive rollout: per channel, the largest ratio over lead times of
    the model's RMSE to climatology's (a stable model stays near or below 1 as skill fades;
    an unstable one blows up). Uses the archive up to its end for the verification."""
    if step_hours is None:
        step_hours = Archive.open(str(archive)).time_step_hours
    steps = lead_steps((days * 24,), step_hours)[days * 24]
    try:
        windows = ArchiveWindows(archive, valid_start, valid_end, rollout_steps=steps)
    except ValueError:  # validation period shorter than the rollout: start earlier
        try:
            windows = ArchiveWindows(archive, None, None, rollout_steps=steps)
        except ValueError:
            return {"days": days, "skipped": f"the archive is shorter than {days} days"}
    positions = spread(len(windows), inits)
    w = cell_area_weights(model.lat.cpu().numpy())
    errors = _SquaredErrors(w)
    finite = True
    batch = _batch_for(climatology.shape, 8, fields_per_item=3)
    for k, _, state, truth in _streamed_rollout(model, windows, positions, steps, step_hours, batch):
        if k == 0:
            continue
        finite = finite and bool(np.isfinite(state).all())
        errors.add(("model", k), state - truth)
        errors.add(("climatology", k), climatology[None] - truth)
    ratio = np.stack(
        [errors.rmse(("model", k)) / np.maximum(errors.rmse(("climatology", k)), 1e-30) for k in range(1, steps + 1)]
    )
    return {
        "days": days,
        "inits": len(positions),
        "finite": finite,
        "max_ratio_to_climatology": {ch: float(ratio[:, j].max()) for j, ch in enumerate(model.channels)},
        "first_init": str(windows.archive.times[windows.starts[positions[0]]]),
    }
