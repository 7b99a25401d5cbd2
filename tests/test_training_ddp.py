"""`forecast train` under torchrun with two CPU processes (gloo): ranks end with identical
weights and the loss goes down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_process_training_keeps_ranks_identical(world_archive, tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text(
        "model: {embed_dim: 16, num_layers: 1}\nepochs: 3\nfinetune_epochs: 0\nbatch_size: 4\n"
        "max_batches_per_epoch: 8\nlr: 0.003\nwarmup_steps: 3\ntrain_end: '2001-10-31T18'\n"
        "valid_start: '2001-11-01T00'\nskill_inits: 4\n"
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
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["ranks"] == 2
    digests = training["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    history = training["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
