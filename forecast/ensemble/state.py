"""The online accumulators' state, kept in the forecast store one (init time, lead) at a time.

Memory and disk are bounded by one lead: the engine folds a block's members into a lead's
state while that lead is on its way to disk, so a process only ever holds the state of the
lead it is writing, however many leads and members the run has (DESIGN §5).

Per (init, lead) the store holds:
- the commit record, one chunk of `online_commit` (init_time, lead_time, record):
  [slot, final, block 0 in?, block 1 in?, ...]. One chunk is one object, and zarr writes an
  object atomically (write, then rename on a local disk; a single PUT on object storage), so
  the record is always a consistent "these blocks are in the state of slot s";
- the state itself, one array per accumulator tensor in group `online`, in one of two slots
  (`i{init}.l{lead}.s{slot}.{accumulator}.{tensor}`). An update reads slot s, adds the
  block, writes slot 1 − s, commits, then deletes slot s: a kill at any point leaves a
  committed slot that is whole, and the next update overwrites the other;
- once every block is in, the lead's results (arrays with leading init_time, lead_time dims),
  then a record marked final, and the state is deleted.

Updates of one (init, lead) are serialised across processes by a lock file beside the store
(`STORE.locks/`), so workers of a Dask cluster fold their blocks into the same store state
without a merge step.
"""

from __future__ import annotations

import ctypes
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from forecast.ensemble.members import Block
from forecast.ensemble.online import Accumulator, check_reads, fixed_arrays, state_views
from forecast.locks import serialised, store_lock

log = logging.getLogger(__name__)
COMMIT_ARRAY = "online_commit"
STATE_GROUP = "online"
_HEADER = 2  # slot, final


