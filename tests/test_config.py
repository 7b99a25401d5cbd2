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

    cfg = load(TrainConfig, CONFIG_DIR / "train.yaml")
    assert cfg.model.grid == "equiangular" and cfg.finetune_rollout_steps == 4
    # the stochastic config is train.yaml with model noise, the CRPS with its spectral term and a
    # 4-day (16-step) rollout fine-tuning of 60 batches, nothing else
    stochastic = load(TrainConfig, CONFIG_DIR / "train-stochastic.yaml")
    assert stochastic.loss == "crps" and stochastic.model.stochastic and stochastic.finetune_rollout_steps == 16
    assert stochastic.max_batches(stochastic.epochs) == 60 and stochastic.spectral_crps_weight == 0.1
    # the opt-in for more compute differs in the fine-tuning's length only
    longer = load(TrainConfig, CONFIG_DIR / "train-stochastic-16.yaml")
    assert longer == dataclasses.replace(stochastic, finetune_max_batches=120)
    plain_model = dataclasses.replace(stochastic.model, noise_length_scales_km=())
    plain = dataclasses.replace(
        stochastic, loss="mse", model=plain_model, finetune_rollout_steps=4, finetune_max_batches=None,
        spectral_crps_weight=0.0,
    )  # fmt: skip
    assert plain == cfg
    bad = tmp_path / "t.yaml"
    bad.write_text("channel_weights: {z500: heavy}\n")
    with pytest.raises(ConfigError, match=r"channel_weights.z500: expected float, got 'heavy'"):
        load(TrainConfig, bad)
    bad.write_text("model: {embed_dim: 8, depth: 3}\n")
    with pytest.raises(ConfigError, match=r"model: unknown keys \['depth'\]"):
        load(TrainConfig, bad)


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
