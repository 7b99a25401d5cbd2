"""Spherical harmonic transforms without torch-harmonics' memoised Legendre tables.

torch-harmonics 0.9 memoises `_precompute_legpoly` (and its derivative) in an LRU cache of 20
entries, float64 and shaped (mmax, lmax, nlat), and every transform then keeps its own copy
as a buffer (the quadrature weights folded in). The cached copy is never read again by a
process that builds each transform once, and at 0.25° it is large: 0.75 GB for the spectra's
transform (lmax 361) and 0.5 GB for the model's three, about a sixth of a forecast run's
peak (README, bench_scale). `build` makes a transform and empties the cache behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch_harmonics.legendre as _legendre

log = logging.getLogger(__name__)
T = TypeVar("T")
_CACHED = ("_precompute_legpoly", "_precompute_dlegpoly")


def legendre_caches() -> list:
    """The functools LRU caches behind torch-harmonics' Legendre precomputations (its
    `lru_cache` wraps `functools.lru_cache` in a closure); empty if the library changed."""
    caches = []
    for name in _CACHED:
        wrapper = getattr(_legendre, name, None)
        for cell in getattr(wrapper, "__closure__", None) or ():
            if hasattr(cell.cell_contents, "cache_clear"):
                caches.append(cell.cell_contents)
    return caches


def drop_legendre_cache() -> None:
    """Free the memoised Legendre tables (the transforms already built keep their own)."""
    caches = legendre_caches()
    if not caches:
        log.debug("torch-harmonics has no Legendre cache this module knows of; nothing dropped")
    for cache in caches:
        cache.cache_clear()


def default_lmax(nlat: int, grid: str) -> int:
    """The largest degree (exclusive) the grid's quadrature resolves exactly: nlat on the Gauss
    grid, (nlat + 1) // 2 on the equiangular grid with poles. Given explicitly to every
    transform: torch-harmonics changed its default truncation in 0.9."""
    return nlat if grid == "legendre-gauss" else (nlat + 1) // 2


def build(factory: Callable[..., T], *args, **kwargs) -> T:
    """factory(*args, **kwargs) (a transform, or a network that builds some), then the
    Legendre cache dropped."""
    try:
        return factory(*args, **kwargs)
    finally:
        drop_legendre_cache()
