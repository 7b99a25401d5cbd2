"""The short GPU suite (`pytest -m gpu`, issue #12): skipped where there is no CUDA device.

On the device: perturbations drawn there (and a member's noise independent of its block),
bred vectors rescaled there, a model step there against the CPU's, a stochastic model's noise
drawn there (per-member generators) and its step against the CPU's, one training epoch, one
ensemble block run and regenerated (bit for bit: the same block on the same device), its
members scored against the archive (fair CRPS against a direct implementation) and the block
size chosen from the device's free memory.

The first tests need only torch, torch-harmonics and the package; the archive-based ones need
the project's environment (zarr, xarray, netCDF4) and are skipped, with the reason, without it.
FORECAST_GPU_TEST_DEVICE=cpu runs the same tests on the CPU: a check of the suite itself on a
machine without a GPU (the default run and `pytest -m gpu` there only skip them).
"""

from __future__ import annotations

import copy
import importlib.util
import os

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("FORECAST_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device"),
]


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module entry without a spec
        return False


HAS_STORES = all(_installed(m) for m in ("zarr", "xarray", "netCDF4"))
needs_stores = pytest.mark.skipif(not HAS_STORES, reason="needs zarr, xarray and netCDF4 (the project's environment)")

LAT = np.linspace(90, -90, 33)
NLON = 64
CHANNELS = ["z500", "t850", "q700"]
INIT = "2020-01-06T00"  # in the synthetic archive below, with three 6-hour cycles of history


def _network():
    """forecast.model.network: torch and torch-harmonics only (safetensors is imported by the
    package functions that need it), so it loads on a bare GPU box."""
    from forecast.model import network

    return network


def tiny_model(seed: int = 0, **config):
    """A small untrained SFNO on the 33 x 64 grid (random weights, realistic statistics);
    `config`: ModelConfig fields over embed 8, 1 layer."""
    network = _network()
    ForecastModel, ModelConfig = network.ForecastModel, network.ModelConfig

    torch.manual_seed(seed)
    return ForecastModel(
        ModelConfig(**{"embed_dim": 8, "num_layers": 1, **config}),
        CHANNELS,
        torch.from_numpy(LAT),
        torch.arange(NLON) * 360.0 / NLON,
        mean=torch.tensor([55_000.0, 270.0, 0.002]),
        std=torch.tensor([3_000.0, 15.0, 0.002]),
        diff_std=torch.tensor([300.0, 1.5, 0.0005]),
        static=torch.zeros(2, len(LAT), NLON),
        non_negative=[False, False, True],
    ).eval()


