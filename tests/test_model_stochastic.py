"""The noise-conditioned SFNO: the deterministic network at initialisation, conditioned on
its noise once trained, differentiable in its FiLM weights."""

from __future__ import annotations

import pytest
import torch
from torch_harmonics.examples.models.sfno import SphericalFourierNeuralOperator

from forecast.model.stochastic import StochasticSFNO

KW = dict(img_size=(17, 32), scale_factor=2, in_chans=4, out_chans=3, embed_dim=8, num_layers=3)


def _pair(layers: int = 3):
    kw = {**KW, "num_layers": layers}
    torch.manual_seed(0)
    base = SphericalFourierNeuralOperator(**kw)
    net = StochasticSFNO(noise_fields=2, **kw)
    missing, unexpected = net.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("films.") for k in missing)  # a deterministic checkpoint loads
    return base, net


def _noise(net, batch: int, seed: int = 1) -> torch.Tensor:
    lmax, mmax = net.noise_modes
    g = torch.Generator().manual_seed(seed)
    re, im = torch.randn((2, batch, 2, lmax, mmax), generator=g)
    return torch.complex(re, im)


@pytest.mark.parametrize("layers", [1, 3])
def test_at_initialisation_it_is_the_deterministic_network(layers):
    base, net = _pair(layers)
    x = torch.randn(2, 4, 17, 32)
    with torch.no_grad():
        assert torch.equal(net(x, _noise(net, 2)), base(x))


def test_once_its_film_is_trained_the_noise_changes_the_output_and_gradients_reach_it():
    _, net = _pair()
    x = torch.randn(2, 4, 17, 32)
    out = net(x, _noise(net, 2))
    out.square().mean().backward()
    grads = [film.weight.grad.abs().sum() for film in net.films]
    assert all(g > 0 for g in grads)  # zero-initialised, yet trainable
    with torch.no_grad():
        for film in net.films:
            film.weight.normal_(std=0.1)
        a, b = net(x, _noise(net, 2, seed=1)), net(x, _noise(net, 2, seed=2))
        again = net(x, _noise(net, 2, seed=1))
    assert torch.equal(a, again)
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()


def test_a_wrong_noise_shape_is_refused():
    _, net = _pair()
    with pytest.raises(ValueError, match="noise has shape"):
        net(torch.randn(2, 4, 17, 32), _noise(net, 3))
    with pytest.raises(ValueError, match="at least one noise field"):
        StochasticSFNO(noise_fields=0, **KW)


STATIC = torch.randn(1, 17, 32, generator=torch.Generator().manual_seed(5))


def _forecast_model(noise_km: tuple[float, ...]):
    from forecast.grid import equiangular
    from forecast.model import ForecastModel, ModelConfig

    g = equiangular(17, 32)
    torch.manual_seed(0)
    return ForecastModel(
        ModelConfig(embed_dim=8, num_layers=2, noise_length_scales_km=noise_km, noise_correlation_hours=[12.0]),
        ["z500", "t850"],
        torch.tensor(g.lat),
        torch.tensor(g.lon),
        mean=torch.zeros(2),
        std=torch.ones(2),
        diff_std=torch.ones(2),
        static=STATIC,
        non_negative=[False, False],
    )


def test_a_stochastic_package_round_trips_and_its_members_are_regenerable(tmp_path):
    from forecast.model import load_package, save_package

    model = _forecast_model([500.0, 2000.0])
    assert model.stochastic and model.config.noise_length_scales_km == (500.0, 2000.0)
    with torch.no_grad():
        for film in model.net.films:
            film.weight.normal_(std=0.2)  # as if trained
    save_package(model, tmp_path / "pkg", static_raw=STATIC, seed=0, time_step_hours=6, training={})
    loaded, config = load_package(tmp_path / "pkg")
    assert config["architecture"]["noise_length_scales_km"] == [500.0, 2000.0]  # recorded in config.json
    assert loaded.stochastic and loaded.config == model.config
    x = torch.randn(1, 2, 17, 32).expand(3, -1, -1, -1)  # one initial state, three noise streams
    hours = torch.zeros(3)
    with torch.no_grad():
        a = model.rollout(x, hours, steps=3, step_hours=6, noise_seeds=[1, 2, 3])
        b = loaded.rollout(x, hours, steps=3, step_hours=6, noise_seeds=[1, 2, 3])
        alone = loaded.rollout(x[1:2], hours[:1], steps=3, step_hours=6, noise_seeds=[2])
    assert torch.equal(a, b)
    assert torch.allclose(alone[0], b[1], rtol=0, atol=1e-5 * float(b[1].abs().max()))  # member 2 alone
    spread = (a[0, -1] - a[1, -1]).abs().mean() / a[0, -1].abs().mean()
    assert spread > 1e-3  # the noise makes members of one initial state differ
    with pytest.raises(ValueError, match="needs one noise seed per member"):
        loaded.rollout(x, hours, steps=1, step_hours=6)
    with pytest.raises(ValueError, match="steps with its model noise"):
        loaded(x, hours)


def test_a_deterministic_model_is_unchanged_and_refuses_noise():
    model = _forecast_model(())
    assert not model.stochastic and model.noise is None
    assert not any("films" in k for k in model.net.state_dict())
    with pytest.raises(ValueError, match="takes no model noise"):
        model(torch.randn(1, 2, 17, 32), torch.zeros(1), torch.zeros(1, 1, 9, 9, dtype=torch.complex64))
