"""The M-climate built lead by lead and latitude tile by tile (issue #12): the same values as
pooling every hindcast member of every lead at once (the implementation before, kept here as
the reference), chunked per (target, lead, tile), read lazily, and in memory bounded by one
lead-tile. EFI and SOT of `diagnose` computed per tile equal the whole-lead functions."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from forecast.diagnostics import efi, sot
from forecast.diagnostics.mclimate import (
    LEVELS,
    _local_root,
    _read_local_rows,
    _read_ranged_rows,
    _read_rows,
    build_mclimate,
    load_mclimate,
    pooled_quantiles,
    side_store_path,
)
from forecast.diagnostics.verify import extremes_by_tile
from forecast.ensemble.members import Layout
from forecast.ensemble.store import ForecastStore

TARGET = "2003-11-20T00"
CHANNELS = ["z500", "t850", "tp"]


def grid(nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(90.0, -90.0, nlat), np.arange(nlon) * (360.0 / nlon)


def write_hindcasts(
    path: Path,
    inits: list[str],
    nlat: int,
    nlon: int,
    leads=(0, 6, 12, 18),
    perturbations: int = 3,
    seed: int = 0,
    incomplete: tuple[tuple[int, int], ...] = (),
) -> str:
    """A forecast store of synthetic members: (init index, block index) pairs in `incomplete`
    are written with absurd values but never marked complete. The last channel is rounded
    (ties, like dry precipitation), one complete member has a NaN point."""
    layout = Layout(("synthetic",), perturbations)
    lat, lon = grid(nlat, nlon)
    times = np.array(inits, "datetime64[h]")
    store = ForecastStore.create(str(path), layout, times, list(leads), CHANNELS, lat, lon, run={"test": seed})
    rng = np.random.default_rng(seed)
    for i in range(len(inits)):
        for block in layout.blocks(2):
            for k in range(len(leads)):
                values = rng.normal(10.0 * k, 1.0 + k, (block.size, len(CHANNELS), nlat, nlon)).astype(np.float32)
                values[:, -1] = np.maximum(np.round(values[:, -1]), 0.0)
                if (i, block.index) in incomplete:
                    values[:] = 1e6
                elif i == 0 and block.index == 0 and k == 1:
                    values[0, 0, 3, 5] = np.nan
                store.write_lead(i, block, k, values)
            if (i, block.index) not in incomplete:
                store.mark_complete(i, block)
    return str(path)


def pooled_reference(stores: list[str], target: str, window_days: int) -> tuple[np.ndarray, int]:
    """The build before the tiling: every complete member of every lead of every init within
    the window (not the target's own date) pooled, then one np.quantile. (lead, channel,
    quantile, lat, lon) and the number of members."""
    when = pd.Timestamp(target)
    pool = []
    for path in stores:
        store = ForecastStore.open(path)
        doy = pd.DatetimeIndex(store.init_times).dayofyear.to_numpy()
        distance = np.minimum(np.abs(doy - when.dayofyear), 365 - np.abs(doy - when.dayofyear))
        for i in np.flatnonzero(distance <= window_days):
            if pd.Timestamp(store.init_times[i]).normalize() == when.normalize():
                continue
            complete = np.flatnonzero(store.complete(int(i)))
            if len(complete):
                pool.append(np.asarray(store.group["fields"].get_orthogonal_selection((int(i), complete))))
    samples = np.concatenate(pool)
    q = np.quantile(samples.astype(np.float64), LEVELS, axis=0).astype(np.float32)
    return np.moveaxis(q, 0, 2), samples.shape[0]


@pytest.fixture(scope="module")
def hindcasts(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("hindcasts")
    first = write_hindcasts(
        root / "a.zarr",
        ["2001-11-17T00", "2003-11-20T00", "2001-11-23T00"],  # the middle one is the target's own date
        33,
        64,
        seed=1,
        incomplete=((0, 1),),
    )
    second = write_hindcasts(
        root / "b.zarr", ["2002-11-19T00", "2002-12-25T00"], 33, 64, seed=2
    )  # 12-25 is outside the window
    return [first, second]


@pytest.mark.parametrize("tile_rows", [None, 7, 32])  # 33 rows: 4 x 8 + 1, 4 x 7 + 5, 32 + 1
def test_the_tiled_m_climate_equals_the_pooled_quantiles(hindcasts, tmp_path, tile_rows):
    archive = str(tmp_path / "archive.zarr")
    extra = {} if tile_rows is None else {"tile_rows": tile_rows}
    side = build_mclimate(archive, hindcasts, TARGET, window_days=5, min_samples=10, **extra)
    expected, n = pooled_reference(hindcasts, TARGET, window_days=5)
    assert n == 4 + 6 + 6  # 11-17 without its incomplete block, 11-23, 11-19; not 11-20 or 12-25
    clim = load_mclimate(archive, TARGET)
    assert isinstance(clim.data, dask.array.Array)  # lazy
    assert clim.dims == ("lead_time", "channel", "quantile", "lat", "lon") and clim.name is None
    assert clim.lead_time.values.tolist() == [0, 6, 12, 18] and clim.channel.values.tolist() == CHANNELS
    np.testing.assert_array_equal(clim.lat.values, grid(33, 64)[0])
    np.testing.assert_array_equal(clim.values, expected)  # bit for bit, NaN where the pool has one
    assert np.isnan(clim.values[1, 0, :, 3, 5]).all() and np.isfinite(clim.values[1, 0, :, 4, 5]).all()
    assert clim.attrs["samples"] == n and sorted(clim.attrs["inits"]) == [
        "2001-11-17T00",
        "2001-11-23T00",
        "2002-11-19T00",
    ]
    rows = tile_rows or 8
    assert zarr.open_group(side, mode="r")["mclimate/quantiles"].chunks == (1, 1, 3, 101, rows, 64)
    assert clim.chunksizes["lat"] == (rows,) * (33 // rows) + ((33 % rows,) if 33 % rows else ())
    # a slice across tile edges reads back the same values
    np.testing.assert_array_equal(clim.isel(lead_time=2, lat=slice(5, 19)).values, expected[2, :, :, 5:19])
    # rebuilding the same target overwrites it in place
    build_mclimate(archive, hindcasts, TARGET, window_days=5, min_samples=10)
    again = load_mclimate(archive, TARGET)
    assert zarr.open_group(side, mode="r")["mclimate/target"][:].tolist() == ["11-20"]
    np.testing.assert_array_equal(again.values, expected)


def test_zarr_decoded_chunks_give_the_same_m_climate(hindcasts, tmp_path):
    """Byte ranges are read only from uncompressed chunks; a compressed store goes through
    zarr's own selection and gives the same climate."""
    plain = write_hindcasts(tmp_path / "plain.zarr", ["2001-11-18T00", "2001-11-22T00"], 33, 64, seed=3)
    packed = write_hindcasts(tmp_path / "packed.zarr", ["2001-11-18T00", "2001-11-22T00"], 33, 64, seed=3)
    group = zarr.open_group(packed, mode="r+")
    values = group["fields"][:]
    attrs = dict(group["fields"].attrs)
    del group["fields"]
    packed_fields = group.create_array(
        "fields",
        shape=values.shape,
        chunks=(1, 1, 1, *values.shape[3:]),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=["init_time", "member", "lead_time", "channel", "lat", "lon"],
        attributes=attrs,
    )
    packed_fields[...] = values
    assert packed_fields.compressors  # zstd: no byte ranges
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    build_mclimate(a, [plain], TARGET, window_days=5, min_samples=10, tile_rows=5)
    build_mclimate(b, [packed], TARGET, window_days=5, min_samples=10, tile_rows=5)
    expected, _ = pooled_reference([plain], TARGET, window_days=5)
    np.testing.assert_array_equal(load_mclimate(a, TARGET).values, expected)
    np.testing.assert_array_equal(load_mclimate(b, TARGET).values, expected)


