"""`forecast serve`: the daily forecast deployment (cron) and the hindcast deployment, served
by one long-running process (Prefect's `serve`: no work pool or worker needed).

The daily deployment's runs carry no init time: each derives it from its own scheduled start
time (`resolve_init_time`), so a run that starts late, or is retried, still forecasts the init
time it was scheduled for. For work-pool deployments instead, see `prefect.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from forecast.config import OperationsConfig, config_path, load
from forecast.ensemble.engine import RunSettings


def run_settings(cfg: OperationsConfig) -> dict:
    settings = load(RunSettings, config_path(cfg.ensemble_config))
    overrides = {k: v for k, v in (("perturbations", cfg.perturbations), ("lead_hours", cfg.lead_hours)) if v}
    return json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(settings, **overrides))))


def deployments(cfg: OperationsConfig) -> list:
    from prefect.schedules import Cron

    from flows.daily import forecast_flow
    from flows.hindcast import hindcast_flow

    def absolute(p: str) -> str:
        return p if "://" in p else str(Path(p).resolve())

    common = {"archive": absolute(cfg.archive), "packages": [absolute(p) for p in cfg.packages]}
    settings = run_settings(cfg)
    daily = forecast_flow.to_deployment(
        name="daily",
        schedules=[Cron(cfg.cron, timezone=cfg.timezone)],
        parameters={
            **common,
            "out_dir": absolute(cfg.out_dir),
            "settings": settings,
            "sources": [absolute(s) for s in cfg.sources] if cfg.sources else None,
            "cycle_hours": cfg.cycle_hours,
            "latency_hours": cfg.latency_hours,
            "calibration": absolute(cfg.calibration) if cfg.calibration else None,
        },
        description=f"the ensemble forecast, {cfg.cron} ({cfg.timezone}); init time from the scheduled time",
    )
    backfill = hindcast_flow.to_deployment(
        name="backfill",
        parameters={
            **common,
            "out_dir": absolute(cfg.hindcast_dir or str(Path(cfg.out_dir) / "hindcast")),
            "settings": settings,
            "max_concurrent": cfg.hindcast_max_concurrent,
            "calibration": absolute(cfg.calibration) if cfg.calibration else None,
        },
        description="hindcasts over a date range: run with --param start=... --param end=...",
    )
    return [daily, backfill]


def serve_operations(config: str, cron: str | None = None) -> None:
    from prefect import serve

    cfg = load(OperationsConfig, config)
    if cron:
        cfg = dataclasses.replace(cfg, cron=cron)
    serve(*deployments(cfg))
