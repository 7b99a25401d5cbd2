"""Perturbations (DESIGN §3.1): seed spectra, independence, and bred vectors exactly as specified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_harmonics import RealSHT

from forecast.ensemble.members import Layout, compose, member_seed
from forecast.ensemble.perturbation import (
    BredVectors,
    CorrelatedNoise,
    GaussianRandomField,
    Perturbation,
    SphericalNoise,
    band_rms,
    hemispheric_rescale,
    matern_spectrum,
    seed_spectrum,
    spectral_truncation,
)
from forecast.grid import cell_area_weights

LAT = np.linspace(90, -90, 33)
NLON = 64


def _power(fields: np.ndarray) -> np.ndarray:
    """Mean angular power per degree l of (n, lat, lon) fields, P(l) = |c_l0|² + 2 Σ_m |c_lm|²."""
    sht = RealSHT(len(LAT), NLON, lmax=32, mmax=32, grid="equiangular", norm="ortho").double()
    c = sht(torch.from_numpy(fields)).abs().square()
    p = c[..., 0] + 2 * c[..., 1:].sum(-1)
    return p.mean(0).numpy()


@pytest.mark.parametrize(
    "spectrum",
    [seed_spectrum(), matern_spectrum(2.0, 3.0)],
    ids=["hens-seed", "matern"],
)
def test_noise_fields_follow_their_spectrum(spectrum):
    noise = SphericalNoise(LAT, NLON, spectrum)
    fields = noise.fields(range(200))[:, 0].double()
    power = _power(fields.numpy())
    ell = np.arange(len(power), dtype=float)
    expected = (2 * ell + 1) * spectrum(ell) ** 2  # power per degree: 2l + 1 modes of variance σ_l²
    sl = slice(2, 20)  # resolved degrees away from the grid's truncation edge
    ratio = power[sl] / expected[sl]
    # one common normalisation; 200 draws of 2l+1 modes: a few % scatter per degree
    assert np.allclose(ratio / ratio.mean(), 1.0, atol=0.25), ratio / ratio.mean()
    assert power[0] < 1e-12 * power.sum()  # no global-mean offset
    # isotropy: every order m of a degree has the same variance E|a_lm|² = σ_l² (a real field
    # counts m >= 1 twice in P(l)); drawing re and im of m >= 1 each with variance σ_l² doubles
    # them and halves the zonal modes' share: this ratio is then 0.5
    sht = RealSHT(len(LAT), NLON, lmax=32, mmax=32, grid="equiangular", norm="ortho").double()
    c = sht(fields).abs().square().mean(0).numpy()[sl, :] / spectrum(ell[sl])[:, None] ** 2
    zonal, other = c[:, 0].mean(), np.mean([c[i, 1 : 3 + i].mean() for i in range(len(c))])
    assert 0.85 < zonal / other < 1.15, zonal / other


def test_noise_variance_does_not_depend_on_latitude():
    """An isotropic field has the same pointwise variance everywhere (addition theorem): at the
    poles only the zonal modes (m = 0) are non-zero, so if they are under-drawn the polar
    variance falls to about half of the mid-latitude one."""
    noise = SphericalNoise(LAT, NLON, seed_spectrum())
    var = noise.fields(range(1000))[:, 0].double().square().mean((0, 2))
    polar, rest = var[[0, -1]].mean(), var[4:-4].mean()
    # 1000 draws per pole point (64 copies of one value): about 5 % scatter of the polar variance
    assert 0.85 < float(polar / rest) < 1.15, float(polar / rest)


def test_float32_synthesis_matches_float64():
    """The measured claim behind float32 synthesis (benchmarks/bench_perturbation.py): the same
    white coefficients give unit-RMS fields within 1e-5 of their RMS in both precisions."""
    for spectrum in (seed_spectrum(), matern_spectrum()):
        lo = SphericalNoise(LAT, NLON, spectrum)
        hi = SphericalNoise(LAT, NLON, spectrum, dtype=torch.float64)
        white = lo.white(range(16), 3)
        f32, f64 = lo.synthesize(white), hi.synthesize(white.double())
        assert f32.dtype == torch.float32 and f64.dtype == torch.float64
        err = (f32.double() - f64).abs().amax((-2, -1))  # per field, in units of its RMS (1)
        assert float(err.max()) < 1e-5, float(err.max())
        assert float(err.max()) > 0  # really two precisions


def test_the_seed_spectrum_tail_that_is_not_synthesised_is_negligible():
    """The 500 km seed spectrum is synthesised up to the degree beyond which it holds 1e-8 of
    the RMS (about l = 110 on any grid finer than that); a full-degree synthesis of the same
    coefficients (the rest drawn too) differs by less than 1e-7 of the RMS."""
    lat, nlon = np.linspace(90, -90, 181), 360
    cut = SphericalNoise(lat, nlon, seed_spectrum(), dtype=torch.float64)
    full = SphericalNoise(lat, nlon, seed_spectrum(), dtype=torch.float64, tail=0.0)
    L = cut.amplitude.shape[0]
    assert 100 <= L <= 120 and full.amplitude.shape[0] == 180
    white = full.white(range(4))
    white_cut = white[..., :L, :L, :].clone()
    a, b = cut.synthesize(white_cut), full.synthesize(white)
    assert float((a - b).abs().max()) < 1e-7
    # a spectrum of finite but slowly falling power keeps every degree the grid resolves
    ell = np.arange(180, dtype=float)
    assert spectral_truncation(matern_spectrum()(ell), 1e-8) == 180
    assert spectral_truncation(seed_spectrum()(ell), 1e-8) == L


def test_seed_fields_of_different_members_are_uncorrelated():
    layout = Layout(("a",), 16)
    init = np.datetime64("2001-06-01T00", "h")
    seeds = layout.seeds(layout.blocks(32)[0], 7, init)
    assert len(set(seeds)) == 16
    noise = SphericalNoise(LAT, NLON, seed_spectrum())
    w = cell_area_weights(LAT)[:, None]
    block = noise.fields(seeds)[:, 0]  # the whole block in one draw, as the bred vectors do
    f = block.double().numpy()
    cov = np.einsum("aij,bij->ab", f * w, f) / (w.sum() * NLON)
    r = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    off = np.abs(r[~np.eye(16, dtype=bool)])
    # A 500 km field has only a few hundred degrees of freedom on the globe (power falls off
    # beyond l ~ 25 whatever the grid), so independent fields still correlate by chance with a
    # std near 0.04: the mean |r| is the sharp test, the max only catches shared streams (r ~ 1).
    assert off.mean() < 0.1 and off.max() < 0.3, (off.mean(), off.max())
    # regenerable: the same (base seed, checkpoint, init, perturbation) gives the same field
    assert member_seed(7, "a", init, 3) == seeds[3]
    assert torch.equal(noise.draw(seeds[3]), noise.draw(seeds[3]))
    # ... and a member's field does not depend on who shares its block: its white noise comes
    # from its own generator, and the batched synthesis gives it the same values bit for bit
    assert torch.equal(noise.white(seeds)[3], noise.white([seeds[3]])[0])
    assert torch.equal(noise.white(seeds)[3], noise.white(seeds[2:4])[1])
    assert torch.equal(block[3], noise.draw(seeds[3]))
    assert torch.equal(block[3], noise.fields(seeds[2:4])[1, 0])
    assert member_seed(7, "b", init, 3) != seeds[3] and member_seed(8, "a", init, 3) != seeds[3]


def test_noise_perturbations_have_their_amplitude_and_do_not_depend_on_the_batch():
    channels = ["z500", "t850", "q700"]
    amplitudes = {"z500": 120.0, "t850": 0.8}
    analysis = torch.zeros(3, len(LAT), NLON)
    w = torch.from_numpy(cell_area_weights(LAT))
    for kind in (CorrelatedNoise, GaussianRandomField):
        p = kind(channels, LAT, NLON, amplitudes)
        assert isinstance(p, Perturbation)
        d = p(analysis, [11, 12, 13])
        rms = torch.sqrt((d.double().square().mean(-1) * w).sum(-1) / w.sum())
        assert torch.allclose(rms[:, 0], torch.tensor(120.0, dtype=torch.float64), rtol=1e-5)
        assert torch.allclose(rms[:, 1], torch.tensor(0.8, dtype=torch.float64), rtol=1e-5)
        assert (d[:, 2] == 0).all()  # channels without an amplitude are left alone
        assert torch.equal(p(analysis, [12])[0], d[1])  # a member alone = the member in a batch
        assert torch.equal(p(analysis, [40, 12, 41, 42, 43, 44, 45, 46, 47])[1], d[1])  # ... in any batch
    with pytest.raises(ValueError, match="q850"):
        CorrelatedNoise(channels, LAT, NLON, {"q850": 1.0})


def test_hemispheric_rescale_hits_both_band_targets_and_interpolates_between():
    g = torch.Generator().manual_seed(0)
    lat = torch.from_numpy(LAT)
    diff = torch.randn((2, 3, len(LAT), NLON), generator=g, dtype=torch.float64)
    diff[1, 2] = 0.0  # a zero norm is left alone
    diff[0, 1, LAT <= -20] = 0.0  # a zero southern band: the south keeps its values, the north is scaled
    target = torch.tensor([2.0, 5.0, 0.5], dtype=torch.float64)
    w = torch.from_numpy(cell_area_weights(LAT))
    out = hemispheric_rescale(diff, lat, w, target)
    north, south = band_rms(out, lat)
    expect = target.expand(2, 3).clone()
    expect[1, 2] = 0.0
    assert torch.allclose(north, expect, rtol=1e-12)
    expect_s = expect.clone()
    expect_s[0, 1] = 0.0
    assert torch.allclose(south, expect_s, rtol=1e-12)
    # tropical rows: the row divided by a norm interpolated linearly in latitude
    n_n = band_rms(diff, lat)[0][0, 0]
    n_s = band_rms(diff, lat)[1][0, 0]
    j = int(np.flatnonzero(np.isclose(LAT, 0.0))[0])
    assert torch.allclose(out[0, 0, j], diff[0, 0, j] * target[0] / (0.5 * n_n + 0.5 * n_s), rtol=1e-12)


class Recording(torch.nn.Module):
    """A real model that records the batch size and valid time of each call."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.channels, self.lat, self.lon = model.channels, model.lat, model.lon
        self.calls: list[tuple[int, float]] = []

    def forward(self, state, hours):
        self.calls.append((state.shape[0], float(hours[0])))
        return self.inner(state, hours)


