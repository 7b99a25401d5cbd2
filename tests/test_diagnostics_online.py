"""Online scores (kept block by block while the engine runs) equal the offline ones."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from forecast.diagnostics import area_weights, ensemble_mean_rmse, rank_histogram, spread_skill_ratio
from forecast.diagnostics.online import ArrayVerification, MeanSkill, RankCounts

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
    workers commit them), then the lead's result; results stacked over leads."""
    results = []
    for k in range(members.shape[1]):
        state = acc.empty()
        for lo, hi in blocks:
            acc.update(state, k, torch.from_numpy(members[lo:hi, k]).float(), lo)
        results.append(acc.result(state, k))
    return {name: np.stack([r[name][1] for r in results]) for name in results[0]}, state


def test_online_rank_histogram_equals_the_offline_one():
    members, verification = _ensemble()
    members = members.astype(np.float32).astype(np.float64)  # the engine hands float32 members
    verification = verification.astype(np.float32).astype(np.float64)
    result, state = _online(RankCounts(ArrayVerification(verification)), members)
    dims = ("member", "lead", "channel", "lat", "lon")
    offline = rank_histogram(
        xr.DataArray(members, dims=dims), xr.DataArray(verification, dims=dims[1:]), dims=["lat", "lon"]
    )
    online = result["rank_histogram"]
    assert np.abs(online - offline.values).max() < 1e-10
    assert online.sum() == 2 * 3 * 9 * 16 - 1  # every verified point once
    assert state.keys() == {"below", "ties", "members"}
    assert all(v.shape in ((), (2, 9, 16)) for v in state.values())  # one lead, never the members


def test_online_mean_skill_equals_the_offline_scores():
    members, verification = _ensemble(seed=1)
    members = members.astype(np.float32).astype(np.float64)
    w = area_weights(LAT)
    result, _ = _online(MeanSkill(ArrayVerification(verification), w.values), members)
    dims = ("member", "lead", "channel", "lat", "lon")
    x = xr.DataArray(members, dims=dims, coords={"lat": LAT})
    y = xr.DataArray(verification, dims=dims[1:], coords={"lat": LAT})
    rmse = ensemble_mean_rmse(x, y, weights=w, dims=["lat", "lon"])
    ssr = spread_skill_ratio(x, y, weights=w, dims=["lat", "lon"])
    assert np.allclose(result["ensemble_mean_rmse"], rmse.values, rtol=1e-10, atol=0)
    assert np.allclose(result["spread_skill_ratio"], ssr.values, rtol=1e-10, atol=0)
