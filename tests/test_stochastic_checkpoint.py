"""A stochastic checkpoint end to end on the world archive: trained on the almost-fair CRPS,
packaged, run as an ensemble whose members each have their own model-noise stream, and
regenerated bit for bit; bred vectors that do not depend on their block."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from forecast.ensemble.engine import (
    RunSettings,
    initial_members,
    load_model,
    package_rmse_48h,
    plan_run,
    regenerate,
    run_block,
    run_ensemble,
)
from forecast.ensemble.members import Layout
from forecast.ensemble.store import ForecastStore
from forecast.model import ModelConfig, load_package
from forecast.training.loop import TrainConfig, train

INIT = "2001-11-01T00"


# The small CRPS training both trainings of this file start from; each changes what it tests.
SMALL_CRPS = TrainConfig(
    model=ModelConfig(embed_dim=8, num_layers=2, noise_length_scales_km=(1000.0, 4000.0)),
    epochs=1,
    finetune_epochs=0,
    max_batches_per_epoch=12,
    batch_size=4,
    skill_inits=4,
    loss="crps",
    ensemble_members=2,
    input_noise=0.0,
)


@pytest.fixture(scope="module")
def stochastic_package(world_archive, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("stochastic") / "ckpt"
    progress = train(world_archive, out, seed=3, cfg=SMALL_CRPS, device="cpu")
    assert np.isfinite(progress["history"][-1]["train_loss"])
    return str(out)


def test_crps_training_makes_a_stochastic_package(stochastic_package):
    model, config = load_package(stochastic_package)
    assert model.stochastic and config["architecture"]["noise_length_scales_km"] == [1000.0, 4000.0]
    assert config["training"]["config"]["loss"] == "crps"
    # the FiLM started at zero; the CRPS's spread term pulled it away, so the noise matters
    assert max(float(f.weight.detach().abs().max()) for f in model.net.films) > 1e-4
    x = torch.zeros(1, len(model.channels), len(model.lat), len(model.lon)) + model.mean.view(1, -1, 1, 1)
    with torch.no_grad():
        a = model.rollout(x.expand(2, -1, -1, -1), torch.zeros(2), steps=2, step_hours=6, noise_seeds=[1, 2])
    assert (a[0, -1] - a[1, -1]).abs().amax(dim=(-2, -1)).min() > 0  # every channel: members differ


def test_crps_needs_a_stochastic_model():
    with pytest.raises(ValueError, match="stochastic checkpoint"):
        TrainConfig(loss="crps")
    with pytest.raises(ValueError, match="ensemble_members"):
        TrainConfig(model=ModelConfig(noise_length_scales_km=(500.0,)), loss="crps", ensemble_members=1)


def test_an_ensemble_of_it_is_regenerable_and_its_bred_vectors_do_not_depend_on_the_block(
    world_archive, stochastic_package, tmp_path
):
    settings = RunSettings(perturbations=2, lead_hours=24, block_size=2)
    out = tmp_path / "ens.zarr"
    run_ensemble(world_archive, [stochastic_package], INIT, str(out), settings, progress=False)
    fields = ForecastStore.open(str(out)).group["fields"][0]  # (member, lead, channel, lat, lon)
    again = regenerate(str(out), INIT, 3, device="cpu")
    assert np.array_equal(again, fields[3])
    # every member has a noise stream of its own, the same whatever block it is run in
    layout = Layout(("ckpt",), 4)
    by_pairs = [s for b in layout.blocks(2) for s in layout.noise_seeds(b, 0, np.datetime64(INIT))]
    by_fours = [s for b in layout.blocks(4) for s in layout.noise_seeds(b, 0, np.datetime64(INIT))]
    assert by_pairs == by_fours and len(set(by_pairs)) == 8
    # bred vectors with the shared breeding noise: the same in a block of 2 as in a block of 4
    plan2 = plan_run(world_archive, [stochastic_package], INIT, settings)
    plan4 = plan_run(
        world_archive, [stochastic_package], INIT, RunSettings(perturbations=2, lead_hours=24, block_size=4)
    )
    model = load_model(stochastic_package, world_archive, "cpu")
    small = initial_members(plan2, plan2.layout.blocks(2)[1], model)
    large = initial_members(plan4, plan4.layout.blocks(4)[0], model)
    scale = float(large.abs().max())
    assert torch.allclose(small, large[2:], rtol=0, atol=1e-6 * scale)


def test_bred_vectors_model_noise_or_both_and_per_channel_amplitudes(world_archive, stochastic_package, world_packages):
    from forecast.ensemble.perturbation import band_rms

    plan = lambda **kw: plan_run(world_archive, [stochastic_package], INIT, RunSettings(perturbations=2, **kw))  # noqa: E731
    model = load_model(stochastic_package, world_archive, "cpu")
    block = plan().layout.blocks(4)[0]
    # no perturbation: every member starts from the analysis
    start = initial_members(plan(perturbation="none"), block, model)
    assert all(torch.equal(start[i], start[0]) for i in range(4))
    # per-channel amplitudes: the bred vector's hemispheric RMS is each channel's fraction x its 48-h RMSE
    fractions = {"z500": 0.2, "t850": 0.6}
    p = plan(channel_amplitudes=fractions)
    members = initial_members(p, block, model)
    delta = (members[0] - members[1]).double() / 2
    index = [model.channels.index(c) for c in fractions]
    rmse_48h = package_rmse_48h(stochastic_package, tuple(model.channels))
    north, _ = band_rms(delta[None], model.lat.double())
    for (c, f), i in zip(fractions.items(), index, strict=True):
        assert float(north[0, i]) == pytest.approx(f * float(rmse_48h[i]), rel=1e-4), c
    other = model.channels.index("u10m")
    assert float(north[0, other]) == pytest.approx(0.35 * float(rmse_48h[other]), rel=1e-4)
    with pytest.raises(ValueError, match=">= 0"):
        RunSettings(channel_amplitudes={"z500": -1.0})

    # model noise off, no perturbation: a stochastic checkpoint's members are all the same
    # forecast; with its noise on they spread from one analysis
    def spread(**kw):
        fields = []
        run_block(plan(perturbation="none", **kw), block, lambda k, x: fields.append(x.clone()), torch.device("cpu"))
        return float((fields[-1] - fields[-1][0]).abs().max())

    assert spread(model_noise=False) == 0.0
    assert spread(noise_scale=0.0) == 0.0
    assert spread() > spread(noise_scale=0.3) > 0.0
    # a deterministic checkpoint's record is unchanged by the new settings at their defaults
    record = plan_run(world_archive, world_packages, INIT, RunSettings()).run_record()["settings"]
    assert not {"channel_amplitudes", "model_noise", "noise_scale"} & set(record)
    assert plan(noise_scale=0.5).run_record()["settings"]["noise_scale"] == 0.5
    with pytest.raises(ValueError, match="noise_scale"):
        RunSettings(noise_scale=-0.1)


def _stochastic_world_model(world_archive, embed_dim: int = 16):
    from forecast.training.data import model_from_archive

    torch.manual_seed(5)
    model, _ = model_from_archive(
        world_archive, ModelConfig(embed_dim=embed_dim, num_layers=2, noise_length_scales_km=(1000.0, 4000.0))
    )
    return model.eval()


def test_a_stochastic_model_warm_started_from_a_deterministic_package_is_that_package_at_first(
    world_archive, world_packages
):
    from forecast.model.package import warm_start

    model = _stochastic_world_model(world_archive)
    fresh = warm_start(model, world_packages[0])
    assert fresh and all(k.startswith("films.") for k in fresh)
    base, _ = load_package(world_packages[0])
    x = base.mean.view(1, -1, 1, 1) + base.std.view(1, -1, 1, 1) * torch.randn(
        2, len(base.channels), len(base.lat), len(base.lon), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        want = base.rollout(x, torch.zeros(2), steps=3, step_hours=6)
        got = model.rollout(x, torch.zeros(2), steps=3, step_hours=6, noise_seeds=[1, 2])
    # the FiLM starts at zero: whatever the noise, the network is the deterministic one
    assert torch.equal(got, want)


def test_a_warm_start_that_does_not_fit_is_refused_with_the_file(world_archive, world_packages, stochastic_package):
    from forecast.model import PackageError
    from forecast.model.package import warm_start

    with pytest.raises(PackageError, match="weights.safetensors: does not fit"):
        warm_start(_stochastic_world_model(world_archive, embed_dim=8), world_packages[0])  # another width
    deterministic, _ = load_package(world_packages[0])
    with pytest.raises(PackageError, match="weights.safetensors: does not fit"):
        warm_start(deterministic, stochastic_package)  # FiLM weights a deterministic model has no place for


def test_crps_training_from_an_mse_checkpoint_starts_from_its_weights(world_archive, world_packages, tmp_path):
    from safetensors.torch import load_file

    cfg = dataclasses.replace(
        SMALL_CRPS,
        model=dataclasses.replace(SMALL_CRPS.model, embed_dim=16),  # the world packages' width
        max_batches_per_epoch=4,
        lr=1e-8,  # four Adam steps move a weight by at most ~4e-8: what is trained is what was loaded
        min_lr=1e-9,
    )
    scratch = train(world_archive, tmp_path / "scratch", seed=4, cfg=cfg, device="cpu")
    warm = train(
        world_archive,
        tmp_path / "warm",
        seed=4,
        cfg=dataclasses.replace(cfg, init_weights=world_packages[0]),
        device="cpu",
    )
    source = load_file(f"{world_packages[0]}/weights.safetensors")
    for name, path in (("warm", tmp_path / "warm"), ("scratch", tmp_path / "scratch")):
        got = load_file(f"{path}/weights.safetensors")
        assert set(got) - set(source) and all(k.startswith("films.") for k in set(got) - set(source))
        worst = max(float((got[k] - v).abs().max()) for k, v in source.items())
        assert worst < 1e-6 if name == "warm" else worst > 1e-2, (name, worst)
    # the same seed, batches and noise: a trained network's CRPS is below a random one's
    assert warm["history"][0]["valid_loss"] < 0.8 * scratch["history"][0]["valid_loss"]
    _, config = load_package(tmp_path / "warm")
    assert config["training"]["config"]["init_weights"] == world_packages[0]


def test_a_two_stage_training_is_its_first_stage_then_a_warm_start_from_it(world_archive, tmp_path):
    """`pretrain` (the default checkpoint's recipe) trains the first stage into OUT/.pretrain
    and starts the second from it: bit for bit what training the first stage alone and then
    the second with init_weights gives (what benchmarks/science_world.py relies on when it
    starts the CRPS checkpoints from its MSE ones instead of training each MSE stage twice).
    A rerun does not train a complete first stage again."""
    from safetensors.torch import load_file

    from forecast.config import load

    first = tmp_path / "first.yaml"
    first.write_text("model: {embed_dim: 8, num_layers: 2}\nepochs: 1\nfinetune_epochs: 0\n"
                     "max_batches_per_epoch: 5\nbatch_size: 4\nskill_inits: 4\n")  # fmt: skip
    second = dataclasses.replace(SMALL_CRPS, max_batches_per_epoch=4, pretrain=str(first))
    two = train(world_archive, tmp_path / "two", seed=5, cfg=second, device="cpu")
    train(world_archive, tmp_path / "alone", seed=5, cfg=load(TrainConfig, first), device="cpu")
    chained = dataclasses.replace(second, pretrain=None, init_weights=str(tmp_path / "alone"))
    train(world_archive, tmp_path / "chained", seed=5, cfg=chained, device="cpu")

    def weights(path):
        return load_file(f"{path}/weights.safetensors")

    for a, b in ((tmp_path / "two" / ".pretrain", tmp_path / "alone"), (tmp_path / "two", tmp_path / "chained")):
        wa, wb = weights(a), weights(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (a, b)
    assert set(weights(tmp_path / "two")) - set(weights(tmp_path / "alone"))  # the second stage's FiLM
    _, config = load_package(tmp_path / "two")
    assert config["training"]["config"]["pretrain"] == str(first)
    assert config["training"]["pretraining"]["package"] == str(tmp_path / "two" / ".pretrain")
    assert load_package(tmp_path / "two" / ".pretrain")[1]["training"]["config"]["loss"] == "mse"
    marker = tmp_path / "two" / ".pretrain" / "skill.json"
    # the first stage is scored as the same weights trained alone, but without the 15-day
    # stability rollout (only the final package runs); the final package has it
    skill = {k: json.loads((tmp_path / k / "skill.json").read_text()) for k in ("two/.pretrain", "alone", "two")}
    assert skill["two/.pretrain"]["rmse"] == skill["alone"]["rmse"]
    assert skill["two/.pretrain"]["rollout_15d"]["skipped"] and "skipped" not in skill["alone"]["rollout_15d"]
    assert "finite" in skill["two"]["rollout_15d"] and "skipped" not in skill["two"]["rollout_15d"]
    stamp = marker.stat().st_mtime_ns
    again = train(world_archive, tmp_path / "two", seed=5, cfg=second, device="cpu")
    assert marker.stat().st_mtime_ns == stamp and again["history"] == two["history"]


def test_calibration_chooses_the_noise_scale_and_runs_take_it(world_archive, stochastic_package, tmp_path):
    """With several noise scales, the calibration sweeps (scale, amplitude) and keeps the scale
    whose best amplitude has the lowest objective; here the "ssr" objective, recomputed from
    the kept stores: (log of the spread-skill ratio pooled over the init times)^2, averaged
    over the leads and channels. Runs given the file take its noise scale."""
    from forecast.calibration import apply_calibration, calibrate
    from forecast.ensemble.store import open_forecast

    out, work = tmp_path / "cal.json", tmp_path / "work"
    scales, candidates = (0.3, 1.0), (0.1, 1.0)
    result = calibrate(
        world_archive, [stochastic_package], ["2001-11-10T00", "2001-11-20T00"], out,
        RunSettings(perturbations=1, lead_hours=48), candidates=candidates, days=(1, 2), work=work,
        progress=False, noise_scales=scales, objective="ssr",
    )  # fmt: skip
    assert result["noise_scales"] == list(scales) and result["objective_name"] == "ssr"

    def ssr_cost(store: str):
        """Per channel: (log of the spread-skill ratio pooled over the init times)^2, lead mean."""
        ds = open_forecast(store).sel(lead_time=[24, 48])
        m = ds.member_count.astype(float)
        mse = ds.ensemble_mean_rmse**2
        var = ds.spread_skill_ratio**2 * mse * m / (m + 1)
        mb = float(m.mean())
        ssr = np.sqrt((mb + 1) / mb) * np.sqrt(var.mean("init_time") / mse.mean("init_time"))
        return (np.log(ssr) ** 2).mean("lead_time")

    for ns in scales:
        for k, a in enumerate(candidates):
            store = str(work / f"noise-{ns:.4f}-amplitude-{a:.4f}.zarr")
            assert ForecastStore.open(store).run["settings"].get("noise_scale", 1.0) == ns  # recorded unless 1
            expected = float(ssr_cost(store).mean("channel"))
            assert result["noise_sweep"][str(ns)]["objective"][k] == pytest.approx(expected, rel=1e-9), (ns, a)
    best = min(scales, key=lambda ns: min(result["noise_sweep"][str(ns)]["objective"]))  # measured, not fitted
    assert result["settings"]["noise_scale"] == best and result["noise_scale_calibrated"]
    # the per-channel amplitudes are kept only where their confirming run's mean objective is no
    # worse than the best single amplitude's and no channel is worse by more than the
    # tolerance; else every channel gets that amplitude (the rule itself: test_calibration.py)
    per_channel = result["per_channel"]
    worst = max(per_channel["worse_than_common"].values())
    if per_channel["kept"]:
        assert per_channel["objective"] <= per_channel["common_objective"] and worst <= per_channel["tolerance"]
        assert result["channel_amplitudes"] == per_channel["amplitudes"]
    else:
        assert per_channel["objective"] > per_channel["common_objective"] or worst > per_channel["tolerance"]
        assert set(result["channel_amplitudes"].values()) == {result["common_candidate"]}
        assert result["amplitude"] == result["common_candidate"]
    common_store = work / f"noise-{best:.4f}-amplitude-{result['common_candidate']:.4f}.zarr"
    confirmed = ssr_cost(str(work / "chosen.zarr")) if (work / "chosen.zarr").exists() else ssr_cost(str(common_store))
    at_common = ssr_cost(str(common_store))
    for c, d in per_channel["worse_than_common"].items():
        assert d == pytest.approx(float(confirmed.sel(channel=c) - at_common.sel(channel=c)), rel=1e-9, abs=1e-12), c
    run = apply_calibration(RunSettings(noise_scale=0.7), out, [stochastic_package])
    assert run.noise_scale == best and run.channel_amplitudes == result["channel_amplitudes"]
    one = calibrate(  # one scale given, not the run's: it is the calibrated scale all the same
        world_archive, [stochastic_package], ["2001-11-10T00"], tmp_path / "one.json",
        RunSettings(perturbations=1, lead_hours=24), candidates=(0.1, 1.0), days=(1,), progress=False,
        noise_scales=[0.5],
    )  # fmt: skip
    assert one["noise_scale_calibrated"] and one["settings"]["noise_scale"] == 0.5
    assert apply_calibration(RunSettings(), tmp_path / "one.json", [stochastic_package]).noise_scale == 0.5
    with pytest.raises(ValueError, match="needs the model noise on"):
        calibrate(world_archive, [stochastic_package], ["2001-11-10T00"], tmp_path / "x.json",
                  RunSettings(model_noise=False), noise_scales=scales)  # fmt: skip
