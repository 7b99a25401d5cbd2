"""Temporary files left by killed Zarr writes: zarr's own leftovers (made by its `_atomic_write`
interrupted before the rename) are found by key and by subtree and removed, real objects and
other names never; the forecast store removes only what the blocks and init time it reruns own,
plus what its lock protects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import _local

from forecast.ensemble.members import Layout
from forecast.ensemble.store import ForecastStore
from forecast.storage import find_temp_files, is_temp_name, remove_temp_files


class Killed(BaseException):
    """Stands for a SIGKILL: zarr removes its temporary file on an Exception only."""


def leave_temp(root: Path, key: str, data: bytes = b"half of it") -> Path:
    """Write `key` as zarr's LocalStore does and stop before the rename: zarr's own leftover."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    before = set(path.parent.iterdir())
    with pytest.raises(Killed), _local._atomic_write(path, "wb") as f:
        f.write(data)
        raise Killed
    (new,) = set(path.parent.iterdir()) - before
    assert is_temp_name(new.name) and new.read_bytes() == data
    return new


def test_temp_files_go_by_key_and_by_subtree_and_nothing_else(tmp_path):
    root = tmp_path / "s.zarr"
    arr = zarr.create_array(str(root), name="a", shape=(12,), chunks=(1,), dtype="int32", fill_value=0)
    arr[:] = np.arange(12)
    temps = {key: leave_temp(root, key) for key in ("a/c/1", "a/c/10", "a/c/11", "a/zarr.json", "zarr.json")}
    (root / "a" / "c" / "notes.partial").write_text("not zarr's")  # a name zarr never makes
    assert find_temp_files(root) == []  # nothing named, nothing found

    assert remove_temp_files(root, keys=["a/c/1"]) == [temps["a/c/1"].relative_to(root).as_posix()]
    assert all(p.exists() for k, p in temps.items() if k != "a/c/1")  # not c/10 or c/11: other chunks
    removed = remove_temp_files(str(root), under=["a"], exclude=["a/c"])
    assert removed == [temps["a/zarr.json"].relative_to(root).as_posix()]
    removed = remove_temp_files(f"file://{root}", under=[""])
    assert removed == sorted(temps[k].relative_to(root).as_posix() for k in ("a/c/10", "a/c/11", "zarr.json"))
    assert find_temp_files(root, under=[""]) == []
    assert (root / "a" / "c" / "notes.partial").exists()
    np.testing.assert_array_equal(zarr.open_array(str(root), path="a")[:], np.arange(12))  # every chunk intact
    assert remove_temp_files("s3://bucket/s.zarr", under=[""]) == []  # object stores leave none


def test_the_forecast_store_removes_only_what_the_caller_owns(tmp_path):
    layout = Layout(("a", "b"), 2)  # 8 members, blocks of one pair: [0, 2), [2, 4), ...
    blocks = layout.blocks(2)
    times = [np.datetime64("2001-01-01T00", "h"), np.datetime64("2001-01-02T00", "h")]
    lat, lon = np.linspace(90, -90, 3), np.arange(4) * 90.0
    store = ForecastStore.create(str(tmp_path / "f.zarr"), layout, times, [0, 6], ["t2m"], lat, lon, run={})
    store.write_lead(0, blocks[0], 0, np.ones((2, 1, 3, 4), np.float32))
    g = store.group
    g.create_array("ensemble_mean", shape=(2, 2, 1, 3, 4), chunks=(1, 1, 1, 3, 4), dtype="float32",
                   dimension_names=["init_time", "lead_time", "channel", "lat", "lon"])  # fmt: skip
    g.create_array("online_state", shape=(2, 64), chunks=(1, 64), dtype="uint8",
                   dimension_names=["init_time", "state_bytes"])  # fmt: skip
    g.create_array("online_commit", shape=(2, 2, 6), chunks=(1, 1, 6), dtype="int8",
                   dimension_names=["init_time", "lead_time", "record"])  # fmt: skip
    g.create_group("online").create_array("i0.l0.s0.moments.sum", shape=(4,), dtype="float64")
    root = Path(store.location)
    parts = {
        "blocks": ["fields/c/0/0/1/0/0/0", "fields/c/0/1/0/0/0/0", "complete/c/0/1"],  # block 0 of init 0
        "shared": ["zarr.json", "fields/zarr.json", "ensemble_mean/zarr.json", "online/zarr.json"]
        + ["init_time/c/0", "lat/c/0", "half_made/zarr.json"],
        "lead 1": ["ensemble_mean/c/0/1/0/0/0", "online_commit/c/0/1/0"],
        "init 0": ["ensemble_mean/c/0/0/0/0/0", "online_commit/c/0/0/0", "online_state/c/0/0"],
        "never": [
            "fields/c/0/2/0/0/0/0",  # block 1: another worker's
            "complete/c/0/2",
            "fields/c/1/0/0/0/0/0",  # init 1: another run's
            "complete/c/1/0",
            "ensemble_mean/c/1/0/0/0/0",
            "online_state/c/1/0",
            "online/i0.l0.s0.moments.sum/c/0",  # a nested group: its writers' business
        ],
    }
    temps = {key: leave_temp(root, key).relative_to(root).as_posix() for keys in parts.values() for key in keys}

    def of(*names):
        return sorted(temps[k] for n in names for k in parts[n])

    assert store.remove_stray_temp_files(0, [blocks[0]]) == of("blocks", "shared")
    assert store.remove_stray_temp_files(0, statistics=True, lead_index=1, shared=False) == of("lead 1")
    assert store.remove_stray_temp_files(0, statistics=True) == of("init 0")
    assert store.remove_stray_temp_files(0, [blocks[0]], statistics=True) == []  # nothing more of its own
    assert sorted(find_temp_files(root, under=[""])) == of("never")
    np.testing.assert_array_equal(store.read_member(0, 1)[0], np.ones((1, 3, 4)))  # the chunks stay
