"""The almost-fair CRPS training loss against properscoring, the sorted-form scores of the
diagnostics, the explicit O(M²) double sum and its defining identity."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import torch
import xarray as xr

from forecast.diagnostics.scores import crps
from forecast.grid import cell_area_weights, equiangular
from forecast.model import ForecastModel, ModelConfig
from forecast.training.crps import CRPSLoss, SpectralCRPS, almost_fair_crps
from forecast.training.loop import TrainConfig


def _sample(m: int, seed: int = 0, points: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    members = torch.randn((points, m), generator=g, dtype=torch.float64) * 1.3 + 0.4
    target = torch.randn((points,), generator=g, dtype=torch.float64)
    return members, target


def _double_sum(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """The definition, term by term: (1/M) Σ_j |x_j − y| − (1 − ε)/(2M(M−1)) Σ_j Σ_k |x_j − x_k|."""
    m = x.shape[-1]
    skill = sum(np.abs(x[:, j] - y) for j in range(m)) / m
    spread = sum(np.abs(x[:, j] - x[:, k]) for j in range(m) for k in range(m))
    return skill - (1 - (1 - alpha) / m) * spread / (2 * m * (m - 1))


@pytest.mark.parametrize("m", [2, 3, 4, 8])
def test_alpha_zero_is_the_empirical_crps_of_properscoring(m):
    members, target = _sample(m, seed=m)
    ours = almost_fair_crps(members, target, alpha=0.0, dim=1).numpy()
    reference = properscoring.crps_ensemble(target.numpy(), members.numpy())
    assert np.abs(ours - reference).max() <= 1e-12 * np.abs(reference).max()


@pytest.mark.parametrize("m", [2, 4, 7])
@pytest.mark.parametrize("alpha", [0.0, 0.95, 1.0])
def test_it_equals_the_double_sum_and_the_sorted_scores(m, alpha):
    members, target = _sample(m, seed=10 + m)
    ours = almost_fair_crps(members, target, alpha=alpha, dim=1).numpy()
    assert np.abs(ours - _double_sum(members.numpy(), target.numpy(), alpha)).max() < 1e-12
    x = xr.DataArray(members.numpy(), dims=("point", "member"))
    y = xr.DataArray(target.numpy(), dims=("point",))
    estimator = {0.0: "ensemble", 1.0: "fair"}.get(alpha, "almost_fair")
    assert np.abs(ours - crps(x, y, estimator=estimator, alpha=alpha).values).max() < 1e-12


def test_it_is_alpha_times_fair_plus_the_rest_times_empirical():
    members, target = _sample(4, seed=3)
    fair = almost_fair_crps(members, target, alpha=1.0)
    ecdf = almost_fair_crps(members, target, alpha=0.0)
    for alpha in (0.3, 0.95):
        mixed = almost_fair_crps(members, target, alpha=alpha)
        assert torch.allclose(mixed, alpha * fair + (1 - alpha) * ecdf, rtol=0, atol=1e-13)


def test_the_member_dim_can_be_anywhere_and_bad_shapes_are_refused():
    members, target = _sample(3, seed=5)
    along_last = almost_fair_crps(members, target, dim=1)
    along_first = almost_fair_crps(members.T.contiguous(), target, dim=0)
    assert torch.equal(along_last, along_first)
    with pytest.raises(ValueError, match="at least 2 members"):
        almost_fair_crps(members[:, :1], target, dim=1)
    with pytest.raises(ValueError, match="do not match target"):
        almost_fair_crps(members, target[:-1], dim=1)
    with pytest.raises(ValueError, match="alpha"):
        almost_fair_crps(members, target, alpha=1.5, dim=1)


def test_its_gradient_matches_finite_differences():
    members, target = _sample(4, seed=7, points=6)
    members.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: almost_fair_crps(x, target, 0.95, dim=1), (members,))


def test_the_fair_score_favours_members_drawn_from_the_truth_distribution():
    """Propriety, on a fixed sample: y ~ N(0, 1) and 4 members ~ N(0, s²); the mean fair CRPS
    over 200,000 cases is lowest at s = 1 among s = 0.5, 0.8, 1, 1.25, 2 (each paired
    difference from s = 1 is ≥ 35 of its standard errors, so the seed does not decide it)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200_000, generator=g, dtype=torch.float64)
    z = torch.randn((200_000, 4), generator=g, dtype=torch.float64)
    scores = {s: float(almost_fair_crps(s * z, y, alpha=1.0).mean()) for s in (0.5, 0.8, 1.0, 1.25, 2.0)}
    assert min(scores, key=scores.get) == 1.0


def _model() -> ForecastModel:
    g = equiangular(9, 16)
    return ForecastModel(
        ModelConfig(embed_dim=8, num_layers=1),
        ["z500", "t850"],
        torch.tensor(g.lat),
        torch.tensor(g.lon),
        mean=torch.zeros(2),
        std=torch.ones(2),
        diff_std=torch.tensor([300.0, 1.5]),
        static=torch.randn(1, 9, 16),
        non_negative=[False, False],
    )


