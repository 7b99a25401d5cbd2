"""The forecast flow (one init time) under Prefect's test harness: scores, report and
artifacts; a second run for the same init time is refused while one holds it, with a failure
report saying how to resume; the scheduled init time comes from the scheduled start time."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

INIT = "2001-11-20T00"
SETTINGS = {"perturbations": 1, "lead_hours": 24, "output_leads": [0, 24], "block_size": 2}


@pytest.mark.parametrize(
    ("scheduled", "cycle", "latency", "expected"),
    [
        (dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC), 24, 6, "2026-11-26T00"),
        (dt.datetime(2026, 11, 26, 5, 59, tzinfo=dt.UTC), 24, 6, "2026-11-25T00"),  # before the data are in
        (dt.datetime(2026, 11, 26, 20, 30, tzinfo=dt.UTC), 6, 4, "2026-11-26T12"),
        (dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), 24, 6, "2026-11-26T00"),
    ],
)
def test_init_time_comes_from_the_scheduled_time(scheduled, cycle, latency, expected):
    from flows.daily import resolve_init_time

    assert resolve_init_time(scheduled, cycle, latency) == expected


def test_forecast_flow_scores_reports_and_refuses_a_concurrent_run(
    prefect_server, world_archive, world_packages, tmp_path
):
    from prefect.client.orchestration import get_client

    from flows.daily import forecast_flow
    from forecast.diagnostics.scores_store import open_scores
    from forecast.locks import LockBusy

    out = tmp_path / "daily"
    lock = out / f"forecast.zarr.run-{INIT}.lock"
    # another process holds this init time (as a second scheduled run would)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from forecast.locks import exclusive\nimport time\n"
         f"with exclusive({str(lock)!r}, 'x'):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[1]),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy, match="already running"):
            forecast_flow(world_archive, world_packages, str(out), init_time=INIT, settings=SETTINGS)
        failure = (out / f"failure-{INIT}.md").read_text()
        assert "already running" in failure and "How to resume" in failure
        assert not (out / "forecast.zarr").exists()  # nothing was written by the refused run
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.2)
    result = forecast_flow(world_archive, world_packages, str(out), init_time=INIT, settings=SETTINGS)
    assert result["init_time"] == INIT and result["members"] == 4
    assert not (out / f"failure-{INIT}.md").exists()  # the success clears the stale failure report
    scores = open_scores(result["scores"])
    assert np.isfinite(scores.crps.sel(lead_time=24).values).all()
    report = Path(result["report"]).read_text()
    assert "| z500 | 1 |" in report and "![crps_spread_skill]" in report
    for line in report.splitlines():
        if line.startswith("!["):
            assert (out / line.split("(")[1].rstrip(")")).is_file()
    # the same markdown and a score table are Prefect artifacts
    import asyncio

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    keys = {a.key for a in asyncio.run(artifacts())}
    assert {"forecast-report", "forecast-scores"} <= keys


def test_a_backfill_over_three_dates_with_one_complete_runs_two(
    prefect_server, world_archive, world_packages, tmp_path
):
    from flows.hindcast import completed_inits, hindcast_flow
    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.ensemble.store import ForecastStore

    settings = {"perturbations": 1, "lead_hours": 12, "block_size": 2}
    store = tmp_path / "hindcast.zarr"
    run_ensemble(world_archive, world_packages, "2001-11-11T00", str(store), RunSettings(**settings), progress=False)
    before = ForecastStore.open(str(store)).group["fields"][0]
    result = hindcast_flow(
        world_archive, world_packages, str(tmp_path), "2001-11-10T00", "2001-11-12T00",
        settings=settings, max_concurrent=2,
    )  # fmt: skip
    assert result["ran"] == ["2001-11-10T00", "2001-11-12T00"] and result["skipped"] == ["2001-11-11T00"]
    assert completed_inits(str(store)) == {"2001-11-10T00", "2001-11-11T00", "2001-11-12T00"}
    fs = ForecastStore.open(str(store))
    i = fs.init_index(np.datetime64("2001-11-11T00", "h"))
    np.testing.assert_array_equal(fs.group["fields"][i], before)  # the complete init was left alone
    again = hindcast_flow(
        world_archive, world_packages, str(tmp_path), "2001-11-10T00", "2001-11-12T00", settings=settings
    )
    assert again["ran"] == []


def test_leads_are_scored_as_their_analyses_reach_the_archive(
    prefect_server, world_two_years, world_archive, world_packages, tmp_path
):
    """A daily forecast is scored at first for the leads already analysed; once the next
    month is ingested, the diagnose flow scores the rest, and the scores equal those of a
    store scored in one go."""
    from flows.diagnose import diagnose_flow
    from forecast.diagnostics.scores_store import ScoresStore, open_scores
    from forecast.diagnostics.verify import diagnose
    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.ingest import ingest

    world = Path(world_two_years)
    growing = str(tmp_path / "growing.zarr")  # the operational archive: November first
    ingest([world / "era5_world_static.nc", *sorted(world.glob("era5_world_*_200111.nc"))], growing, progress=False)
    init = "2001-11-30T00"
    store = str(tmp_path / "forecast.zarr")
    settings = RunSettings(perturbations=1, lead_hours=48, block_size=2)
    run_ensemble(growing, world_packages, init, store, settings, progress=False)
    scores = str(tmp_path / "scores.zarr")
    assert diagnose(store, growing, scores, progress=False) == {init: 4}  # 00..18 UTC on the 30th
    assert ScoresStore.open(scores).verified_leads(np.datetime64(init)) == {0, 6, 12, 18}
    assert np.isnan(open_scores(scores).crps.sel(lead_time=24).values).all()
    assert diagnose_flow(store, growing, scores)["scored"] == {}  # nothing new has come in

    ingest(sorted(world.glob("era5_world_*_200112.nc")), growing, progress=False)
    result = diagnose_flow(store, growing, scores, plots_dir=str(tmp_path / "plots"))
    assert result["scored"] == {init: 9}
    assert any(p.endswith(".png") for p in result["plots"])
    once = str(tmp_path / "once.zarr")
    diagnose(store, growing, once, progress=False)
    a, b = open_scores(scores), open_scores(once)
    for name in ("crps", "ensemble_mean_rmse", "spread_skill_ratio", "rank_histogram", "crps_map"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert np.isfinite(a.crps.values).all()
