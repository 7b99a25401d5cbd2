"""Prefect flow: the whole chain on the built-in world, from nothing (`forecast demo`).

world → ingest → train one checkpoint per seed → calibration of the perturbation amplitudes
on validation init times (if configured) → hindcasts → M-climate → the forecast flow
(ensemble with online scores, diagnose, report), the hindcasts and the forecast with the
calibrated amplitudes. Every step is a library function; every
output lands under `out`: world/, archive.zarr (+ archive.side.zarr, the M-climate),
packages/seedNNN/, calibration.json, hindcast.zarr, forecast/ (forecast.zarr, scores.zarr, report and plots).
Rerunning into the same directory reuses what is there (ingest skips known files, training
resumes, the ensembles skip complete blocks).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task

from flows.calibrate import calibrate_flow
from flows.daily import forecast_flow, run_members
from flows.train import train_flow
from forecast.calibration import CalibrationError, apply_calibration, load_calibration
from forecast.config import CONFIG_DIR, DemoCalibrationConfig, DemoConfig, config_path, load
from forecast.ensemble.engine import RunSettings


@task(task_run_name="simulate the world")
def simulate_world(out: str, world: dict, progress: bool = False) -> str:
    from forecast.world import WorldRun, generate_world

    if not (Path(out) / "era5_world_static.nc").exists() or not list(Path(out).glob("era5_world_sfc_*.nc")):
        generate_world(out, WorldRun(**world), progress=progress)
    return out


@task(retries=1, task_run_name="ingest the world")
def ingest_world(world_dir: str, archive: str, ingest: dict, progress: bool = False) -> str:
    from forecast.ingest import ingest as run_ingest

    return run_ingest([world_dir], archive, progress=progress, **ingest).summary()


@task(retries=1, retry_delay_seconds=5, task_run_name="M-climate for {target}")
def mclimate(archive: str, hindcasts: str, target: str, window_days: int) -> str:
    from forecast.diagnostics.mclimate import build_mclimate

    return build_mclimate(archive, [hindcasts], target, window_days=window_days)


def _calibration_fits(path: str, packages: list[str], c: DemoCalibrationConfig) -> bool:
    """A calibration file from an earlier run of the demo that still fits its packages and was
    made the way the config asks (init times, candidates, days, members, noise scales,
    objective, tolerance): a changed config recalibrates."""
    try:
        data = load_calibration(path, packages)
    except CalibrationError:
        return False
    made = (
        data.get("init_times"), data.get("candidates"), data.get("lead_days"),
        data.get("settings", {}).get("perturbations"), data.get("noise_scales"), data.get("objective_name"),
        data.get("per_channel", {}).get("tolerance"),
    )  # fmt: skip
    asked = (
        [str(np.datetime64(t, "h")) for t in c.inits], sorted(set(map(float, c.candidates))), list(c.days),
        c.perturbations, sorted(set(map(float, c.noise_scales))), c.objective, c.tolerance,
    )  # fmt: skip
    return made == asked


@flow(name="demo")
def demo_flow(out: str, config: str = str(CONFIG_DIR / "demo.yaml"), progress: bool = False) -> dict:
    """Everything under `out`; `progress` shows the long steps' progress bars (`forecast demo`
    does, unless --quiet)."""
    logger = get_run_logger()
    cfg = load(DemoConfig, config)
    root = Path(out).resolve()
    world_dir, archive = str(root / "world"), str(root / "archive.zarr")
    simulate_world(world_dir, dataclasses.asdict(cfg.world), progress)
    ingest_args = {k: v for k, v in dataclasses.asdict(cfg.ingest).items() if k != "member"}
    logger.info(ingest_world(world_dir, archive, ingest_args, progress))
    seeds, train_config = list(cfg.train.seeds), str(config_path(cfg.train.config))
    trained = train_flow(archive, str(root / "packages"), seeds, train_config, progress=progress)
    packages = [r["package"] for r in trained]
    e = cfg.ensemble
    settings = {"perturbations": e.perturbations, "lead_hours": e.lead_hours, "output_leads": e.output_leads}
    calibration = None
    if cfg.calibration is not None:
        c = cfg.calibration
        calibration = str(root / "calibration.json")
        if not _calibration_fits(calibration, packages, c):
            calibrate_flow(
                archive, packages, c.inits, calibration, {"perturbations": c.perturbations}, c.candidates, c.days,
                noise_scales=c.noise_scales, objective=c.objective, tolerance=c.tolerance,
            )  # fmt: skip
    # scored online too, so the demo's calibration can be judged over five init times, not one
    hindcast_settings = {**settings, "score": True}
    if calibration:  # the M-climate is the forecast's own ensemble: the same amplitudes
        calibrated = apply_calibration(RunSettings.from_dict(hindcast_settings), calibration, packages)
        hindcast_settings = dataclasses.asdict(calibrated)
    hindcast = str(root / "hindcast.zarr")
    for init in e.hindcasts:  # the model's own climate, for the EFI
        run_members(archive, packages, init, hindcast, hindcast_settings, progress)
    mclimate(archive, hindcast, e.init_time, e.mclimate_window_days)
    forecast_dir = str(root / "forecast")
    result = forecast_flow(
        archive, packages, forecast_dir, init_time=e.init_time, settings=settings, progress=progress,
        calibration=calibration,
    )  # fmt: skip
    logger.info("demo done: report %s", result["report"])
    return {"archive": archive, "packages": packages, "hindcast": hindcast, "calibration": calibration, **result}
