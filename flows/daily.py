"""Prefect flow: the forecast for one init time, the unit of the daily scheduled run.

Steps, each a task over a library function: ingest new analyses (if sources are given; skipped
by checksum when already in), run the ensemble with online scores (resumes a killed run:
complete blocks are kept), score the store against the archive (`diagnose`: this init time's
verifiable leads, and the leads of earlier init times whose analyses came in since), write
`report-INIT.md` with its plots beside the store and publish the same markdown and a score
table as artifacts. The init time is a parameter or, for a scheduled run, derived from the
run's *scheduled* start time (never from "now"), so a late or retried run forecasts the same
init time. One run per init time at a time: a second one stops at once (a file lock beside
the store) instead of interleaving writes. On failure `failure-INIT.md` says what failed and
how to resume.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import traceback
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.diagnose import score
from forecast.archive import Archive
from forecast.calibration import apply_calibration
from forecast.diagnostics.online_scores import hindcast_scores
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.locks import exclusive
from forecast.report import write_report


def resolve_init_time(
    scheduled: dt.datetime, cycle_hours: int = 24, latency_hours: int = 6, step_hours: int | None = None
) -> str:
    """The init time a run scheduled at `scheduled` forecasts: the latest cycle at or before
    scheduled − latency (a 06:00 UTC run forecasts from 00 UTC that day). With `step_hours`
    (the archive's time step) the cycle must be a whole number of steps, or its init times
    would fall between the archive's analyses (a 6-hourly cycle on a 12-hourly archive)."""
    if cycle_hours <= 0 or 24 % cycle_hours:
        raise ValueError(f"cycle_hours must divide 24, got {cycle_hours}")
    if step_hours is not None and cycle_hours % step_hours:
        raise ValueError(
            f"cycle_hours {cycle_hours} is not a multiple of the archive's {step_hours}-hour time step: "
            "its init times would fall between analyses"
        )
    when = scheduled.astimezone(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=latency_hours)
    hours = (when - dt.datetime(when.year, when.month, when.day)).total_seconds() // 3600
    start = dt.datetime(when.year, when.month, when.day) + dt.timedelta(hours=hours - hours % cycle_hours)
    return start.strftime("%Y-%m-%dT%H")


def check_init_time(init_time: str, step_hours: int) -> str:
    """`init_time` (hourly) if it lies on the archive's `step_hours` cadence (00 UTC based,
    where the analyses are), else a ValueError that says which init times would."""
    init = np.datetime64(init_time, "h")
    if int(init.astype(np.int64)) % step_hours:
        day = init.astype("datetime64[D]")
        hours = ", ".join(f"{h:02d}" for h in range(0, 24, step_hours))
        raise ValueError(
            f"init time {init} is not on the archive's {step_hours}-hour time step: "
            f"its analyses are at {hours} UTC (e.g. {day}T00)"
        )
    return str(init)


def paths_for(out_dir: str) -> dict[str, str]:
    out = Path(out_dir)
    return {"store": str(out / "forecast.zarr"), "scores": str(out / "scores.zarr"), "dir": str(out)}


@task(retries=2, retry_delay_seconds=10, task_run_name="ingest new analyses")
def ingest_new(sources: list[str], archive: str) -> str:
    from forecast.ingest import ingest

    return ingest(sources, archive, progress=False).summary()


@task(retries=1, retry_delay_seconds=10, task_run_name="ensemble {init_time}")
def run_members(
    archive: str, packages: list[str], init_time: str, store: str, settings: dict, progress: bool = False
) -> dict:
    # A retry resumes: blocks already complete in the store are not rerun.
    run = RunSettings.from_dict(settings)
    return run_ensemble(archive, packages, init_time, store, run, progress=progress, scores=hindcast_scores)


@task(retries=1, retry_delay_seconds=5, task_run_name="report {init_time}")
def report(store: str, scores: str, archive: str, init_time: str, out_dir: str) -> str:
    path, markdown, rows = write_report(store, scores, archive, init_time, out_dir)
    create_markdown_artifact(key="forecast-report", markdown=markdown, description=f"forecast from {init_time}")
    table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    if table:
        description = f"scores of the forecast from {init_time}"
        create_table_artifact(key="forecast-scores", table=table, description=description)
    return str(path)


def write_failure_report(out_dir: str, init_time: str, error: BaseException, parameters: dict) -> Path:
    path = Path(out_dir) / f"failure-{init_time}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    last = traceback.format_exception(error)[-1].strip()
    path.write_text(
        f"# Forecast from {init_time} failed\n\n"
        f"**What failed:** {last}\n\n"
        "**What is kept:** every member block already marked complete in the forecast store, "
        "and every init time already scored.\n\n"
        "**How to resume:** rerun the same flow with the same parameters (or `forecast run` / "
        "`forecast diagnose` with the same options): only the missing blocks and scores are "
        "computed. Parameters of this run:\n\n"
        f"```json\n{json.dumps(parameters, indent=1, default=str)}\n```\n"
    )
    return path


@flow(name="forecast", flow_run_name="forecast {init_time}")
def forecast_flow(
    archive: str,
    packages: list[str],
    out_dir: str,
    init_time: str | None = None,
    settings: dict | None = None,
    sources: list[str] | None = None,
    cycle_hours: int = 24,
    latency_hours: int = 6,
    progress: bool = False,
    calibration: str | None = None,
) -> dict:
    """The forecast from `init_time` (default: from the scheduled start time) into `out_dir`
    (forecast.zarr, scores.zarr, report-INIT.md, plots-INIT/). `progress` shows the
    ensemble's progress bar (for a terminal; scheduled runs log instead). `calibration`: a
    `forecast calibrate` file, read when the run starts (a recalibration reaches the next
    run), whose per-channel amplitudes replace the settings' (the store records the values)."""
    logger = get_run_logger()
    step_hours = Archive.open(archive).time_step_hours
    if init_time is None:
        from prefect.runtime import flow_run

        init_time = resolve_init_time(flow_run.scheduled_start_time, cycle_hours, latency_hours, step_hours)
    init_time = check_init_time(init_time, step_hours)
    run = RunSettings.from_dict({**(settings or {}), "score": True})
    if calibration:
        run = apply_calibration(run, calibration, packages)
    run_settings = dataclasses.asdict(run)
    p = paths_for(out_dir)
    parameters = {"archive": archive, "packages": packages, "out_dir": out_dir, "init_time": init_time,
                  "settings": settings, "sources": sources, "calibration": calibration}  # fmt: skip
    try:
        with exclusive(f"{p['store']}.run-{init_time}.lock", f"the forecast from {init_time}"):
            if sources:
                logger.info(ingest_new(sources, archive))
            summary = run_members(archive, packages, init_time, p["store"], run_settings, progress)
            logger.info("%d members in %s, %d blocks run", summary["members"], p["store"], summary["blocks_run"])
            score(p["store"], archive, p["scores"])
            path = report(p["store"], p["scores"], archive, init_time, out_dir)
    except BaseException as e:
        failure = write_failure_report(out_dir, init_time, e, parameters)
        logger.error("forecast from %s failed; see %s", init_time, failure)
        raise
    stale = Path(out_dir) / f"failure-{init_time}.md"
    stale.unlink(missing_ok=True)  # this init time has now succeeded
    return {
        "init_time": init_time, **p, "report": path, "members": summary["members"], "blocks_run": summary["blocks_run"]
    }  # fmt: skip
