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
    step_hours: int | None = None,
) -> dict:
    """RMSE per channel and lead for the model, persistence and climatology. The model steps
    `step_hours` (default: the archive's time step) from each initial time."""
    if step_hours is None:
        step_hours = Archive.open(str(archive)).time_step_hours
    k_of = lead_steps(leads_hours, step_hours)
    steps = max(k_of.values())
    windows = ArchiveWindows(archive, valid_start, valid_end, rollout_steps=steps)
    positions = spread(len(windows), max_inits)
    w = cell_area_weights(model.lat.cpu().numpy())
    device = next(model.parameters()).device
    errors = {kind: {h: [] for h in leads_hours} for kind in ("model", "persistence", "climatology")}
    model.eval()
    for i in range(0, len(positions), batch_size):
        b = windows.read(positions[i : i + batch_size])
        traj = model.rollout(b.state.to(device), b.time_hours.to(device), steps, step_hours).cpu().numpy()
        for h in leads_hours:
            k = k_of[h]
            truth = b.targets[:, k - 1].numpy()
            errors["model"][h].append(traj[:, k] - truth)
            errors["persistence"][h].append(b.state.numpy() - truth)
            errors["climatology"][h].append(climatology[None] - truth)
    out: dict = {}
    for kind, by_lead in errors.items():
        table = {h: _rmse(np.concatenate(v), w) for h, v in by_lead.items()}
        out[kind] = {c: {str(h): float(table[h][j]) for h in leads_hours} for j, c in enumerate(model.channels)}
    stability = rollout_stability(model, archive, valid_start, valid_end, climatology, step_hours=step_hours)
    return {
        "rollout_15d": stability,
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
    device = next(model.parameters()).device
    model_err, clim_err = [], []
    for i in range(0, len(positions), 8):
        b = windows.read(positions[i : i + 8])
        traj = model.rollout(b.state.to(device), b.time_hours.to(device), steps, step_hours).cpu().numpy()[:, 1:]
        truth = b.targets.numpy()
        model_err.append(traj - truth)
        clim_err.append(climatology[None, None] - truth)
    m, c = np.concatenate(model_err), np.concatenate(clim_err)  # (init, lead, channel, lat, lon)
    ratio = np.stack([_rmse(m[:, k], w) / np.maximum(_rmse(c[:, k], w), 1e-30) for k in range(steps)])
    finite = bool(np.isfinite(m).all())
    return {
        "days": days,
        "inits": len(positions),
        "finite": finite,
        "max_ratio_to_climatology": {ch: float(ratio[:, j].max()) for j, ch in enumerate(model.channels)},
        "first_init": str(windows.archive.times[windows.starts[positions[0]]]),
    }
