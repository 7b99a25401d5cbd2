"""The online statistics' per-lead state in the store: blocks in any order give the statistics
of all members, nothing is counted twice, a process killed at any write of an update (before
or after its commit) resumes to the same statistics, and nothing of the state is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from forecast.ensemble.members import Layout
from forecast.ensemble.online import EnsembleMoments, ExceedanceCounts
from forecast.ensemble.state import OnlineState
from forecast.ensemble.store import ForecastStore

ROOT = Path(__file__).resolve().parents[1]
LEADS, SHAPE = 3, (2, 5, 8)
LAYOUT = Layout(("a",), 3)  # 6 members, blocks of one pair: 3 blocks


def _members() -> np.ndarray:
    return np.random.default_rng(0).normal(280, 5, size=(6, LEADS, *SHAPE)).astype(np.float32)


def _store(path: Path) -> ForecastStore:
    lat, lon = np.linspace(80, -80, SHAPE[1]), np.arange(SHAPE[2]) * 45.0
    return ForecastStore.create(str(path), LAYOUT, [np.datetime64("2001-01-01T00")], [0, 6, 12], ["t2m", "z500"],
                                lat, lon, run={"test": True}, store_members=False)  # fmt: skip


def _state(store: ForecastStore) -> OnlineState:
    accs = [EnsembleMoments(SHAPE), ExceedanceCounts(["t2m", "z500"], SHAPE, {"t2m": (280.0,)})]
    return OnlineState(store, 0, 3, LEADS, accs)


def _feed(state: OnlineState, members: np.ndarray, order) -> None:
    blocks = LAYOUT.blocks(2)
    for b in order:
        for k in range(LEADS):
            state.add(k, blocks[b], torch.from_numpy(members[blocks[b].start : blocks[b].stop, k]))


def _check(store_path: Path, members: np.ndarray) -> None:
    import zarr

    g = zarr.open_group(str(store_path), mode="r")
    x = members.astype(np.float64)
    assert np.allclose(g["ensemble_mean"][0], x.mean(0), rtol=1e-7, atol=0)  # stored as float32
    assert np.allclose(g["ensemble_variance"][0], x.var(0, ddof=1), rtol=1e-5, atol=0)
    assert np.array_equal(g["ensemble_max"][0], members.max(0))
    assert np.array_equal(g["member_count"][0], [6, 6, 6])
    assert np.array_equal(g["exceedance_count"][0][:, 0], (members[:, :, 0] > 280).sum(0))
    assert list(g["threshold"][:]) == ["t2m>280"]
    assert not list(g["online"].array_keys())  # every lead's state is gone once its results are in


def test_blocks_in_any_order_give_the_statistics_of_all_members_once(tmp_path):
    members = _members()
    store = _store(tmp_path / "s.zarr")
    state = _state(store)
    _feed(state, members, [2, 0])
    assert not state.complete() and state.leads_missing(LAYOUT.blocks(2)[1]) == [0, 1, 2]
    assert state.has(LAYOUT.blocks(2)[0]) and "ensemble_mean" not in store.group
    _feed(state, members, [0, 2])  # again: already in, not counted twice
    _feed(state, members, [1])
    assert state.complete() and state.finish()
    done = ForecastStore.open(str(tmp_path / "s.zarr")).group.attrs["statistics_complete"]
    assert str(np.datetime64("2001-01-01T00", "h")) in done
    _check(tmp_path / "s.zarr", members)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    import test_ensemble_state as t
    from forecast.ensemble import state as state_module
    from forecast.ensemble.store import ForecastStore

    target, at = sys.argv[3], int(sys.argv[4])
    original = getattr(state_module.OnlineState, target)
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:  # die at exactly this write, before it happens
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    setattr(state_module.OnlineState, target, dying)
    store = ForecastStore.open(sys.argv[2], mode="r+")
    t._feed(t._state(store), t._members(), [0, 1, 2])
    """
)


@pytest.mark.parametrize("target,at", [("_save", 2), ("_commit", 2), ("_drop", 3), ("_write_results", 1)])
def test_a_process_killed_at_a_state_write_resumes_to_the_same_statistics(tmp_path, target, at):
    """Killed (SIGKILL, at a chosen call: no timing) before the new slot is written, between
    the slot and its commit, between the commit and dropping the old slot, or before a
    lead's results: the rerun folds each block in exactly once."""
    members = _members()
    path = tmp_path / "s.zarr"
    _store(path)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "tests"), str(path), target, str(at)], env=env)
    assert proc.returncode == -signal.SIGKILL
    state = _state(ForecastStore.open(str(path), mode="r+"))
    assert not state.complete()
    _feed(state, members, [0, 1, 2])
    assert state.finish()
    _check(path, members)