def test_the_loss_weighs_by_area_and_channel_in_difference_std_units():
    model = _model()
    loss = CRPSLoss(model, {"z500": 3.0})
    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([300.0, 1.5]).view(1, 1, 2, 1, 1)
    members = torch.randn((2, 4, 2, 9, 16), generator=g) * scale
    target = torch.randn((2, 2, 9, 16), generator=g) * scale[:, 0]
    # by hand: channel weights 3 and 1 normalised to mean 1, area weights of mean 1 per row
    area = torch.from_numpy(cell_area_weights(np.asarray(model.lat))).float()
    expected = 0.0
    for c, w in enumerate((1.5, 0.5)):
        x, y = members[:, :, c].double() / scale[0, 0, c], target[:, c].double() / scale[0, 0, c]
        per_point = torch.from_numpy(_double_sum(x.movedim(1, -1).reshape(-1, 4).numpy(), y.reshape(-1).numpy(), 0.95))
        expected += w * (per_point.view(2, 9, 16) * area.double().view(1, 9, 1)).mean() / 2
    assert float(loss(members, target)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="batch, member"):
        loss(members[:, 0], target)
    with pytest.raises(ValueError, match="not in the model"):
        CRPSLoss(model, {"t2m": 1.0})


def _band_limited(shape: tuple[int, ...], lmax: int, mmax: int, lcut: int, seed: int) -> torch.Tensor:
    """Random coefficients (..., l, m) of a real field, zero above degree lcut and for m > l."""
    g = torch.Generator().manual_seed(seed)
    c = torch.complex(torch.randn((*shape, lmax, mmax), generator=g), torch.randn((*shape, lmax, mmax), generator=g))
    c[..., 0] = c[..., 0].real + 0j  # m = 0 of a real field is real
    l, m = torch.arange(lmax)[:, None], torch.arange(mmax)[None]
    return c * ((m <= l) & (l < lcut))


def test_the_spectral_crps_scores_mode_moduli_with_parseval_weights():
    from torch_harmonics import InverseRealSHT

    nlat, nlon = 17, 32
    spectral = SpectralCRPS(nlat, nlon, "equiangular", alpha=0.95)
    lmax, mmax = spectral.sht.lmax, spectral.sht.mmax
    coeffs = _band_limited((2, 4, 3), lmax, mmax, lcut=8, seed=3)  # (batch, member + target, channel)
    fields = InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid="equiangular")(coeffs)
    members, target = fields[:, :3], fields[:, 3]
    got = spectral(members, target)  # (batch, channel)
    # by hand: the double-sum afCRPS of |c| / sqrt(4 pi) per mode, 1 x m = 0 and 2 x m > 0
    moduli = (coeffs.abs() / np.sqrt(4 * np.pi)).double().numpy()
    x = np.moveaxis(moduli[:, :3], 1, -1).reshape(-1, 3)
    per_mode = _double_sum(x, moduli[:, 3].reshape(-1), 0.95).reshape(2, 3, lmax, mmax)
    weights = np.where(np.arange(mmax) == 0, 1.0, 2.0)
    np.testing.assert_allclose(got.double().numpy(), (per_mode * weights).sum((-2, -1)), rtol=2e-5)
    # Parseval with the same weights: sum_lm w_m |c|^2 / 4 pi is the area mean of f^2, here by an
    # exact Gauss-Legendre quadrature of the field synthesised on its own grid
    _, gauss = np.polynomial.legendre.leggauss(24)
    on_gauss = InverseRealSHT(24, nlon, lmax=lmax, mmax=mmax, grid="legendre-gauss").double()(coeffs[0, 0, 0].cdouble())
    area_mean = float((on_gauss.numpy() ** 2).mean(-1) @ gauss / 2)
    power = float((coeffs[0, 0, 0].cdouble().abs() ** 2 * torch.from_numpy(weights)).sum() / (4 * np.pi))
    assert power == pytest.approx(area_mean, rel=1e-10)


def test_the_spectral_crps_ignores_phase_and_the_loss_adds_it_with_its_weight():
    model = _model()
    g = torch.Generator().manual_seed(2)
    scale = torch.tensor([300.0, 1.5]).view(1, 1, 2, 1, 1)
    members = torch.randn((2, 3, 2, 9, 16), generator=g) * scale
    target = torch.randn((2, 2, 9, 16), generator=g) * scale[:, 0]
    spectral = SpectralCRPS(9, 16, "equiangular")
    shifted = torch.roll(members, 5, dims=-1)  # a longitude shift changes every phase, no modulus
    np.testing.assert_allclose(spectral(shifted, target).numpy(), spectral(members, target).numpy(), rtol=1e-5)
    plain, both = CRPSLoss(model, {"z500": 3.0}), CRPSLoss(model, {"z500": 3.0}, spectral_weight=0.1)
    assert float(plain(shifted, target)) != pytest.approx(float(plain(members, target)), rel=1e-3)
    x, y = members / scale, target / scale[:, 0]
    term = (torch.tensor([1.5, 0.5]) * spectral(x, y)).mean()
    assert float(both(members, target)) == pytest.approx(float(plain(members, target) + 0.1 * term), rel=1e-5)
    both(members.requires_grad_(), target).backward()
    assert torch.isfinite(members.grad).all() and members.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="spectral_crps_weight"):
        TrainConfig(spectral_crps_weight=0.1)  # the MSE loss has no spectral term
