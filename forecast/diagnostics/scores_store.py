"""The scores store (DESIGN §2.4): one Zarr v3 group of scores, written init time by init time.

Arrays are named by metric with dims such as (init_time, lead_time, channel) for global scores,
(..., l) for spectra, (..., lat, lon) for maps and (..., rank) for rank histograms; each states
its estimator in its attributes. Every array has one chunk per (init_time, lead_time), so
scoring one init time writes only its own chunks. An init time counts as scored only once all
of its arrays are written: it is then added to the `scored_init_times` attribute, and a rerun
skips it (a scoring run killed half way rescores the init time it was on, nothing else).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
import zarr

from forecast.archive import TIME_UNITS, from_hours, library_versions, to_hours
from forecast.storage import remove_init_temp_files

CONTRACT = "scores-store/1"


class ScoresStore:
    def __init__(self, group: zarr.Group, location: str):
        if group.attrs.get("contract") != CONTRACT:
            raise ValueError(f"{location}: not a scores store (contract {group.attrs.get('contract')!r})")
        self.group, self.location = group, str(location)

    @classmethod
    def open_or_create(
        cls,
        location: str,
        init_times: Sequence[np.datetime64],
        lead_hours: Sequence[int],
        channels: Sequence[str],
        lat: np.ndarray,
        lon: np.ndarray,
        source: dict,
    ) -> ScoresStore:
        """Open the store at `location` (checking it scores the same source) or create it; new
        init times are appended."""
        try:
            group = zarr.open_group(str(location), mode="r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            group = None
        if group is not None and "contract" in group.attrs:
            store = cls(group, location)
            if store.group.attrs["source"] != source:
                raise ValueError(
                    f"{location}: this scores store scores {store.group.attrs['source']}, not {source}; "
                    "write the scores of another forecast store elsewhere"
                )
            store._add_init_times(init_times)
            return store
        group = zarr.open_group(str(location), mode="w")

        def coord(name, values, dtype, attrs):
            values = np.asarray(values).astype(dtype)
            arr = group.create_array(
                name,
                shape=values.shape,
                dtype=dtype,
                dimension_names=[name],
                attributes=attrs,
                chunks=(max(1, min(len(values), 4096)),),
            )
            arr[...] = values

        coord(
            "init_time",
            to_hours(np.asarray(init_times)),
            "int64",
            {"units": TIME_UNITS, "calendar": "proleptic_gregorian"},
        )
        coord("lead_time", np.asarray(lead_hours, np.int64), "int64", {"units": "hours"})
        coord("channel", list(channels), str, {})
        coord("lat", np.asarray(lat, np.float64), "float64", {"units": "degrees_north"})
        coord("lon", np.asarray(lon, np.float64), "float64", {"units": "degrees_east"})
        group.attrs.update(
            {"contract": CONTRACT, "source": source, "scored_init_times": [], "software": library_versions()}
        )
        return cls(group, location)

    @classmethod
    def open(cls, location: str) -> ScoresStore:
        return cls(zarr.open_group(str(location), mode="r"), location)

    # -- axes ---------------------------------------------------------------------------------
    @property
    def init_times(self) -> np.ndarray:
        return from_hours(self.group["init_time"][:])

    @property
    def scored(self) -> set[str]:
        return set(self.group.attrs.get("scored_init_times", []))

    def _add_init_times(self, init_times: Sequence[np.datetime64]) -> None:
        have = list(self.init_times)
        new = [np.datetime64(t, "h") for t in init_times if np.datetime64(t, "h") not in set(have)]
        if not new:
            return
        n = len(have) + len(new)
        self.group["init_time"].resize((n,))
        self.group["init_time"][len(have) :] = to_hours(np.asarray(new))
        for _, arr in self.group.arrays():
            dims = arr.metadata.dimension_names or ()
            if dims and dims[0] == "init_time" and arr.name.strip("/") != "init_time":
                arr.resize((n, *arr.shape[1:]))

    def index(self, init_time: np.datetime64) -> int:
        return int(np.flatnonzero(self.init_times == np.datetime64(init_time, "h"))[0])

    def coord(self, name: str, values: np.ndarray, attrs: dict) -> None:
        """A coordinate besides the fixed ones (rank, l, quantile), written once."""
        if name not in self.group:
            arr = self.group.create_array(
                name, shape=values.shape, dtype=values.dtype, dimension_names=[name], attributes=attrs
            )
            arr[...] = values

    # -- writing ------------------------------------------------------------------------------
    def write(self, name: str, init_index: int, lead_index: int, dims: tuple[str, ...], values, attrs: dict) -> None:
        """One (init, lead) slice of metric `name`, dims after (init_time, lead_time)."""
        values = np.asarray(values)
        if name not in self.group:
            n_init, n_lead = self.group["init_time"].shape[0], self.group["lead_time"].shape[0]
            self.group.create_array(
                name,
                shape=(n_init, n_lead, *values.shape),
                chunks=(1, 1, *values.shape),
                dtype=values.dtype,
                fill_value=np.nan,
                dimension_names=["init_time", "lead_time", *dims],
                attributes=attrs,
            )
        if self.group[name].shape[2:] != values.shape:
            raise ValueError(
                f"{self.location}: array {name!r} holds {self.group[name].shape[2:]} per (init, lead), these "
                f"scores are {values.shape}: the store was written by another layout (e.g. the rank "
                "histogram's m + 1 bins before its fixed 100); score into a new store"
            )
        self.group[name][init_index, lead_index] = values

    def remove_stray_temp_files(self, init_index: int) -> list[str]:
        """Remove the temporary files that writes killed before their rename left (see
        forecast.storage) in what scoring init `init_index` rewrites: its chunks of every
        metric, the coordinates and every `zarr.json`. Call it before scoring that init time.
        Safe because a scores store has one writer at a time: the diagnose flow holds the
        store's lock while it scores (flows/diagnose.py); two `forecast diagnose` at once on
        one scores store are not supported (they would lose each other's attribute writes)."""
        return remove_init_temp_files(self.location, init_index, what=f"scores of init index {init_index}")

    def verified_leads(self, init_time: np.datetime64) -> set[int] | None:
        """Lead hours of `init_time` scored against an analysis (None: not recorded)."""
        leads = self.group.attrs.get("verified_leads", {}).get(str(np.datetime64(init_time, "h")))
        return None if leads is None else set(leads)

    def mark_scored(self, init_time: np.datetime64, verified_leads: Sequence[int]) -> None:
        key = str(np.datetime64(init_time, "h"))
        record = {**self.group.attrs.get("verified_leads", {}), key: sorted(int(h) for h in verified_leads)}
        # one attribute update: the init time and its verified leads land together
        self.group.attrs.update({"verified_leads": record, "scored_init_times": sorted(self.scored | {key})})


def open_scores(location: str) -> xr.Dataset:
    """The scores store as a labelled Dataset, with only the init times fully scored."""
    ds = xr.open_zarr(str(location), consolidated=False, decode_times=False)
    ds = xr.decode_cf(ds)
    scored = np.asarray(ds.attrs.get("scored_init_times", []), dtype="datetime64[ns]")
    return ds.sel(init_time=ds.init_time.isin(scored))
