"""Prefect flow: score a forecast store against the archive (`forecast diagnose`).

Every complete init time of the store is scored into the scores store (DESIGN §2.4); init
times scored before are skipped except for lead times whose analyses have reached the
archive since, so the same flow run daily keeps every past forecast's scores growing as the
verifying analyses come in. Optionally the plots of the scores are written.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from forecast.diagnostics.verify import diagnose
from forecast.locks import store_lock


@task(retries=2, retry_delay_seconds=5, task_run_name="score {store}")
def score(store: str, archive: str, scores: str, rescore: bool = False) -> dict:
    with store_lock(scores):  # one writer per scores store (daily runs, backfills)
        return diagnose(store, archive, scores, rescore=rescore, progress=False)


@task(retries=1, retry_delay_seconds=5, task_run_name="plots of {scores}")
def plot(
    scores: str, plots_dir: str, store: str, archive: str, channels: list[str] | None, point: tuple[float, float]
) -> list[str]:
    from forecast.diagnostics.plots import plot_scores

    paths = plot_scores(scores, plots_dir, forecast_store=store, archive=archive, channels=channels, point=point)
    return [str(p) for p in paths]


@flow(name="diagnose")
def diagnose_flow(
    store: str,
    archive: str,
    out: str,
    plots_dir: str | None = None,
    rescore: bool = False,
    channels: list[str] | None = None,
    point: tuple[float, float] = (50.0, 10.0),
) -> dict:
    """Scores of `store` into `out`; with `plots_dir`, their plots. Returns the init times
    scored now with their number of verified leads, and the plots."""
    logger = get_run_logger()
    scored = score(store, archive, out, rescore)
    for init, leads in scored.items():
        logger.info("%s: init %s scored, %d lead times verified", out, init, leads)
    if not scored:
        logger.info("%s: nothing new to score in %s", out, store)
    paths = plot(out, plots_dir, store, archive, channels, point) if plots_dir else []
    if paths:
        logger.info("%d plots in %s", len(paths), Path(plots_dir))
    return {"scored": scored, "plots": paths}
