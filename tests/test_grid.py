"""Grids: cell-area weights and first-order conservative regridding, against exact answers."""

from __future__ import annotations

import numpy as np
import pytest

from forecast.grid import ConservativeRegridder, LatLonGrid, cell_area_weights, equiangular, latitude_bounds, parse_grid


def _area_mean(f: np.ndarray, lat: np.ndarray) -> float:
    w = cell_area_weights(lat)
    return float((f * w[:, None]).sum() / (w.sum() * f.shape[-1]))


def test_parse_grid():
    g = parse_grid("33x64")
    assert g.shape == (33, 64) and g.lat[0] == 90 and g.lat[-1] == -90 and g.lon[1] == 5.625
    assert parse_grid("0.25").shape == (721, 1440)
    assert parse_grid("5.625").shape == (33, 64)
    with pytest.raises(ValueError, match="does not divide"):
        parse_grid("7")
    with pytest.raises(ValueError, match="expected 'NLATxNLON'"):
        parse_grid("fine")


def test_cell_area_weights_are_exact_band_areas():
    lat = equiangular(33, 64).lat
    w = cell_area_weights(lat)
    b = np.deg2rad(latitude_bounds(lat))
    exact = np.sin(b[:-1]) - np.sin(b[1:])
    np.testing.assert_allclose(w / w.sum(), exact / 2.0, rtol=1e-12)  # sphere: sum of bands = 2
    assert w[0] > 0 and w[0] < w[16]  # pole caps have area, less than equatorial bands


def test_identity_on_the_same_grid():
    g = equiangular(19, 36)
    f = np.random.default_rng(0).standard_normal((2, 19, 36)).astype(np.float32)
    np.testing.assert_allclose(ConservativeRegridder(g, g)(f), f, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "src, dst", [((73, 144), (33, 64)), ((33, 64), (73, 144)), ((181, 360), (19, 36)), ((721, 1440), (33, 64))]
)
def test_regridding_keeps_area_means_and_bounds(src, dst):
    s, d = equiangular(*src), equiangular(*dst)
    f = np.random.default_rng(1).standard_normal(src).astype(np.float32) + 3.0
    out = ConservativeRegridder(s, d)(f)
    assert _area_mean(out, d.lat) == pytest.approx(_area_mean(f, s.lat), rel=1e-6)
    assert out.min() >= f.min() - 1e-5 and out.max() <= f.max() + 1e-5  # no new extremes


def test_cell_means_of_sin_latitude_are_exact():
    """The area mean of sin(lat) over a band [a, b] is (sin a + sin b) / 2, exactly."""
    s = equiangular(181, 8)  # 1-degree rows: its cell edges include every 15-degree coarse edge
    d = equiangular(13, 8)
    # The source holds the exact cell means of sin(lat) on the fine grid.
    fb = np.sin(np.deg2rad(latitude_bounds(s.lat)))
    f = np.repeat((0.5 * (fb[:-1] + fb[1:]))[:, None], 8, axis=1)
    out = ConservativeRegridder(s, d)(f)
    db = np.sin(np.deg2rad(latitude_bounds(d.lat)))
    np.testing.assert_allclose(out[:, 0], 0.5 * (db[:-1] + db[1:]), atol=2e-7)


def test_gaussian_grid_reaches_the_poles_and_regional_grids_do_not():
    gauss = LatLonGrid(lat=np.array([80.0, 40.0, 0.0, -40.0, -80.0]), lon=np.arange(8) * 45.0)
    b = latitude_bounds(gauss.lat)
    assert b[0] == 90.0 and b[-1] == -90.0
    regional = latitude_bounds(np.array([60.0, 59.0, 58.0]))
    assert regional[0] == 60.5 and regional[-1] == 57.5
