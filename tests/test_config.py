"""Configuration files are validated on load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from forecast.config import (
    CONFIG_DIR,
    ConfigError,
    DemoConfig,
    DiagnoseConfig,
    IngestConfig,
    OperationsConfig,
    WorldConfig,
    config_path,
    load,
    shipped_configs,
)


def test_shipped_configs_load():
    demo = load(DemoConfig, CONFIG_DIR / "demo.yaml")
    assert demo.world.years >= 1 and demo.ingest.time_step_hours == 6
    era5 = load(IngestConfig, CONFIG_DIR / "ingest-era5-1deg.yaml")
    assert era5.grid == "1.0" and "z500" in era5.channels
    assert load(WorldConfig, CONFIG_DIR / "world.yaml") == WorldConfig()
    assert load(DiagnoseConfig, CONFIG_DIR / "diagnose.yaml") == DiagnoseConfig()
    ops = load(OperationsConfig, CONFIG_DIR / "operations.yaml")
    assert ops.cron == "0 6 * * *" and ops.timezone == "UTC" and ops.latency_hours == 6
    assert ops.calibration == "demo-output/calibration.json"  # the demo's, for the demo's packages


@pytest.mark.parametrize(
    "text, message",
    [
        ("world: {yeras: 2}", r"unknown keys \['yeras'\]"),
        ("world: {years: two}", r"world.years: expected int, got 'two'"),
        ("world: {years: 0}", r"world.years must be >= 1"),
        ("ingest: {time_step_hours: 5}", r"must divide 24"),
        ("ingest: {channels: z500}", r"ingest.channels: expected a list"),
        ("- 1\n- 2", r"top level must be a mapping"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(DemoConfig, path)


def test_train_config_loads_with_nested_model_and_checked_weights(tmp_path):
    from forecast.training.loop import TrainConfig

    mse = load(TrainConfig, CONFIG_DIR / "train-mse.yaml")
    assert mse.model.grid == "equiangular" and mse.finetune_rollout_steps == 4 and mse.loss == "mse"
    # the default checkpoint is train-mse.yaml's network with model noise, fine-tuned on the CRPS
    # with its spectral term over one one-step epoch of 120 batches and 45 16-step (4-day)
    # batches, nothing else
    default = load(TrainConfig, CONFIG_DIR / "train.yaml")
    assert default.pretrain == "train-mse.yaml" and load(TrainConfig, default.pretrain) == mse
    assert default.loss == "crps" and default.model.stochastic and default.finetune_rollout_steps == 16
    assert (default.epochs, default.max_batches(0), default.max_batches(1)) == (1, 120, 45)
    assert default.spectral_crps_weight == 0.1
    plain_model = dataclasses.replace(default.model, noise_length_scales_km=())
    plain = dataclasses.replace(
        default, loss="mse", model=plain_model, finetune_rollout_steps=4, finetune_max_batches=None,
        spectral_crps_weight=0.0, epochs=3, pretrain=None,
    )  # fmt: skip
    assert plain == mse
    # the demo's: the same two stages, smaller
    demo = load(TrainConfig, CONFIG_DIR / "train-demo.yaml")
    assert demo.pretrain == "train-demo-mse.yaml" and demo.loss == "crps" and demo.epochs == 0
    assert (demo.max_batches(0), load(TrainConfig, demo.pretrain).finetune_epochs) == (20, 0)
    assert load(TrainConfig, demo.pretrain).model == dataclasses.replace(demo.model, noise_length_scales_km=())
    # the from-scratch recipe of the first science table: three one-step CRPS epochs, 120 batches
    scratch = load(TrainConfig, CONFIG_DIR / "train-stochastic-16.yaml")
    assert dataclasses.replace(scratch, epochs=1, finetune_max_batches=45, pretrain="train-mse.yaml") == default
    bad = tmp_path / "t.yaml"
    bad.write_text("channel_weights: {z500: heavy}\n")
    with pytest.raises(ConfigError, match=r"channel_weights.z500: expected float, got 'heavy'"):
        load(TrainConfig, bad)
    bad.write_text("model: {embed_dim: 8, depth: 3}\n")
    with pytest.raises(ConfigError, match=r"model: unknown keys \['depth'\]"):
        load(TrainConfig, bad)


def test_a_two_stage_training_config_is_checked_with_its_first_stage(tmp_path):
    from forecast.training.loop import TrainConfig

    stochastic = "model: {noise_length_scales_km: [1000]}\nloss: crps\n"
    cfg = tmp_path / "t.yaml"
    cfg.write_text(stochastic + "pretrain: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"t.yaml: .*nowhere.yaml: no such file"):
        load(TrainConfig, cfg)
    first = tmp_path / "first.yaml"
    first.write_text("epochs: many\n")
    cfg.write_text(stochastic + f"pretrain: {first}\n")
    with pytest.raises(ConfigError, match=r"first.yaml.epochs: expected int, got 'many'"):
        load(TrainConfig, cfg)
    first.write_text(f"pretrain: {CONFIG_DIR / 'train-mse.yaml'}\n")  # no chains: one first stage
    with pytest.raises(ConfigError, match="must start from scratch"):
        load(TrainConfig, cfg)
    first.write_text("model: {embed_dim: 32}\n")  # a copy of train.yaml made wider, say, and not its pretrain
    with pytest.raises(ConfigError, match=r"another architecture \(its, this\): \{'embed_dim': \(32, 48\)\}"):
        load(TrainConfig, cfg)
    first.write_text("epochs: 1\n")
    cfg.write_text(stochastic + f"pretrain: {first}\ninit_weights: some/package\n")
    with pytest.raises(ConfigError, match="pretrain and init_weights"):
        load(TrainConfig, cfg)
    cfg.write_text(stochastic + f"pretrain: {first}\n")
    assert load(TrainConfig, cfg).pretrain == str(first)


def test_ensemble_config_is_the_engine_default_and_is_checked(tmp_path):
    from forecast.ensemble.engine import RunSettings

    assert load(RunSettings, CONFIG_DIR / "ensemble.yaml") == RunSettings()
    bad = tmp_path / "e.yaml"
    bad.write_text("perturbation: gaussian\n")
    with pytest.raises((ConfigError, ValueError), match="perturbation must be one of"):
        load(RunSettings, bad)


def test_configs_ship_in_the_package_and_resolve_by_name(tmp_path, monkeypatch):
    import forecast

    assert CONFIG_DIR == Path(forecast.__file__).resolve().parent / "configs"
    assert {"demo.yaml", "train.yaml", "train-demo.yaml", "ensemble.yaml", "world.yaml"} <= set(shipped_configs())
    monkeypatch.chdir(tmp_path)
    assert config_path("world.yaml") == CONFIG_DIR / "world.yaml"  # a bare name: the shipped config
    assert load(WorldConfig, "world.yaml") == WorldConfig()
    Path("world.yaml").write_text("seed: 5\n")  # ... unless the working directory has that file
    assert config_path("world.yaml") == Path("world.yaml") and load(WorldConfig, "world.yaml").seed == 5
    assert config_path("sub/world.yaml") == Path("sub/world.yaml")  # a path is taken as given
    with pytest.raises(ConfigError, match=r"sub/world.yaml: cannot read config"):
        load(WorldConfig, "sub/world.yaml")
    with pytest.raises(ConfigError, match=r"wrld.yaml: no such file, nor a shipped config \(demo.yaml, "):
        load(WorldConfig, "wrld.yaml")
