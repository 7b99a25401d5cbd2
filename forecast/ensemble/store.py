"""The forecast store (DESIGN §2.3): ensemble members on disk, one Zarr v3 group.

`fields` has dims (init_time, member, lead_time, channel, lat, lon), one chunk per
(init, member, lead): all output channels of one member at one lead over the output box.
A member block therefore owns whole chunks, and two writers never share one. Lead 0 holds each
member's perturbed initial state. Member coordinates `checkpoint`, `perturbation` and `sign`
identify every member.

Completeness is explicit: unwritten chunks read back as NaN without error, so `complete`
(init_time, member) is set to 1 only after all of a block's leads are written (one chunk per
element, so each block writes only its own). Readers should use members where complete == 1.

A run that keeps statistics only (`store_members=False`) creates no `fields` and no
`complete`: its disk use does not grow with the member count.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import dask.array
import numpy as np
import xarray as xr
import zarr

from forecast.archive import TIME_UNITS, from_hours, library_versions, to_hours
from forecast.ensemble.members import Block, Layout
from forecast.locks import store_lock
from forecast.storage import local_root, remove_temp_files

CONTRACT = "forecast-store/1"
# The arrays whose chunks belong to member blocks: each block writes its own members' chunks.
MEMBER_ARRAYS = ("fields", "complete")


class StoreError(RuntimeError):
    pass


class ForecastStore:
    def __init__(self, group: zarr.Group, location: str):
        self.group = group
        self.location = str(location)
        if group.attrs.get("contract") != CONTRACT:
            raise StoreError(f"{location}: not a forecast store (contract {group.attrs.get('contract')!r})")

    # -- creating and opening ----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        location: str,
        layout: Layout,
        init_times: Sequence[np.datetime64],
        lead_hours: Sequence[int],
        channels: Sequence[str],
        lat: np.ndarray,
        lon: np.ndarray,
        run: dict,
        store_members: bool = True,
    ) -> ForecastStore:
        """A new store for `init_times`. `run` (JSON-able) holds every setting that decides the
        members' values; reopening checks it, so a rerun cannot mix two different runs."""
        group = zarr.open_group(str(location), mode="w-")
        coords = layout.coords()
        n_init, n_mem, n_lead = len(init_times), layout.size, len(lead_hours)
        c, nlat, nlon = len(channels), len(lat), len(lon)

        def coord(name, values, dims, dtype, attrs=None):
            values = np.asarray(values).astype(dtype)
            arr = group.create_array(
                name, shape=values.shape, dtype=dtype, dimension_names=dims, attributes=attrs or {}
            )
            arr[...] = values

        t = group.create_array(
            "init_time",
            shape=(n_init,),
            chunks=(4096,),
            dtype="int64",
            dimension_names=["init_time"],
            attributes={
                "units": TIME_UNITS,
                "calendar": "proleptic_gregorian",
                "standard_name": "forecast_reference_time",
            },
        )
        t[:] = to_hours(np.asarray(init_times))
        if store_members:  # statistics only: the layout lives in the attributes, no member axis
            coord("member", coords["member"], ["member"], "int32")
            coord("checkpoint", coords["checkpoint"], ["member"], str, {"long_name": "model checkpoint (package name)"})
            coord("perturbation", coords["perturbation"], ["member"], "int32", {"long_name": "perturbation index"})
            coord("sign", coords["sign"], ["member"], "int8", {"long_name": "sign of the perturbation (+1 or -1)"})
        coord(
            "lead_time",
            np.asarray(lead_hours, np.int64),
            ["lead_time"],
            "int64",
            {"units": "hours", "long_name": "lead time"},
        )
        coord("channel", list(channels), ["channel"], str)
        coord(
            "lat",
            np.asarray(lat, np.float64),
            ["lat"],
            "float64",
            {"units": "degrees_north", "standard_name": "latitude"},
        )
        coord(
            "lon",
            np.asarray(lon, np.float64),
            ["lon"],
            "float64",
            {"units": "degrees_east", "standard_name": "longitude"},
        )
        if store_members:
            group.create_array(
                "fields",
                shape=(n_init, n_mem, n_lead, c, nlat, nlon),
                chunks=(1, 1, 1, c, nlat, nlon),
                dtype="float32",
                fill_value=np.nan,
                compressors=None,  # as the archive: float32 weather fields barely compress
                dimension_names=["init_time", "member", "lead_time", "channel", "lat", "lon"],
                attributes={"long_name": "ensemble member fields", "coordinates": "checkpoint perturbation sign"},
            )
            group.create_array(
                "complete",
                shape=(n_init, n_mem),
                chunks=(1, 1),
                dtype="uint8",
                fill_value=0,
                dimension_names=["init_time", "member"],
                attributes={"long_name": "1 where all lead times of the member are written"},
            )
        group.attrs.update(
            {
                "contract": CONTRACT,
                "run": json.loads(json.dumps(run)),
                "store_members": bool(store_members),
                "members": layout.size,
                "checkpoints": list(layout.checkpoints),
                "perturbations_per_checkpoint": layout.perturbations,
                "software": library_versions(),
            }
        )
        return cls(group, str(location))

    @classmethod
    def open(cls, location: str, mode: str = "r") -> ForecastStore:
        try:
            group = zarr.open_group(str(location), mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise StoreError(f"{location}: no forecast store there ({e})") from e
        return cls(group, str(location))

    # -- properties ---------------------------------------------------------------------------
    @property
    def run(self) -> dict:
        return dict(self.group.attrs["run"])

    @property
    def store_members(self) -> bool:
        return bool(self.group.attrs["store_members"])

    @property
    def init_times(self) -> np.ndarray:
        return from_hours(self.group["init_time"][:])

    @property
    def lead_hours(self) -> np.ndarray:
        return np.asarray(self.group["lead_time"][:])

    @property
    def channels(self) -> list[str]:
        return [str(c) for c in self.group["channel"][:]]

    def init_index(self, init_time: np.datetime64) -> int:
        hits = np.flatnonzero(self.init_times == np.datetime64(init_time, "h"))
        if not len(hits):
            raise StoreError(f"{self.location}: init time {init_time} is not in this store")
        return int(hits[0])

    def add_init_time(self, init_time: np.datetime64) -> int:
        """Grow the init_time axis by one (a daily run or a backfill appending)."""
        when = np.datetime64(init_time, "h")
        if when in set(self.init_times):
            return self.init_index(when)
        n = len(self.init_times)
        self.group["init_time"].resize((n + 1,))
        for name in ("fields", "complete"):
            if name in self.group:
                arr = self.group[name]
                arr.resize((n + 1, *arr.shape[1:]))
        self.group["init_time"][n] = to_hours(np.asarray([when]))[0]
        return n

    # -- members ------------------------------------------------------------------------------
    def write_lead(self, init_index: int, block: Block, lead_index: int, values: np.ndarray) -> None:
        """values (block members, channel, lat, lon) already cut to the output channels/box."""
        self.group["fields"][init_index, block.start : block.stop, lead_index] = values

    def mark_complete(self, init_index: int, block: Block) -> None:
        self.group["complete"][init_index, block.start : block.stop] = 1

    def complete(self, init_index: int) -> np.ndarray:
        if "complete" not in self.group:
            return np.zeros(int(self.group.attrs["members"]), bool)
        return self.group["complete"][init_index].astype(bool)

    def read_member(self, init_index: int, member: int) -> np.ndarray:
        return self.group["fields"][init_index, member]

    # -- after a kill -------------------------------------------------------------------------
    def remove_stray_temp_files(
        self,
        init_index: int,
        blocks: Sequence[Block] = (),
        *,
        statistics: bool = False,
        lead_index: int | None = None,
        shared: bool = True,
    ) -> list[str]:
        """Remove the temporary files that writes killed mid-way (SIGKILL, OOM) left in the
        store (forecast.storage: zarr renames a `<key>.<hex>.partial` file over each object,
        and a kill before the rename leaves it; the rerun writes the object anew and the old
        file would stay for good). Returns the store keys removed (and logs them).

        Removing a live writer's temporary file would fail its rename, so each part is removed
        only by the process that owns it, as the caller states:

        * `blocks`: the `fields` and `complete` chunks of these blocks' members at
          `init_index`. A block owns its members' chunks: pass the blocks this process is
          about to (re)run, before their first write.
        * `statistics`: the chunks at `init_index` (at `lead_index` only, if given, for arrays
          along (init_time, lead_time)) of every other array along init_time: the online
          state and commit records, the statistics and scores. Pass it only where this
          process is their one writer at this moment: it keeps the init time's state (not a
          worker whose statistics go back to its caller), or it holds the lock that serialises
          writes of that (init, lead).
        * `shared` (default): under the store lock (taken here), the `zarr.json` of the root
          and of every top-level array or group, the chunks of arrays not along init_time
          (coordinates) and of the 1-d `init_time`, and whatever is in a top-level folder that
          holds no array or group yet (a creation cut short). All of these are written only
          under the store lock: creating the store, adding an init time, creating or growing
          an array. Nested groups' contents are left alone.

        Each part costs a listing of the folders named, not of the store.
        """
        for name in MEMBER_ARRAYS:
            if name in self.group:
                encoding = self.group[name].metadata.chunk_key_encoding
                if getattr(encoding, "separator", "/") != "/":
                    raise StoreError(f"{self.location}: {name} uses chunk keys {encoding}, not the '/' separator")
        i = int(init_index)
        removed = []
        if blocks:
            members = [m for b in blocks for m in range(b.start, b.stop)]
            removed += remove_temp_files(
                self.location,
                keys=[f"complete/c/{i}/{m}" for m in members],
                under=[f"fields/c/{i}/{m}" for m in members],
                what=f"blocks {[b.index for b in blocks]} of init index {i}",
            )
        if local_root(self.location) is None:  # an object store: a kill leaves nothing
            return removed
        if statistics or shared:
            root = Path(self.location)
            nodes = self._top_level_nodes()
        if statistics:
            under = []
            for name, dims in nodes.items():
                if name in MEMBER_ARRAYS or dims is None or len(dims) < 2 or dims[0] != "init_time":
                    continue
                if lead_index is None:
                    under.append(f"{name}/c/{i}")
                elif dims[1] == "lead_time":
                    under.append(f"{name}/c/{i}/{int(lead_index)}")
            what = f"statistics of init index {i}" + (f", lead index {lead_index}" if lead_index is not None else "")
            removed += remove_temp_files(self.location, under=under, what=what)
        if shared:
            with store_lock(self.location):
                nodes = self._top_level_nodes()  # as they are now, under the lock
                keys, under = ["zarr.json"], []
                for entry in sorted(p for p in root.iterdir() if p.is_dir()):
                    name = entry.name
                    keys.append(f"{name}/zarr.json")
                    if name not in nodes:
                        if not (entry / "zarr.json").exists():
                            under.append(name)  # no node yet: a creation cut short
                        continue
                    dims = nodes[name]
                    if dims is not None and (len(dims) < 2 or dims[0] != "init_time"):
                        under.append(f"{name}/c")  # a coordinate or the init_time axis
                removed += remove_temp_files(self.location, keys=keys, under=under, what="shared parts")
        return sorted(removed)

    def _top_level_nodes(self) -> dict[str, tuple | None]:
        """name -> dimension names of each top-level array (None for a group), read afresh."""
        with warnings.catch_warnings():
            # zarr warns of the very files this removes ("not recognized as a component")
            warnings.filterwarnings("ignore", message="Object at .* is not recognized", category=UserWarning)
            group = zarr.open_group(self.location, mode="r")
            out: dict[str, tuple | None] = {name: None for name, _ in group.groups()}
            for name, arr in group.arrays():
                out[name] = tuple(arr.metadata.dimension_names or (None,) * arr.ndim)
        return out


def open_forecast(location: str) -> xr.Dataset:
    """The store as a lazy, labelled Dataset (members, statistics and coordinates).

    An online statistic is created, and grown along init_time, when it is first written for an
    init time, so it may be shorter than `init_time`: a run still under way, or an init time
    without the statistic (the EFI and q99 scores need an M-climate, which some init times lack).
    Such an array is read padded with NaN to every init time (an integer count becomes float):
    the init times it does not cover have no value, and the rest of the store still opens."""
    group = zarr.open_group(str(location), mode="r")
    n_init = group["init_time"].shape[0]
    short = [
        name
        for name, arr in group.arrays()
        if (arr.metadata.dimension_names or (None,))[0] == "init_time" and 0 < arr.shape[0] < n_init
    ]
    ds = xr.open_zarr(str(location), consolidated=False, decode_times=False, drop_variables=["online_state", *short])
    for name in short:
        arr = group[name]
        data = xr.DataArray(dask.array.from_zarr(arr), dims=arr.metadata.dimension_names, attrs=dict(arr.attrs))
        ds[name] = data.pad(init_time=(0, n_init - arr.shape[0]))
    ds = xr.decode_cf(ds)
    ds = ds.set_coords([c for c in ("checkpoint", "perturbation", "sign", "complete") if c in ds.variables])
    return ds
