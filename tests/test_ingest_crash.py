"""A real ingest process killed with SIGKILL mid-write leaves an archive that opens, shows
only complete time steps, and a rerun completes it to equal an uninterrupted ingest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from synthetic import six_hourly, write_cds

from forecast.archive import Archive, open_archive
from forecast.ingest import ingest

NLAT, NLON = 91, 180


def _objects_past(archive: Path, start: int, per: int) -> int:
    """Stored objects (shards of `per` steps) of `fields` that hold only steps >= start."""
    root = archive / "fields" / "c"
    if not root.is_dir():
        return 0
    return sum(1 for p in root.iterdir() if p.name.isdigit() and int(p.name) * per >= start)


def test_sigkill_mid_ingest_then_rerun(tmp_path):
    first = write_cds(tmp_path / "first.nc", six_hourly("2021-01-01T00", 20), NLAT, NLON, seed=1)
    second = write_cds(tmp_path / "second.nc", six_hourly("2021-01-06T00", 800), NLAT, NLON, seed=2)
    archive = tmp_path / "archive.zarr"
    ingest([first], archive, progress=False)
    per = Archive.open(str(archive)).steps_per_object
    assert per > 1 and 820 / per > 4  # sharded along time, several shards to write
    committed_before = open_archive(str(archive)).fields.values.copy()

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "forecast.cli", "-q", "ingest", str(second), "--archive", str(archive)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while _objects_past(archive, 20, per) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the ingest finished before it could be killed: make the second file larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = _objects_past(archive, 20, per)
    total = -(-820 // per) - 1  # shards past the first, once complete
    assert 2 <= written < total, (written, total)  # killed mid-write, with data past the commit on disk

    # The archive opens and shows exactly the committed steps, unchanged.
    ds = open_archive(str(archive))
    assert ds.sizes["time"] == 20
    np.testing.assert_array_equal(ds.fields.values, committed_before)
    assert Archive.open(str(archive)).committed == 20

    # A rerun completes it; every value equals an uninterrupted ingest of the same files.
    report = ingest([second], archive, progress=False)
    assert report.added == 800
    clean = tmp_path / "clean.zarr"
    ingest([first], clean, progress=False)
    ingest([second], clean, progress=False)
    a, b = open_archive(str(archive)), open_archive(str(clean))
    np.testing.assert_array_equal(a.time.values, b.time.values)
    np.testing.assert_array_equal(a.fields.values, b.fields.values)
    np.testing.assert_array_equal(a["std"].values, b["std"].values)
    assert _objects_past(archive, 820, per) == 0
