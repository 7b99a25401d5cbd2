"""What of a run is done and what is left: the one place that decides resume, repair and
completeness, for the engine (`run_ensemble`), the Dask flow and the hindcast flow alike.

A block is done when its members are stored complete (if the run keeps members) and every
lead's statistics include it. Anything less is work:
- members complete, some leads' statistics missing (a process killed between the two, or a
  worker's statistics lost): those leads are read back from the store, nothing is rerun;
- otherwise the block is rerun; its members are written where they are not complete, and its
  statistics are added only to the leads that lack them (so nothing is counted twice).
An init time is complete when its statistics are written for every lead and, for a run that
keeps members, every member is marked complete.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from forecast.ensemble.members import Block
from forecast.ensemble.state import OnlineState
from forecast.ensemble.store import ForecastStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BlockWork:
    block: Block
    write_members: bool  # its members are not all marked complete
    stat_leads: tuple[int, ...]  # lead indices whose statistics lack the block
    keeps_members: bool = True  # the run stores members (so complete ones can be read back)

    @property
    def needs_run(self) -> bool:
        """Only a rerun gives what is missing: members to write, or statistics of members
        that are not on disk to read back."""
        return self.write_members or not self.keeps_members


def pending(store: ForecastStore, init_index: int, state: OnlineState, blocks: list[Block]) -> list[BlockWork]:
    """The work left for these blocks of one init time (done blocks are left out)."""
    keeps = store.store_members
    complete = store.complete(init_index)
    records = state.records()
    out = []
    for b in blocks:
        write = keeps and not complete[b.start : b.stop].all()
        leads = tuple(state.leads_missing(b, records))
        if write or leads:
            out.append(BlockWork(b, write, leads, keeps))
    return out


def catch_up(store: ForecastStore, init_index: int, state: OnlineState, work: list[BlockWork]) -> list[BlockWork]:
    """Add the stored members of complete blocks to the leads whose statistics lack them (one
    lead in memory at a time); returns the work that still needs a run."""
    rest = []
    caught = 0
    for w in work:
        if w.needs_run:
            rest.append(w)
            continue
        for k in w.stat_leads:
            values = store.group["fields"][init_index, w.block.start : w.block.stop, k]
            state.add(k, w.block, torch.from_numpy(np.asarray(values)))
        caught += 1
    if caught:
        log.info("%s: statistics caught up from %d stored blocks", store.location, caught)
    return rest


def init_complete(store: ForecastStore, init_index: int) -> bool:
    """The one definition of "this init time is done": statistics written and, where the run
    keeps members, every member complete."""
    when = str(store.init_times[init_index])
    if when not in set(store.group.attrs.get("statistics_complete", [])):
        return False
    return not store.store_members or bool(store.complete(init_index).all())
