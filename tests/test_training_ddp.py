"""`forecast train` under torchrun with two CPU processes (gloo): ranks end with identical
weights and the loss goes down, in both stages of a two-stage (MSE, then CRPS) training: both
stages train in one process group (rank 1 waits for the first stage's skill.json while rank 0
scores it). Leaving the group and joining a new one failed here about 3 runs in 4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_process_training_keeps_ranks_identical(world_archive, tmp_path):
    first = tmp_path / "first.yaml"
    periods = "train_end: '2001-10-31T18'\nvalid_start: '2001-11-01T00'\nskill_inits: 4\n"
    first.write_text(
        "model: {embed_dim: 16, num_layers: 1}\nepochs: 3\nfinetune_epochs: 0\nbatch_size: 4\n"
        "max_batches_per_epoch: 8\nlr: 0.003\nwarmup_steps: 3\n" + periods
    )
    config = tmp_path / "t.yaml"
    config.write_text(
        "model: {embed_dim: 16, num_layers: 1, noise_length_scales_km: [2000]}\nloss: crps\n"
        f"pretrain: {first}\nepochs: 1\nfinetune_epochs: 0\nbatch_size: 2\nmax_batches_per_epoch: 3\n"
        "input_noise: 0.0\n" + periods
    )
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    out = tmp_path / "pkg"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "forecast.cli",
            "-q",
            "train",
            "--archive",
            world_archive,
            "--seed",
            "2",
            "--out",
            str(out),
            "--config",
            str(config),
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = [json.loads((path / "config.json").read_text())["training"] for path in (out / ".pretrain", out)]
    for training in stages:
        assert training["ranks"] == 2
        digests = training["rank_weight_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
    assert stages[1]["config"]["loss"] == "crps" and stages[1]["pretraining"]["config"] == str(first)
    history = stages[0]["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
