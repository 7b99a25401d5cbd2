"""The time step comes from the data (issue #12): a 12-hourly archive of real ERA5 values (and
a 3-hourly synthetic one) trains, scores, breeds and runs at its own step, with the zenith
angle of every model call at the time it stands for; a package refuses an archive of another
step, and an ingest refused for its step says which --time-step would fit."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from synthetic import write_cds
from torch_harmonics.examples.models.sfno import SphericalFourierNeuralOperator

from forecast.archive import Archive, from_hours, open_archive
from forecast.cli import main
from forecast.grid import cell_area_weights
from forecast.ingest import IngestError, ingest
from forecast.ingest.pipeline import fitting_steps
from forecast.model import ForecastModel, ModelConfig, PackageError, load_package
from forecast.training.loop import TrainConfig, train
from forecast.training.skill import lead_steps

GRIB = "cfgrib/era5-levels-members.grib"
TINY = ModelConfig(embed_dim=8, num_layers=1)
T0 = np.datetime64("2017-01-01T00", "h")


def _era5_members(real_data) -> xr.Dataset:
    return xr.open_dataset(real_data / GRIB, engine="cfgrib", backend_kwargs={"indexpath": ""})


def _cds_file(path, src: xr.Dataset, members, times) -> str:
    """The real values of `members` (each its 4 times, one member after the other) in the 2024
    CDS NetCDF layout at `times`: real fields, a longer series than the GRIB holds."""
    sel = src.sel(number=list(members))

    def series(name):
        v = sel[name].transpose("number", "time", "isobaricInhPa", "latitude", "longitude").values
        return v.reshape(-1, *v.shape[2:])[: len(times)].astype(np.float32)

    dims = ("valid_time", "pressure_level", "latitude", "longitude")
    xr.Dataset(
        {
            "z": (dims, series("z"), {"units": "m**2 s**-2", "standard_name": "geopotential"}),
            "t": (dims, series("t"), {"units": "K"}),
        },
        coords={
            "valid_time": np.asarray(times, "datetime64[ns]"),
            "pressure_level": ("pressure_level", sel.isobaricInhPa.values, {"units": "hPa"}),
            "latitude": ("latitude", sel.latitude.values, {"units": "degrees_north"}),
            "longitude": ("longitude", sel.longitude.values, {"units": "degrees_east"}),
        },
    ).to_netcdf(path)
    return str(path)


def _noaa_cos_zenith(when: np.datetime64, lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """Cosine of the solar zenith angle from NOAA's general solar position formulae (fractional
    year, equation of time, Spencer's declination series): an independent reference."""
    t = dt.datetime.fromisoformat(str(np.datetime64(when, "m")))
    doy = t.timetuple().tm_yday
    gamma = 2 * np.pi / 365 * (doy - 1 + (t.hour - 12) / 24)
    eqtime = 229.18 * (
        0.000075 + 0.001868 * np.cos(gamma) - 0.032077 * np.sin(gamma)
        - 0.014615 * np.cos(2 * gamma) - 0.040849 * np.sin(2 * gamma)
    )  # fmt: skip
    decl = (
        0.006918 - 0.399912 * np.cos(gamma) + 0.070257 * np.sin(gamma) - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma) - 0.002697 * np.cos(3 * gamma) + 0.00148 * np.sin(3 * gamma)
    )  # fmt: skip
    solar_minutes = t.hour * 60 + t.minute + eqtime + 4 * lon_deg[None, :]
    hour_angle = np.deg2rad(solar_minutes / 4 - 180)
    lat = np.deg2rad(lat_deg)[:, None]
    return np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)


