"""Ensemble-size curves, tails and ROC areas (issue #14): nested subsets that keep ± pairs and
sample checkpoints evenly; reference values for a calibrated synthetic ensemble; independent
implementations; online (SubsetExtremes, block by block) = offline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from forecast.diagnostics import area_weights
from forecast.diagnostics.ensemble_size import (
    ensemble_size_curves,
    ensemble_sizes,
    member_labels,
    nested_subsets,
    subset_ranks,
)
from forecast.diagnostics.online import ArrayVerification
from forecast.diagnostics.online_extremes import SubsetExtremes
from forecast.diagnostics.tails import (
    anomaly_distribution,
    binned_event_weights,
    exceedance_probability,
    roc_area,
    roc_area_from_bins,
    roc_curve,
    roc_points,
    standardised_anomalies,
)
from forecast.ensemble.members import Layout


def _ensemble(m: int, nlat: int, nlon: int, seed: int, layout: Layout | None = None, channels: int = 1):
    """Members and verification all iid N(0, 1): a calibrated ensemble of exchangeable members."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, channels, nlat, nlon)).astype(np.float32)
    y = rng.standard_normal((channels, nlat, nlon)).astype(np.float32)
    lat = np.linspace(-80, 80, nlat)
    coords = {"lat": lat, "lon": np.arange(nlon) * 360.0 / nlon, "channel": [f"c{i}" for i in range(channels)]}
    if layout is not None:
        c = layout.coords()
        coords.update(
            member=c["member"], checkpoint=("member", c["checkpoint"]), perturbation=("member", c["perturbation"])
        )
    fx = xr.DataArray(x, dims=("member", "channel", "lat", "lon"), coords=coords)
    fy = xr.DataArray(y, dims=("channel", "lat", "lon"), coords={k: coords[k] for k in ("channel", "lat", "lon")})
    return fx, fy


def test_subsets_keep_pairs_sample_checkpoints_evenly_and_are_reproducible():
    layout = Layout(("a", "b", "c"), perturbations=5)
    fx, _ = _ensemble(layout.size, 2, 4, 0, layout)
    checkpoint, pair = member_labels(fx)
    ranks = subset_ranks(checkpoint, pair, seed=3)
    assert sorted(ranks.tolist()) == list(range(layout.size))
    assert np.array_equal(ranks, subset_ranks(checkpoint, pair, seed=3))
    assert not np.array_equal(ranks, subset_ranks(checkpoint, pair, seed=4))
    sizes = ensemble_sizes(layout.size)
    assert sizes == (2, 4, 8, 16, 30)
    subsets = nested_subsets(ranks, sizes)
    for s, idx in subsets.items():
        assert len(idx) == s
        assert np.array_equal(idx[::2] // 2, idx[1::2] // 2)  # whole ± pairs (members 2p, 2p + 1)
        per_checkpoint = np.bincount(idx // layout.per_checkpoint, minlength=3)
        assert per_checkpoint.max() - per_checkpoint.min() <= 2  # one pair at most between checkpoints
    for small, large in zip(sizes, sizes[1:], strict=False):
        assert set(subsets[small]) <= set(subsets[large])  # nested


def test_a_calibrated_ensemble_has_the_expected_curves():
    layout = Layout(("a", "b"), perturbations=16)
    fx, fy = _ensemble(layout.size, 120, 200, 1, layout)  # 24,000 independent points
    ds = ensemble_size_curves(fx, fy, draws=2).mean("draw").squeeze("channel")
    n = 120 * 200
    for s in ds.ensemble_size.values:
        p = 2 / (s + 1)
        got = float(ds.outlier_fraction.sel(ensemble_size=s))
        assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / n), s
        # members and y iid N(0, 1): E fair CRPS = E|X - Y| - E|X - X'| / 2 = 1/sqrt(pi) at any m';
        # E ecdf CRPS = (1 + 1/m') / sqrt(pi): a finite ensemble pays 1/m' in the ecdf score
        assert float(ds.crps_fair.sel(ensemble_size=s)) == pytest.approx(1 / math.sqrt(math.pi), rel=0.02), s
        assert float(ds.crps_ensemble.sel(ensemble_size=s)) == pytest.approx((1 + 1 / s) / math.sqrt(math.pi), rel=0.02)
    best = ds.best_member_error.values
    assert np.all(np.diff(best) < 0)  # more members: a closer best member
    # E min_i |x_i - y| for m' iid members ~ E over y of 1 / (m' * 2 phi(y)) at large m': shrinks ~ 1/m'
    assert best[-1] * ds.ensemble_size.values[-1] == pytest.approx(best[-2] * ds.ensemble_size.values[-2], rel=0.15)


def test_the_curves_match_a_direct_computation():
    layout = Layout(("a", "b", "c"), perturbations=4)
    fx, fy = _ensemble(layout.size, 9, 16, 2, layout, channels=2)
    q = xr.full_like(fy, 1.0)
    w = area_weights(fx.lat)
    ds = ensemble_size_curves(fx, fy, draws=1, seed=7, weights=w, extreme_threshold=q)
    x, y, wv = fx.values.astype(np.float64), fy.values.astype(np.float64), w.values[:, None] * np.ones(16)
    ranks = subset_ranks(*member_labels(fx), seed=7)
    for s in ds.ensemble_size.values:
        sub = x[ranks < s]
        outside = (y < sub.min(0)) | (y > sub.max(0))
        best = np.abs(sub - y).min(0)
        pairwise = np.abs(sub[:, None] - sub[None]).sum((0, 1))
        fair = np.abs(sub - y).mean(0) - pairwise / (2 * s * (s - 1))
        missed = (y > 1) & ~(sub > 1).any(0)
        for name, field in (("outlier_fraction", outside), ("best_member_error", best), ("crps_fair", fair)):
            expected = (field * wv).sum((-2, -1)) / wv.sum()
            got = ds[name].sel(ensemble_size=s, draw=0).values
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12, err_msg=f"{name} {s}")
        np.testing.assert_array_equal(ds.missed_extreme_count.sel(ensemble_size=s, draw=0), missed.sum((-2, -1)))
    assert np.all(ds.observed_extreme_count.values == (y > 1).sum((-2, -1)))
    with pytest.raises(ValueError, match="even"):
        ensemble_size_curves(fx, fy, sizes=(3,))


