"""Model noise of stochastic checkpoints: unit variance at every point (exactly, from the
harmonics), AR(1) correlation in time, members independent of their batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_harmonics import InverseRealSHT

from forecast.model.noise import NoiseSpec, SphericalARNoise, unit_variance_spectrum

SPEC = NoiseSpec(length_scales_km=(500.0, 2000.0, 8000.0), correlation_hours=(6.0, 24.0, 96.0))


def _synthesis(nlat: int, nlon: int, lmax: int, grid: str = "equiangular", dtype=torch.float64) -> InverseRealSHT:
    return InverseRealSHT(nlat, nlon, lmax=lmax, mmax=lmax, grid=grid).to(dtype)  # norm="ortho", the default


def _fields(isht: InverseRealSHT, coeffs: torch.Tensor) -> torch.Tensor:
    return isht(coeffs.reshape(-1, *coeffs.shape[-2:])).reshape(*coeffs.shape[:2], isht.nlat, isht.nlon)


def test_the_spectrum_gives_unit_variance_and_the_spec_is_validated():
    for scale in (250e3, 1000e3, 4000e3):
        sigma = unit_variance_spectrum(scale, 361)
        ell = np.arange(361)
        assert ((2 * ell + 1) / (4 * math.pi) * sigma**2).sum() == pytest.approx(1.0, rel=1e-12)
        assert np.all(np.diff(sigma) <= 0)  # smooth: power falls with degree
    assert NoiseSpec((100.0, 200.0), (6.0,)).correlation_hours == (6.0, 6.0)
    with pytest.raises(ValueError, match="length scales"):
        NoiseSpec((-1.0,))
    with pytest.raises(ValueError, match="correlation times"):
        NoiseSpec((100.0, 200.0, 300.0), (6.0, 12.0))


@pytest.mark.parametrize("grid,nlat,nlon", [("equiangular", 33, 64), ("legendre-gauss", 32, 64)])
def test_the_expected_variance_is_one_at_every_point(grid, nlat, nlon):
    """Var f(x) = Σ_lm E|a_lm|² |Y_lm(x)|², the Y's synthesised one coefficient at a time by
    the module's own transform: 1 everywhere, poles included (isotropy)."""
    lmax = min(nlat if grid == "legendre-gauss" else (nlat + 1) // 2, nlon // 2)
    noise = SphericalARNoise(lmax, SPEC, dtype=torch.float64)
    isht = _synthesis(nlat, nlon, lmax, grid)
    f, _, mmax = noise.amplitude.shape
    basis = torch.zeros((lmax * mmax, lmax, mmax), dtype=torch.complex128)
    basis.view(lmax * mmax, -1)[torch.arange(lmax * mmax), torch.arange(lmax * mmax)] = 1.0
    real = isht(basis).view(lmax, mmax, nlat, nlon)  # Y of the real part of a_lm
    imag = isht(1j * basis).view(lmax, mmax, nlat, nlon)  # and of its imaginary part
    for k in range(f):
        amp2 = noise.amplitude[k].square()[..., None, None]
        variance = (amp2 * real.square()).sum((0, 1)) + (amp2[:, 1:] * imag[:, 1:].square()).sum((0, 1))
        assert torch.allclose(variance, torch.ones_like(variance), rtol=0, atol=1e-10), k


def test_steps_are_correlated_as_an_ar1_and_stay_stationary():
    noise = SphericalARNoise(9, SPEC, dtype=torch.float64)
    isht = _synthesis(17, 32, 9)
    gens = noise.generators(range(1500))
    a0 = noise.start(gens)
    a = a0
    for _ in range(4):
        a = noise.advance(a, gens, step_hours=6)
    phi4 = np.exp(-4 * 6.0 / np.asarray(SPEC.correlation_hours))
    x0, x4 = _fields(isht, a0), _fields(isht, a)
    for k in range(SPEC.fields):
        u, v = x0[:, k].reshape(-1), x4[:, k].reshape(-1)
        corr = float((u * v).mean() / torch.sqrt(u.square().mean() * v.square().mean()))
        # ~ 1500 independent members (points of one field are correlated): 5 standard errors
        se = (1 - phi4[k] ** 2) / math.sqrt(1500)
        assert abs(corr - phi4[k]) < 5 * se + 1e-3, (k, corr, phi4[k])
        per_member = x4[:, k].square().mean((-2, -1))  # independent across members
        se_var = float(per_member.std()) / math.sqrt(len(per_member))
        assert abs(float(per_member.mean()) - 1.0) < 5 * se_var, (k, float(per_member.mean()), se_var)


def test_a_member_does_not_depend_on_its_batch():
    noise = SphericalARNoise(9, SPEC)
    together, alone = noise.generators([11, 12, 13]), noise.generators([12])
    a, b = noise.start(together), noise.start(alone)
    for _ in range(3):
        a, b = noise.advance(a, together, 6), noise.advance(b, alone, 6)
    assert torch.equal(a[1], b[0])  # the coefficients: the network synthesises them batched
    again = noise.generators([12])
    c = noise.start(again)
    for _ in range(3):
        c = noise.advance(c, again, 6)
    assert torch.equal(c, b)  # regenerated bit for bit
    assert not torch.equal(a[0], a[1])  # members differ


def test_a_scaled_stream_is_the_same_draws_scaled():
    from forecast.model.noise import NoiseStream

    noise = SphericalARNoise(9, SPEC, dtype=torch.float64)
    unit, half = NoiseStream(noise, [5, 6], 6.0), NoiseStream(noise, [5, 6], 6.0, scale=0.5)
    for _ in range(3):
        assert torch.equal(half.current, unit.current * 0.5)
        unit.advance()
        half.advance()
    # the variance at a point scales as the square: the process under it stays at unit variance
    isht = _synthesis(24, 48, 9)
    stream = NoiseStream(noise, list(range(400)), 6.0, scale=0.5)
    var = _fields(isht, stream.current).var(dim=0).mean()
    assert float(var) == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        NoiseStream(noise, [1], 6.0, scale=-1.0)
