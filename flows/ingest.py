"""Prefect flow: ingest reanalysis files into the archive, one task per file group.

The flow only orchestrates; `forecast.ingest.ingest` does the work and is idempotent, so a
retried or re-run task changes nothing that is already in the archive. Groups run in time
order because the archive only appends. Read errors (I/O, timeouts) are retried; bad input
(`IngestError`) is not, since a retry cannot fix it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from forecast.archive import describe
from forecast.ingest import ingest
from forecast.ingest.pipeline import expand_sources, group_sources

READ_ERRORS = (OSError, TimeoutError)


def _retry_on_read_errors(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, READ_ERRORS)


@task(
    retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_on_read_errors, task_run_name="ingest {label}"
)
def ingest_group(
    label: str,
    files: list[str],
    archive: str,
    grid: str | None,
    channels: list[str] | None,
    time_step_hours: int,
    member: int,
) -> dict:
    report = ingest(
        files, archive, grid=grid, channels=channels, time_step_hours=time_step_hours, member=member, progress=False
    )
    get_run_logger().info(report.summary())
    return {"group": label, "added": report.added, "first": report.first, "last": report.last}


@flow(name="ingest", log_prints=True)
def ingest_flow(
    sources: list[str],
    archive: str,
    grid: str | None = None,
    channels: list[str] | None = None,
    time_step_hours: int = 6,
    member: int = 0,
) -> list[dict]:
    """Ingest `sources` (files, directories, Zarr stores or URLs) into `archive`."""
    groups = group_sources(expand_sources(sources))
    logging.getLogger(__name__).info("%d file groups", len(groups))
    results = []
    for label, files in groups:
        results.append(ingest_group(label, files, str(archive), grid, channels, time_step_hours, member))
    rows = "\n".join(f"| {r['group']} | {r['added']} | {r['first'] or ''} | {r['last'] or ''} |" for r in results)
    create_markdown_artifact(
        key="ingest-report",
        markdown=f"# Ingest into `{Path(archive).name}`\n\n| group | steps added | first | last |\n|---|---|---|---|\n"
        f"{rows}\n\n```\n{describe(str(archive))}\n```\n",
        description="time steps added per file group",
    )
    return results