def test_online_equals_offline_block_by_block():
    layout = Layout(("a", "b"), perturbations=6)
    fx, fy = _ensemble(layout.size, 12, 24, 3, layout, channels=3)
    fy[0, 0, 0] = np.nan  # a point with no verification counts nowhere
    q = xr.full_like(fy, 1.2)
    w = area_weights(fx.lat)
    sizes = ensemble_sizes(layout.size)
    ranks = subset_ranks(*member_labels(fx), seed=5)
    truth = ArrayVerification(fy.values[None])
    acc = SubsetExtremes(truth, w.values, ranks, sizes, threshold=lambda k: q.values)
    state = acc.empty()
    x = torch.from_numpy(fx.values)
    for first in (8, 0, 16, 4, 12, 20):  # blocks of 4 in any order
        acc.update(state, 0, x[first : first + 4], first)
    online = acc.result(state, 0)
    offline = ensemble_size_curves(fx, fy, sizes=sizes, draws=1, seed=5, weights=w, extreme_threshold=q).isel(draw=0)
    for on, off in (
        ("subset_outlier_fraction", "outlier_fraction"),
        ("subset_best_member_error", "best_member_error"),
        ("subset_missed_extreme_fraction", "missed_extreme_fraction"),
    ):
        np.testing.assert_allclose(
            online[on][1], offline[off].transpose("ensemble_size", "channel"), rtol=0, atol=1e-10
        )
    np.testing.assert_array_equal(
        online["subset_missed_extreme_count"][1], offline.missed_extreme_count.transpose("ensemble_size", "channel")
    )
    # the state does not grow with the members: twice the members, one more size
    bigger = SubsetExtremes(truth, w.values, np.arange(48), ensemble_sizes(48)).empty()
    assert bigger["best_error"].shape[1:] == state["best_error"].shape[1:]
    assert bigger["first_at_or_below"].shape == state["first_at_or_below"].shape