def tiny_analyses(cycles: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    base = torch.tensor([55_000.0, 270.0, 0.002]).view(1, -1, 1, 1)
    scale = torch.tensor([3_000.0, 15.0, 0.001]).view(1, -1, 1, 1)
    return (base + scale * torch.randn((cycles + 1, 3, len(LAT), NLON), generator=g)).clamp_min(0.0)


# -- torch and torch-harmonics only ---------------------------------------------------------


def test_noise_is_drawn_on_the_device_and_a_member_does_not_depend_on_its_block():
    from forecast.ensemble.perturbation import CorrelatedNoise, GaussianRandomField, SphericalNoise, seed_spectrum
    from forecast.grid import cell_area_weights

    dev = torch.device(DEVICE)
    noise = SphericalNoise(LAT, NLON, seed_spectrum()).to(dev)
    seeds = list(range(100, 116))
    white = noise.white(seeds, 2)
    assert white.device.type == dev.type
    # a member's random numbers come from its own generator on the device: bit for bit
    assert torch.equal(white[5], noise.white([seeds[5]], 2)[0])
    w = torch.from_numpy(cell_area_weights(LAT)).to(dev)
    amplitudes = {"z500": 120.0, "t850": 0.8}
    for kind in (CorrelatedNoise, GaussianRandomField):
        p = kind(CHANNELS, LAT, NLON, amplitudes, device=dev)
        on_device = torch.zeros(3, len(LAT), NLON, device=dev)
        d = p(on_device, seeds)
        assert d.device.type == dev.type and d.dtype == torch.float32
        rms = torch.sqrt((d.double().square().mean(-1) * w).sum(-1) / w.sum())
        assert torch.allclose(rms[:, 0], torch.tensor(120.0, dtype=torch.float64, device=dev), rtol=1e-5)
        assert torch.allclose(rms[:, 1], torch.tensor(0.8, dtype=torch.float64, device=dev), rtol=1e-5)
        assert (d[:, 2] == 0).all()
        # the member alone: the same noise, the same synthesis up to the float32 rounding of
        # another batch shape (bit for bit on the CPU; the GPU's kernels may differ by shape)
        assert _error(p(on_device, [seeds[3]]), d[3:4]) < 1e-6
        # drawn on the device, returned where the analysis lives
        on_cpu = p(torch.zeros(3, len(LAT), NLON), seeds[:2])
        assert on_cpu.device.type == "cpu" and _error(on_cpu, d[:2].cpu()) < 1e-6


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of (seed, channel, lat, lon) perturbations in units of each
    channel's amplitude (z500 120, t850 0.8; q700 is not perturbed)."""
    amp = torch.tensor([120.0, 0.8], dtype=torch.float64, device=a.device).view(1, -1, 1, 1)
    return float(((a[:, :2].double() - b[:, :2].double()).abs() / amp).max())


def test_bred_vectors_are_bred_and_rescaled_on_the_device():
    from forecast.ensemble.perturbation import BredVectors, band_rms, hemispheric_rescale

    dev = torch.device(DEVICE)
    model = tiny_model().to(dev)
    analyses = tiny_analyses()
    rmse = torch.tensor([400.0, 2.0, 0.001], dtype=torch.float64)
    bv = BredVectors(model, analyses, 438_000.0, rmse)
    bred = bv(analyses[-1], list(range(8)))  # the analysis on the CPU, the model on the device
    assert bred.device.type == "cpu" and bred.shape == (8, 3, len(LAT), NLON)
    north, south = band_rms(bred, model.lat.cpu().double())
    target = (0.35 * rmse).expand(8, -1)
    assert torch.allclose(north, target, rtol=1e-5) and torch.allclose(south, target, rtol=1e-5)
    assert not torch.allclose(bred[0], bred[1])
    # the rescaling on the device equals the CPU's (float64 norms on both)
    g = torch.Generator().manual_seed(0)
    diff = torch.randn((2, 3, len(LAT), NLON), generator=g, dtype=torch.float64)
    lat = torch.from_numpy(LAT)
    w = torch.ones(len(LAT), dtype=torch.float64)
    on_cpu = hemispheric_rescale(diff, lat, w, rmse)
    on_dev = hemispheric_rescale(diff.to(dev), lat.to(dev), w.to(dev), rmse.to(dev))
    assert on_dev.device.type == dev.type
    assert torch.allclose(on_dev.cpu(), on_cpu, rtol=1e-12, atol=0)


@torch.no_grad()
def test_a_model_step_on_the_device_matches_the_cpu():
    model = tiny_model()
    state = tiny_analyses(0)[:1].repeat(4, 1, 1, 1)
    hours = torch.full((4,), 438_000.0, dtype=torch.float64)
    cpu = model(state, hours)
    dev = model.to(DEVICE)(state.to(DEVICE), hours.to(DEVICE)).cpu()
    # against the step's change per channel: within 1 % (CUDA may run the network's 1x1
    # convolutions in TF32, ~1e-3 relative); a wrong input (zenith, statics) is O(1) off
    change = (cpu - state).abs().amax((0, 2, 3), keepdim=True)
    assert (change > 0).all()
    assert float(((dev - cpu).abs() / change).max()) < 1e-2


@torch.no_grad()
def test_a_stochastic_model_draws_its_noise_and_steps_on_the_device():
    """Model noise on the device from per-member generators there: a member's stream does not
    depend on its batch (bit for bit), and its step matches the CPU's as the deterministic one does."""
    model = tiny_model(num_layers=2, noise_length_scales_km=(1000.0, 4000.0))
    for film in model.net.films:
        film.weight.normal_(std=0.2)  # as if trained: the noise matters
    state = tiny_analyses(0)[:1].repeat(3, 1, 1, 1)
    hours = torch.full((3,), 438_000.0, dtype=torch.float64)
    on_device = copy.deepcopy(model).to(DEVICE)
    stream = on_device.noise_stream([7, 8, 9], 6)
    assert stream.current.device.type == torch.device(DEVICE).type
    alone = on_device.noise_stream([8], 6)
    stream.advance(), alone.advance()
    assert torch.equal(stream.current[1], alone.current[0])
    # the same noise coefficients through the network on both: as close as the deterministic step
    cpu = model(state, hours, stream.current.cpu())
    dev = on_device(state.to(DEVICE), hours.to(DEVICE), stream.current).cpu()
    change = (cpu - state).abs().amax((0, 2, 3), keepdim=True)
    assert (change > 0).all()
    assert float(((dev - cpu).abs() / change).max()) < 1e-2
    assert (cpu[0] - cpu[1]).abs().max() > 0  # members of one state differ by their noise


# -- the project's environment: archive, training, engine, scores ---------------------------


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """A small synthetic archive, one checkpoint trained one epoch on the device, and one
    ensemble (6 members in blocks of 4 and 2) run on the device."""
    from synthetic import six_hourly, write_cds

    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.ingest import ingest
    from forecast.model import ModelConfig
    from forecast.training.loop import TrainConfig, train

    d = tmp_path_factory.mktemp("gpu")
    ingest([write_cds(d / "a.nc", six_hourly("2020-01-01T00", 48), nlat=9, nlon=16)], d / "a.zarr", progress=False)
    archive = str(d / "a.zarr")
    cfg = TrainConfig(
        model=ModelConfig(embed_dim=8, num_layers=1),
        epochs=1,
        finetune_epochs=0,
        batch_size=4,
        max_batches_per_epoch=3,
        warmup_steps=1,
        skill_inits=4,
        train_end="2020-01-09T00",
        valid_start="2020-01-09T06",
    )
    trained = train(archive, d / "ckpt", seed=0, cfg=cfg, device=DEVICE)
    settings = RunSettings(perturbations=3, lead_hours=24, block_size=4)
    summary = run_ensemble(
        archive, [str(d / "ckpt")], INIT, str(d / "run.zarr"), settings, device=DEVICE, progress=False
    )
    return archive, str(d / "ckpt"), str(d / "run.zarr"), trained, summary


@needs_stores
def test_one_training_epoch_on_the_device(gpu_run):
    from forecast.model import load_package

    _, package, _, trained, _ = gpu_run
    history = trained["history"]
    assert [h["epoch"] for h in history] == [0]
    assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["valid_loss"])
    model, config = load_package(package)
    assert config["seed"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@needs_stores
def test_a_block_run_on_the_device_regenerates_bit_for_bit(gpu_run):
    from forecast.ensemble.engine import regenerate
    from forecast.ensemble.store import ForecastStore

    _, _, store, _, summary = gpu_run
    assert summary["members"] == 6 and summary["blocks_run"] == 2 and summary["statistics_complete"]
    stored = np.asarray(ForecastStore.open(store).group["fields"][0])  # (member, lead, channel, lat, lon)
    assert np.isfinite(stored).all()
    for member in (1, 4):  # one in each block
        again = regenerate(store, INIT, member, device=DEVICE)
        diff = float(np.abs(again - stored[member]).max())
        assert np.array_equal(again, stored[member]), f"member {member}: max difference {diff}"


@needs_stores
def test_the_members_run_on_the_device_score_against_the_archive(gpu_run):
    import xarray as xr

    from forecast.archive import Archive
    from forecast.diagnostics import crps
    from forecast.ensemble.store import open_forecast

    archive, _, store, _, _ = gpu_run
    ds = open_forecast(store)
    fc = ds.fields.isel(init_time=0).astype(np.float64)  # (member, lead_time, channel, lat, lon)
    a = Archive.open(archive)
    valid = np.datetime64(INIT, "h") + ds.lead_time.values.astype("timedelta64[h]")
    obs = np.asarray(a.fields.get_orthogonal_selection((np.searchsorted(a.times, valid),)), np.float64)
    assert np.array_equal(a.times[np.searchsorted(a.times, valid)], valid)
    y = xr.DataArray(obs, dims=("lead_time", "channel", "lat", "lon"))
    score = crps(fc, y, estimator="fair").values
    # the fair CRPS written out: mean|x_i - y| - sum_ij |x_i - x_j| / (2 m (m - 1))
    x = fc.values
    m = x.shape[0]
    direct = np.abs(x - obs).mean(0) - np.abs(x[:, None] - x[None]).sum((0, 1)) / (2 * m * (m - 1))
    assert np.allclose(score, direct, rtol=1e-9, atol=1e-9 * np.abs(direct).max())
    assert np.isfinite(score).all() and (score.mean((1, 2, 3)) > 0).all()
    assert (score <= np.abs(x - obs).mean(0) + 1e-9).all()  # the spread term only lowers it


@needs_stores
def test_the_block_size_comes_from_the_device_memory(gpu_run):
    from forecast.ensemble.engine import choose_block_size

    archive, package, _, _, _ = gpu_run
    for cap in (2, 7, 64):
        n = choose_block_size(archive, package, cap, device=torch.device(DEVICE))
        assert isinstance(n, int) and n >= 2 and n % 2 == 0 and n <= max(2, cap), (cap, n)
