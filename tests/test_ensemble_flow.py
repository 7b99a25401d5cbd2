"""Scale-out: member blocks as Prefect tasks on a real Dask LocalCluster (2 worker processes)
give the same store as one process."""

from __future__ import annotations

import os

import numpy as np
import torch

from flows.ensemble import run_on_dask
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.store import open_forecast

INIT = "2001-11-01T00"
SETTINGS = {"perturbations": 3, "lead_hours": 48, "block_size": 2, "thresholds": {"t2m": [285.0]}}


def test_blocks_on_a_dask_cluster_equal_one_process(prefect_server, world_archive, world_packages, tmp_path):
    single = tmp_path / "single.zarr"
    settings = RunSettings(**{**SETTINGS, "thresholds": {"t2m": (285.0,)}})
    # the workers compute with one thread each: so does the reference (a reduction over other
    # thread counts rounds differently, and the float32 perturbation synthesis shows it)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_ensemble(world_archive, world_packages, INIT, str(single), settings, progress=False)
    finally:
        torch.set_num_threads(threads)
    spread = tmp_path / "dask.zarr"
    environment = dict(os.environ)
    summary = run_on_dask(world_archive, world_packages, INIT, str(spread), SETTINGS, n_workers=2, threads_per_task=1)
    # distributed sets OMP_NUM_THREADS=1 for its workers in the parent's environment: not left behind
    assert dict(os.environ) == environment
    assert summary["blocks"] == 6 and summary["blocks_run"] == 6 and summary["statistics_complete"]
    a, b = open_forecast(str(single)), open_forecast(str(spread))
    assert b.complete.values.all()
    assert np.array_equal(a.fields.values, b.fields.values)  # the same members, bit for bit
    for name in ("ensemble_min", "ensemble_max", "exceedance_count", "member_count"):
        assert np.array_equal(a[name].values, b[name].values), name
    # blocks fold into the per-lead state in the order workers commit them: Chan's update in
    # another order rounds the float64 sums differently, never more than float32's precision
    for name in ("ensemble_mean", "ensemble_variance"):
        assert np.allclose(a[name].values, b[name].values, rtol=1e-6, atol=0), name
    assert (b.member_count.values == 12).all()
    again = run_on_dask(world_archive, world_packages, INIT, str(spread), SETTINGS, n_workers=2)
    assert again["blocks_run"] == 0
