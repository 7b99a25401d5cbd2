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
