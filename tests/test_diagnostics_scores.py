"""Ensemble scores (DESIGN §3.2) against brute force, exact integrals and peer libraries."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from forecast.diagnostics import (
    area_weights,
    brier_score,
    crps,
    ensemble_mean_rmse,
    normalised_rank_histogram,
    outlier_fraction,
    rank_histogram,
    reliability,
    spread_skill_ratio,
)
from forecast.diagnostics.scores import RANK_BINS


def _ensemble(m=9, shape=(5, 6), seed=0, nan_members=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, (m, *shape))
    y = rng.normal(3.5, 2.0, shape)
    if nan_members:
        x[0, 0, 0] = np.nan  # dropped member at one point
        x[:, 1, 1] = np.nan  # no members: NaN score
        x[1:, 2, 2] = np.nan  # one member: NaN fair score
        y[3, 3] = np.nan  # NaN observation: NaN score
    dims = ("member", "lat", "lon")
    return xr.DataArray(x, dims=dims), xr.DataArray(y, dims=dims[1:])


def _pairwise(x, y, estimator, alpha=0.95):
    """The textbook O(m²) form, point by point, NaN members dropped."""
    out = np.full(y.shape, np.nan)
    for idx in np.ndindex(y.shape):
        v = x[(slice(None), *idx)]
        v = v[~np.isnan(v)]
        m = len(v)
        if np.isnan(y[idx]) or m == 0:
            continue
        skill = np.abs(v - y[idx]).mean()
        s = np.abs(v[:, None] - v[None, :]).sum()
        ecdf = skill - s / (2 * m * m)
        fair = skill - s / (2 * m * (m - 1)) if m > 1 else np.nan
        out[idx] = {"ensemble": ecdf, "fair": fair, "almost_fair": alpha * fair + (1 - alpha) * ecdf}[estimator]
    return out


@pytest.mark.parametrize("estimator", ["fair", "ensemble", "almost_fair"])
def test_sorted_crps_equals_the_pairwise_form_with_the_nan_policy(estimator):
    x, y = _ensemble()
    got = crps(x, y, estimator=estimator)
    expect = _pairwise(x.values, y.values, estimator)
    assert got.dims == ("lat", "lon") and got.attrs["crps_estimator"] == estimator
    assert np.array_equal(np.isnan(got.values), np.isnan(expect))
    assert np.allclose(got.values, expect, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(got.values[1, 1]) and np.isnan(got.values[3, 3])
    assert np.isnan(got.values[2, 2]) == (estimator != "ensemble")


def test_compiled_bucket_sort_kernel_is_exact_for_awkward_ensembles():
    """The numba kernel bucket-sorts; clustered members, ties, a constant row and a huge
    outlier (everything in one bucket but one) must still give the exact sums."""
    from forecast.diagnostics._crps_kernel import crps_sums
    from forecast.diagnostics.scores import _crps_sorted_numpy

    rng = np.random.default_rng(3)
    m = 400
    rows = np.stack(
        [
            rng.normal(0.0, 1.0, m),
            np.round(rng.normal(0.0, 1.0, m)),  # ties
            np.full(m, 2.5),  # constant
            np.r_[rng.normal(0.0, 1e-3, m - 1), 1e6],  # one outlier: all others in one bucket
            np.r_[rng.normal(-50.0, 0.1, m // 2), rng.normal(50.0, 0.1, m // 2)],  # two clusters
            rng.exponential(1.0, m) ** 4,  # heavy tail
        ]
    ).astype(np.float32)
    y = np.array([0.3, 0.0, 2.5, 0.0, 10.0, 1.0])
    skill, spread, has_nan = crps_sums(rows, y)
    assert not has_nan.any()
    pair = np.abs(rows[:, :, None].astype(np.float64) - rows[:, None, :]).sum((1, 2))
    np.testing.assert_allclose(spread, pair, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(skill, np.abs(rows - y[:, None]).mean(1), rtol=1e-12)
    fair = skill - spread / (2.0 * m * (m - 1))
    np.testing.assert_allclose(fair, _crps_sorted_numpy(rows, y, "fair", 0.95), rtol=1e-12, atol=1e-12)


def test_ensemble_crps_equals_the_integral_of_the_squared_cdf_difference():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=13), 0.4
    # exact piecewise integral of (F(z) - H(z - y))² over the sorted breakpoints
    pts = np.sort(np.append(x, y))
    total = 0.0
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        z = 0.5 * (a + b)
        total += ((x <= z).mean() - float(z >= y)) ** 2 * (b - a)
    got = crps(xr.DataArray(x, dims="member"), xr.DataArray(y), estimator="ensemble")
    assert float(got) == pytest.approx(total, rel=1e-13)


def test_crps_agrees_with_properscoring_and_scores():
    import properscoring
    import scores.probability

    x, y = _ensemble(m=50, shape=(8, 12), seed=1, nan_members=False)
    ours = crps(x, y, estimator="ensemble").values
    ps = properscoring.crps_ensemble(y.values, np.moveaxis(x.values, 0, -1))
    assert np.allclose(ours, ps, rtol=1e-9, atol=0)
    for method, estimator in (("ecdf", "ensemble"), ("fair", "fair")):
        peer = scores.probability.crps_for_ensemble(x, y, "member", method=method, preserve_dims=["lat", "lon"])
        assert np.allclose(crps(x, y, estimator=estimator).values, peer.values, rtol=1e-9, atol=0), method


def test_crps_keeps_float64_accuracy_with_large_offsets_and_float32_members():
    rng = np.random.default_rng(5)
    m = 7424
    base = rng.normal(0.0, 30.0, (m, 2)).astype(np.float32)
    x32 = (base + np.float32(55_000.0)).astype(np.float32)  # z500-like magnitude
    y = np.array([55_010.0, 54_990.0])
    got = crps(xr.DataArray(x32, dims=("member", "p")), xr.DataArray(y, dims="p")).values
    # the same members shifted to 0 exactly (float64), scored by the peer
    import scores.probability

    x64 = x32.astype(np.float64) - 55_000.0
    peer = scores.probability.crps_for_ensemble(
        xr.DataArray(x64, dims=("member", "p")),
        xr.DataArray(y - 55_000.0, dims="p"),
        "member",
        method="fair",
        preserve_dims=["p"],
    )
    assert np.allclose(got, peer.values, rtol=1e-9, atol=0)


def test_dask_backed_crps_equals_numpy_and_reduces_with_area_weights():
    x, y = _ensemble(m=16, shape=(9, 8), seed=2, nan_members=False)
    lat = np.linspace(80, -80, 9)
    x, y = x.assign_coords(lat=lat), y.assign_coords(lat=lat)
    lazy = crps(x.chunk({"lat": 3, "member": 4}), y.chunk({"lat": 3}))
    assert lazy.chunks is not None
    assert np.allclose(lazy.compute().values, crps(x, y).values, rtol=1e-14)
    # one chunk per latitude row on four threads: the compiled kernel is called concurrently
    import dask

    rows = crps(x.chunk({"lat": 1}), y.chunk({"lat": 1}))
    with dask.config.set(scheduler="threads", num_workers=4):
        assert np.allclose(rows.compute().values, crps(x, y).values, rtol=1e-14)
    w = area_weights(lat)
    total = crps(x, y, weights=w, dims=("lat", "lon"))
    per = crps(x, y)
    manual = (per * w).sum() / (w.sum() * 8)
    assert float(total) == pytest.approx(float(manual), rel=1e-12)
    assert float(w.sum()) == pytest.approx(1.0) and w.values[4] > w.values[0]


def test_spread_skill_of_a_calibrated_ensemble_is_one_and_the_formula_holds():
    rng = np.random.default_rng(4)
    m, n = 10, 20_000
    truth_mean = rng.normal(size=n)
    x = xr.DataArray(truth_mean + rng.normal(size=(m, n)), dims=("member", "case"))
    y = xr.DataArray(truth_mean + rng.normal(size=n), dims="case")
    ssr = float(spread_skill_ratio(x, y, dims=["case"]))
    assert ssr == pytest.approx(1.0, abs=0.03)
    manual = (
        np.sqrt((m + 1) / m) * np.sqrt(x.var("member", ddof=1).mean()) / np.sqrt(((x.mean("member") - y) ** 2).mean())
    )
    assert ssr == pytest.approx(float(manual), rel=1e-12)
    under = float(spread_skill_ratio(0.5 * (x - x.mean("member")) + x.mean("member"), y, dims=["case"]))
    assert under < 0.7  # an under-dispersive ensemble shows it
    rmse = float(ensemble_mean_rmse(x, y, dims=["case"]))
    assert rmse == pytest.approx(float(np.sqrt(((x.mean("member") - y) ** 2).mean())), rel=1e-12)


def test_rank_histogram_splits_ties_and_outliers_have_their_expectation():
    x = xr.DataArray(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 2.0], [0.0, 0.0, 0.0]]).T, dims=("member", "case"))
    y = xr.DataArray(np.array([2.5, 2.0, 5.0]), dims="case")
    h = rank_histogram(x, y, dims=["case"])
    # case 0: rank 2; case 1: ties with 2 members -> ranks 1, 2, 3 get 1/3; case 2: rank 3
    assert np.allclose(h.values, [0.0, 1 / 3, 1 + 1 / 3, 1 + 1 / 3])
    assert float(h.sum()) == pytest.approx(3.0)
    rng = np.random.default_rng(0)
    m, n = 9, 50_000
    calibrated = rank_histogram(
        xr.DataArray(rng.normal(size=(m, n)), dims=("member", "case")),
        xr.DataArray(rng.normal(size=n), dims="case"),
        dims=["case"],
    )
    out = outlier_fraction(calibrated)
    assert float(out.outlier_expected) == pytest.approx(2 / (m + 1))
    assert float(out.outlier_fraction) == pytest.approx(2 / (m + 1), abs=0.01)


def _piecewise_uniform_cdf(hist: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The CDF at u of the distribution that spreads rank k's count uniformly over
    [k, k+1)/(m+1): an independent form of the non-randomised PIT histogram."""
    m1 = hist.shape[-1]
    inside = np.clip(u[:, None] * m1 - np.arange(m1)[None, :], 0.0, 1.0)  # (u, rank)
    return inside @ hist


