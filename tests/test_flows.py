"""The ingest flow under Prefect's test harness (a real temporary Prefect server)."""

from __future__ import annotations

import numpy as np
from synthetic import fields, six_hourly, write_cds

from forecast.archive import open_archive
from forecast.ingest.pipeline import group_sources


def test_group_sources_by_month():
    files = [
        "/d/era5_world_sfc_200002.nc",
        "/d/era5_world_static.nc",
        "/d/era5_world_pl_200001.nc",
        "/d/era5_world_pl_200002.nc",
        "/d/era5_world_sfc_200001.nc",
    ]
    assert group_sources(files) == [
        ("200001", ["/d/era5_world_static.nc", "/d/era5_world_pl_200001.nc", "/d/era5_world_sfc_200001.nc"]),
        ("200002", ["/d/era5_world_sfc_200002.nc", "/d/era5_world_pl_200002.nc"]),
    ]


def test_ingest_flow_runs_a_task_per_group_and_is_idempotent(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client  # noqa: F401  (server must be up)

    from flows.ingest import ingest_flow

    src = tmp_path / "src"
    src.mkdir()
    write_cds(src / "era5_202001.nc", six_hourly("2020-01-31T00", 4), seed=0)
    write_cds(src / "era5_202002.nc", six_hourly("2020-02-01T00", 4), seed=5)
    archive = tmp_path / "a.zarr"
    results = ingest_flow([str(src)], str(archive))
    assert [r["group"] for r in results] == ["202001", "202002"]
    assert [r["added"] for r in results] == [4, 4]
    ds = open_archive(str(archive))
    np.testing.assert_array_equal(
        ds.fields.sel(channel="z500").values[4:], fields(six_hourly("2020-02-01T00", 4), seed=5)["z"][:, 0]
    )
    again = ingest_flow([str(src)], str(archive))
    assert [r["added"] for r in again] == [0, 0]


def test_train_flow_trains_one_package_per_seed(prefect_server, tmp_path):
    from safetensors.torch import load_file

    from flows.train import train_flow
    from forecast.ingest import ingest

    ingest(
        [write_cds(tmp_path / "a.nc", six_hourly("2020-01-01T00", 40), nlat=9, nlon=16)],
        tmp_path / "a.zarr",
        progress=False,
    )
    config = tmp_path / "t.yaml"
    config.write_text(
        "model: {embed_dim: 8, num_layers: 1}\nepochs: 1\nfinetune_epochs: 0\nbatch_size: 4\n"
        "max_batches_per_epoch: 2\nwarmup_steps: 1\ntrain_end: '2020-01-06T18'\n"
        "valid_start: '2020-01-07T00'\nskill_inits: 2\n"
    )
    results = train_flow(str(tmp_path / "a.zarr"), str(tmp_path / "pkgs"), [1, 2], str(config), "cpu")
    assert [r["seed"] for r in results] == [1, 2]
    assert set(results[0]["scores"]) == {"z500@24h", "z500@72h", "t850@24h", "t850@72h"}
    s = results[0]["scores"]["z500@24h"]
    assert s["beats_both"] == (s["model"] < s["persistence"] and s["model"] < s["climatology"])
    a = load_file(str(tmp_path / "pkgs" / "seed001" / "weights.safetensors"))
    b = load_file(str(tmp_path / "pkgs" / "seed002" / "weights.safetensors"))
    assert any(not (a[k] == b[k]).all() for k in a)