def test_a_build_that_stops_reads_as_no_m_climate(tmp_path):
    store = write_hindcasts(tmp_path / "h.zarr", ["2001-11-18T00", "2001-11-22T00"], 33, 64, seed=4)
    archive = str(tmp_path / "archive.zarr")
    build_mclimate(archive, [store], TARGET, window_days=5, min_samples=10)
    assert load_mclimate(archive, TARGET) is not None
    fields = ForecastStore.open(store).group["fields"]
    chunk = Path(store) / "fields" / fields.metadata.encode_chunk_key((1, 4, 3, 0, 0, 0))
    chunk.write_bytes(chunk.read_bytes()[:1000])  # a damaged member chunk at the last lead
    with pytest.raises(OSError, match="damaged chunk"):
        build_mclimate(archive, [store], TARGET, window_days=5, min_samples=10)
    # neither the old climate nor a half-new one: none, until it is built again
    assert load_mclimate(archive, TARGET) is None


def test_a_side_store_from_before_the_tiling_is_read_but_not_built_into(hindcasts, tmp_path):
    """The untiled layout (one chunk per target and lead) as the build before wrote it."""
    archive = str(tmp_path / "archive.zarr")
    expected, n = pooled_reference(hindcasts, TARGET, window_days=5)
    group = zarr.open_group(side_store_path(archive), mode="w").require_group("mclimate")
    lat, lon = grid(33, 64)
    for name, values, dtype in (
        ("lead_time", [0, 6, 12, 18], "int64"),
        ("channel", CHANNELS, str),
        ("quantile", LEVELS, "float64"),
        ("lat", lat, "float64"),
        ("lon", lon, "float64"),
    ):
        arr = group.create_array(name, shape=(len(values),), dtype=dtype, dimension_names=[name])
        arr[...] = np.asarray(values).astype(dtype)
    group.create_array("target", shape=(1,), chunks=(366,), dtype=str, dimension_names=["target"])[0] = "11-20"
    old = group.create_array(
        "quantiles",
        shape=(1, *expected.shape),
        chunks=(1, 1, *expected.shape[1:]),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=["target", "lead_time", "channel", "quantile", "lat", "lon"],
    )
    old[0] = expected
    group.attrs["targets"] = {"11-20": {"window_days": 5, "samples": n, "inits": []}}
    clim = load_mclimate(archive, TARGET)
    np.testing.assert_array_equal(clim.isel(lead_time=3, lat=slice(30, 33)).values, expected[3, :, :, 30:])
    with pytest.raises(ValueError, match=r"remove .*mclimate and build the M-climate again for \['11-20'\]"):
        build_mclimate(archive, hindcasts, TARGET, window_days=5, min_samples=10)
    np.testing.assert_array_equal(load_mclimate(archive, TARGET).values, expected)  # left as it was