@contextlib.contextmanager
def model_calls():
    """Observe every `ForecastModel` call: (time_hours of its input, the zenith-angle input
    channel its network received), in call order. Nothing is replaced."""
    calls: list[list] = []

    def hook(module, args):
        if isinstance(module, ForecastModel):
            calls.append([args[1].detach().cpu().to(torch.float64).numpy(), None])
        elif isinstance(module, SphericalFourierNeuralOperator) and calls and calls[-1][1] is None:
            calls[-1][1] = args[0][:, -1].detach().cpu().float().numpy()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _check_zenith(calls, lat, lon, step_hours: int, first, last) -> set:
    """Every call's input time lies on the archive's step within its span, and the zenith
    angle the network saw is the reference one at that time. Returns the times."""
    seen = set()
    for hours, zenith in calls:
        assert zenith is not None and zenith.shape[0] == len(hours)
        for i, h in enumerate(hours):
            assert h == int(h) and int(h) % step_hours == 0, f"a model call at {h} h: not on the {step_hours}-h step"
            when = from_hours(np.asarray([int(h)]))[0]
            assert first <= when <= last, when
            reference = _noaa_cos_zenith(when, lat, lon)
            err = np.abs(zenith[i] - reference)
            assert err.max() < 0.06 and err.mean() < 0.02, (when, err.max())
            seen.add(when)
    return seen


@pytest.fixture(scope="module")
def era5_12h(real_data, tmp_path_factory):
    """The real 12-hourly ERA5 GRIB (member 0) ingested with `--time-step 12`, then appended
    with members 1..9 as the following 36 twelve-hourly steps: 40 steps of real fields."""
    d = tmp_path_factory.mktemp("era5-12h")
    archive = str(d / "a.zarr")
    assert main(["-q", "ingest", str(real_data / GRIB), "--archive", archive, "--time-step", "12"]) == 0
    times = T0 + np.timedelta64(48, "h") + np.arange(36) * np.timedelta64(12, "h")
    ingest([_cds_file(d / "more.nc", _era5_members(real_data), range(1, 10), times)], archive, progress=False)
    return archive


CFG12 = TrainConfig(
    model=TINY,
    epochs=1,
    finetune_epochs=1,
    finetune_rollout_steps=2,
    batch_size=4,
    max_batches_per_epoch=2,
    warmup_steps=1,
    train_end="2017-01-13T12",
    valid_start="2017-01-14T00",
    skill_inits=4,
)


@pytest.fixture(scope="module")
def trained_12h(era5_12h, tmp_path_factory):
    """A tiny checkpoint trained on the 12-hourly archive, with every model call observed."""
    out = tmp_path_factory.mktemp("pkg12") / "ckpt"
    with model_calls() as calls:
        train(era5_12h, out, seed=0, cfg=CFG12, device="cpu")
    return str(out), calls


def test_the_12_hourly_archive_holds_real_values_at_its_step(era5_12h, real_data):
    a = Archive.open(era5_12h)
    assert a.time_step_hours == 12 and a.committed == 40 and a.statistics_are_current()
    assert np.all(np.diff(a.times) == np.timedelta64(12, "h")) and a.times[0] == T0
    assert a.attrs["statistics"]["diff_hours"] == 12
    src = _era5_members(real_data)
    t850 = a.channels.index("t850")
    # step 5 is member 1's second time; step 2 is the GRIB's own member 0 at 2017-01-02T00
    np.testing.assert_allclose(a.fields[5, t850], src.t.sel(number=1, isobaricInhPa=850).isel(time=1).values, rtol=1e-6)
    np.testing.assert_allclose(
        a.fields[2, t850], src.t.sel(number=0, isobaricInhPa=850, time="2017-01-02T00").values, rtol=1e-6
    )


