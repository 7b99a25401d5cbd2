"""Reliability of unattended runs: a member block that fails for good loses no other block
(Dask flow); a second forecast run for the same init time is refused while one runs; a
forecast flow killed mid-ensemble (held at a chosen chunk write) resumes on rerun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_per_channel

from forecast.diagnostics.online_scores import hindcast_scores
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.store import ForecastStore, open_forecast

ROOT = str(Path(__file__).resolve().parents[1])


def test_a_failed_block_loses_no_other_block_under_the_dask_flow(
    prefect_server, world_archive, world_packages, tmp_path
):
    from flows.ensemble import run_on_dask

    init, settings = "2001-11-03T00", {"perturbations": 2, "lead_hours": 24, "block_size": 2}
    reference = tmp_path / "reference.zarr"
    run_ensemble(world_archive, world_packages, init, str(reference), RunSettings(**settings), progress=False)
    # the second checkpoint's weights are damaged on disk after it was trained (same name, so
    # its members' seeds are those of the reference run): its two blocks fail on every worker
    broken = tmp_path / "copy" / Path(world_packages[1]).name
    shutil.copytree(world_packages[1], broken)
    (broken / "weights.safetensors").write_bytes(b"\0" * 64)
    packages = [world_packages[0], str(broken)]
    out = tmp_path / "dask.zarr"
    with pytest.raises(RuntimeError, match=r"lost blocks \['2', '3'\].*rerun the same flow"):
        run_on_dask(world_archive, packages, init, str(out), settings, n_workers=2, block_retries=0)
    fs = ForecastStore.open(str(out))
    complete = fs.complete(0)
    assert complete[:4].all() and not complete[4:].any()  # checkpoint 0's blocks were kept
    ref = open_forecast(str(reference))
    # fields are (init, member, lead, channel, lat, lon)
    assert_close_per_channel(fs.group["fields"][0, :4], ref.fields.values[0, :4], 1e-5, channel_axis=2)
    assert "ensemble_mean" not in fs.group  # the statistics wait for every member

    (broken / "weights.safetensors").write_bytes((Path(world_packages[1]) / "weights.safetensors").read_bytes())
    again = run_on_dask(world_archive, packages, init, str(out), settings, n_workers=2)
    assert again["blocks_run"] == 2 and again["statistics_complete"]
    done = open_forecast(str(out))
    assert done.complete.values.all() and (done.member_count.values == 8).all()
    assert_close_per_channel(done.fields.values, ref.fields.values, 1e-5, channel_axis=3)
    assert_close_per_channel(done.ensemble_mean.values, ref.ensemble_mean.values, 1e-5, channel_axis=-3)


def test_a_concurrent_forecast_flow_is_refused_and_a_killed_one_resumes(
    prefect_server, world_archive, world_packages, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    from flows.daily import forecast_flow
    from forecast.locks import LockBusy

    init = "2001-11-05T00"
    settings = {"perturbations": 4, "lead_hours": 48, "block_size": 2}
    leads = 9  # 16 members in 8 blocks of one +- pair, 18 member chunks each
    out = tmp_path / "daily"
    store = out / "forecast.zarr"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, str(Path(ROOT) / "tests"), os.environ.get("PYTHONPATH", "")]),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),  # the test harness's server
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    # The real flow, held at a chosen write (tests/kill_at_write.py): the first chunk of block
    # 2's 5th lead, before any of it is written. Blocks 0 and 1 are then complete, nothing else.
    paused = tmp_path / "paused-at.txt"
    code = (
        "import kill_at_write\n"
        f"kill_at_write.install({str(store)!r}, 'fields/c/*', {2 * 2 * leads + leads}, partial=False, then='wait', "
        f"ready={str(paused)!r})\n"
        "from flows.daily import forecast_flow\n"
        f"forecast_flow({world_archive!r}, {world_packages!r}, {str(out)!r}, init_time={init!r}, settings={settings!r})"
    )
    log = tmp_path / "killed-run.log"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused.exists() and proc.poll() is None, log.read_text()[-3000:]
    # a second real run for the same init time, while the first one writes: refused at once
    with pytest.raises(LockBusy, match="already running"):
        forecast_flow(world_archive, world_packages, str(out), init_time=init, settings=settings)
    assert "already running" in (out / f"failure-{init}.md").read_text()
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)  # as an OOM kill or a lost node would
    proc.wait()
    complete = ForecastStore.open(str(store)).group["complete"][:]
    np.testing.assert_array_equal(complete[0], [1] * 4 + [0] * 12)
    # the rerun is not refused (the dead run's lock died with it) and runs only the rest
    result = forecast_flow(world_archive, world_packages, str(out), init_time=init, settings=settings)
    assert result["blocks_run"] == 6 and result["members"] == 16
    clean = tmp_path / "clean.zarr"
    run_ensemble(world_archive, world_packages, init, str(clean),
                 RunSettings(**settings, score=True), progress=False, scores=hindcast_scores)  # fmt: skip
    a, b = open_forecast(str(store)), open_forecast(str(clean))
    np.testing.assert_array_equal(a.complete.values, b.complete.values)
    assert_close_per_channel(a.fields.values, b.fields.values, 1e-5, channel_axis=3)
    # the variance in its own units: 1e-4 of each channel's largest variance
    assert_close_per_channel(a.ensemble_variance.values, b.ensemble_variance.values, 1e-4, channel_axis=-3)
    assert Path(result["report"]).is_file() and not (out / f"failure-{init}.md").exists()
    assert [str(p) for p in out.rglob("*") if ".partial" in p.name] == []  # nothing stray anywhere
