"""Prefect flow: a huge ensemble with member blocks as tasks on a Dask cluster (prefect-dask).

The flow plans the run and creates the store before fanning out, so workers only ever open
it. Each task runs its blocks with `run_ensemble(blocks=...)`, which folds them into the
store's per-lead statistics under each lead's lock: there is nothing to merge, and a task
that dies loses only what it had not committed. What is left to do is decided in one place
(`forecast.ensemble.progress`), so a rerun after a crash redoes only the blocks that are
neither stored nor in the statistics. The same code runs on a `LocalCluster` (tests, one
machine) or, given a scheduler address, on dask-cuda or dask-jobqueue clusters.
"""

from __future__ import annotations

import dataclasses
import os

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from forecast.diagnostics.online_scores import hindcast_scores
from forecast.ensemble.engine import RunSettings, online_state, open_or_create_store, plan_run, run_ensemble
from forecast.ensemble.progress import catch_up, pending


@task(retries=2, retry_delay_seconds=5, task_run_name="ensemble blocks {blocks}")
def run_blocks(
    archive: str,
    packages: list[str],
    init_time: str,
    out: str,
    settings: dict,
    blocks: list[int],
    device: str | None = None,
    threads: int | None = None,
) -> int:
    """One worker's share: these blocks' members written and folded into the statistics.
    Returns the number of blocks it ran (a retry runs only what the failed try left)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    summary = run_ensemble(
        archive, packages, init_time, out, RunSettings.from_dict(settings), device=device, progress=False,
        blocks=blocks, scores=hindcast_scores,
    )  # fmt: skip
    return summary["blocks_run"]


@flow(name="huge-ensemble")
def ensemble_flow(
    archive: str,
    packages: list[str],
    init_time: str,
    out: str,
    settings: dict | None = None,
    blocks_per_task: int = 1,
    device: str | None = None,
    threads_per_task: int | None = None,
    block_retries: int = 2,
) -> dict:
    """The ensemble from `init_time` into the store `out`, member blocks as tasks. A task that
    fails after `block_retries` retries loses only its own blocks: every other task's blocks
    are written and in the statistics before the flow fails naming the failed ones, and a
    rerun runs only those."""
    logger = get_run_logger()
    run = RunSettings.from_dict(settings)
    plan = plan_run(archive, packages, init_time, run)
    store, init_index = open_or_create_store(plan, out)
    store.remove_stray_temp_files(init_index)  # the shared parts; workers sweep their blocks and leads
    all_blocks = plan.layout.blocks(plan.block_size)
    # The block size is fixed here, once, so every worker cuts the same blocks.
    fixed = {**dataclasses.asdict(run), "block_size": plan.block_size}
    state = online_state(plan, store, init_index, out, hindcast_scores)
    todo = [w.block.index for w in catch_up(store, init_index, state, pending(store, init_index, state, all_blocks))]
    logger.info("%d members in %d blocks; %d blocks to run", plan.layout.size, len(all_blocks), len(todo))
    shares = [todo[i : i + blocks_per_task] for i in range(0, len(todo), blocks_per_task)]
    submit = run_blocks.with_options(retries=block_retries).submit
    futures = [submit(archive, packages, init_time, out, fixed, share, device, threads_per_task) for share in shares]
    failed: dict[str, str] = {}
    for share, future in zip(shares, futures, strict=True):
        future.wait()
        if not future.state.is_completed():  # keep going: the other shares' blocks are not lost
            failed[",".join(map(str, share))] = str(future.state.message)
            logger.error("blocks %s failed after %d retries: %s", share, block_retries, future.state.message)
    if failed:
        raise RuntimeError(
            f"{out}: the ensemble from {plan.init_time} lost blocks {sorted(failed)} "
            f"({next(iter(failed.values()))}); {len(shares) - len(failed)} of {len(shares)} tasks are saved: "
            "rerun the same flow to run only the failed blocks"
        )
    finished = state.finish()
    summary = {
        "store": out,
        "init_time": str(plan.init_time),
        "members": plan.layout.size,
        "blocks": len(all_blocks),
        "blocks_run": len(todo),
        "statistics_complete": finished,
    }
    create_markdown_artifact(
        key="ensemble-run",
        markdown=(
            f"# Ensemble {plan.init_time}\n\n{plan.layout.size} members "
            f"({len(plan.layout.checkpoints)} checkpoints x {plan.layout.perturbations} perturbations x 2), "
            f"{len(todo)} of {len(all_blocks)} blocks run, store `{out}`"
        ),
    )
    return summary


def run_on_dask(
    archive: str,
    packages: list[str],
    init_time: str,
    out: str,
    settings: dict | None = None,
    address: str | None = None,
    n_workers: int = 2,
    **kwargs,
) -> dict:
    """The flow on a Dask cluster: the scheduler at `address`, or a fresh `LocalCluster` of
    `n_workers` single-threaded processes (torch gets the cores split between them)."""
    from prefect_dask import DaskTaskRunner

    if address:
        runner = DaskTaskRunner(address=address)
    else:
        runner = DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": n_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
        kwargs.setdefault("threads_per_task", max(1, (os.cpu_count() or 1) // n_workers))
    # distributed's LocalCluster sets OMP_NUM_THREADS=1 (and MKL_..., OPENBLAS_...) in this
    # process's environment for its workers and leaves it there: every subprocess started
    # later would then run torch on one thread, with other rounding than this process.
    saved = dict(os.environ)
    try:
        return ensemble_flow.with_options(task_runner=runner)(archive, packages, init_time, out, settings, **kwargs)
    finally:
        os.environ.clear()
        os.environ.update(saved)
