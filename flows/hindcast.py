"""Prefect flow: hindcasts over a date range (`forecast backfill`), and their M-climate.

Every init time from `start` to `end` every `every_hours` goes into one hindcast store. Init
times already complete (all members written and the statistics in) are skipped, so a backfill
over hundreds of dates can be rerun after any failure and does only what is missing. At most
`max_concurrent` init times run at once (they share the store: adding an init time and
writing statistics are serialised by a lock file, members go to each init's own chunks). A
failed init time does not stop the others; the flow fails at the end, naming them. With
`mclimate_dates`, the M-climate of each date is rebuilt from the store afterwards.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.daily import check_init_time, run_members
from forecast.archive import Archive
from forecast.calibration import apply_calibration
from forecast.ensemble.engine import RunSettings
from forecast.ensemble.progress import init_complete
from forecast.ensemble.store import ForecastStore, StoreError


def init_times(start: str, end: str, every_hours: int = 24, step_hours: int | None = None) -> list[str]:
    """Init times from `start` to `end` every `every_hours`; with `step_hours` (the archive's
    time step) they must all be on its cadence: `start` on it and `every_hours` a multiple."""
    first, last = np.datetime64(start, "h"), np.datetime64(end, "h")
    if every_hours <= 0 or last < first:
        raise ValueError(f"need start <= end and every_hours > 0, got {start} .. {end} every {every_hours} h")
    if step_hours is not None:
        check_init_time(str(first), step_hours)
        if every_hours % step_hours:
            raise ValueError(
                f"every_hours {every_hours} is not a multiple of the archive's {step_hours}-hour time step"
            )
    return [str(t) for t in np.arange(first, last + np.timedelta64(1, "h"), np.timedelta64(every_hours, "h"))]


def completed_inits(store: str) -> set[str]:
    """Init times whose members are all written and whose statistics are complete."""
    try:
        fs = ForecastStore.open(store)
    except StoreError:
        return set()
    return {str(np.datetime64(t, "h")) for i, t in enumerate(fs.init_times) if init_complete(fs, i)}


@task(retries=1, retry_delay_seconds=5, task_run_name="M-climate {target}")
def build_mclimate_task(archive: str, store: str, target: str, window_days: int) -> str:
    from forecast.diagnostics.mclimate import build_mclimate

    return build_mclimate(archive, [store], target, window_days=window_days)


@flow(name="hindcast")
def hindcast_flow(
    archive: str,
    packages: list[str],
    out_dir: str,
    start: str,
    end: str,
    every_hours: int = 24,
    settings: dict | None = None,
    max_concurrent: int = 2,
    mclimate_dates: list[str] | None = None,
    mclimate_window_days: int = 15,
    calibration: str | None = None,
) -> dict:
    logger = get_run_logger()
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    store = str(Path(out_dir) / "hindcast.zarr")
    run = RunSettings.from_dict(settings)
    if calibration:  # the M-climate's ensemble must be the forecast's: the same amplitudes
        run = apply_calibration(run, calibration, packages)
    run_settings = dataclasses.asdict(run)
    wanted = init_times(start, end, every_hours, Archive.open(archive).time_step_hours)
    done = completed_inits(store)
    todo = [t for t in wanted if t not in done]
    logger.info("%d init times, %d already complete, %d to run", len(wanted), len(wanted) - len(todo), len(todo))
    failed = []
    for lo in range(0, len(todo), max_concurrent):  # waves of at most max_concurrent init times
        wave = todo[lo : lo + max_concurrent]
        futures = [run_members.submit(archive, packages, t, store, run_settings) for t in wave]
        for t, future in zip(wave, futures, strict=True):
            state = future.wait() or future.state
            if not state.is_completed():
                failed.append(t)
                logger.error("hindcast %s failed: %s", t, state.message)
    paths = []
    if mclimate_dates and not failed:
        paths = [build_mclimate_task(archive, store, d, mclimate_window_days) for d in mclimate_dates]
    create_markdown_artifact(
        key="hindcast-summary",
        markdown=f"# Hindcasts {start} .. {end}\n\n- store `{store}`\n- {len(wanted)} init times: "
        f"{len(wanted) - len(todo)} already complete, {len(todo) - len(failed)} run, {len(failed)} failed"
        + (f" ({', '.join(failed)}; rerun the same backfill to redo only these)" if failed else ""),
    )
    if failed:
        raise RuntimeError(f"hindcasts failed for {failed}; rerun the same backfill: completed init times are kept")
    return {"store": store, "ran": todo, "skipped": sorted(set(wanted) - set(todo)), "mclimate": paths}