def test_training_steps_12_hours_with_the_zenith_angle_of_each_step(trained_12h, era5_12h):
    pkg, calls = trained_12h
    a = Archive.open(era5_12h)
    config = json.loads(Path(pkg, "config.json").read_text())
    assert config["time_step_hours"] == 12
    assert config["training"]["config"]["finetune_rollout_steps"] == 2
    # Training, its 2-step fine-tuning, validation, the skill rollouts (6 steps to 72 h) and the
    # 15-day stability rollout (30 steps): every call is at an archive time, zenith included.
    seen = _check_zenith(calls, a.grid.lat, a.grid.lon, 12, a.times[0], a.times[-1])
    assert len(seen) > 30
    # the skill rollouts: 6 consecutive calls 12 h apart from the same initial times
    hours = [c[0] for c in calls]
    runs = [
        i for i in range(len(hours) - 5)
        if all(len(hours[i + k]) == len(hours[i]) and np.all(hours[i + k] == hours[i] + 12 * k) for k in range(6))
    ]  # fmt: skip
    assert runs, "no 6-step rollout 12 h per step"


def test_skill_json_leads_are_whole_12_hour_steps(trained_12h, era5_12h):
    pkg, _ = trained_12h
    skill = json.loads(Path(pkg, "skill.json").read_text())
    assert skill["step_hours"] == 12 and skill["inits"] == 4
    assert set(skill["rmse"]["z500"]) == {"24", "48", "72"}
    assert skill["rollout_15d"]["finite"] and skill["rollout_15d"]["days"] == 15
    ds = open_archive(era5_12h)
    x = ds.fields.values.astype(np.float64)
    lat = ds.lat.values
    w = cell_area_weights(lat)[:, None] * np.ones(len(ds.lon))
    channels = list(ds.channel.values)
    # the skill inits: 4 spread over the 8 windows of 6 steps starting 2017-01-14T00 (step 26)
    starts = np.unique(np.linspace(26, 33, 4).round().astype(int))

    def rmse(err):  # (init, lat, lon)
        return np.sqrt(np.mean([((e**2) * w).sum() / w.sum() for e in err]))

    j = channels.index("t850")
    for lead, k in ((24, 2), (48, 4), (72, 6)):
        assert skill["persistence"]["t850"][str(lead)] == pytest.approx(rmse(x[starts, j] - x[starts + k, j]), rel=1e-6)
    # the model's own 24-h RMSE: two steps of 12 h from each init, run here independently
    model, _ = load_package(pkg, time_step_hours=12)
    hours = (starts * 12 + int(T0.astype(np.int64))).astype(np.float64)
    with torch.no_grad():
        state = torch.from_numpy(x[starts].astype(np.float32))
        for k in range(2):
            state = model(state, torch.from_numpy(hours + 12 * k))
    got = state.numpy().astype(np.float64)
    for c in ("z500", "t850"):
        j = channels.index(c)
        assert skill["rmse"][c]["24"] == pytest.approx(rmse(got[:, j] - x[starts + 2, j]), rel=1e-5)


def test_the_engine_breeds_and_runs_at_12_hours(trained_12h, era5_12h, tmp_path):
    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.ensemble.store import ForecastStore

    pkg, _ = trained_12h
    a = Archive.open(era5_12h)
    init = np.datetime64("2017-01-18T00", "h")
    settings = RunSettings(perturbations=1, perturbation="bred", lead_hours=24, block_size=2)
    out = tmp_path / "fc.zarr"
    with model_calls() as calls:
        run_ensemble(era5_12h, [pkg], str(init), str(out), settings, device="cpu", progress=False)
    store = ForecastStore.open(str(out))
    assert store.lead_hours.tolist() == [0, 12, 24]
    assert store.run["step_hours"] == 12
    # Breeding: 3 cycles from t - 36 h (control and perturbed states), then the forecast steps.
    seen = _check_zenith(calls, a.grid.lat, a.grid.lon, 12, a.times[0], a.times[-1])
    expected = {init + np.timedelta64(h, "h") for h in (-36, -24, -12, 0, 12)}
    assert seen == expected
    # The stored 24-h members are two 12-hour steps of the package from the stored lead 0.
    members = np.stack([store.read_member(0, m) for m in range(2)])  # (member, lead, channel, lat, lon)
    model, _ = load_package(pkg, time_step_hours=12)
    h0 = float(init.astype(np.int64))
    with torch.no_grad():
        state = torch.from_numpy(members[:, 0])
        for k in range(2):
            state = model(state, torch.full((2,), h0 + 12 * k, dtype=torch.float64))
    np.testing.assert_allclose(members[:, 2], state.numpy(), rtol=1e-5, atol=1e-3)
    assert not np.allclose(members[0, 0], members[1, 0])  # a ± pair, not two copies


