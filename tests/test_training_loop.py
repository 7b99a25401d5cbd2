"""The training loop: it learns, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from synthetic import six_hourly, write_cds

from forecast.ingest import ingest
from forecast.model import ModelConfig, load_package
from forecast.training.loop import TrainConfig, learning_rate, train

TINY = ModelConfig(embed_dim=8, num_layers=1)


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop")
    ingest([write_cds(d / "a.nc", six_hourly("2020-01-01T00", 48), nlat=9, nlon=16)], d / "a.zarr", progress=False)
    return str(d / "a.zarr")


def test_batch_bounds_are_checked_on_load():
    with pytest.raises(ValueError, match="finetune_max_batches must be >= 1"):
        TrainConfig(finetune_max_batches=0)
    cfg = TrainConfig(epochs=2, max_batches_per_epoch=7, finetune_max_batches=3)
    assert [cfg.max_batches(e) for e in range(3)] == [7, 7, 3]
    assert TrainConfig(epochs=1, max_batches_per_epoch=7).max_batches(1) == 7  # None: the one-step bound


def test_a_validation_sample_leaves_the_weights_as_they_are(small_archive, tmp_path):
    """max_valid_batches bounds each epoch's validation loss to a sample of the period: the
    weights are those of a training validated on all of it, bit for bit."""
    cfg = TrainConfig(
        model=TINY, epochs=2, finetune_epochs=0, batch_size=2, max_batches_per_epoch=3, warmup_steps=2,
        train_end="2020-01-09T00", valid_start="2020-01-09T06", max_valid_batches=None, skill_inits=2,
    )  # fmt: skip
    whole = train(small_archive, tmp_path / "whole", seed=2, cfg=cfg, device="cpu")
    sample = train(small_archive, tmp_path / "sample", seed=2, cfg=replace(cfg, max_valid_batches=2), device="cpu")
    assert [h["valid_batches"] for h in whole["history"]] == [7, 7]  # 15 validation steps, pairs
    assert [h["valid_batches"] for h in sample["history"]] == [2, 2]
    assert [h["train_loss"] for h in whole["history"]] == [h["train_loss"] for h in sample["history"]]
    a = load_file(str(tmp_path / "whole" / "weights.safetensors"))
    b = load_file(str(tmp_path / "sample" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="max_valid_batches must be >= 1"):
        TrainConfig(max_valid_batches=0)


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10)
    lrs = [learning_rate(cfg, s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] < 2e-5


def test_interrupted_training_resumes_to_the_same_weights(small_archive, tmp_path):
    cfg = TrainConfig(
        model=TINY,
        epochs=2,
        finetune_epochs=1,
        finetune_rollout_steps=2,
        batch_size=4,
        max_batches_per_epoch=3,
        finetune_max_batches=2,
        warmup_steps=2,
        train_end="2020-01-09T00",
        valid_start="2020-01-09T06",
    )
    full = train(small_archive, tmp_path / "full", seed=5, cfg=cfg, device="cpu")
    partial = train(small_archive, tmp_path / "resumed", seed=5, cfg=cfg, device="cpu", stop_after_epoch=0)
    assert partial["epoch"] == 0 and not (tmp_path / "resumed" / "config.json").exists()
    resumed = train(small_archive, tmp_path / "resumed", seed=5, cfg=cfg, device="cpu")
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][2]["rollout_steps"] == 2  # the fine-tuning epoch rolls out 2 steps
    # the fine-tuning epoch has its own bound on batches, the one-step epochs theirs
    assert [h["batches"] for h in resumed["history"]] == [3, 3, 2]
    a = load_file(str(tmp_path / "full" / "weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["history"] == [
        {**h, "seconds": full["history"][i]["seconds"]} for i, h in enumerate(resumed["history"])
    ]
    model, config = load_package(tmp_path / "resumed")
    assert config["seed"] == 5 and config["training"]["train_period"][1] == "2020-01-09T00"
    skill = json.loads((tmp_path / "resumed" / "skill.json").read_text())
    assert set(skill["rmse"]["z500"]) == {"24", "48", "72"} and skill["valid_period"][0] == "2020-01-09T06"
    # Another seed is another model (the model perturbation HENS relies on).
    other = train(small_archive, tmp_path / "other", seed=6, cfg=cfg, device="cpu")
    c = load_file(str(tmp_path / "other" / "weights.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert other["history"][-1]["valid_loss"] is not None
    assert json.loads((tmp_path / "full" / "config.json").read_text())["training"]["history"]


def test_a_short_training_beats_persistence_on_the_world(world_archive, tmp_path):
    from forecast.training.data import ArchiveWindows
    from forecast.training.loop import WeightedLoss

    cfg = TrainConfig(
        model=ModelConfig(embed_dim=32, num_layers=2),
        epochs=3,
        finetune_epochs=0,
        batch_size=8,
        max_batches_per_epoch=25,
        lr=3e-3,
        warmup_steps=5,
        train_end="2001-10-31T18",
        valid_start="2001-11-01T00",
    )
    history = train(world_archive, tmp_path / "pkg", seed=0, cfg=cfg, device="cpu")["history"]
    model, _ = load_package(tmp_path / "pkg")
    loss_fn = WeightedLoss(model, {})
    valid = ArchiveWindows(world_archive, "2001-11-01T00", None, 1)
    persistence = [float(loss_fn(b.state, b.targets[:, 0])) for b in valid.batches(8, seed=0)]
    persistence_loss = sum(persistence) / len(persistence)
    print(f"validation loss: persistence {persistence_loss:.3f}, trained {history[-1]['valid_loss']:.3f}")
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    assert history[-1]["valid_loss"] < 0.95 * persistence_loss


def test_cli_train_writes_a_loadable_package(small_archive, tmp_path, capsys):
    from forecast.cli import main

    config = tmp_path / "t.yaml"
    config.write_text(
        "model: {embed_dim: 8, num_layers: 1}\nepochs: 1\nfinetune_epochs: 1\nbatch_size: 4\n"
        "max_batches_per_epoch: 2\nwarmup_steps: 1\ntrain_end: '2020-01-07T00'\nvalid_start: '2020-01-07T06'\n"
    )
    assert (
        main(
            [
                "-q",
                "train",
                "--archive",
                small_archive,
                "--seed",
                "3",
                "--out",
                str(tmp_path / "p"),
                "--config",
                str(config),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "trained" in capsys.readouterr().out
    _, cfg = load_package(tmp_path / "p", time_step_hours=6)
    assert cfg["seed"] == 3 and cfg["architecture"]["embed_dim"] == 8
    config.write_text("finetune_rollout_steps: 17\n")
    assert (
        main(
            [
                "-q",
                "train",
                "--archive",
                small_archive,
                "--seed",
                "3",
                "--out",
                str(tmp_path / "q"),
                "--config",
                str(config),
            ]
        )
        == 2
    )
    assert "finetune_rollout_steps must be 2..16" in capsys.readouterr().err


def test_killed_training_process_resumes_to_the_same_weights(small_archive, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from safetensors import safe_open

    config = tmp_path / "t.yaml"
    config.write_text(
        "model: {embed_dim: 8, num_layers: 1}\nepochs: 5\nfinetune_epochs: 1\nbatch_size: 4\n"
        "max_batches_per_epoch: 6\nwarmup_steps: 2\ntrain_end: '2020-01-09T00'\n"
        "valid_start: '2020-01-09T06'\n"
    )
    args = ["train", "--archive", small_archive, "--seed", "11", "--config", str(config), "--device", "cpu"]
    tests = Path(__file__).resolve().parent
    # The subprocess computes with this process's thread count: rounding depends on it.
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    killed = tmp_path / "killed"
    # SIGKILL in the middle of the state's second save (after epoch 1), before its rename
    # (tests/kill_at_write.py): the state after epoch 0 stays, beside a half-written file
    hook = [sys.executable, str(tests / "kill_at_write.py"), "--save-file", "2", "--"]
    proc = subprocess.run([*hook, "-q", *args, "--out", str(killed)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    state = killed / ".train" / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        assert json.loads(f.metadata()["progress"])["epoch"] == 0
    assert (killed / ".train" / "state.safetensors.partial").stat().st_size < state.stat().st_size
    assert not (killed / "weights.safetensors").exists()

    from forecast.config import load
    from forecast.training.loop import TrainConfig

    cfg = load(TrainConfig, config)
    resumed = train(small_archive, killed, seed=11, cfg=cfg, device="cpu")
    clean = train(small_archive, tmp_path / "clean", seed=11, cfg=cfg, device="cpu")
    losses = [(h["epoch"], h["train_loss"], h["valid_loss"]) for h in resumed["history"]]
    assert losses == [(h["epoch"], h["train_loss"], h["valid_loss"]) for h in clean["history"]]
    assert [e for e, *_ in losses] == list(range(6))
    a = load_file(str(killed / "weights.safetensors"))
    b = load_file(str(tmp_path / "clean" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in killed.rglob("*") if ".partial" in p.name] == []  # replaced by the next save


def test_loading_for_an_archive_checks_it(small_archive, tmp_path):
    from forecast.model import PackageError
    from forecast.training.data import load_for_archive

    cfg = TrainConfig(
        model=TINY,
        epochs=1,
        finetune_epochs=0,
        batch_size=4,
        max_batches_per_epoch=1,
        warmup_steps=1,
        train_end="2020-01-07T00",
        valid_start="2020-01-07T06",
    )
    train(small_archive, tmp_path / "p", seed=1, cfg=cfg, device="cpu")
    model, _ = load_for_archive(tmp_path / "p", small_archive)
    assert model.channels == ["z500", "z850", "t500", "t850", "msl"]
    other = tmp_path / "other.zarr"
    ingest(
        [write_cds(tmp_path / "o.nc", six_hourly("2020-01-01T00", 4), nlat=9, nlon=16, drop=("msl",))],
        other,
        progress=False,
    )
    with pytest.raises(PackageError, match=r"package-only: \['msl'\]"):
        load_for_archive(tmp_path / "p", other)


def test_input_noise_is_validated():
    with pytest.raises(ValueError, match="input_noise"):
        TrainConfig(input_noise=-0.1)
    assert TrainConfig().input_noise > 0  # the default trains on noisy inputs (15-day stability)
