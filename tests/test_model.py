"""The SFNO wrapper and the model package format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from forecast.grid import cell_area_weights, equiangular
from forecast.model import ForecastModel, ModelConfig, PackageError, cos_zenith, load_package, save_package

CHANNELS = ["z500", "t850", "q850", "msl"]
SMALL = ModelConfig(embed_dim=16, num_layers=2)


def _model(config: ModelConfig = SMALL, seed: int = 0) -> tuple[ForecastModel, torch.Tensor]:
    torch.manual_seed(seed)
    g = equiangular(17, 32)
    static = torch.randn(2, 17, 32)
    model = ForecastModel(
        config,
        CHANNELS,
        torch.tensor(g.lat),
        torch.tensor(g.lon),
        mean=torch.tensor([5.5e4, 270.0, 5e-3, 1.01e5]),
        std=torch.tensor([3e3, 15.0, 4e-3, 1.2e3]),
        diff_std=torch.tensor([300.0, 1.5, 1e-3, 150.0]),
        static=static,
        non_negative=[False, False, True, False],
    )
    return model, static


def _state(batch: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    base = torch.tensor([5.5e4, 270.0, 5e-3, 1.01e5]).view(1, 4, 1, 1)
    scale = torch.tensor([3e3, 15.0, 4e-3, 1.2e3]).view(1, 4, 1, 1)
    return (base + scale * torch.randn(batch, 4, 17, 32)).float()


def test_cos_zenith_integrates_to_zero_and_peaks_under_the_sun():
    g = equiangular(91, 180)
    t = torch.tensor([0.0, 4380.5, 8766.0 * 30 + 7.0])
    cz = cos_zenith(t, torch.tensor(g.lat), torch.tensor(g.lon)).double().numpy()
    w = cell_area_weights(g.lat)[:, None] * np.ones(180)
    # cos(zenith) is the dot product with a fixed unit vector: its area mean over the sphere is 0.
    assert np.abs((cz * w).sum(axis=(1, 2)) / w.sum()).max() < 1e-3
    assert cz.max() <= 1.0 + 1e-6 and cz.max() > 0.99
    # 1970-01-01T00 UTC: the sun is over the date line, in the southern hemisphere (January).
    lat_i, lon_i = np.unravel_index(cz[0].argmax(), cz[0].shape)
    assert abs(g.lon[lon_i] - 180.0) <= 2.0 and -25.0 <= g.lat[lat_i] <= -20.0


def test_zero_update_is_persistence_in_physical_units():
    model, _ = _model()
    for p in model.net.decoder.parameters():
        torch.nn.init.zeros_(p)
    x = _state()
    x[:, 2] = x[:, 2].abs()  # humidity is non-negative
    y = model(x, torch.zeros(3))
    torch.testing.assert_close(y, x)


def test_outputs_are_physical_and_non_negative_where_required():
    model, _ = _model()
    x = _state()
    y = model(x, torch.full((3,), 6.0))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert (y[:, 2] >= 0).all()
    # Residual prediction: one step moves each channel by O(its 6-hour-difference std), not O(std).
    change = (y - x).abs().mean(dim=(0, 2, 3))
    assert (change < 20 * model.diff_std.view(-1)).all()
    with pytest.raises(ValueError, match=r"expected \(batch, 4, 17, 32\)"):
        model(x[:, :3], torch.zeros(3))


def test_spectral_modes_are_explicit():
    model, _ = _model(ModelConfig(embed_dim=8, num_layers=1, scale_factor=2))
    assert (model.net.trans_down.inner.lmax, model.net.trans_down.inner.mmax) == (8, 8)
    assert ModelConfig().spectral_modes(33, 64) == (32, 32)


def test_package_round_trip_is_exact_and_pickle_free(tmp_path):
    model, static = _model()
    x = _state()
    t = torch.tensor([0.0, 6.0, 12.0])
    expected = model(x, t)
    pkg = save_package(
        model,
        tmp_path / "pkg",
        static_raw=static,
        seed=7,
        time_step_hours=6,
        training={"period": ["2000-01-01T00", "2001-12-31T18"]},
        skill={"rmse": {"z500": {"48": 123.0}}},
    )
    assert sorted(p.name for p in pkg.iterdir()) == [
        "buffers.safetensors",
        "config.json",
        "skill.json",
        "weights.safetensors",
    ]
    for f in pkg.glob("*.safetensors"):
        head = f.read_bytes()[:9]
        n = int.from_bytes(head[:8], "little")
        assert head[8:9] == b"{" and 0 < n < f.stat().st_size  # safetensors: a JSON header, no pickle
    config = json.loads((pkg / "config.json").read_text())
    assert config["seed"] == 7 and config["channels"] == CHANNELS and config["spectral"] == {"lmax": 16, "mmax": 16}
    assert "torch" in config["library_versions"] and config["grid"]["nlat"] == 17
    loaded, _ = load_package(pkg, channels=CHANNELS, time_step_hours=6)
    torch.testing.assert_close(loaded(x, t), expected, rtol=0, atol=0)


def test_loading_refuses_other_data_with_a_reason(tmp_path):
    model, static = _model()
    pkg = save_package(model, tmp_path / "pkg", static_raw=static, seed=0, time_step_hours=6, training={})
    with pytest.raises(PackageError, match=r"package-only: \['q850'\]"):
        load_package(pkg, channels=["z500", "t850", "msl"])
    with pytest.raises(PackageError, match="or the order differs"):
        load_package(pkg, channels=["t850", "z500", "q850", "msl"])
    g = equiangular(33, 64)
    with pytest.raises(PackageError, match="package grid is 17x32 .* the data's is 33x64"):
        load_package(pkg, lat=g.lat, lon=g.lon)
    with pytest.raises(PackageError, match="package steps 6 h, the data are every 12 h"):
        load_package(pkg, time_step_hours=12)
    (pkg / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PackageError, match="package format 'something-else'"):
        load_package(pkg)
    with pytest.raises(PackageError, match="no config.json"):
        load_package(tmp_path)


def test_bf16_autocast_runs_and_stays_close_to_float32():
    """Under bf16 autocast (as on GPU; checked here with the CPU autocast) the spherical
    transforms stay in float32, the step runs forward and backward, and stays close."""
    model, _ = _model()
    x = _state()
    t = torch.zeros(3)
    reference = model(x, t)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        y = model(x, t)
    assert torch.isfinite(y).all()
    scale = model.diff_std
    assert ((y.float() - reference) / scale).abs().max() < 0.2  # bf16 rounding, in units of a 6-h change
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = ((model(x, t).float() - x) / scale).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.net.parameters() if p.requires_grad)
