"""The M-climate: the model's own climate at each lead time, from its hindcasts (DESIGN §3.4).

For a target date D, every member of every hindcast init whose calendar day lies within
`window_days` of D's (any year, wrapping at the year's end) is pooled per lead time and grid
point, and the quantiles 0, 1, ..., 100 % of the pool are kept (linear interpolation between
order statistics, numpy's default). The EFI and the SOT of a forecast from D compare its
members with these quantiles at the same lead.

Where it lives: the archive's side store, a Zarr group `<archive>.side.zarr` beside the
archive (not inside it: the archive's transactional appends and rollbacks stay about the
archive alone). Group `mclimate`, array `quantiles` with dims (target, lead_time, channel,
quantile, lat, lon), one chunk per (target, lead_time); `target` holds day-of-year dates as
`MM-DD` strings. Rebuilding a target date overwrites only its chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from forecast.ensemble.store import ForecastStore

log = logging.getLogger(__name__)
LEVELS = np.linspace(0.0, 1.0, 101)


def side_store_path(archive: str) -> str:
    return str(Path(archive)).rstrip("/").removesuffix(".zarr") + ".side.zarr"


def _day_distance(a: np.ndarray, b: pd.Timestamp) -> np.ndarray:
    doy = pd.DatetimeIndex(a).dayofyear.to_numpy()
    d = np.abs(doy - b.dayofyear)
    return np.minimum(d, 365 - d)


def hindcast_members(stores: Sequence[str], target: str, window_days: int):
    """(inits used, samples (n, lead, channel, lat, lon), store axes) pooled from the complete
    members of every hindcast init within the window."""
    when = pd.Timestamp(target)
    pool, used, axes = [], [], None
    for path in stores:
        store = ForecastStore.open(path)
        if not store.store_members:
            raise ValueError(f"{path}: this hindcast kept statistics only; the M-climate needs its members")
        here = (tuple(store.lead_hours), tuple(store.channels), store.group["lat"].shape, store.group["lon"].shape)
        if axes is not None and here != axes[0]:
            raise ValueError(f"{path}: lead times, channels or grid differ from {stores[0]}'s")
        axes = axes or (here, store)
        for i in np.flatnonzero(_day_distance(store.init_times, when) <= window_days):
            if pd.Timestamp(store.init_times[i]).normalize() == when.normalize():
                continue  # never the forecast's own date
            complete = np.flatnonzero(store.complete(int(i)))
            if not len(complete):
                continue
            pool.append(np.asarray(store.group["fields"].get_orthogonal_selection((int(i), complete))))
            used.append(str(store.init_times[i]))
    if not pool:
        raise ValueError(
            f"no complete hindcast init within {window_days} days of {when:%m-%d} in {list(stores)}: "
            "run hindcasts for those dates first"
        )
    return used, np.concatenate(pool), axes[1]


def build_mclimate(
    archive: str, hindcasts: Sequence[str], target: str, window_days: int = 15, min_samples: int = 20
) -> str:
    """Compute and store the M-climate quantiles for `target`'s calendar day. Returns the side
    store's path."""
    used, samples, store = hindcast_members(hindcasts, target, window_days)
    if samples.shape[0] < min_samples:
        raise ValueError(
            f"M-climate for {target}: only {samples.shape[0]} hindcast members within {window_days} days "
            f"(need {min_samples}); widen the window or add hindcasts"
        )
    # (quantile, lead, channel, lat, lon) -> (lead, channel, quantile, lat, lon)
    q = np.quantile(samples.astype(np.float64), LEVELS, axis=0).astype(np.float32)
    q = np.moveaxis(q, 0, 2)
    path = side_store_path(archive)
    root = zarr.open_group(path, mode="a")
    root.attrs.setdefault("archive", str(Path(archive).resolve()))
    group = root.require_group("mclimate")
    key = pd.Timestamp(target).strftime("%m-%d")
    leads, channels = store.lead_hours, store.channels
    lat, lon = store.group["lat"][:], store.group["lon"][:]
    if "quantiles" not in group:
        for name, values, dtype in (
            ("lead_time", leads, "int64"),
            ("channel", channels, str),
            ("quantile", LEVELS, "float64"),
            ("lat", lat, "float64"),
            ("lon", lon, "float64"),
        ):
            arr = group.create_array(name, shape=(len(values),), dtype=dtype, dimension_names=[name])
            arr[...] = np.asarray(values).astype(dtype)
        group.create_array("target", shape=(0,), chunks=(366,), dtype=str, dimension_names=["target"])
        group.create_array(
            "quantiles",
            shape=(0, *q.shape),
            chunks=(1, 1, *q.shape[1:]),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=["target", "lead_time", "channel", "quantile", "lat", "lon"],
            attributes={"long_name": "M-climate quantiles of the model's hindcasts", "interpolation": "linear"},
        )
    if list(group["lead_time"][:]) != list(leads) or [str(c) for c in group["channel"][:]] != list(channels):
        raise ValueError(f"{path}: its M-climate has other lead times or channels than the hindcasts {hindcasts}")
    targets = [str(t) for t in group["target"][:]]
    if key in targets:
        index = targets.index(key)
    else:
        index = len(targets)
        group["target"].resize((index + 1,))
        group["target"][index] = key
        group["quantiles"].resize((index + 1, *q.shape))
    group["quantiles"][index] = q
    record = dict(group.attrs.get("targets", {}))
    record[key] = {"window_days": window_days, "samples": int(samples.shape[0]), "inits": used}
    group.attrs["targets"] = record
    log.info("M-climate %s: %d members from %d hindcast inits -> %s", key, samples.shape[0], len(used), path)
    return path


def load_mclimate(archive: str, init_time: str | np.datetime64) -> xr.DataArray | None:
    """The M-climate for the init time's calendar day: (lead_time, channel, quantile, lat,
    lon), or None where none was built."""
    path = side_store_path(archive)
    if not Path(path).exists():
        return None
    group = zarr.open_group(path, mode="r")
    if "mclimate" not in group or "quantiles" not in group["mclimate"]:
        return None
    g = group["mclimate"]
    key = pd.Timestamp(init_time).strftime("%m-%d")
    targets = [str(t) for t in g["target"][:]]
    if key not in targets:
        return None
    index = targets.index(key)
    return xr.DataArray(
        g["quantiles"][index],
        dims=("lead_time", "channel", "quantile", "lat", "lon"),
        coords={
            "lead_time": g["lead_time"][:],
            "channel": [str(c) for c in g["channel"][:]],
            "quantile": g["quantile"][:],
            "lat": g["lat"][:],
            "lon": g["lon"][:],
        },
        attrs={"target": key, **g.attrs.get("targets", {}).get(key, {})},
    )