@pytest.mark.parametrize("m", [1, 8, 37, 99, 256, 7424])
def test_the_stored_rank_histogram_is_the_pit_histogram_of_the_ranks(m):
    rng = np.random.default_rng(m)
    hist = rng.integers(0, 50, size=m + 1).astype(np.float64)
    h = normalised_rank_histogram(xr.DataArray(hist, dims="rank"))
    assert h.sizes["rank"] == RANK_BINS and h.attrs["members"] == m  # one layout for every m
    np.testing.assert_allclose(h["rank"], (np.arange(RANK_BINS) + 0.5) / RANK_BINS)
    edges = np.linspace(0.0, 1.0, RANK_BINS + 1)
    np.testing.assert_allclose(h.values, np.diff(_piecewise_uniform_cdf(hist, edges)), rtol=1e-11, atol=1e-9)
    assert float(h.sum()) == pytest.approx(hist.sum(), rel=1e-13)
    flat = normalised_rank_histogram(xr.DataArray(np.full(m + 1, 3.0), dims="rank"))
    np.testing.assert_allclose(flat.values, 3.0 * (m + 1) / RANK_BINS, rtol=1e-12)  # flat stays flat
    if m + 1 <= RANK_BINS // 2:  # every rank covers a bin of its own: the exact counts come back
        lo, hi = edges[:-1] * (m + 1), edges[1:] * (m + 1)  # bin edges in rank units
        own = [np.flatnonzero((lo >= k - 1e-12) & (hi <= k + 1 + 1e-12))[0] for k in range(m + 1)]
        back = h.values[own] * RANK_BINS / (m + 1)  # a whole bin holds (m+1)/bins of its rank's count
        np.testing.assert_allclose(back, hist, rtol=1e-12)


