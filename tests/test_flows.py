"""The ingest flow under Prefect's test harness (a real temporary Prefect server)."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import fields, six_hourly, write_cds

from forecast.archive import open_archive
from forecast.ingest.pipeline import group_sources


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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
