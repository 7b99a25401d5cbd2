"""EFI and SOT (DESIGN §3.4) against the earthkit-meteo reference cases and exact limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from conftest import ANCHORS

from forecast.diagnostics import efi, sot


def _case(name):
    d = json.loads((ANCHORS / f"earthkit_meteo_extreme_{name}_case.json").read_text())
    clim = xr.DataArray(np.asarray(d["clim"], np.float64), dims="quantile")
    ens = xr.DataArray(np.asarray(d["ens"], np.float64), dims="member")
    return clim, ens, d["expected_upstream"]


def test_efi_and_sot_match_the_earthkit_meteo_t2m_case():
    clim, ens, expected = _case("t2m")
    assert float(efi(clim, ens)) == pytest.approx(expected["efi_default_eps"], abs=1e-9)
    assert float(efi(clim, ens, eps=1e-4)) == pytest.approx(expected["efi_eps_1e-4"], abs=1e-9)
    # the upstream SOT values are stored with 8 decimals: agreement to half their last digit
    assert float(sot(clim, ens, 90)) == pytest.approx(expected["sot_perc90"], abs=5e-9)
    assert float(sot(clim, ens, 10)) == pytest.approx(expected["sot_perc10"], abs=5e-9)


def test_efi_and_sot_match_the_earthkit_meteo_precipitation_case():
    clim, ens, expected = _case("precip")
    assert float(efi(clim, ens, eps=1e-4)) == pytest.approx(expected["efi_eps_1e-4"], abs=1e-9)
    assert expected["sot_perc90_eps_1e4"] is None and np.isnan(float(sot(clim, ens, 90, eps=1e4)))


def test_efi_reaches_plus_and_minus_one_exactly():
    clim = xr.DataArray(np.linspace(0.0, 100.0, 101), dims="quantile")
    above = xr.DataArray(np.full(20, 150.0), dims="member")
    below = xr.DataArray(np.full(20, -5.0), dims="member")
    assert float(efi(clim, above)) == pytest.approx(1.0, abs=1e-14)  # a trapezoid over 1-99 % gives ~0.875
    assert float(efi(clim, below)) == pytest.approx(-1.0, abs=1e-14)
    # a forecast distributed as the climate: EFI near 0
    rng = np.random.default_rng(0)
    same = xr.DataArray(rng.uniform(0, 100, 5000), dims="member")
    assert abs(float(efi(clim, same))) < 0.02
    # NaN policy: NaN members dropped, a NaN climate gives NaN
    with_nan = xr.DataArray(np.append(np.full(20, 150.0), np.nan), dims="member")
    assert float(efi(clim, with_nan)) == pytest.approx(1.0, abs=1e-14)
    assert np.isnan(float(efi(clim.where(clim != 50.0), above)))


def test_sot_is_bounded_and_validates_its_percentile():
    clim = xr.DataArray(np.linspace(0.0, 100.0, 101), dims="quantile")
    far = xr.DataArray(np.full(10, 1e6), dims="member")
    assert float(sot(clim, far, 90)) == 10.0
    with pytest.raises(ValueError, match="percentile"):
        sot(clim, far, 50)


def test_sot_percentiles_of_all_points_equal_numpy_per_point():
    """The forecast percentile of SOT, taken for all points at once, equals np.nanpercentile
    exactly, with NaN members, an all-NaN point, ties and constant points."""
    import warnings

    from forecast.diagnostics.extremes import _nan_percentile

    rng = np.random.default_rng(3)
    ens = np.round(rng.normal(0.3, 1.2, size=(5, 60, 16)), 1)  # rounding makes ties
    ens[0, 0, :3] = np.nan
    ens[1, 1] = np.nan
    ens[2, 2] = 4.2
    ens[3, 3, :15] = np.nan  # a single valid member
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns on the all-NaN point
        for q in (1, 2, 10, 37.5, 50, 90, 98, 99):
            np.testing.assert_array_equal(_nan_percentile(ens, q), np.nanpercentile(ens, q, axis=-1))


def test_efi_counts_by_comparison_equal_the_sorted_search(monkeypatch):
    """Small ensembles count members <= each quantile by comparison, large ones by a sorted
    search per point: the same integer counts, so the same EFI (NaN members and ties included)."""
    from forecast.diagnostics import extremes

    rng = np.random.default_rng(3)
    clim = np.sort(np.round(rng.normal(size=(40, 101)), 1), axis=-1)
    ens = np.round(rng.normal(0.3, 1.2, size=(40, 24)), 1)  # ties with the quantiles happen
    ens[5, :3] = np.nan
    compared = extremes._efi_core(clim, ens, -0.1)
    monkeypatch.setattr(extremes, "SMALL_ENSEMBLE", 0)
    searched = extremes._efi_core(clim, ens, -0.1)
    assert np.array_equal(compared, searched)
    assert np.isfinite(compared).all() and np.abs(compared).max() > 0.1