def test_fair_brier_score_is_unbiased_for_a_perfect_ensemble_and_reliability_bins():
    rng = np.random.default_rng(6)
    m, n = 4, 200_000
    p_true = rng.uniform(size=n)
    members = xr.DataArray((rng.uniform(size=(m, n)) < p_true).astype(float), dims=("member", "case"))
    obs = xr.DataArray((rng.uniform(size=n) < p_true).astype(float), dims="case")
    fair = float(brier_score(members, obs, 0.5, dims=["case"]))
    plain = float(brier_score(members, obs, 0.5, fair=False, dims=["case"]))
    ideal = float(np.mean(p_true * (1 - p_true)))  # the Brier score of the true probability
    assert fair == pytest.approx(ideal, abs=0.003) and plain > ideal + 0.02
    rel = reliability(members, obs, 0.5, bins=5)
    # with p uniform, k of 4 members hitting means p ~ Beta(k+1, 5-k): the observed frequency in
    # the bin of forecast k/4 is (k+1)/6 (a finite ensemble is not reliable by itself)
    assert np.allclose(rel.forecast_probability, np.arange(5) / 4)
    assert np.allclose(rel.observed_frequency, (np.arange(5) + 1) / 6, atol=0.01)
    assert float(rel.weight.sum()) == n


