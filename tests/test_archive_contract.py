"""`forecast world` then `forecast ingest` gives an archive that meets DESIGN §2.1; a second
ingest is a no-op; the demo runs end to end."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr
import zarr
from conftest import tree_digest

from forecast.archive import Archive, open_archive
from forecast.cli import main
from forecast.ensemble.store import ForecastStore


def test_world_archive_meets_the_contract(world_two_years, tmp_path, capsys):
    archive = tmp_path / "world.zarr"
    assert main(["-q", "ingest", str(world_two_years), "--archive", str(archive)]) == 0
    group = zarr.open_group(str(archive), mode="r")
    fields = group["fields"]
    assert fields.dtype == np.float32
    assert fields.metadata.dimension_names == ("time", "channel", "lat", "lon")
    assert fields.chunks == (1, *fields.shape[1:])  # one chunk per time step, whole globe
    assert fields.shards == (124, *fields.shape[1:])  # sharded along time: a month per object
    assert group.metadata.zarr_format == 3

    ds = open_archive(str(archive))
    n_steps = (np.datetime64("2002-01-01T00") - np.datetime64("2000-01-01T00")) // np.timedelta64(6, "h")
    assert ds.sizes["time"] == n_steps
    assert np.all(np.diff(ds.time.values) == np.timedelta64(6, "h"))
    assert ds.sizes["channel"] == 21 and {"z500", "t850", "u10m", "t2m", "msl", "tcwv"} <= set(ds.channel.values)
    assert ds.lat.values[0] == 90.0 and ds.lat.values[-1] == -90.0 and np.all(np.diff(ds.lat.values) < 0)
    assert ds.lon.values[0] == 0.0 and np.all(np.diff(ds.lon.values) > 0)
    assert {"orography", "land_sea_mask", "mean", "std", "diff_std"} <= set(ds.data_vars)
    static = xr.open_dataset(world_two_years / "era5_world_static.nc")
    np.testing.assert_allclose(ds.orography.values, static.z.isel(valid_time=0).values / 9.80665, rtol=1e-6)
    attrs = Archive.open(str(archive)).attrs
    assert attrs["statistics"]["time_steps"] == n_steps
    assert len(attrs["sources"]) == 49 and all(s["checksum"].startswith("sha256:") for s in attrs["sources"])
    assert {"forecast", "zarr", "xarray"} <= set(attrs["software"])
    assert attrs["grid"].startswith("33x64")
    # Values are the source's, bit for bit (the world grid is the archive grid).
    src = xr.open_dataset(world_two_years / "era5_world_sfc_200107.nc")
    np.testing.assert_array_equal(ds.fields.sel(channel="msl", time=src.valid_time.values).values, src.msl.values)
    # Statistics are physically sensible: z500 about 5 km, diff_std well below std.
    i = list(ds.channel.values).index("z500")
    assert 45_000 < ds["mean"].values[i] < 56_000 and ds["diff_std"].values[i] < ds["std"].values[i]

    before = tree_digest(archive)
    capsys.readouterr()
    assert main(["-q", "ingest", str(world_two_years), "--archive", str(archive)]) == 0
    assert "added 0 time steps" in capsys.readouterr().out
    assert tree_digest(archive) == before


def test_cli_reports_bad_input_with_exit_code_2(real_data, tmp_path, capsys):
    code = main(["-q", "ingest", str(real_data / "cfgrib" / "reduced_gg.grib"), "--archive", str(tmp_path / "a")])
    assert code == 2
    assert "reduced_gg.grib: variable '10u': is on a reduced" in capsys.readouterr().err


def test_demo_runs_the_whole_chain_into_one_directory(tiny_demo):
    """A tiny demo configuration: two simulated months, two tiny checkpoints, the calibration,
    hindcasts, the M-climate, an ensemble with online scores, the scores store and the report."""
    import asyncio

    from prefect.client.orchestration import get_client

    out, printed = tiny_demo
    assert "demo: Completed" in printed and "8 members from 2000-02-24T00" in printed
    assert open_archive(str(out / "archive.zarr")).sizes["time"] == 29 * 4 + 31 * 4
    assert sorted(p.name for p in (out / "packages").iterdir()) == ["seed000", "seed001"]
    assert (out / "archive.side.zarr").is_dir()  # the M-climate
    report = (out / "forecast" / "report-2000-02-24T00.md").read_text()
    assert "| z500 | 1 |" in report and "efi_maps" in report
    assert len(list((out / "forecast" / "plots-2000-02-24T00").glob("*.png"))) >= 6
    # the forecast's scores hold its ensemble-size curves (issue #14), and the report says what 8 members bought
    from forecast.diagnostics.scores_store import open_scores

    scores = open_scores(str(out / "forecast" / "scores.zarr"))
    assert scores.ensemble_size.values.tolist() == [2, 4, 8]
    best = scores.subset_best_member_error.isel(init_time=0, lead_time=-1).values  # (size, channel)
    assert np.all(np.diff(best, axis=0) <= 0) and np.isfinite(scores.subset_outlier_fraction.values[:, 1:]).all()
    assert "From 2 to 8 members" in report and "ensemble_size_curves" in report
    # the calibration chose the amplitudes that the hindcasts and the forecast ran with
    calibration = json.loads((out / "calibration.json").read_text())
    assert f"calibration {out / 'calibration.json'}" in printed
    for store in (out / "hindcast.zarr", out / "forecast" / "forecast.zarr"):
        settings = ForecastStore.open(str(store)).run["settings"]
        assert settings["channel_amplitudes"] == calibration["channel_amplitudes"], store
        assert settings["amplitude"] == calibration["amplitude"], store

    async def demo_runs():
        async with get_client() as client:
            return [r for r in await client.read_flow_runs() if r.state_name == "Completed"]

    names = {r.name for r in asyncio.run(demo_runs())}
    assert "forecast 2000-02-24T00" in names  # the runs are recorded as completed by the server


def test_a_demo_rerun_reuses_its_calibration_only_if_made_the_way_the_config_asks(tiny_demo):
    import dataclasses

    from flows.demo import _calibration_fits
    from forecast.config import DemoConfig, load

    out, _ = tiny_demo
    asked = load(DemoConfig, out.parent / "demo.yaml").calibration
    packages = sorted(str(p) for p in (out / "packages").iterdir())
    path = str(out / "calibration.json")
    assert _calibration_fits(path, packages, asked)
    for change in ({"candidates": [0.1, 0.5, 1.0]}, {"noise_scales": [0.5, 1.0]}, {"objective": "ssr"},
                   {"tolerance": 0.02}, {"days": [1, 2]}, {"inits": ["2000-02-25T06"]}):  # fmt: skip
        assert not _calibration_fits(path, packages, dataclasses.replace(asked, **change)), change
    assert not _calibration_fits(path, packages[:1], asked)  # other packages