def test_tails_anomalies_and_their_distribution():
    fx, fy = _ensemble(40, 30, 60, 4)
    z = standardised_anomalies(fx, fy)
    mean, s = fx.mean("member"), fx.std("member", ddof=1)
    direct = (np.abs(fx - mean) / s).max("member")
    np.testing.assert_allclose(z.largest_member_anomaly, direct, rtol=1e-6)
    # |z_y| beyond the largest member anomaly exactly where y is outside the ensemble
    outside = (fy < fx.min("member")) | (fy > fx.max("member"))
    beyond = np.abs(z.verification_anomaly) > z.largest_member_anomaly
    inside_far = ~outside & beyond
    assert not bool(inside_far.any())
    # a calibrated ensemble: (y - mean) / (s sqrt(1 + 1/m)) is Student-t with m - 1 degrees of freedom
    from scipy.stats import t as student_t

    fx, fy = _ensemble(40, 100, 200, 6)
    z = standardised_anomalies(fx, fy).verification_anomaly / math.sqrt(1 + 1 / 40)
    edges = np.linspace(-4, 4, 17)
    dist = anomaly_distribution(z, edges).squeeze("channel")
    assert float(dist.sum()) == pytest.approx(1.0)
    cdf = student_t.cdf(edges, df=39)
    expected = np.diff(cdf)
    expected[0], expected[-1] = cdf[1], 1 - cdf[-2]  # values beyond the edges go to the end bins
    n = 100 * 200
    assert np.all(np.abs(dist.values - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1e-12)


def test_roc_area_is_one_for_a_perfect_forecast_and_a_half_for_a_random_one():
    rng = np.random.default_rng(0)
    event = xr.DataArray((rng.random((50, 80)) < 0.1).astype(float), dims=("lat", "lon"))
    assert float(roc_area(event, event)) == 1.0
    unrelated = xr.DataArray(rng.random((50, 80)), dims=("lat", "lon"))
    n1, n0 = float(event.sum()), float((1 - event).sum())
    se = math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))  # Mann-Whitney's null standard error
    assert abs(float(roc_area(unrelated, event)) - 0.5) < 4 * se
    # the Mann-Whitney form equals the trapezoid under the curve, weights or not, ties or not
    skilled = xr.DataArray(np.round(0.6 * event.values + 0.5 * rng.random((50, 80)), 1), dims=("lat", "lon"))
    w = xr.DataArray(np.cos(np.deg2rad(np.linspace(-80, 80, 50))), dims="lat")
    for weights in (None, w):
        far, hr = roc_curve(skilled.values, event.values, None if weights is None else w.values[:, None])
        assert float(roc_area(skilled, event, weights)) == pytest.approx(np.trapezoid(hr, far), abs=1e-12)
    # exceedance probabilities are member fractions
    fx, _ = _ensemble(10, 3, 4, 5)
    p = exceedance_probability(fx, 0.5)
    np.testing.assert_allclose(p, (fx.values > 0.5).mean(0))


def test_binned_roc_area_pools_exactly_and_equals_the_direct_one_per_probability():
    from forecast.diagnostics.tails import probability_edges

    fx, fy = _ensemble(12, 20, 40, 7)
    event = (fy > 0.8).astype(float)
    shifted = fx + 0.8 * event  # members that lean towards the event: a skilful forecast
    p = exceedance_probability(shifted, 0.8).squeeze("channel")
    w = area_weights(fx.lat)
    binned = binned_event_weights(p, event.squeeze("channel"), probability_edges(12), w)
    direct = float(roc_area(p, event.squeeze("channel"), w))
    assert 0.6 < direct < 1.0
    assert float(roc_area_from_bins(binned.event_weight, binned.other_weight)) == pytest.approx(direct, abs=1e-12)
    # the curve from the bins (what roc_q99.png draws) is the direct curve, bins without scores aside
    far_b, hr_b = roc_points(binned.event_weight.values, binned.other_weight.values)
    far_d, hr_d = roc_curve(p.values, event.squeeze("channel").values, np.broadcast_to(w.values[:, None], p.shape))
    kept = np.concatenate([[True], (binned.event_weight + binned.other_weight).values[::-1] > 0])
    np.testing.assert_allclose(far_b[kept], far_d, atol=1e-12)
    np.testing.assert_allclose(hr_b[kept], hr_d, atol=1e-12)
    # halves of the grid binned apart pool to the whole grid's bins, each weighing its area
    north = binned_event_weights(p.isel(lat=slice(10, None)), event.squeeze("channel").isel(lat=slice(10, None)),
                                 probability_edges(12), w.isel(lat=slice(10, None)))  # fmt: skip
    south = binned_event_weights(p.isel(lat=slice(None, 10)), event.squeeze("channel").isel(lat=slice(None, 10)),
                                 probability_edges(12), w.isel(lat=slice(None, 10)))  # fmt: skip
    area_n, area_s = float(w.isel(lat=slice(10, None)).sum()), float(w.isel(lat=slice(None, 10)).sum())
    for name in ("event_weight", "other_weight"):
        pooled = (north[name] * area_n + south[name] * area_s) / (area_n + area_s)
        np.testing.assert_allclose(pooled, binned[name], rtol=1e-12, atol=1e-15)
