"""Transforms built through `forecast.harmonics` leave no memoised Legendre tables behind
(at 0.25° they are about 1.2 GB of a run's peak) and compute what torch-harmonics' own do."""

from __future__ import annotations

import numpy as np
import torch
from torch_harmonics import InverseRealSHT, RealSHT

from forecast.diagnostics import spectra
from forecast.ensemble.perturbation import SphericalNoise
from forecast.grid import equiangular
from forecast.harmonics import build, drop_legendre_cache, legendre_caches
from forecast.model import ForecastModel, ModelConfig

CHANNELS = ["z500", "t850"]


def _cached() -> int:
    return sum(c.cache_info().currsize for c in legendre_caches())


def test_the_legendre_cache_is_found_and_emptied_by_build():
    # found: if torch-harmonics moved its cache, this fails rather than the saving vanishing quietly
    assert len(legendre_caches()) == 2
    drop_legendre_cache()
    reference = RealSHT(19, 36, lmax=10, mmax=10, grid="equiangular", norm="ortho").double()
    assert _cached() >= 1  # the plain constructor memoises its table
    sht = build(RealSHT, 19, 36, lmax=10, mmax=10, grid="equiangular", norm="ortho").double()
    assert _cached() == 0
    x = torch.randn(3, 19, 36, dtype=torch.float64)
    assert torch.equal(sht(x), reference(x))  # rebuilt from scratch: the same table, bit for bit
    inverse = build(InverseRealSHT, 19, 36, lmax=10, mmax=10, grid="equiangular", norm="ortho").double()
    assert _cached() == 0
    assert torch.allclose(inverse(sht(x)), inverse(reference(x)), rtol=0, atol=1e-13)


def test_the_model_the_noise_and_the_spectra_leave_no_cached_table():
    g = equiangular(17, 32)
    c = len(CHANNELS)
    model = ForecastModel(
        ModelConfig(embed_dim=8, num_layers=1),
        CHANNELS,
        torch.tensor(g.lat),
        torch.tensor(g.lon),
        mean=torch.zeros(c),
        std=torch.ones(c),
        diff_std=torch.ones(c),
        static=torch.randn(2, 17, 32),
        non_negative=[False] * c,
    )
    assert _cached() == 0
    with torch.no_grad():
        y = model(torch.randn(2, c, 17, 32), torch.zeros(2))
    assert y.shape == (2, c, 17, 32) and torch.isfinite(y).all()
    SphericalNoise(np.linspace(80, -80, 17), 32, lambda ell: np.exp(-ell / 4.0))
    assert _cached() == 0
    spectra._transform.cache_clear()
    spectra._transform(17, 32, 9, "equiangular")
    assert _cached() == 0