def release_freed_memory() -> None:
    """Hand the heap pages freed by a lead's temporaries back to the system. glibc keeps them
    in its per-thread arenas, and with a writer thread and many field-sized temporaries per
    lead the resident size can creep up over a long run (at 0.25° a 15-day run peaked 1 GB
    above a 1-day one before this; README, bench_scale). A no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class OnlineState:
    def __init__(self, store, init_index: int, n_blocks: int, n_leads: int, accumulators: Sequence[Accumulator]):
        self.store, self.init_index = store, init_index
        self.n_blocks, self.n_leads = n_blocks, n_leads
        self.accumulators = list(accumulators)
        check_reads(self.accumulators)
        self._swept: set[int] = set()
        if "online_state" in store.group:
            raise ValueError(
                f"{store.location}: this store keeps its statistics in the single-blob layout of an older "
                "version; finish or rerun it into a new store"
            )

    # -- bookkeeping ----------------------------------------------------------------------
    def records(self) -> np.ndarray:
        """(lead, header + blocks) commit records of this init time (zeros before any)."""
        group = self.store.group
        if COMMIT_ARRAY not in group:
            return np.zeros((self.n_leads, _HEADER + self.n_blocks), np.int8)
        arr = zarr.open_array(self.store.location, path=COMMIT_ARRAY, mode="r")
        if arr.shape[0] <= self.init_index:
            return np.zeros((self.n_leads, _HEADER + self.n_blocks), np.int8)
        if arr.shape[2] != _HEADER + self.n_blocks:
            raise ValueError(
                f"{self.store.location}: online state has {arr.shape[2] - _HEADER} blocks, this run {self.n_blocks}"
            )
        return np.asarray(arr[self.init_index])

    def leads_missing(self, block: Block, records: np.ndarray | None = None) -> list[int]:
        """The leads whose statistics do not include the block yet."""
        r = self.records() if records is None else records
        return [k for k in range(self.n_leads) if not (r[k, 1] or r[k, _HEADER + block.index])]

    def has(self, block: Block) -> bool:
        return not self.leads_missing(block)

    def complete(self) -> bool:
        """Every lead's results are written."""
        return bool(self.records()[:, 1].all())

    # -- updating -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Let the accumulators set up what their updates need (e.g. a transform's tables)."""
        for acc in self.accumulators:
            if hasattr(acc, "prepare"):
                acc.prepare()

    def add(self, lead_index: int, block: Block, members: torch.Tensor) -> None:
        """Fold the block's members at this lead into the stored state (nothing if they are in
        already): load, update, save to the other slot, commit. The lead's last block writes
        the lead's results instead."""
        with serialised(self._lock_path(lead_index)):
            if lead_index not in self._swept:  # once per process: a kill leaves files only before it
                self.store.remove_stray_temp_files(
                    self.init_index, statistics=True, lead_index=lead_index, shared=False
                )
                self._swept.add(lead_index)
            record = self._record(lead_index)
            if record[1] or record[_HEADER + block.index]:
                return
            slot = int(record[0])
            first = not record[_HEADER:].any()
            states = [acc.empty() for acc in self.accumulators] if first else self._load(lead_index, slot)
            for acc, view in zip(self.accumulators, state_views(self.accumulators, states), strict=True):
                acc.update(view, lead_index, members, block.start)
            record[_HEADER + block.index] = 1
            if record[_HEADER:].all():
                self._write_results(lead_index, states)
                record[1] = 1
                self._commit(lead_index, record)
                self._drop(lead_index, slots=(0, 1))
                for acc in self.accumulators:
                    if hasattr(acc, "release"):
                        acc.release(lead_index)
            else:
                self._save(lead_index, 1 - slot, states)
                record[0] = 1 - slot
                self._commit(lead_index, record)
                self._drop(lead_index, slots=(slot,))
        del states
        release_freed_memory()

    def finish(self) -> bool:
        """When every lead is written: mark the init's statistics complete and let the
        accumulators clean up (the CRPS scratch). Idempotent; returns whether complete."""
        if not self.complete():
            return False
        with store_lock(self.store.location):
            # a fresh view: another process may have changed the attributes since
            group = zarr.open_group(self.store.location, mode="r+")
            when = str(self.store.init_times[self.init_index])
            done = set(group.attrs.get("statistics_complete", []))
            if when not in done:
                group.attrs["statistics_complete"] = sorted(done | {when})
        for acc in self.accumulators:
            if hasattr(acc, "close"):
                acc.close()
        return True

    # -- storage --------------------------------------------------------------------------
    def _lock_path(self, lead_index: int) -> str:
        return f"{self.store.location.rstrip('/')}.locks/state-{self.init_index}-{lead_index}.lock"

    def _commit_array(self) -> zarr.Array:
        """The commit records, created or grown to every init time of the store. Growing is
        serialised across processes: two runs for other init times must not resize it to
        different lengths (a resize drops the chunks beyond the new shape)."""
        width = _HEADER + self.n_blocks
        group = zarr.open_group(self.store.location, mode="r+")
        n_init = group["init_time"].shape[0]
        if COMMIT_ARRAY in group and group[COMMIT_ARRAY].shape[0] >= n_init:
            return group[COMMIT_ARRAY]
        with store_lock(self.store.location):
            group = zarr.open_group(self.store.location, mode="r+")
            n_init = group["init_time"].shape[0]
            if COMMIT_ARRAY not in group:
                group.create_array(
                    COMMIT_ARRAY,
                    shape=(n_init, self.n_leads, width),
                    chunks=(1, 1, width),
                    dtype="int8",
                    fill_value=0,
                    dimension_names=["init_time", "lead_time", "record"],
                    attributes={"long_name": "online statistics commit record: slot, final, blocks included"},
                )
            arr = group[COMMIT_ARRAY]
            if arr.shape[0] < n_init:
                arr.resize((n_init, *arr.shape[1:]))
            return arr

    def _record(self, lead_index: int) -> np.ndarray:
        return np.asarray(self._commit_array()[self.init_index, lead_index]).copy()

    def _commit(self, lead_index: int, record: np.ndarray) -> None:
        self._commit_array()[self.init_index, lead_index] = record  # one chunk: one atomic write

    def _group(self) -> zarr.Group:
        group = zarr.open_group(self.store.location, mode="r+")
        if STATE_GROUP not in group:
            with store_lock(self.store.location):
                group = zarr.open_group(self.store.location, mode="r+")
                if STATE_GROUP not in group:
                    group.create_group(STATE_GROUP, attributes={"long_name": "online accumulator states by lead"})
        return group[STATE_GROUP]

    def _name(self, lead_index: int, slot: int, acc: Accumulator, key: str) -> str:
        return f"i{self.init_index}.l{lead_index}.s{slot}.{acc.name}.{key}"

    def _save(self, lead_index: int, slot: int, states: list[dict[str, torch.Tensor]]) -> None:
        group = self._group()
        for acc, state in zip(self.accumulators, states, strict=True):
            for key, tensor in state.items():
                values = tensor.detach().cpu().contiguous().numpy().reshape(tensor.shape or (1,))
                arr = group.create_array(
                    self._name(lead_index, slot, acc, key),
                    shape=values.shape,
                    chunks=values.shape,
                    dtype=values.dtype,
                    fill_value=0,
                    compressors=None,  # fixed size: a statistics-only run's disk use is known upfront
                    overwrite=True,
                )
                arr[...] = values

    def _load(self, lead_index: int, slot: int) -> list[dict[str, torch.Tensor]]:
        group = self._group()
        states = []
        for acc in self.accumulators:
            state = acc.empty()
            for key, tensor in state.items():
                values = np.asarray(group[self._name(lead_index, slot, acc, key)][...])
                tensor.copy_(torch.from_numpy(values.reshape(tensor.shape)))
            states.append(state)
        return states

    def _drop(self, lead_index: int, slots: Sequence[int]) -> None:
        root = zarr.open_group(self.store.location, mode="r+")
        if STATE_GROUP not in root:
            return
        group = root[STATE_GROUP]
        pattern = re.compile(rf"i{self.init_index}\.l{lead_index}\.s({'|'.join(map(str, slots))})\.")
        local = Path(self.store.location) / STATE_GROUP
        # on a local disk list the folder itself: an array whose creation a kill cut short has
        # no metadata yet, so zarr does not list it, and it would stay behind
        names = [p.name for p in local.iterdir()] if local.is_dir() else list(group.array_keys())
        for name in [n for n in names if pattern.match(n)]:
            if local.is_dir():
                shutil.rmtree(local / name, ignore_errors=True)
            else:
                del group[name]

    def _write_results(self, lead_index: int, states: list[dict[str, torch.Tensor]]) -> None:
        results = {}
        for acc, view in zip(self.accumulators, state_views(self.accumulators, states), strict=True):
            results.update(acc.result(view, lead_index))
        fixed = {}
        for acc in self.accumulators:
            fixed.update(fixed_arrays(acc))
        group = zarr.open_group(self.store.location, mode="r+")
        missing = [n for n in [*results, *fixed] if n not in group]
        n_init = group["init_time"].shape[0]
        short = [n for n in results if n in group and group[n].shape[0] < n_init]
        if missing or short:
            with store_lock(self.store.location):
                self._create_results(results, fixed)
        group = zarr.open_group(self.store.location, mode="r+")
        for name, (_, values, _) in results.items():
            values = np.asarray(values)
            _check_layout(self.store.location, name, group[name].shape[2:], values.shape)
            group[name][self.init_index, lead_index] = values

    def _create_results(self, results: dict, fixed: dict) -> None:
        group = zarr.open_group(self.store.location, mode="r+")
        n_init, n_lead = group["init_time"].shape[0], self.n_leads
        for name, (dims, values, attrs) in fixed.items():
            if name not in group:
                values = np.asarray(values)
                dtype = str if values.dtype.kind == "U" else values.dtype
                arr = group.create_array(
                    name, shape=values.shape, dtype=dtype, dimension_names=list(dims), attributes=attrs
                )
                arr[...] = values
        for name, (dims, values, attrs) in results.items():
            values = np.asarray(values)
            if name not in group:
                group.create_array(
                    name,
                    shape=(n_init, n_lead, *values.shape),
                    chunks=(1, 1, *values.shape),
                    dtype=values.dtype,
                    fill_value=np.nan if values.dtype.kind == "f" else 0,
                    compressors=None,  # fixed size: a statistics-only run's disk use is known upfront
                    dimension_names=["init_time", "lead_time", *dims],
                    attributes=attrs,
                )
            arr = group[name]
            if arr.shape[0] < n_init:
                arr.resize((n_init, *arr.shape[1:]))


def _check_layout(location: str, name: str, stored: tuple[int, ...], new: tuple[int, ...]) -> None:
    """Refuse to write a result whose shape is not its array's: a store written by an earlier
    layout (e.g. the rank histogram's m + 1 bins before the fixed 100 of the normalised rank)."""
    if tuple(stored) != tuple(new):
        raise ValueError(
            f"{location}: array {name!r} holds (init_time, lead_time, *{tuple(stored)}) per init time, this run "
            f"gives {tuple(new)}: the store was written by another layout; write this run to a new store"
        )
