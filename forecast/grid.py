"""Regular latitude-longitude grids: the archive's grid, cell-area weights and regridding.

The archive grid is equiangular with poles (ERA5 convention): latitude 90 -> -90,
longitude 0 eastwards. Regridding is first-order conservative: each target cell gets the
area-weighted mean of the source cells it overlaps. On regular grids the overlap factorises
into a latitude matrix (overlap in sin(latitude)) and a longitude matrix (overlap in
longitude, periodic), so a field is regridded as `W_lat @ f @ W_lon.T`. We chose it over a
spectral method because it keeps area means exactly, never overshoots (non-negative fields stay
non-negative), and works for Gaussian source grids without poles.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class LatLonGrid:
    lat: np.ndarray  # degrees, strictly decreasing
    lon: np.ndarray  # degrees, strictly increasing, in [0, 360)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.lat), len(self.lon))

    def describe(self) -> str:
        lat, lon = self.lat, self.lon
        return f"{len(lat)}x{len(lon)} lat {lat[0]:g}..{lat[-1]:g}, lon {lon[0]:g}..{lon[-1]:g}"

    def same_as(self, other: LatLonGrid, tol: float = 1e-6) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.lat, other.lat, atol=tol)
            and np.allclose(self.lon, other.lon, atol=tol)
        )

    @property
    def is_equiangular_with_poles(self) -> bool:
        return (
            len(self.lat) >= 3
            and np.isclose(self.lat[0], 90.0)
            and np.isclose(self.lat[-1], -90.0)
            and np.allclose(np.diff(self.lat), self.lat[1] - self.lat[0])
            and np.allclose(np.diff(self.lon), 360.0 / len(self.lon))
            and np.isclose(self.lon[0], 0.0)
        )


def equiangular(nlat: int, nlon: int) -> LatLonGrid:
    """Equiangular grid with both poles: nlat rows from 90 to -90, nlon columns from 0."""
    return LatLonGrid(lat=np.linspace(90.0, -90.0, nlat), lon=np.arange(nlon) * (360.0 / nlon))


def parse_grid(spec: str) -> LatLonGrid:
    """'33x64' (rows x columns) or '5.625' (degrees) -> equiangular grid with poles."""
    spec = spec.strip().lower().removesuffix("deg")
    m = re.fullmatch(r"(\d+)x(\d+)", spec)
    if m:
        nlat, nlon = int(m.group(1)), int(m.group(2))
    else:
        try:
            res = float(spec)
        except ValueError:
            raise ValueError(f"grid {spec!r}: expected 'NLATxNLON' (e.g. 33x64) or a resolution in degrees") from None
        nlat, nlon = 180.0 / res + 1, 360.0 / res
        if abs(nlat - round(nlat)) > 1e-6 or abs(nlon - round(nlon)) > 1e-6:
            raise ValueError(f"grid {spec!r}: {res} degrees does not divide 180 and 360")
        nlat, nlon = int(round(nlat)), int(round(nlon))
    if nlat < 3 or nlon < 4:
        raise ValueError(f"grid {spec!r} is too small")
    return equiangular(nlat, nlon)


def latitude_bounds(lat: np.ndarray) -> np.ndarray:
    """Cell edges (len+1, decreasing) halfway between rows; the outer edges go to the poles.

    A grid whose outermost row is within one row spacing of a pole (Gaussian grids, grids
    with poles) is taken to reach the pole; other grids are regional and get half a spacing.
    """
    lat = np.asarray(lat, dtype=np.float64)
    mid = 0.5 * (lat[1:] + lat[:-1])
    first = lat[0] + 0.5 * (lat[0] - lat[1])
    last = lat[-1] - 0.5 * (lat[-2] - lat[-1])
    if 90.0 - lat[0] <= abs(lat[0] - lat[1]) + 1e-9:
        first = 90.0
    if lat[-1] + 90.0 <= abs(lat[-2] - lat[-1]) + 1e-9:
        last = -90.0
    return np.clip(np.concatenate([[first], mid, [last]]), -90.0, 90.0)


def cell_area_weights(lat: np.ndarray) -> np.ndarray:
    """Relative cell areas per row, sin(north edge) - sin(south edge), normalised to mean 1.

    Not raw cos(lat): that gives pole rows zero weight although their caps have area.
    """
    b = np.deg2rad(latitude_bounds(lat))
    w = np.sin(b[:-1]) - np.sin(b[1:])
    return w / w.mean()


def covers_globe(grid: LatLonGrid) -> bool:
    b = latitude_bounds(grid.lat)
    full_lon = np.isclose(np.diff(grid.lon).mean() * len(grid.lon), 360.0, atol=1e-3)
    return bool(np.isclose(b[0], 90.0) and np.isclose(b[-1], -90.0) and full_lon)


def _overlap_matrix(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Overlap lengths between 1-D cells given increasing edges: (n_dst, n_src)."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    return np.clip(hi - lo, 0.0, None)


def latitude_weights(src_lat: np.ndarray, dst_lat: np.ndarray) -> np.ndarray:
    """Conservative latitude regridding matrix (n_dst, n_src), rows summing to 1."""
    s = np.sin(np.deg2rad(latitude_bounds(src_lat)))[::-1]
    d = np.sin(np.deg2rad(latitude_bounds(dst_lat)))[::-1]
    w = _overlap_matrix(s, d)[::-1, ::-1]
    return w / w.sum(axis=1, keepdims=True)


def longitude_weights(src_lon: np.ndarray, dst_lon: np.ndarray) -> np.ndarray:
    """Conservative periodic longitude regridding matrix (n_dst, n_src)."""

    def edges(lon):
        lon = np.asarray(lon, np.float64)
        step = 360.0 / len(lon)
        return np.concatenate([lon - step / 2, [lon[-1] + step / 2]])

    s = edges(src_lon)
    d = edges(dst_lon)
    w = np.zeros((len(dst_lon), len(src_lon)))
    for shift in (-360.0, 0.0, 360.0):
        w += _overlap_matrix(s + shift, d)
    return w / w.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class ConservativeRegridder:
    """`regrid(f)` maps (..., src_lat, src_lon) to (..., dst_lat, dst_lon)."""

    source: LatLonGrid
    target: LatLonGrid

    def __post_init__(self):
        object.__setattr__(self, "_wlat", latitude_weights(self.source.lat, self.target.lat))
        object.__setattr__(self, "_wlon", longitude_weights(self.source.lon, self.target.lon))

    def __call__(self, field: np.ndarray) -> np.ndarray:
        out = np.einsum("ij,...jk,lk->...il", self._wlat, field.astype(np.float64), self._wlon, optimize=True)
        return out.astype(np.float32)
