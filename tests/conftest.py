"""Shared fixtures. The expensive ones (a two-year world, a Prefect server) are session-scoped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors"


def pytest_configure(config):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network from the test servers


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL.is_dir():
        pytest.fail(f"shared test data not found at {REAL}: the repository must sit beside shared/")
    return REAL


@pytest.fixture(scope="session")
def world_two_years(tmp_path_factory) -> Path:
    """Two simulated years (2000-2001) of the built-in world, default seed."""
    from forecast.world import WorldRun, generate_world

    out = tmp_path_factory.mktemp("world2y")
    generate_world(out, WorldRun(years=2, seed=0), progress=False)
    return out


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under a directory: a byte-level snapshot of a store."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def assert_close_per_channel(actual, expected, factor: float, channel_axis: int) -> None:
    """|actual - expected| <= factor x max |expected| of the same channel, everywhere: each
    channel is held to its own scale (q at 1e-3 kg/kg is not judged on z's 5e4 m2/s2)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    others = tuple(i for i in range(expected.ndim) if i != channel_axis % expected.ndim)
    scale = np.abs(expected).max(axis=others, keepdims=True)
    error = np.abs(actual - expected).max(axis=others, keepdims=True)
    worst = (error / np.where(scale > 0, scale, 1.0)).ravel()
    assert (error <= factor * scale).all(), f"max error / channel scale per channel: {worst}, allowed {factor}"


@pytest.fixture(scope="session")
def world_archive(world_two_years, tmp_path_factory) -> str:
    """The two-year world ingested into an archive."""
    from forecast.ingest import ingest

    path = tmp_path_factory.mktemp("world-archive") / "world.zarr"
    ingest([world_two_years], path, progress=False)
    return str(path)


@pytest.fixture(scope="session")
def small_archive_40(tmp_path_factory) -> str:
    """40 six-hourly steps of synthetic fields on a 9x16 grid (read-only: do not append)."""
    from synthetic import six_hourly, write_cds

    from forecast.ingest import ingest

    d = tmp_path_factory.mktemp("small40")
    ingest([write_cds(d / "a.nc", six_hourly("2020-01-01T00", 40), nlat=9, nlon=16)], d / "a.zarr", progress=False)
    return str(d / "a.zarr")


@pytest.fixture(scope="session")
def world_packages(world_archive, tmp_path_factory) -> list[str]:
    """Two small checkpoints (seeds 0 and 1) trained briefly on the world archive, with
    skill.json: enough to drive the ensemble engine (about 20 s each on 2 cores)."""
    from forecast.model import ModelConfig
    from forecast.training.loop import TrainConfig, train

    cfg = TrainConfig(
        model=ModelConfig(embed_dim=16, num_layers=2),
        epochs=1,
        finetune_epochs=0,
        max_batches_per_epoch=30,
        skill_inits=8,
    )
    root = tmp_path_factory.mktemp("packages")
    out = []
    for seed in (0, 1):
        train(world_archive, root / f"ckpt{seed}", seed=seed, cfg=cfg, device="cpu")
        out.append(str(root / f"ckpt{seed}"))
    return out


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server (about 12 s to start), shared by the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):  # a bound on a hang, not a speed check
        yield


@pytest.fixture(scope="session")
def tiny_demo(prefect_server, tmp_path_factory) -> tuple[Path, str]:
    """`forecast demo` with a tiny configuration (two simulated months, two tiny checkpoints,
    a calibration from one validation init time, three hindcasts, 8 members for 24 h): the
    whole chain in about a minute. Returns (output directory, what it printed)."""
    import contextlib
    import io

    from forecast.cli import main

    root = tmp_path_factory.mktemp("tiny-demo")
    train = root / "train.yaml"
    train.write_text(
        "model: {embed_dim: 8, num_layers: 1}\nepochs: 1\nfinetune_epochs: 0\nbatch_size: 4\n"
        "max_batches_per_epoch: 10\nskill_inits: 4\n"
    )
    config = root / "demo.yaml"
    config.write_text(
        "world: {months: 2, seed: 3}\ningest: {time_step_hours: 6}\n"
        f"train: {{config: {train}, seeds: [0, 1]}}\n"
        "ensemble: {init_time: '2000-02-24T00', hindcasts: ['2000-02-20T00', '2000-02-22T00', '2000-02-26T00'],"
        " mclimate_window_days: 5, perturbations: 2, lead_hours: 24}\n"
        "calibration: {inits: ['2000-02-25T00'], candidates: [0.1, 1.0], days: [1], perturbations: 1}\n"
    )
    out = root / "out"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("PREFECT_HOME", str(root / "prefect-home"))
        assert main(["-q", "demo", "--out", str(out), "--config", str(config)]) == 0
    return out, printed.getvalue()
