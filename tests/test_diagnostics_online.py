"""Online scores (kept block by block while the engine runs) equal the offline ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from forecast.diagnostics import area_weights, ensemble_mean_rmse, rank_histogram, spread_skill_ratio
from forecast.diagnostics.online import ArrayVerification, MeanSkill, RankCounts, SpectraSums
from forecast.diagnostics.scores import RANK_BINS, normalised_rank_histogram
from forecast.diagnostics.spectra import ensemble_spectra
from forecast.ensemble.online import EnsembleMoments, check_reads, state_views

LAT = np.linspace(80, -80, 9)


def _ensemble(m=12, leads=3, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(leads, channels, 9, 16))
    members = truth[None] + rng.normal(scale=1.2, size=(m, leads, channels, 9, 16))
    members = np.round(members, 1)  # ties with the verification happen
    verification = np.round(truth + rng.normal(size=truth.shape), 1)
    verification[1, 0, 4, 5] = np.nan  # a missing verification point is skipped
    return members, verification


def _online(acc, members, blocks=((4, 8), (0, 4), (8, 12))):
    """Per lead: the blocks folded one after the other into one state (in any order, as
    workers commit them), then the lead's result; results stacked over leads. An accumulator
    that reads the ensemble moments runs beside them, as in the engine."""
    accs = [EnsembleMoments(members.shape[2:]), acc] if getattr(acc, "reads", ()) else [acc]
    check_reads(accs)
    results = []
    for k in range(members.shape[1]):
        states = [a.empty() for a in accs]
        for lo, hi in blocks:
            for a, view in zip(accs, state_views(accs, states), strict=True):
                a.update(view, k, torch.from_numpy(members[lo:hi, k]).float(), lo)
        results.append(acc.result(state_views(accs, states)[-1], k))
    return {name: np.stack([r[name][1] for r in results]) for name in results[0]}, states[-1]


def test_online_rank_histogram_equals_the_offline_one():
    members, verification = _ensemble()
    members = members.astype(np.float32).astype(np.float64)  # the engine hands float32 members
    verification = verification.astype(np.float32).astype(np.float64)
    result, state = _online(RankCounts(ArrayVerification(verification)), members)
    dims = ("member", "lead", "channel", "lat", "lon")
    offline = rank_histogram(
        xr.DataArray(members, dims=dims), xr.DataArray(verification, dims=dims[1:]), dims=["lat", "lon"]
    )
    online = result["rank_histogram"]  # stored on the normalised rank: the same map of the same counts
    assert online.shape[-1] == RANK_BINS
    assert np.abs(online - normalised_rank_histogram(offline).values).max() < 1e-10
    assert online.sum() == pytest.approx(2 * 3 * 9 * 16 - 1, rel=1e-13)  # every verified point once
    outliers = (offline.isel(rank=0) + offline.isel(rank=-1)) / offline.sum("rank")
    np.testing.assert_allclose(result["outlier_fraction"], outliers.values, rtol=1e-13)  # from the exact ranks
    assert state.keys() == {"below", "ties", "members"}
    assert all(v.shape in ((), (2, 9, 16)) for v in state.values())  # one lead, never the members


def test_online_mean_skill_equals_the_offline_scores():
    members, verification = _ensemble(seed=1)
    members = members.astype(np.float32).astype(np.float64)
    w = area_weights(LAT)
    result, state = _online(MeanSkill(ArrayVerification(verification), w.values), members)
    assert state == {}  # it reads the run's moments: no second copy of the mean and M2
    dims = ("member", "lead", "channel", "lat", "lon")
    x = xr.DataArray(members, dims=dims, coords={"lat": LAT})
    y = xr.DataArray(verification, dims=dims[1:], coords={"lat": LAT})
    rmse = ensemble_mean_rmse(x, y, weights=w, dims=["lat", "lon"])
    ssr = spread_skill_ratio(x, y, weights=w, dims=["lat", "lon"])
    assert np.allclose(result["ensemble_mean_rmse"], rmse.values, rtol=1e-10, atol=0)
    assert np.allclose(result["spread_skill_ratio"], ssr.values, rtol=1e-10, atol=0)


def test_online_spectra_equal_the_offline_ones():
    members, verification = _ensemble(m=12, leads=2, seed=2)
    members = members.astype(np.float32).astype(np.float64)
    verification = np.nan_to_num(verification)
    result, state = _online(SpectraSums(ArrayVerification(verification)), members)
    assert state.keys() == {"power_sum"}  # the ensemble mean is read from the moments
    dims = ("member", "lead", "channel", "lat", "lon")
    offline = ensemble_spectra(xr.DataArray(members, dims=dims), xr.DataArray(verification, dims=dims[1:]))
    for name in ("member_mean_spectrum", "ensemble_mean_spectrum", "perturbation_spectrum", "verification_spectrum"):
        expected = offline[name].transpose("lead", "channel", "l").values
        for c in range(expected.shape[1]):  # per channel
            scale = np.abs(expected[:, c]).max()
            assert np.abs(result[name][:, c] - expected[:, c]).max() <= 1e-12 * scale, (name, c)


def test_a_score_that_reads_the_moments_needs_them():
    with pytest.raises(ValueError, match=r"mean_skill reads the state of \['moments'\]"):
        check_reads([MeanSkill(ArrayVerification(np.zeros((1, 1, 9, 16))), np.ones(9))])
