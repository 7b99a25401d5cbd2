"""The online accumulators' resumable state, kept inside the forecast store.

After each block the accumulators' tensors and the mask of blocks they include are serialised
with safetensors (no pickle) into one chunk of the uint8 array `online_state` (init_time,
bytes). One chunk is one object, and zarr writes an object atomically (write, then rename on a
local disk; a single PUT on object storage), so the state on disk is always a consistent
"these blocks, these sums". Its size depends on the grid and the leads, not on the members.
When every block is in, the results are written as arrays with a leading init_time dim.
"""

from __future__ import annotations

import numpy as np
import torch
import zarr
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from forecast.ensemble.members import Block
from forecast.ensemble.online import Accumulator
from forecast.locks import store_lock

STATE_ARRAY = "online_state"


class OnlineState:
    def __init__(self, store, init_index: int, n_blocks: int, accumulators: list[Accumulator], persistent: bool = True):
        """`persistent=False`: a worker's private state, neither loaded from nor saved to the store."""
        self.store, self.init_index = store, init_index
        self.accumulators = accumulators
        self.persistent = persistent
        self.done = torch.zeros(n_blocks, dtype=torch.uint8)
        if persistent:
            self._load()

    # -- bookkeeping ----------------------------------------------------------------------
    def has(self, block: Block) -> bool:
        return bool(self.done[block.index])

    def complete(self) -> bool:
        return bool(self.done.all())

    def update(self, lead_index: int, members: torch.Tensor, block: Block | None = None) -> None:
        for acc in self.accumulators:
            if block is not None and hasattr(acc, "begin_block"):  # e.g. CRPS spills members by position
                acc.begin_block(block.start)
            acc.update(lead_index, members)

    def add_block(self, block: Block) -> None:
        """The block's every lead is in the accumulators: record it and save, atomically."""
        self.done[block.index] = 1
        if self.persistent:
            self.save()

    def merge(self, other: OnlineState) -> None:
        """Fold in another process's accumulators (disjoint blocks)."""
        overlap = (self.done & other.done).nonzero().flatten().tolist()
        if overlap:
            raise ValueError(f"online states overlap in blocks {overlap}: they would be counted twice")
        for mine, theirs in zip(self.accumulators, other.accumulators, strict=True):
            mine.merge(theirs)
        self.done |= other.done

    # -- persistence ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        tensors = {"done": self.done}
        for acc in self.accumulators:
            tensors.update({f"{acc.name}.{k}": v.contiguous() for k, v in acc.state().items()})
        return save_bytes(tensors)

    def from_bytes(self, blob: bytes) -> None:
        tensors = load_bytes(blob)
        if tensors["done"].shape != self.done.shape:
            raise ValueError(f"online state has {tensors['done'].shape[0]} blocks, this run {self.done.shape[0]}")
        self.done = tensors["done"].clone()
        for acc in self.accumulators:
            prefix = f"{acc.name}."
            acc.load_state({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    def save(self) -> None:
        blob = np.frombuffer(self.to_bytes(), dtype=np.uint8)
        arr = self._state_array(blob.size + 8)
        if blob.size + 8 > arr.shape[1]:
            raise ValueError(f"{self.store.location}: online state grew to {blob.size} bytes; the run changed")
        row = np.zeros(arr.shape[1], np.uint8)
        row[:8] = np.frombuffer(np.int64(blob.size).tobytes(), np.uint8)
        row[8 : 8 + blob.size] = blob
        arr[self.init_index] = row  # one chunk: one atomic object write

    def _state_array(self, width: int):
        """The state array, created or grown to every init time of the store. Growing it is
        serialised across processes: two runs for other init times must not resize it to
        different lengths (a resize drops the chunks beyond the new shape)."""
        group = self.store.group
        if STATE_ARRAY in group and group[STATE_ARRAY].shape[0] >= group["init_time"].shape[0]:
            return group[STATE_ARRAY]
        with store_lock(self.store.location):
            group = zarr.open_group(self.store.location, mode="r+")
            n_init = group["init_time"].shape[0]
            if STATE_ARRAY not in group:
                group.create_array(
                    STATE_ARRAY,
                    shape=(n_init, width),
                    chunks=(1, width),
                    dtype="uint8",
                    fill_value=0,
                    compressors=None,
                    dimension_names=["init_time", "state_bytes"],
                    attributes={"long_name": "online accumulator state (8-byte length + safetensors)"},
                )
            arr = group[STATE_ARRAY]
            if arr.shape[0] < n_init:
                arr.resize((n_init, arr.shape[1]))
            return arr

    def _load(self) -> None:
        group = self.store.group
        if STATE_ARRAY not in group or group[STATE_ARRAY].shape[0] <= self.init_index:
            return
        row = group[STATE_ARRAY][self.init_index]
        size = int(np.frombuffer(row[:8].tobytes(), np.int64)[0])
        if size:
            self.from_bytes(row[8 : 8 + size].tobytes())

    # -- results --------------------------------------------------------------------------
    def write_results(self) -> list[str]:
        """Each accumulator's arrays, with a leading init_time dim where they have lead_time.
        Serialised across processes: runs for other init times may share the store."""
        with store_lock(self.store.location):
            return self._write_results()

    def _write_results(self) -> list[str]:
        # a fresh view of the group: another process may have changed its attributes since
        # this one opened it, and an attribute write rewrites the whole document
        group = zarr.open_group(self.store.location, mode="r+")
        n_init = group["init_time"].shape[0]
        when = str(self.store.init_times[self.init_index])
        if when in group.attrs.get("statistics_complete", []):
            return []  # already written (a rerun of a finished run): the CRPS scratch is gone
        written = []
        for acc in self.accumulators:
            for name, (dims, values, attrs) in acc.result().items():
                values = np.asarray(values)
                if values.size == 0:  # e.g. no exceedance thresholds asked for
                    continue
                if "lead_time" not in dims:  # a coordinate (e.g. the threshold labels)
                    if name not in group:
                        dtype = str if values.dtype.kind == "U" else values.dtype
                        arr = group.create_array(
                            name, shape=values.shape, dtype=dtype, dimension_names=list(dims), attributes=attrs
                        )
                        arr[...] = values
                    continue
                if name not in group:
                    group.create_array(
                        name,
                        shape=(n_init, *values.shape),
                        chunks=(1, 1, *values.shape[1:]),
                        dtype=values.dtype,
                        fill_value=np.nan if values.dtype.kind == "f" else 0,
                        compressors=None,  # fixed size: a statistics-only run's disk use is known upfront
                        dimension_names=["init_time", *dims],
                        attributes=attrs,
                    )
                arr = group[name]
                if arr.shape[0] < n_init:
                    arr.resize((n_init, *arr.shape[1:]))
                arr[self.init_index] = values
                written.append(name)
        group.attrs["statistics_complete"] = sorted(set(group.attrs.get("statistics_complete", [])) | {when})
        for acc in self.accumulators:
            if hasattr(acc, "close"):  # scratch no longer needed once the results are on disk
                acc.close()
        return written
