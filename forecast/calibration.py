"""Calibration of the bred-vector amplitude per channel (and of the model-noise scale) on a
validation period (`forecast calibrate`).

The amplitude of the initial perturbations (a fraction of each package's 48-hour RMSE) is the
one free number of an ensemble that bred vectors cannot learn; a stochastic checkpoint's noise
is learnt, but its spread on other hosts' checkpoints and other periods is not guaranteed, so
its scale (`noise_scale`) may be chosen too. `calibrate` chooses them on hindcasts from
validation init times, never the test period:

1. for each noise scale (by default only the run's own) and each candidate amplitude a (the
   same for every channel), a statistics-only hindcast with online scores
   (`RunSettings(score=True, store_members=False)`) from every init time;
2. per channel, an objective averaged over the lead days (3..10 by default): the area-mean
   fair CRPS of each (init, lead) relative to the first set's (the smallest scale and
   amplitude), so that every lead weighs the same, averaged over the init times ("crps"); or
   the squared log of the spread-skill ratio pooled over the init times ("ssr": 0 when
   calibrated). The noise scale is the one with the lowest objective averaged over the
   channels among the sweep's sets; at that scale a channel's
   amplitude is the minimum of the parabola in log a through the best candidate and its
   neighbours (the best candidate itself at the ends of the grid);
3. a confirming hindcast with the chosen per-channel amplitudes, compared with the best single
   amplitude (`common`: the sweep's own run at the candidate with the lowest mean objective,
   `common_candidate`). The per-channel amplitudes are kept only if their objective averaged
   over the channels is no worse than the single amplitude's and no channel's is worse by more
   than `tolerance` (0.01: 1 % of the CRPS; for "ssr", (log SSR)^2 up by 0.01); else every
   channel gets `common_candidate` (`per_channel.kept` is false, and the file keeps the
   rejected run's scores).

Why the guard: the model couples the channels within a step, so a channel's spread depends on
every channel's amplitude. The common sweep measures each channel's response at the other
channels' same amplitude; the confirming run is where the coupling shows. On 2026-12-06 the
demo's per-channel choice (objective crps, noise x 1.0) gave u10m 0.32 x its 48-hour RMSE, and
the confirming run had the u10m spread-skill ratio of the sweep's 1.0 (1.44 against 1.49): its
neighbours' amplitudes of 1.0 made its spread. At noise x 0.5 the same happened in the mean:
the 11 channels given 1.4 gained 0.5-4.4 % of CRPS over the single amplitude 0.7, and 9 of the
10 given less lost 0.3-3.1 % (t850 3.1 %, sp 2.7 %, u10m 2.3 %), a lower mean objective for a
worse forecast of most of the channels a forecaster reads first; hence the per-channel bound
as well as the mean. Why the measured candidate and not the parabola's common amplitude as
the fallback: the parabola is what the coupling has just been shown to defeat; the candidate's
scores are measured.

Why "ssr" as well as "crps": with few validation inits (the demo's four) and 8 members, the
CRPS differences between amplitudes are 1-3 % and its minimum can sit where the ensemble is
already over-dispersive on those same inits (on 2026-12-06, the demo's best validation CRPS
among noise x 0.5 / 1.0 and amplitudes 0 / 0.5 / 1.0 was at 0.5 and 1.0, with day-5
spread-skill ratios z500 1.31, t850 1.58, t2m 1.14, u10m 1.39). The pooled ratio is the direct
measure of calibration and steadier at that size. With a long validation period the CRPS, the
proper score, is the better choice, and it is the default.

Why the yardstick is the best candidate and not a run at the parabola's common amplitude
(`amplitude`, which channels without their own amplitude get): that would be one more
hindcast set (in the demo's calibration each set took about 15 s of its 1 min 31 s on
2026-12-06) for a number that only serves as a comparison; the best candidate's scores are
already measured.

The result is a JSON file (`CALIBRATION_FORMAT`) with the chosen `channel_amplitudes`, the
common `amplitude` (the parabola's, or the best candidate where the per-channel amplitudes
were refused), the noise scale (`settings.noise_scale`: where `noise_scales` were given, even
one, `noise_scale_calibrated` is true and runs take it), the sweep's scores, the
init times and the digest of each package's weights. `forecast run --calibration FILE` and the
daily flow (`calibration:` in the operations config) read it (`apply_calibration`), and refuse
it for packages other than those it was made with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from forecast.archive import Archive
from forecast.diagnostics.online import ensemble_spread, pooled_spread_skill_ratio
from forecast.diagnostics.online_scores import hindcast_scores
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.store import open_forecast
from forecast.model.package import read_config

log = logging.getLogger(__name__)
CALIBRATION_FORMAT = "forecast-calibration/1"
DEFAULT_CANDIDATES = (0.0, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)
DEFAULT_DAYS = (3, 4, 5, 6, 7, 8, 9, 10)


class CalibrationError(ValueError):
    pass


def weights_digest(package: str | Path) -> str:
    """sha256 of a package's weights: what the calibration was made for."""
    h = hashlib.sha256()
    with open(Path(package) / "weights.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_inits(packages: Sequence[str], inits: Sequence[np.datetime64], lead_hours: int) -> None:
    """No init time whose forecast window touches a package's training period: calibrating on
    data the model was fitted to would choose too small a spread."""
    for p in packages:
        period = read_config(p).get("training", {}).get("train_period")
        if not period:
            continue
        lo, hi = (np.datetime64(str(t), "h") for t in period)
        for t in inits:
            if t <= hi and t + np.timedelta64(lead_hours, "h") >= lo:
                raise CalibrationError(
                    f"init time {t} (+{lead_hours} h) overlaps the training period {lo}..{hi} of {p}: "
                    "calibrate on validation init times"
                )


def _sweep_scores(store: str, channels: Sequence[str], leads: Sequence[int]) -> dict[str, dict[str, np.ndarray]]:
    """{channel: {crps, ssr, spread}} as (init, lead) arrays from a scored statistics-only
    store, and `ssr_pooled` per lead (`pooled_spread_skill_ratio`: the ratio
    `benchmarks/demo_science.py` judges); spread is the root of the area-mean ensemble variance
    (from the ratio and the RMSE)."""
    ds = open_forecast(store).sel(lead_time=list(leads))
    pooled = pooled_spread_skill_ratio(ds).transpose("channel", "lead_time")
    spread = ensemble_spread(ds).transpose("channel", "init_time", "lead_time")
    out = {}
    for c in channels:
        s = ds.sel(channel=c)
        out[c] = {
            "crps": np.asarray(s.crps.values, np.float64),
            "ssr": np.asarray(s.spread_skill_ratio.values),
            "spread": np.asarray(spread.sel(channel=c).values),
            "ssr_pooled": np.asarray(pooled.sel(channel=c).values, np.float64),
        }
    return out


def _minimum(candidates: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """(amplitude, cost) at the minimum of the parabola in log-amplitude through the best
    candidate and its neighbours; the best candidate itself at an end of the grid or for a
    zero amplitude."""
    i = int(np.nanargmin(cost))
    if i == 0 or i == len(candidates) - 1 or candidates[i - 1] <= 0:
        return float(candidates[i]), float(cost[i])
    x = np.log(candidates[i - 1 : i + 2])
    y = cost[i - 1 : i + 2]
    coef = np.polyfit(x, y, 2)
    if coef[0] <= 0:
        return float(candidates[i]), float(cost[i])
    at = float(np.clip(-coef[1] / (2 * coef[0]), x[0], x[2]))
    return float(np.exp(at)), float(min(np.polyval(coef, at), cost[i]))


def _best(candidates: np.ndarray, cost: np.ndarray) -> float:
    return _minimum(candidates, cost)[0]


OBJECTIVES = {
    "crps": "fair CRPS, area mean, averaged over init times and lead days, relative per lead",
    "ssr": "(log spread-skill ratio)^2, the ratio pooled over init times, averaged over lead days",
}


def calibrate(
    archive: str,
    packages: Sequence[str],
    inits: Sequence[str],
    out: str | Path,
    settings: RunSettings = RunSettings(),
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    days: Sequence[int] = DEFAULT_DAYS,
    channels: Sequence[str] | None = None,
    work: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    noise_scales: Sequence[float] | None = None,
    objective: str = "crps",
    tolerance: float = 0.01,
) -> dict:
    """Choose per-channel amplitudes on `inits` (validation init times); write the calibration
    JSON to `out` and return it. `settings` are the run's (members, perturbation, model noise);
    its amplitudes are what is calibrated, and its noise scale too where `noise_scales` are
    given (one or more: runs then take the chosen one). `objective` is "crps" or "ssr"
    (`OBJECTIVES`); `tolerance` bounds how much worse than the best single amplitude any
    channel may do under the per-channel amplitudes (see the module's docstring). `channels`
    (default: the run's, or all) are those given their own amplitude; the others keep the best
    common one.
    The hindcast stores go under `work` (default: `out`.work, removed when done; one given is
    kept), and a rerun after an interruption resumes them."""
    candidates = np.asarray(sorted(set(float(a) for a in candidates)), np.float64)
    if len(candidates) < 2 or candidates[0] < 0:
        raise CalibrationError(f"give at least two amplitudes >= 0 to choose from, got {candidates.tolist()}")
    if settings.perturbation == "none":
        raise CalibrationError("perturbation 'none' has no amplitude to calibrate")
    if objective not in OBJECTIVES:
        raise CalibrationError(f"objective {objective!r}: choose one of {sorted(OBJECTIVES)}")
    scales = sorted(set(float(x) for x in (noise_scales or [settings.noise_scale])))
    if scales[0] < 0:
        raise CalibrationError(f"noise scales must be >= 0, got {scales}")
    if len(scales) > 1 and not settings.model_noise:
        raise CalibrationError("a sweep of noise scales needs the model noise on")
    if not inits:
        raise CalibrationError("give at least one validation init time")
    leads = [24 * int(d) for d in days]
    if min(leads) <= 0:
        raise CalibrationError(f"lead days must be >= 1, got {list(days)}")
    init_times = [np.datetime64(t, "h") for t in inits]
    _check_inits(packages, init_times, max(leads))
    run_channels = list(settings.channels or Archive.open(archive).channels)
    unknown = sorted(set(channels or []) - set(run_channels))
    if unknown:  # before the hindcasts, not after them
        raise CalibrationError(f"channels {unknown} are not in the run (it has {run_channels})")
    out = Path(out)
    keep_work = work is not None  # a work directory of the caller's is kept; our own is removed when done
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    base = dataclasses.replace(
        settings,
        lead_hours=max(leads),
        output_leads=tuple(leads),
        score=True,
        store_members=False,
        channel_amplitudes={},
        thresholds={},
    )

    def hindcasts(name: str, run: RunSettings) -> str:
        store = str(work / f"{name}.zarr")
        for t in init_times:
            run_ensemble(
                archive, packages, str(t), store, run, device=device, progress=progress, scores=hindcast_scores
            )
        return store

    sweep: dict[tuple[float, float], dict] = {}
    for ns in scales:
        for a in candidates:
            log.info("calibration: amplitude %.3g, noise scale %.3g, on %d init times", a, ns, len(init_times))
            name = f"amplitude-{a:.4f}" if noise_scales is None else f"noise-{ns:.4f}-amplitude-{a:.4f}"
            store = hindcasts(name, dataclasses.replace(base, amplitude=float(a), noise_scale=ns))
            sweep[ns, float(a)] = _sweep_scores(store, run_channels, leads)
    have = run_channels
    names = list(channels) if channels is not None else have
    reference = sweep[scales[0], float(candidates[0])]  # the CRPS is relative to the first set's

    def channel_cost(scores: dict, c: str) -> float:
        if objective == "crps":
            return float(np.nanmean(scores[c]["crps"] / reference[c]["crps"]))
        return float(np.nanmean(np.log(scores[c]["ssr_pooled"]) ** 2))

    def cost(c: str, ns: float) -> np.ndarray:
        """The objective of channel c at each candidate amplitude, at noise scale ns."""
        return np.asarray([channel_cost(sweep[ns, float(a)], c) for a in candidates])

    totals = {ns: np.nanmean(np.stack([cost(c, ns) for c in have]), axis=0) for ns in scales}  # per candidate
    # the noise scale: the one with the lowest measured objective (a set of the sweep, not the
    # parabola's estimate, which would favour a scale whose best amplitude is inside the grid)
    per_scale = {ns: _minimum(candidates, totals[ns]) for ns in scales}
    noise_scale = min(scales, key=lambda ns: float(np.nanmin(totals[ns])))
    base = dataclasses.replace(base, noise_scale=noise_scale)
    common = per_scale[noise_scale][0]
    chosen = {c: round(_best(candidates, cost(c, noise_scale)), 4) for c in names}
    # a choice at an end of the grid (but 0) is where the objective was still falling: the grid is too narrow
    edge = sorted(c for c in names if chosen[c] >= candidates[-1] or 0 < chosen[c] <= candidates[0])
    if edge:
        log.warning("calibration: %s chose an end of the candidates %s: widen them", edge, candidates.tolist())
    common_candidate = float(candidates[int(np.nanargmin(totals[noise_scale]))])
    at_common = sweep[noise_scale, common_candidate]  # the yardstick: the best single candidate, already run
    unnamed = set(have) - set(names)  # these get the parabola's common amplitude
    if all(a == common_candidate for a in chosen.values()) and (not unnamed or round(common, 4) == common_candidate):
        confirm = at_common  # the per-channel choice is the best candidate everywhere: no second run
    else:
        # round(common, 4): the amplitude the file records and `apply_calibration` gives
        confirm_settings = dataclasses.replace(base, amplitude=round(common, 4), channel_amplitudes=chosen)
        confirm = _sweep_scores(hindcasts("chosen", confirm_settings), have, leads)
    # The model couples the channels within a step, so the per-channel amplitudes can do worse
    # together than the best single one (a channel given a small amplitude still takes its
    # neighbours' spread): then the file gives the best single candidate to every channel.
    confirm_costs = {c: channel_cost(confirm, c) for c in have}
    common_costs = {c: channel_cost(at_common, c) for c in have}
    confirm_total, common_total = (
        float(np.nanmean(list(confirm_costs.values()))),
        float(np.nanmean(list(common_costs.values()))),
    )
    kept, worse = keep_per_channel(confirm_costs, common_costs, tolerance)
    kept = kept or confirm is at_common
    applied = chosen if kept else {c: common_candidate for c in names}
    if not kept:
        worst = max(worse, key=worse.get)
        log.warning(
            "calibration: the per-channel amplitudes (mean objective %.4g; %s worse by %.3g) are refused beside "
            "the single amplitude %.3g (%.4g): every channel gets %.3g",
            confirm_total, worst, worse[worst], common_candidate, common_total, common_candidate,
        )  # fmt: skip
    result = {
        "format": CALIBRATION_FORMAT,
        "channel_amplitudes": applied,
        "amplitude": round(common, 4) if kept else common_candidate,
        "common_candidate": common_candidate,  # the sweep's best single amplitude: `common` is its run
        "at_grid_edge": edge,  # channels whose objective was still falling at an end of the candidates
        "objective": OBJECTIVES[objective],
        "objective_name": objective,
        "per_channel": {  # the per-channel choice and its confirming run, kept or not
            "amplitudes": chosen,
            "kept": bool(kept),
            "objective": confirm_total,
            "common_objective": common_total,
            "tolerance": tolerance,
            "worse_than_common": worse,  # per channel: its objective minus the single amplitude's
            "scores": {c: _summary(confirm[c]) for c in have},
        },
        "lead_days": [int(d) for d in days],
        "init_times": [str(t) for t in init_times],
        "archive": str(Path(archive).resolve()),
        "packages": {Path(p).resolve().name: weights_digest(p) for p in packages},
        "settings": {
            "perturbation": settings.perturbation,
            "perturbations": settings.perturbations,
            "model_noise": settings.model_noise,
            "noise_scale": noise_scale,
            "base_seed": settings.base_seed,
        },
        "noise_scales": scales,  # the scales tried
        "noise_scale_calibrated": noise_scales is not None,  # runs take `settings.noise_scale`
        "noise_sweep": {
            str(ns): {
                "objective": totals[ns].tolist(),
                "best_amplitude": per_scale[ns][0],
                "best_objective": per_scale[ns][1],
            }
            for ns in scales
        },
        "candidates": candidates.tolist(),
        "sweep": {  # at the chosen noise scale
            c: {
                "crps": [float(np.nanmean(sweep[noise_scale, float(a)][c]["crps"])) for a in candidates],
                "ssr": [float(np.nanmean(sweep[noise_scale, float(a)][c]["ssr"])) for a in candidates],
                "ssr_pooled": [float(np.nanmean(sweep[noise_scale, float(a)][c]["ssr_pooled"])) for a in candidates],
                "spread": [float(np.nanmean(sweep[noise_scale, float(a)][c]["spread"])) for a in candidates],
                "objective": cost(c, noise_scale).tolist(),
            }
            for c in have
        },
        "chosen": {c: _summary((confirm if kept else at_common)[c]) for c in have},
        "common": {c: _summary(at_common[c]) for c in have},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def keep_per_channel(
    confirm: dict[str, float], common: dict[str, float], tolerance: float
) -> tuple[bool, dict[str, float]]:
    """(keep, per-channel difference): the per-channel amplitudes' objectives (`confirm`, per
    channel) are kept beside the best single amplitude's (`common`) only if their mean is no
    worse and no channel is worse by more than `tolerance`. NaN channels are left out."""
    worse = {c: float(confirm[c] - common[c]) for c in common}
    finite = [d for d in worse.values() if np.isfinite(d)]
    mean_ok = np.nanmean(list(confirm.values())) <= np.nanmean(list(common.values()))
    return bool(mean_ok and (not finite or max(finite) <= tolerance)), worse


def _summary(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "crps": float(np.nanmean(scores["crps"])),
        "ssr": float(np.nanmean(scores["ssr"])),
        "ssr_pooled": float(np.nanmean(scores["ssr_pooled"])),
    }


def load_calibration(path: str | Path, packages: Sequence[str] | None = None) -> dict:
    """The calibration file, checked: its format and, given `packages`, that they are the
    packages (by weights digest) it was made for."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"{path}: cannot read the calibration: {e}") from e
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path}: not a calibration file (format {CALIBRATION_FORMAT!r} expected)")
    amps = data.get("channel_amplitudes")
    if not isinstance(amps, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in amps.values()):
        raise CalibrationError(f"{path}: channel_amplitudes must map channels to amplitudes >= 0, got {amps!r}")
    if packages is not None:
        made_for = data.get("packages", {})
        given = {Path(p).resolve().name: weights_digest(p) for p in packages}
        if given != made_for:
            raise CalibrationError(
                f"{path}: made for the packages {sorted(made_for)} (by weights digest), not for {sorted(given)}: "
                "run forecast calibrate for these packages"
            )
    return data


def apply_calibration(settings: RunSettings, path: str | Path, packages: Sequence[str]) -> RunSettings:
    """`settings` with the calibration's amplitudes (its common amplitude for channels it
    does not name) and, where the calibration was given noise scales, its noise scale. The
    values, not the file's path, go into the run record."""
    data = load_calibration(path, packages)
    made_with = {"noise_scale": 1.0, **data["settings"]}  # files from before the noise scale: 1
    noise_calibrated = bool(data.get("noise_scale_calibrated", False))
    for key in ("perturbation", "model_noise") + (() if noise_calibrated else ("noise_scale",)):
        if made_with[key] != getattr(settings, key):
            raise CalibrationError(
                f"{path}: calibrated with {key} {made_with[key]!r}; this run has {getattr(settings, key)!r}"
            )
    noise = {"noise_scale": float(made_with["noise_scale"])} if noise_calibrated else {}
    if noise and noise["noise_scale"] != settings.noise_scale:
        log.info("%s: the calibrated noise scale %.3g replaces %.3g", path, noise["noise_scale"], settings.noise_scale)
    return dataclasses.replace(
        settings,
        amplitude=float(data["amplitude"]),
        channel_amplitudes={k: float(v) for k, v in data["channel_amplitudes"].items()},
        **noise,
    )
