"""The whole chain at 0.25° (721 × 1440, ERA5's grid) on a small synthetic data set in the
CDS-2024 layout: ingest → train (a tiny model) → run with online scores → M-climate →
diagnose. Everything that works at 5.625° must work unchanged here; the test asserts the
contracts and values (ingested values equal the source, online scores equal the offline
diagnosis of the same members, the M-climate equals numpy's quantiles of the pooled members),
not timings."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from synthetic import six_hourly, write_cds

from forecast.archive import Archive
from forecast.diagnostics.mclimate import build_mclimate, load_mclimate
from forecast.diagnostics.online_scores import hindcast_scores
from forecast.diagnostics.scores_store import open_scores
from forecast.diagnostics.verify import diagnose
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.store import ForecastStore, open_forecast
from forecast.ingest import ingest
from forecast.model import ModelConfig
from forecast.training.loop import TrainConfig, train

NLAT, NLON = 721, 1440
INIT = "2020-01-02T00"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("quarter")
    # 5 days of z500 and t500: two channels and two output leads keep the M-climate's 101
    # quantiles per point at 1.7 GB of disk (8.8 GB per lead at 21 channels)
    source = write_cds(
        d / "era5_2020.nc", six_hourly("2020-01-01T00", 21), nlat=NLAT, nlon=NLON, levels=(500.0,), drop=("msl",)
    )
    archive = str(d / "archive.zarr")
    ingest([source], archive, progress=False)
    cfg = TrainConfig(
        model=ModelConfig(embed_dim=8, num_layers=1, scale_factor=4),
        epochs=1,
        finetune_epochs=0,
        batch_size=1,
        max_batches_per_epoch=2,
        warmup_steps=1,
        skill_inits=1,
        train_start="2020-01-01T00",
        train_end="2020-01-02T00",
        valid_start="2020-01-02T06",
        valid_end="2020-01-05T12",
    )
    package = str(d / "tiny")
    train(archive, package, seed=0, cfg=cfg, device="cpu")
    settings = RunSettings(perturbations=1, lead_hours=24, output_leads=(0, 24), block_size=2, score=True)
    hindcasts = str(d / "hindcast.zarr")
    for init in ("2020-01-03T00", "2020-01-04T00"):
        run_ensemble(
            archive, [package], init, hindcasts, settings, device="cpu", progress=False, scores=hindcast_scores
        )
    build_mclimate(archive, [hindcasts], INIT, window_days=3, min_samples=4)
    forecast = str(d / "forecast.zarr")
    # two blocks of one pair: the statistics of each lead go through the store's state
    two_blocks = RunSettings(perturbations=2, lead_hours=24, output_leads=(0, 24), block_size=2, score=True)
    summary = run_ensemble(
        archive, [package], INIT, forecast, two_blocks, device="cpu", progress=False, scores=hindcast_scores
    )
    scores = str(d / "scores.zarr")
    diagnose(forecast, archive, scores, progress=False)
    return {"dir": d, "source": source, "archive": archive, "package": package, "hindcasts": hindcasts,
            "forecast": forecast, "scores": scores, "summary": summary}  # fmt: skip


@pytest.mark.slow
def test_ingest_keeps_the_quarter_degree_grid_and_values(chain):
    a = Archive.open(chain["archive"])
    assert (len(a.grid.lat), len(a.grid.lon)) == (NLAT, NLON)
    assert a.grid.lat[0] == 90.0 and a.grid.lat[-1] == -90.0
    with xr.open_dataset(chain["source"]) as src:
        expect = src["t"].sel(pressure_level=500.0).isel(valid_time=7).values
    got = np.asarray(a.fields[7, a.channels.index("t500")])
    assert np.array_equal(got, expect)
    assert sorted(a.channels) == ["t500", "z500"]


@pytest.mark.slow
def test_the_run_is_complete_and_scored_online_as_offline(chain):
    assert chain["summary"]["statistics_complete"] and chain["summary"]["blocks_run"] == 2
    fs = ForecastStore.open(chain["forecast"])
    assert fs.complete(0).all() and fs.group["fields"].shape == (1, 4, 2, 2, NLAT, NLON)
    online, offline = open_forecast(chain["forecast"]), open_scores(chain["scores"])
    members = online.fields.isel(init_time=0).values  # (member, lead, channel, lat, lon)
    mean = members.astype(np.float64).mean(0)
    stored = online.ensemble_mean.isel(init_time=0).values  # float32 of the float64 mean
    assert np.allclose(stored, mean, rtol=1e-6, atol=0)
    for name in ("crps", "rank_histogram", "outlier_fraction", "member_mean_spectrum"):
        a, b = online[name].isel(init_time=0).values, offline[name].isel(init_time=0).values
        assert np.allclose(a, b, rtol=1e-10, atol=0, equal_nan=True), name
    # the EFI from the M-climate of the two hindcasts, online (per tile, weighted sums) and offline
    a, b = online.efi.isel(init_time=0).values, offline.efi.isel(init_time=0).values
    assert np.isfinite(a).mean() > 0.99
    assert np.allclose(a, b, rtol=0, atol=1e-10, equal_nan=True)
    # nothing of the run's transient state is left: no per-lead state, no CRPS scratch
    assert not list((chain["dir"]).glob("forecast.zarr.crps-scratch-*"))
    assert not list(fs.group["online"].array_keys())


@pytest.mark.slow
def test_the_m_climate_is_the_quantiles_of_the_pooled_hindcast_members(chain):
    climate = load_mclimate(chain["archive"], INIT)
    hind = open_forecast(chain["hindcasts"])
    pooled = hind.fields.values.reshape(-1, *hind.fields.shape[2:])  # (init x member, lead, channel, lat, lon)
    for lat, lon in ((0, 0), (360, 719), (720, 1439), (123, 456)):
        expect = np.quantile(pooled[:, :, :, lat, lon].astype(np.float64), np.linspace(0, 1, 101), axis=0)
        got = np.asarray(climate.isel(lat=lat, lon=lon).values)  # (lead, channel, quantile)
        assert np.allclose(got, np.moveaxis(expect, 0, -1).astype(np.float32), rtol=0, atol=0), (lat, lon)
