"""Scale-out: member blocks as Prefect tasks on a real Dask LocalCluster (2 worker processes)
give the same store as one process."""

from __future__ import annotations

import os

import numpy as np

from flows.ensemble import run_on_dask
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.store import open_forecast

INIT = "2001-11-01T00"
SETTINGS = {"perturbations": 3, "lead_hours": 48, "block_size": 2, "thresholds": {"t2m": [285.0]}}


def test_blocks_on_a_dask_cluster_equal_one_process(prefect_server, world_archive, world_packages, tmp_path):
    single = tmp_path / "single.zarr"
    settings = RunSettings(**{**SETTINGS, "thresholds": {"t2m": (285.0,)}})
    run_ensemble(world_archive, world_packages, INIT, str(single), settings, progress=False)
    spread = tmp_path / "dask.zarr"
    environment = dict(os.environ)
    summary = run_on_dask(world_archive, world_packages, INIT, str(spread), SETTINGS, n_workers=2)
    # distributed sets OMP_NUM_THREADS=1 for its workers in the parent's environment: not left behind
    assert dict(os.environ) == environment
    assert summary["blocks"] == 6 and summary["blocks_run"] == 6 and summary["statistics_complete"]
    a, b = open_forecast(str(single)), open_forecast(str(spread))
    assert b.complete.values.all()
    x, y = a.fields.values, b.fields.values
    # the same members: workers run the same blocks (torch may use other thread counts there,
    # which can move the last bits of a reduction)
    assert np.allclose(x, y, rtol=0, atol=1e-5 * np.abs(x).max()), np.abs(x - y).max()
    for name in ("ensemble_mean", "ensemble_variance", "ensemble_min", "ensemble_max"):
        assert np.allclose(a[name].values, b[name].values, rtol=1e-5, atol=1e-5 * np.abs(a[name].values).max()), name
    assert np.array_equal(a.exceedance_count.values, b.exceedance_count.values)
    assert (b.member_count.values == 12).all()
    again = run_on_dask(world_archive, world_packages, INIT, str(spread), SETTINGS, n_workers=2)
    assert again["blocks_run"] == 0