def test_efi_and_sot_per_tile_equal_the_whole_lead(hindcasts, tmp_path):
    archive = str(tmp_path / "archive.zarr")
    build_mclimate(archive, hindcasts, TARGET, window_days=5, min_samples=10, tile_rows=7)
    climate = load_mclimate(archive, TARGET).isel(lead_time=2)
    rng = np.random.default_rng(5)
    lat, lon = grid(33, 64)
    x = rng.normal(21.0, 4.0, (10, 3, 33, 64)).astype(np.float32)
    x[:, 2] = np.maximum(np.round(x[:, 2]), 0.0)
    x[3, 1, 10, 10] = np.nan  # a NaN member is dropped at that point
    members = xr.DataArray(
        x, dims=("member", "channel", "lat", "lon"), coords={"channel": CHANNELS, "lat": lat, "lon": lon}
    )
    whole = climate.load()
    expected = {
        "efi": efi(whole, members).transpose("channel", "lat", "lon").values,
        "sot90": sot(whole, members, percentile=90).transpose("channel", "lat", "lon").values,
    }
    assert np.isfinite(expected["efi"]).mean() > 0.9 and np.nanmax(np.abs(expected["efi"])) > 0.5
    for rows in (None, 5, 33):  # the climate's own 7-row chunks; 33 = 6 x 5 + 3; one tile
        for source in (climate, whole):
            result = {name: (values, attrs) for name, values, attrs in extremes_by_tile(source, members, rows)}
            for name, want in expected.items():
                np.testing.assert_array_equal(result[name][0], want, err_msg=f"{name} rows={rows}")
            assert result["efi"][1]["long_name"] == "Extreme Forecast Index"


