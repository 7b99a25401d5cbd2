"""Spectra (DESIGN §3.3): Parseval against an exact Gauss quadrature, and the ensemble identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch_harmonics import InverseRealSHT

from forecast.diagnostics import ensemble_spectra, power_spectrum
from forecast.diagnostics.spectra import default_lmax

LAT = np.linspace(90, -90, 33)


def _coefficients(lmax, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.complex(
        torch.randn(n, lmax, lmax, generator=g, dtype=torch.float64),
        torch.randn(n, lmax, lmax, generator=g, dtype=torch.float64),
    )
    c = torch.tril(c.real) + 1j * torch.tril(c.imag)
    c[..., 0] = c[..., 0].real + 0j  # m = 0 is real for a real field
    return c


def test_parseval_holds_to_rounding_against_an_exact_quadrature():
    lmax = default_lmax(33, "equiangular")
    c = _coefficients(lmax)
    f = InverseRealSHT(33, 64, lmax=lmax, mmax=lmax, grid="equiangular", norm="ortho").double()(c)
    p = power_spectrum(xr.DataArray(f.numpy(), dims=("case", "lat", "lon"), coords={"lat": LAT}))
    assert p.dims == ("case", "l") and p.sizes["l"] == lmax
    # in coefficient space
    weights = torch.ones(lmax, dtype=torch.float64)
    weights[1:] = 2.0
    expect = (c.abs().square() * weights).sum((-1, -2)).numpy()
    assert np.allclose(p.sum("l").values, expect, rtol=1e-12)
    # and as ∫ f² dΩ: the same field on a Gauss grid, where the quadrature of f² is exact
    nlat, nlon = 40, 80
    fg = InverseRealSHT(nlat, nlon, lmax=lmax, mmax=lmax, grid="legendre-gauss", norm="ortho").double()(c).numpy()
    _, w = np.polynomial.legendre.leggauss(nlat)
    integral = (fg**2 * w[:, None]).sum((-1, -2)) * 2 * np.pi / nlon
    assert np.allclose(p.sum("l").values, integral, rtol=1e-12)


def test_a_single_degree_puts_all_power_there():
    lmax = default_lmax(33, "equiangular")
    c = torch.zeros(1, lmax, lmax, dtype=torch.complex128)
    c[0, 5, 2] = 1.0 + 0.5j
    f = InverseRealSHT(33, 64, lmax=lmax, mmax=lmax, grid="equiangular", norm="ortho").double()(c)
    p = power_spectrum(xr.DataArray(f.numpy()[0], dims=("lat", "lon"), coords={"lat": LAT})).values
    assert p[5] == pytest.approx(2 * 1.25, rel=1e-12) and np.delete(p, 5).max() < 1e-20
    with pytest.raises(ValueError, match="north to south"):
        power_spectrum(xr.DataArray(f.numpy()[0], dims=("lat", "lon"), coords={"lat": LAT[::-1]}))


def test_member_mean_spectrum_is_the_mean_spectrum_plus_the_perturbation_spectrum():
    rng = np.random.default_rng(0)
    x = xr.DataArray(
        rng.normal(size=(12, 2, 33, 64)) + 5 * np.cos(np.deg2rad(LAT))[:, None],
        dims=("member", "lead", "lat", "lon"),
        coords={"lat": LAT},
    )
    truth = x.isel(member=0) + 0.1
    s = ensemble_spectra(x, truth)
    total = s.ensemble_mean_spectrum + s.perturbation_spectrum
    assert np.allclose(s.member_mean_spectrum, total, rtol=1e-12, atol=0)
    assert set(s.data_vars) == {
        "member_mean_spectrum",
        "ensemble_mean_spectrum",
        "perturbation_spectrum",
        "verification_spectrum",
    }
    assert s.member_mean_spectrum.dims == ("lead", "l")


def test_spectra_in_batches_of_fields_equal_one_transform(monkeypatch):
    """`_power` bounds torch's temporaries by sending at most 64 MB of fields per transform
    (every 5.625° field at once); smaller batches give the same spectra to rounding."""
    from forecast.diagnostics import spectra

    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3, 33, 64))
    lmax = default_lmax(33, "equiangular")
    whole = spectra._power(x, lmax, "equiangular")
    sht = spectra._transform(33, 64, lmax, "equiangular")
    with torch.no_grad():
        c = sht(torch.from_numpy(x)).abs().square()
    np.testing.assert_array_equal(whole, (c[..., 0] + 2.0 * c[..., 1:].sum(-1)).numpy())  # one batch here
    monkeypatch.setattr(spectra, "_BATCH_BYTES", 4 * 33 * 64 * 8)  # 4 fields per call: 15 = 3 x 4 + 3
    batched = spectra._power(x, lmax, "equiangular")
    assert batched.shape == (5, 3, lmax)
    np.testing.assert_allclose(batched, whole, rtol=1e-13, atol=0)
    assert spectra._power(x[0, 0], lmax, "equiangular").shape == (lmax,)
