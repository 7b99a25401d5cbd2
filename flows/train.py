"""Prefect flow: train N checkpoints (one per seed, mapped tasks) and score each against
persistence and climatology.

Every checkpoint is trained with its own seed: in HENS each is a model perturbation. The
default config (train.yaml) trains each in two stages, an MSE checkpoint and then its CRPS
fine-tuning with model noise, both from this seed. Training resumes where an interrupted task
left off (either stage), so retries are cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from forecast.config import CONFIG_DIR, load
from forecast.training.loop import TrainConfig, train

SCORED = ("z500", "t850")


def summarise(package: Path, channels=SCORED, leads=("24", "72")) -> dict:
    """RMSE of the checkpoint and of the baselines for the headline channels and leads."""
    skill = json.loads((package / "skill.json").read_text())
    rows = {}
    for c in channels:
        if c not in skill["rmse"]:
            continue
        for lead in leads:
            model = skill["rmse"][c][lead]
            rows[f"{c}@{lead}h"] = {
                "model": model,
                "persistence": skill["persistence"][c][lead],
                "climatology": skill["climatology"][c][lead],
                "beats_both": model < skill["persistence"][c][lead] and model < skill["climatology"][c][lead],
            }
    return {"package": str(package), "scores": rows}


@task(retries=1, retry_delay_seconds=5, task_run_name="train seed {seed}")
def train_checkpoint(
    archive: str, out_dir: str, seed: int, config: str, device: str | None, progress: bool = False
) -> dict:
    package = Path(out_dir) / f"seed{seed:03d}"
    cfg = load(TrainConfig, config)
    history = train(archive, package, seed=seed, cfg=cfg, device=device, progress_bar=progress)["history"]
    get_run_logger().info("seed %d: final validation loss %.4f", seed, history[-1]["valid_loss"])
    return {"seed": seed, **summarise(package)}


@flow(name="train-checkpoints")
def train_flow(
    archive: str,
    out_dir: str,
    seeds: list[int],
    config: str = str(CONFIG_DIR / "train.yaml"),
    device: str | None = None,
    progress: bool = False,
) -> list[dict]:
    """One package per seed under `out_dir` (seedNNN), trained concurrently; `progress` shows
    a bar per seed (for a terminal; scheduled runs log each epoch)."""
    futures = train_checkpoint.map(archive, out_dir, seeds, config, device, progress)
    results = [f.result() for f in futures]
    lines = ["| seed | score | model | persistence | climatology | beats both |", "|---|---|---|---|---|---|"]
    for r in results:
        for name, s in r["scores"].items():
            lines.append(
                f"| {r['seed']} | {name} | {s['model']:.4g} | {s['persistence']:.4g} | "
                f"{s['climatology']:.4g} | {'yes' if s['beats_both'] else 'no'} |"
            )
    create_markdown_artifact(key="checkpoint-skill", markdown="# Checkpoint skill (RMSE)\n\n" + "\n".join(lines))
    return results
