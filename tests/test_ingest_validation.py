"""Ingest validation, idempotency, appends and unit/orientation handling on synthetic files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import tree_digest
from synthetic import fields, six_hourly, write_cds

from forecast.archive import Archive, open_archive
from forecast.ingest import IngestError, ingest

CHANNELS = ["z500", "z850", "t500", "t850", "msl"]


@pytest.fixture
def base(tmp_path):
    """An archive holding 8 steps from 2020-01-01T00."""
    src = write_cds(tmp_path / "jan1.nc", six_hourly("2020-01-01T00", 8))
    archive = tmp_path / "archive.zarr"
    ingest([src], archive, progress=False)
    return archive


def test_archive_holds_the_source_values(base, tmp_path):
    ds = open_archive(str(base))
    assert list(ds.channel.values) == CHANNELS
    f = fields(six_hourly("2020-01-01T00", 8))
    np.testing.assert_array_equal(ds.fields.sel(channel="z850").values, f["z"][:, 1])
    np.testing.assert_array_equal(ds.fields.sel(channel="msl").values, f["msl"])
    assert ds.lat.values[0] == 90 and ds.lat.values[-1] == -90


def test_second_ingest_changes_nothing(base, tmp_path):
    before = tree_digest(base)
    report = ingest([tmp_path / "jan1.nc"], base, progress=False)
    assert report.added == 0 and len(report.skipped_sources) == 1
    assert tree_digest(base) == before


def test_overlapping_file_skips_known_times_and_appends_new_ones(base, tmp_path):
    # Same first 8 steps (same seed, so same values) plus 4 more.
    src = write_cds(tmp_path / "more.nc", six_hourly("2020-01-01T00", 12))
    report = ingest([src], base, progress=False)
    assert report.added == 4 and report.skipped_times == 8
    ds = open_archive(str(base))
    assert ds.sizes["time"] == 12
    np.testing.assert_array_equal(
        ds.fields.sel(channel="t500").values, fields(six_hourly("2020-01-01T00", 12))["t"][:, 0]
    )
    assert Archive.open(str(base)).attrs["statistics"]["time_steps"] == 12


def test_statistics_match_an_independent_computation(base):
    ds = open_archive(str(base))
    x = ds.fields.values.astype(np.float64)
    b = np.deg2rad(np.concatenate([[90.0], 0.5 * (ds.lat.values[1:] + ds.lat.values[:-1]), [-90.0]]))
    w = (np.sin(b[:-1]) - np.sin(b[1:]))[:, None] * np.ones(ds.sizes["lon"])
    w /= w.sum()
    mean = np.einsum("tcij,ij->c", x, w) / len(x)
    var = np.einsum("tcij,ij->c", (x - mean[None, :, None, None]) ** 2, w) / len(x)
    d = np.diff(x, axis=0)
    dmean = np.einsum("tcij,ij->c", d, w) / len(d)
    dvar = np.einsum("tcij,ij->c", (d - dmean[None, :, None, None]) ** 2, w) / len(d)
    np.testing.assert_allclose(ds["mean"].values, mean, rtol=1e-9)
    np.testing.assert_allclose(ds["std"].values, np.sqrt(var), rtol=1e-6)
    np.testing.assert_allclose(ds["diff_std"].values, np.sqrt(dvar), rtol=1e-6)
    # Recomputing over a sub-period changes them and records the period.
    stats = Archive.open(str(base), mode="r+").compute_statistics("2020-01-01T06", "2020-01-02T00")
    assert stats["time_steps"] == 4 and stats["period_start"] == "2020-01-01T06"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drop": ("t",)}, r"variable 't': missing variable for channel t500"),
        ({"levels": (500.0,)}, r"variable 'z': missing level 850 hPa for channel z850; levels present: \['z500'\]"),
        ({"nan_at": 2}, r"bad\.nc: variable 't': 1 NaN/inf values at 2020-01-03T12 \(channel t850\)"),
        ({"nlat": 7}, r"grid 7x16 .* differs|the archive's grid|different grids"),
    ],
)
def test_bad_appends_are_refused_and_leave_the_archive_unchanged(base, tmp_path, kwargs, message):
    before = tree_digest(base)
    src = write_cds(tmp_path / "bad.nc", six_hourly("2020-01-03T00", 4), seed=1, **kwargs)
    with pytest.raises(IngestError, match=message):
        ingest([src], base, progress=False)
    assert tree_digest(base) == before


def test_gap_after_the_archive_is_refused(base, tmp_path):
    before = tree_digest(base)
    src = write_cds(tmp_path / "late.nc", six_hourly("2020-01-05T00", 4))
    with pytest.raises(
        IngestError, match="missing times: archive ends at 2020-01-02T18, new data start at 2020-01-05T00"
    ):
        ingest([src], base, progress=False)
    assert tree_digest(base) == before


def test_duplicate_and_unordered_times_are_refused(tmp_path):
    a = write_cds(tmp_path / "a.nc", six_hourly("2020-01-01T00", 4))
    b = write_cds(tmp_path / "b.nc", six_hourly("2020-01-01T18", 4))
    with pytest.raises(IngestError, match=r"duplicate time 2020-01-01T18 \(also in .*a\.nc\)"):
        ingest([a, b], tmp_path / "x.zarr", progress=False)
    times = six_hourly("2020-01-01T00", 4)[[0, 2, 1, 3]]
    xr.Dataset(
        {"msl": (("valid_time", "latitude", "longitude"), np.ones((4, 5, 8), np.float32), {"units": "Pa"})},
        coords={
            "valid_time": times.astype("datetime64[ns]"),
            "latitude": np.linspace(90, -90, 5),
            "longitude": np.arange(8) * 45.0,
        },
    ).to_netcdf(tmp_path / "u.nc")
    with pytest.raises(IngestError, match=r"u\.nc: variable 'msl': unordered times: 2020-01-01T12 is followed by"):
        ingest([tmp_path / "u.nc"], tmp_path / "y.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_orientation_and_units_are_normalised(tmp_path):
    times = six_hourly("2020-01-01T00", 3)
    ref = write_cds(tmp_path / "ref.nc", times)
    odd = write_cds(tmp_path / "odd.nc", times, lon180=True, ascending_lat=True, msl_hpa=True, height=True)
    ingest([ref], tmp_path / "r.zarr", progress=False)
    ingest([odd], tmp_path / "o.zarr", progress=False)
    r, o = open_archive(str(tmp_path / "r.zarr")), open_archive(str(tmp_path / "o.zarr"))
    np.testing.assert_array_equal(o.lon.values, r.lon.values)
    np.testing.assert_array_equal(o.lat.values, r.lat.values)
    np.testing.assert_allclose(o.fields.values, r.fields.values, rtol=2e-7)


def test_wrong_units_are_refused(tmp_path):
    src = write_cds(tmp_path / "w.nc", six_hourly("2020-01-01T00", 2))
    ds = xr.open_dataset(src).load()
    ds["t"].attrs["units"] = "m s**-1"
    ds.to_netcdf(tmp_path / "w2.nc")
    with pytest.raises(IngestError, match=r"w2\.nc: variable 't': temperature has units 'm s\*\*-1'"):
        ingest([tmp_path / "w2.nc"], tmp_path / "a.zarr", progress=False)


def test_fsspec_urls(tmp_path):
    src = write_cds(tmp_path / "a.nc", six_hourly("2020-01-01T00", 4))
    ingest([f"file://{src}"], tmp_path / "url.zarr", progress=False)
    ingest([src], tmp_path / "plain.zarr", progress=False)
    np.testing.assert_array_equal(
        open_archive(str(tmp_path / "url.zarr")).fields.values, open_archive(str(tmp_path / "plain.zarr")).fields.values
    )
    # A Zarr source through a URL, and an in-memory archive.
    xr.open_dataset(src).to_zarr(tmp_path / "src.zarr")
    ingest([f"file://{tmp_path / 'src.zarr'}"], "memory://archive.zarr", progress=False)
    np.testing.assert_array_equal(
        open_archive("memory://archive.zarr").fields.values, open_archive(str(tmp_path / "plain.zarr")).fields.values
    )


def test_unknown_channel_and_bad_grid_spec(tmp_path):
    src = write_cds(tmp_path / "a.nc", six_hourly("2020-01-01T00", 2))
    with pytest.raises(KeyError, match="unknown channel name 'x42'"):
        ingest([src], tmp_path / "a.zarr", channels=["x42"], progress=False)
    with pytest.raises(ValueError, match="does not divide"):
        ingest([src], tmp_path / "b.zarr", grid="7.0", progress=False)


def test_archive_made_with_a_grid_regrids_later_sources_too(tmp_path):
    a = write_cds(tmp_path / "a.nc", six_hourly("2020-01-01T00", 2), nlat=9, nlon=16)
    b = write_cds(tmp_path / "b.nc", six_hourly("2020-01-01T12", 2), nlat=19, nlon=32, seed=3)
    ingest([a], tmp_path / "g.zarr", grid="5x8", progress=False)
    ingest([b], tmp_path / "g.zarr", progress=False)
    ds = open_archive(str(tmp_path / "g.zarr"))
    assert ds.sizes["time"] == 4 and ds.sizes["lat"] == 5 and ds.sizes["lon"] == 8
    assert "conservative" in ds.attrs["regridding"]


def test_legacy_expver_dimension_is_combined(tmp_path):
    """Old CDS files mixing ERA5 (expver 1) and ERA5T (expver 5): each time is in one of them."""
    times = six_hourly("2020-01-01T00", 4).astype("datetime64[ns]")
    values = np.full((4, 2, 5, 8), np.nan, np.float32)
    values[:2, 0] = 1000.0 + np.arange(2)[:, None, None]
    values[2:, 1] = 2000.0 + np.arange(2)[:, None, None]
    xr.Dataset(
        {"msl": (("time", "expver", "latitude", "longitude"), values, {"units": "Pa"})},
        coords={"time": times, "expver": [1, 5], "latitude": np.linspace(90, -90, 5), "longitude": np.arange(8) * 45.0},
    ).to_netcdf(tmp_path / "mix.nc")
    ingest([tmp_path / "mix.nc"], tmp_path / "a.zarr", progress=False)
    got = open_archive(str(tmp_path / "a.zarr")).fields.sel(channel="msl").values[:, 0, 0]
    np.testing.assert_array_equal(got, [1000.0, 1001.0, 2000.0, 2001.0])


def test_statistics_updated_on_append_equal_a_full_recomputation(base, tmp_path):
    ingest([write_cds(tmp_path / "next.nc", six_hourly("2020-01-03T00", 6), seed=9)], base, progress=False)
    ds = open_archive(str(base))
    assert ds.attrs["statistics"]["whole_archive"] and ds.attrs["statistics"]["time_steps"] == 14
    running = {k: ds[k].values.copy() for k in ("mean", "std", "diff_std")}
    full = Archive.open(str(base), mode="r+").compute_statistics()
    for k, v in running.items():
        np.testing.assert_allclose(v, full[k], rtol=1e-10)


def test_batches_end_on_shard_boundaries():
    from forecast.ingest.pipeline import BATCH_BYTES, batch_bounds

    bounds = batch_bounds(1000, BATCH_BYTES // 300, start=20, per_object=124)
    assert bounds[0] == (0, 104)  # completes the partly filled first shard
    assert all((20 + e) % 124 == 0 for _, e in bounds[:-1]) and bounds[-1][1] == 1000
    assert all(b == e_prev for (b, _), (_, e_prev) in zip(bounds[1:], bounds[:-1], strict=True))
    assert batch_bounds(5, 10**9) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # huge steps: one at a time


def test_missing_file_is_named(tmp_path):
    with pytest.raises(IngestError, match=r"nope\.nc: no such file"):
        ingest([tmp_path / "nope.nc"], tmp_path / "a.zarr", progress=False)


def test_open_archive_survives_a_crash_between_the_two_resizes(base):
    """A crash can stop an append after `fields` grew but before `time` did: the archive
    still opens, with the committed steps only."""
    import zarr

    expected = open_archive(str(base)).fields.values
    fields = zarr.open_array(str(base / "fields"), mode="r+")
    fields.resize((fields.shape[0] + 5, *fields.shape[1:]))
    ds = open_archive(str(base))
    assert ds.sizes["time"] == 8 and list(ds.channel.values) == CHANNELS
    np.testing.assert_array_equal(ds.fields.values, expected)
    assert "mean" in ds and "orography" not in ds


def test_failed_first_ingest_leaves_no_archive(tmp_path):
    src = write_cds(tmp_path / "bad.nc", six_hourly("2020-01-01T00", 4), nan_at=3)
    with pytest.raises(IngestError, match="NaN"):
        ingest([src], tmp_path / "new.zarr", progress=False)
    assert not (tmp_path / "new.zarr").exists()