def test_memory_is_one_lead_tile_not_the_pool(tmp_path):
    """16 members over 4 hindcast inits, 3 leads, 3 channels at 1° (181 x 360): the peak of
    the build must stay below a few tiles' quantiles, less than one lead of the pooled
    members (let alone every lead's, which the build before held with its float64 copy and
    the quantiles of every lead)."""
    nlat, nlon, leads, rows = 181, 360, (0, 6, 12), 4
    stores = [  # 4 hindcast inits x 4 members (two perturbation pairs) in two stores
        write_hindcasts(tmp_path / "a.zarr", ["2001-11-18T00", "2001-11-22T00"], nlat, nlon, leads, 2, seed=6),
        write_hindcasts(tmp_path / "b.zarr", ["2002-11-19T00", "2002-11-21T00"], nlat, nlon, leads, 2, seed=7),
    ]
    archive = str(tmp_path / "archive.zarr")
    channels = len(CHANNELS)
    tile_quantiles = len(LEVELS) * channels * rows * nlon * 8  # one lead-tile's quantiles in float64: 3.5 MB
    one_lead_of_members = 16 * channels * nlat * nlon * 4  # 12.5 MB
    bound = 3 * tile_quantiles
    assert bound < one_lead_of_members
    tracemalloc.start()
    try:
        build_mclimate(archive, stores, TARGET, window_days=5, min_samples=16, tile_rows=rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < bound, f"peak {peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB"
    clim = load_mclimate(archive, TARGET)
    assert clim.attrs["samples"] == 16
    # spot check: a few rows of one lead against np.quantile of the pooled members there
    pooled = np.concatenate([ForecastStore.open(s).group["fields"][:, :, 1, :, 90:95] for s in stores])
    pooled = pooled.reshape(-1, channels, 5, nlon)
    want = np.moveaxis(np.quantile(pooled.astype(np.float64), LEVELS, axis=0).astype(np.float32), 0, 1)
    np.testing.assert_array_equal(clim.isel(lead_time=1, lat=slice(90, 95)).values, want)


@pytest.mark.parametrize("n", [1, 2, 3, 16, 129])
def test_pooled_quantiles_are_numpys_bit_for_bit(n):
    """One sort per point and numpy's interpolation formula: the same float64 values as
    np.quantile (linear; equal as numbers: a zero may differ in sign), for pools too small to
    have every order statistic, with ties (rounded values, as dry precipitation) and NaN (the
    whole point NaN, as numpy)."""
    rng = np.random.default_rng(n)
    x = rng.normal(0.0, 3.0, (n, 4, 7, 9)).astype(np.float32)
    x[:, 1] = np.maximum(np.round(x[:, 1]), 0.0)  # ties and a floor of zeros
    x[:, 2, 0, 0] = 5.0  # the whole pool one value
    x[n // 2, 3, 2, 2] = np.nan
    x[:, 3, 4, 4] = np.inf if n > 1 else x[:, 3, 4, 4]
    got = pooled_quantiles(x)
    with np.errstate(invalid="ignore"):
        want = np.quantile(x.astype(np.float64), LEVELS, axis=0)
    assert got.shape == want.shape == (101, 4, 7, 9) and got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[:, 3, 2, 2]).all() and np.isfinite(got[:, 3, 3, 3]).all()


def test_local_preads_equal_byte_ranges_and_zarrs_selection(tmp_path):
    """The three ways rows are read (pread on a local store, byte-range gets through the
    store, zarr's own decoding) give the same values; a chunk never written reads as NaN
    (the fill value); a truncated chunk file is an error naming it."""
    path = write_hindcasts(tmp_path / "h.zarr", ["2001-11-18T00", "2001-11-22T00"], 17, 12, seed=4)
    fields = zarr.open_group(path, mode="r")["fields"]
    root = _local_root(fields)
    assert root == Path(path) / "fields"
    members = np.arange(fields.shape[1])
    gone = root / fields.metadata.encode_chunk_key((1, 2, 3, 0, 0, 0))
    gone.unlink()  # member 2 of init 1 at lead 3: never written
    for init, lead, rows in ((0, 1, slice(0, 17)), (1, 3, slice(5, 13)), (1, 0, slice(16, 17))):
        want = np.asarray(fields.get_orthogonal_selection((init, members, lead, slice(None), rows)), np.float32)
        a, b, _ = rows.indices(17)
        keys = [fields.metadata.encode_chunk_key((init, int(m), lead, 0, 0, 0)) for m in members]
        starts = [((c * 17 + a) * 12) * 4 for c in range(len(CHANNELS))]
        size = (b - a) * 12 * 4
        local, ranged = np.full_like(want, np.nan), np.full_like(want, np.nan)
        _read_local_rows(root, keys, starts, size, np.dtype("<f4"), local)
        _read_ranged_rows(fields, keys, starts, size, np.dtype("<f4"), ranged)
        np.testing.assert_array_equal(local, want)
        np.testing.assert_array_equal(ranged, want)
        np.testing.assert_array_equal(_read_rows(fields, init, members, lead, rows), want)
    assert np.isnan(_read_rows(fields, 1, members, 3, slice(0, 17))[2]).all()
    damaged = root / fields.metadata.encode_chunk_key((0, 1, 2, 0, 0, 0))
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(OSError, match=f"{re.escape(str(damaged))}.*a damaged chunk"):
        _read_rows(fields, 0, members, 2, slice(8, 17))