def test_a_12_hour_package_refuses_a_6_hourly_archive(trained_12h, real_data, tmp_path):
    from forecast.ensemble.engine import RunSettings, run_ensemble
    from forecast.training.data import load_for_archive

    pkg, _ = trained_12h
    six = str(tmp_path / "six.zarr")
    times = T0 + np.arange(8) * np.timedelta64(6, "h")
    ingest([_cds_file(tmp_path / "six.nc", _era5_members(real_data), (0, 1), times)], six, progress=False)
    assert Archive.open(six).time_step_hours == 6
    with pytest.raises(PackageError, match="package steps 12 h, the data are every 6 h"):
        load_for_archive(pkg, six)
    settings = RunSettings(perturbations=1, perturbation="noise", lead_hours=12)
    with pytest.raises(PackageError, match="package steps 12 h, the data are every 6 h"):
        run_ensemble(six, [pkg], "2017-01-02T12", str(tmp_path / "fc.zarr"), settings, device="cpu", progress=False)
    assert not (tmp_path / "fc.zarr").exists()


def test_a_3_hourly_archive_trains_and_scores_at_3_hours(tmp_path):
    times = np.datetime64("2020-01-01T00", "h") + np.arange(48) * np.timedelta64(3, "h")
    archive = str(tmp_path / "a3.zarr")
    ingest([write_cds(tmp_path / "a.nc", times, nlat=9, nlon=16)], archive, time_step_hours=3, progress=False)
    a = Archive.open(archive)
    cfg = TrainConfig(
        model=TINY, epochs=1, finetune_epochs=0, batch_size=4, max_batches_per_epoch=2, warmup_steps=1,
        train_end="2020-01-03T09", valid_start="2020-01-03T12", skill_inits=3,
    )  # fmt: skip
    with model_calls() as calls:
        train(archive, tmp_path / "p", seed=1, cfg=cfg, device="cpu")
    _check_zenith(calls, a.grid.lat, a.grid.lon, 3, a.times[0], a.times[-1])
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    skill = json.loads((tmp_path / "p" / "skill.json").read_text())
    assert config["time_step_hours"] == 3 and skill["step_hours"] == 3
    assert skill["rollout_15d"]["skipped"]  # 15 days of 3-hour steps do not fit in 6 days
    # 72 h = 24 steps: the 3 windows starting 2020-01-03T12 (step 20) .. step 23
    x = open_archive(archive).fields.sel(channel="msl").values.astype(np.float64)
    w = cell_area_weights(a.grid.lat)[:, None] * np.ones(16)
    starts = np.array([20, 22, 23])  # spread(4, 3)
    for lead in (24, 48, 72):
        err2 = [(((x[s] - x[s + lead // 3]) ** 2) * w).sum() / w.sum() for s in starts]
        assert skill["persistence"]["msl"][str(lead)] == pytest.approx(np.sqrt(np.mean(err2)), rel=1e-6)


def test_a_step_the_skill_leads_do_not_fit_is_refused_before_training(small_archive_40, tmp_path):
    assert lead_steps((24, 48, 72), 12) == {24: 2, 48: 4, 72: 6}
    assert lead_steps((24, 48, 72), 3) == {24: 8, 48: 16, 72: 24}
    with pytest.raises(ValueError, match=r"whole multiples of the 9-hour time step \(not \[24, 48\]\)"):
        lead_steps((24, 48, 72), 9)
    a = Archive.open(small_archive_40)
    nine = str(tmp_path / "nine.zarr")
    Archive.create(nine, a.grid, a.channels, 9)
    with pytest.raises(ValueError, match="9-hour time step"):
        train(nine, tmp_path / "p", seed=0, cfg=TrainConfig(model=TINY), device="cpu")
    assert not (tmp_path / "p").exists()
    with pytest.raises(IngestError, match=r"time step 9 h: it must divide 24 h"):
        ingest([write_cds(tmp_path / "x.nc", T0 + np.arange(4) * np.timedelta64(9, "h"))], tmp_path / "n.zarr",
               time_step_hours=9, progress=False)  # fmt: skip


def test_an_ingest_refused_for_its_step_names_the_step_that_fits(real_data, tmp_path, capsys):
    grib = str(real_data / GRIB)
    assert main(["-q", "ingest", grib, "--archive", str(tmp_path / "a.zarr")]) == 2
    err = capsys.readouterr().err
    assert "expected every 6 h" in err and "these times are every 12 h: pass --time-step 12" in err
    assert not (tmp_path / "a.zarr").exists()
    # into an existing 6-hourly archive: its step stays; a new archive would fit
    six = tmp_path / "six.zarr"
    ingest([_cds_file(tmp_path / "six.nc", _era5_members(real_data), (0,), T0 + np.arange(4) * np.timedelta64(6, "h"))],
           six, progress=False)  # fmt: skip
    later = T0 + np.timedelta64(24, "h") + np.arange(4) * np.timedelta64(12, "h")
    with pytest.raises(IngestError, match="this archive steps 6 h and keeps that step: .* --time-step 12"):
        ingest([_cds_file(tmp_path / "later.nc", _era5_members(real_data), (1,), later)], six, progress=False)
    # times that no step fits (steps 0, 3, 6, 9 and 48 h of a forecast) say so
    with pytest.raises(IngestError, match="no time step of 1, 2, 3, 4, 6, 8, 12, 24 h makes these times gap-free"):
        ingest([real_data / "earthkit-data" / "t_time_series.grib"], tmp_path / "b.zarr", progress=False)


def test_fitting_steps():
    three = np.datetime64("2020-01-01T00", "h") + np.arange(16) * np.timedelta64(3, "h")
    assert fitting_steps(three) == [3, 6, 12, 24]
    assert fitting_steps(three[:4] + np.timedelta64(3, "h")) == [3, 6]  # 03..12 UTC: one time for 4, 12 h
    assert fitting_steps(np.delete(three, 5)) == [6, 12, 24]  # 15 UTC missing: 6-hourly still whole
    assert fitting_steps(three[[1, 5, 9]]) == []  # 03, 15 and 03 UTC: 12 h apart, off every 12-h cadence


def test_operations_init_times_follow_the_archive_step():
    from flows.daily import check_init_time, resolve_init_time
    from flows.hindcast import init_times

    scheduled = dt.datetime(2026, 11, 26, 20, 30, tzinfo=dt.UTC)
    assert resolve_init_time(scheduled, 12, 6, step_hours=12) == "2026-11-26T12"
    assert resolve_init_time(scheduled, 6, 4, step_hours=3) == "2026-11-26T12"
    with pytest.raises(ValueError, match="cycle_hours 6 is not a multiple of the archive's 12-hour time step"):
        resolve_init_time(scheduled, 6, 4, step_hours=12)
    assert check_init_time("2026-11-26T12", 12) == "2026-11-26T12"
    with pytest.raises(ValueError, match=r"not on the archive's 12-hour time step: its analyses are at 00, 12 UTC"):
        check_init_time("2026-11-26T06", 12)
    assert init_times("2017-01-01T00", "2017-01-02T00", 12, step_hours=12) == [
        "2017-01-01T00", "2017-01-01T12", "2017-01-02T00"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="every_hours 18 is not a multiple of the archive's 12-hour time step"):
        init_times("2017-01-01T00", "2017-01-03T00", 18, step_hours=12)
    with pytest.raises(ValueError, match="init time 2017-01-01T03 is not on the archive's 6-hour time step"):
        init_times("2017-01-01T03", "2017-01-03T00", 24, step_hours=6)
