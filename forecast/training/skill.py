"""A checkpoint's own skill on validation data: area-weighted RMSE per channel and lead time,
beside persistence and climatology (DESIGN §2.2, `skill.json`).

Climatology here is the time-mean map of each channel over the training period (a constant
forecast); persistence is the initial state. Bred-vector amplitudes are scaled from the
48-hour RMSE, so 24, 48 and 72 h are always scored.
"""

from __future__ import annotations

import numpy as np
import torch

from forecast.archive import Archive
from forecast.grid import cell_area_weights
from forecast.model import ForecastModel
from forecast.training.data import ArchiveWindows

LEADS_HOURS = (24, 48, 72)


def climatology_map(archive: str, start: str | None, end: str | None, batch: int = 64) -> np.ndarray:
    """Time-mean (channel, lat, lon) over [start, end], accumulated in float64 batch by batch."""
    a = Archive.open(str(archive))
    times = a.times
    lo = 0 if start is None else int(np.searchsorted(times, np.datetime64(start, "h")))
    hi = len(times) if end is None else int(np.searchsorted(times, np.datetime64(end, "h"), side="right"))
    total = np.zeros(a.fields.shape[1:], np.float64)
    for i in range(lo, hi, batch):
        total += a.fields[i : min(i + batch, hi)].astype(np.float64).sum(axis=0)
    return (total / max(hi - lo, 1)).astype(np.float32)


def _rmse(err: np.ndarray, w: np.ndarray) -> np.ndarray:
    """err (init, channel, lat, lon) -> per-channel sqrt of the area- and init-mean square."""
    return np.sqrt(np.einsum("ncij,i->c", err.astype(np.float64) ** 2, w) / (err.shape[0] * err.shape[3] * w.sum()))


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
    step_hours: int = 6,
) -> dict:
    """RMSE per channel and lead for the model, persistence and climatology."""
    steps = max(leads_hours) // step_hours
    windows = ArchiveWindows(archive, valid_start, valid_end, rollout_steps=steps)
    positions = np.unique(np.linspace(0, len(windows) - 1, min(max_inits, len(windows))).round().astype(int))
    w = cell_area_weights(model.lat.cpu().numpy())
    device = next(model.parameters()).device
    errors = {kind: {h: [] for h in leads_hours} for kind in ("model", "persistence", "climatology")}
    model.eval()
    for i in range(0, len(positions), batch_size):
        b = windows.read(positions[i : i + batch_size])
        traj = model.rollout(b.state.to(device), b.time_hours.to(device), steps, step_hours).cpu().numpy()
        for h in leads_hours:
            k = h // step_hours
            truth = b.targets[:, k - 1].numpy()
            errors["model"][h].append(traj[:, k] - truth)
            errors["persistence"][h].append(b.state.numpy() - truth)
            errors["climatology"][h].append(climatology[None] - truth)
    out: dict = {}
    for kind, by_lead in errors.items():
        table = {h: _rmse(np.concatenate(v), w) for h, v in by_lead.items()}
        out[kind] = {c: {str(h): float(table[h][j]) for h in leads_hours} for j, c in enumerate(model.channels)}
    return {
        "rmse": out["model"],
        "persistence": out["persistence"],
        "climatology": out["climatology"],
        "valid_period": [str(windows.archive.times[windows.starts[0]]), str(windows.archive.times[windows.starts[-1]])],
        "inits": len(positions),
        "estimator": "sqrt of the cell-area-weighted mean square error over the grid and the initial times",
    }