@pytest.fixture(scope="module")
def breeding(world_archive, world_packages):
    from forecast.archive import Archive, to_hours
    from forecast.training.data import load_for_archive

    model, _ = load_for_archive(world_packages[0], world_archive)
    a = Archive.open(world_archive)
    t = 2000  # an init index with 3 cycles of history
    analyses = torch.from_numpy(np.asarray(a.fields[t - 3 : t + 1]))
    start = float(to_hours(a.times[t - 3 : t - 2])[0])
    rmse = torch.linspace(1.0, 3.0, len(model.channels), dtype=torch.float64) * torch.from_numpy(
        np.asarray(a.group["diff_std"][:])
    )
    return Recording(model), analyses, start, rmse


def test_bred_vectors_are_rescaled_exactly_and_centred(breeding):
    model, analyses, start, rmse = breeding
    bv = BredVectors(model, analyses, start, rmse)
    seeds = [member_seed(0, "ckpt0", np.datetime64("2001-05-17", "h"), k) for k in range(6)]
    bred = bv(analyses[-1], seeds)
    assert bred.shape == (6, *analyses.shape[1:])
    north, south = band_rms(bred, model.lat.double())
    target = (0.35 * rmse).expand(6, -1)
    assert torch.allclose(north, target, rtol=1e-5) and torch.allclose(south, target, rtol=1e-5)
    # the members of one seed are different bred vectors
    assert not torch.allclose(bred[0], bred[1])
    members = compose(analyses[-1], bred, model.inner.non_negative.view(-1))
    plus, minus = members[0::2], members[1::2]
    clipped = model.inner.non_negative.view(1, -1, 1, 1).expand_as(plus) & ((plus == 0) | (minus == 0))
    centre = (plus + minus) / 2
    assert torch.allclose(centre[~clipped], analyses[-1].expand_as(centre)[~clipped], rtol=0, atol=1e-3)
    assert (members[:, model.inner.non_negative.view(-1)] >= 0).all()


def test_bred_vectors_advance_the_control_once_per_cycle_and_end_valid_at_the_init_time(breeding):
    model, analyses, start, rmse = breeding
    model.calls.clear()
    BredVectors(model, analyses, start, rmse)(analyses[-1], list(range(8)))
    control = [h for b, h in model.calls if b == 1]
    perturbed = [h for b, h in model.calls if b == 8]
    # 3 cycles: the control steps once per cycle for all 8 pairs, from t-18, t-12, t-6 (the last
    # step lands on the init time t = start + 18 h: the bred vector is not valid 6 h late)
    assert control == [start, start + 6, start + 12]
    assert perturbed == [start, start + 6, start + 12]
    with pytest.raises(ValueError, match="init-time analysis"):
        BredVectors(model, analyses, start, rmse)(analyses[-2], [1])