def _rank_histogram_per_point(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The rank histogram as first written: an (..., m + 1) array of shares per point, in
    float64 (members (m, ...), observation (...))."""
    x = np.moveaxis(np.asarray(x, np.float64), 0, -1)
    y = np.asarray(y, np.float64)[..., None]
    m = x.shape[-1]
    ok = ~(np.isnan(y[..., 0]) | np.isnan(x).any(axis=-1))
    below = (x < y).sum(axis=-1)
    ties = (x == y).sum(axis=-1)
    r = np.arange(m + 1)
    inside = (r >= below[..., None]) & (r <= (below + ties)[..., None])
    return np.where(inside & ok[..., None], 1.0 / (ties[..., None] + 1.0), 0.0)


def test_rank_histogram_over_dims_sums_the_per_point_shares_without_keeping_them():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 3, 20, 30)).astype(np.float32)
    x[:, 2] = np.maximum(np.round(x[:, 2]), 0.0)  # many ties (dry points: all members and the truth 0)
    y = rng.normal(size=(3, 20, 30)).astype(np.float32)
    y[2] = np.maximum(np.round(y[2]), 0.0)
    x[2, 0, 3, 4] = np.nan  # skipped points: a NaN member, a NaN observation
    y[1, 5, 5] = np.nan
    dims = ("member", "channel", "lat", "lon")
    xa, ya = xr.DataArray(x, dims=dims), xr.DataArray(y, dims=dims[1:])
    per_point = _rank_histogram_per_point(x, y)
    np.testing.assert_array_equal(rank_histogram(xa, ya).values, per_point)
    expected = per_point.sum(axis=(1, 2))
    h = rank_histogram(xa, ya, dims=["lat", "lon"])
    assert h.dims == ("channel", "rank") and h.values.sum() == pytest.approx(3 * 600 - 2, rel=1e-14)
    np.testing.assert_array_equal(h.values[:2], expected[:2])  # no ties: integer counts, exact
    np.testing.assert_allclose(h.values[2], expected[2], rtol=1e-13, atol=0)  # split ties: to rounding
    assert (h.values[2] > 0).all() and (expected[2] > 0).all()
    lazy = rank_histogram(xa.chunk({"lat": 7}), ya.chunk({"lat": 7}), dims=["lat", "lon"])
    np.testing.assert_allclose(lazy.values, expected, rtol=1e-13, atol=0)
