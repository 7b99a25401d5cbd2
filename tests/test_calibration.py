"""`forecast calibrate`: per-channel amplitudes chosen on validation hindcasts, written to a
file that `forecast run` applies, for the packages it was made for only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from forecast.calibration import (
    CALIBRATION_FORMAT,
    CalibrationError,
    _best,
    apply_calibration,
    calibrate,
    keep_per_channel,
    load_calibration,
)
from forecast.cli import main
from forecast.diagnostics.online_scores import hindcast_scores
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.store import ForecastStore, open_forecast

INITS = ["2001-11-10T00", "2001-11-20T00"]  # in the packages' held-out last 10 % (from 2001-10-20)
CANDIDATES = (0.05, 0.3, 2.0)
DAYS = (1, 2)
SETTINGS = RunSettings(perturbations=2, lead_hours=48)


@pytest.fixture(scope="module")
def calibrated(world_archive, world_packages, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration") / "calibration.json"
    result = calibrate(
        world_archive, world_packages, INITS, out, SETTINGS, candidates=CANDIDATES, days=DAYS, progress=False
    )
    return out, result


def test_parabola_in_log_amplitude_finds_the_minimum():
    a = np.asarray([0.1, 0.2, 0.4, 0.8, 1.6])
    cost = (np.log(a) - np.log(0.3)) ** 2  # exactly a parabola in log a, minimum at 0.3
    assert _best(a, cost) == pytest.approx(0.3, rel=1e-9)
    assert _best(a, -np.log(a)) == 1.6  # decreasing to the end of the grid: the end
    assert _best(np.asarray([0.0, 0.1, 0.2]), np.asarray([1.0, 0.5, 0.7])) == 0.1  # no log of 0: the candidate


def test_per_channel_amplitudes_are_kept_only_if_no_channel_does_much_worse():
    common = {"z500": 1.00, "t850": 1.00, "u10m": 1.00}
    kept, worse = keep_per_channel({"z500": 0.97, "t850": 1.005, "u10m": 0.99}, common, tolerance=0.01)
    assert kept and worse == pytest.approx({"z500": -0.03, "t850": 0.005, "u10m": -0.01})
    # a lower mean, but one channel worse by more than the tolerance: refused
    assert not keep_per_channel({"z500": 0.90, "t850": 1.03, "u10m": 0.95}, common, tolerance=0.01)[0]
    assert keep_per_channel({"z500": 0.90, "t850": 1.03, "u10m": 0.95}, common, tolerance=0.05)[0]
    # every channel within the tolerance, but a worse mean: refused
    assert not keep_per_channel({"z500": 1.008, "t850": 1.008, "u10m": 1.0}, common, tolerance=0.01)[0]
    # a channel without a score (NaN) neither keeps nor refuses
    kept, worse = keep_per_channel({"z500": 0.99, "t850": float("nan"), "u10m": 1.0}, common, tolerance=0.01)
    assert kept and np.isnan(worse["t850"])


def test_calibration_file_records_the_choice_and_its_evidence(calibrated, world_packages):
    out, result = calibrated
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result)) and data["format"] == CALIBRATION_FORMAT
    assert not out.with_name(out.name + ".work").exists()  # the hindcasts are removed
    assert not out.with_name(out.name + ".partial").exists()
    channels = list(data["sweep"])
    assert set(data["channel_amplitudes"]) == set(channels) and len(channels) > 4
    for c in channels:
        objective = np.asarray(data["sweep"][c]["objective"])
        assert objective[0] == 1.0  # relative to the smallest candidate
        a = data["channel_amplitudes"][c]
        assert min(CANDIDATES) <= a <= max(CANDIDATES)
        best = int(np.argmin(objective))
        if best in (0, len(CANDIDATES) - 1):  # the CRPS still falling at an end: flagged, widen the grid
            assert c in data["at_grid_edge"], c
        if c in data["at_grid_edge"]:
            assert a in (CANDIDATES[0], CANDIDATES[-1]), c
        # the choice lies between the best candidate's neighbours (the parabola's bracket)
        assert CANDIDATES[max(best - 1, 0)] <= a <= CANDIDATES[min(best + 1, len(CANDIDATES) - 1)], c
        spread = np.asarray(data["sweep"][c]["spread"])
        assert spread[-1] > spread[0], c  # larger perturbations: more spread at days 1-2
    assert sorted(data["packages"]) == sorted(p.split("/")[-1] for p in world_packages)


def test_common_yardstick_is_the_sweeps_best_single_candidate(calibrated):
    """`common` is the sweep's own run at the candidate with the lowest objective averaged
    over the channels: its CRPS and SSR are the sweep's at that candidate, not a run of its own."""
    _, result = calibrated
    sweep = result["sweep"]
    total = np.mean([sweep[c]["objective"] for c in sweep], axis=0)
    best = int(np.argmin(total))
    assert result["common_candidate"] == CANDIDATES[best]
    for c in sweep:
        assert result["common"][c]["crps"] == pytest.approx(sweep[c]["crps"][best], rel=1e-12), c
        assert result["common"][c]["ssr"] == pytest.approx(sweep[c]["ssr"][best], rel=1e-12), c
    # the parabola's common amplitude lies within the best candidate's neighbours
    assert CANDIDATES[max(best - 1, 0)] <= result["amplitude"] <= CANDIDATES[min(best + 1, len(CANDIDATES) - 1)]


def test_sweep_scores_are_those_of_a_plain_run_at_that_amplitude(calibrated, world_archive, world_packages, tmp_path):
    _, result = calibrated
    run = RunSettings(
        perturbations=2, lead_hours=48, output_leads=(24, 48), score=True, store_members=False, amplitude=0.3
    )
    for t in INITS:
        run_ensemble(
            world_archive, world_packages, t, str(tmp_path / "check.zarr"), run, progress=False, scores=hindcast_scores
        )
    crps = open_forecast(str(tmp_path / "check.zarr")).crps
    for c in ("z500", "t2m"):
        assert float(crps.sel(channel=c).mean()) == pytest.approx(result["sweep"][c]["crps"][1], rel=1e-6)


def test_forecast_run_applies_the_calibration(calibrated, world_archive, world_packages, tmp_path):
    out, result = calibrated
    store = tmp_path / "fc.zarr"
    argv = ["-q", "run", "--archive", world_archive, "--packages", *world_packages, "--init-time", INITS[0]]
    argv += ["--perturbations", "2", "--lead-hours", "24", "--calibration", str(out), "--out", str(store)]
    assert main(argv) == 0
    settings = ForecastStore.open(str(store)).run["settings"]
    assert settings["channel_amplitudes"] == result["channel_amplitudes"]
    assert settings["amplitude"] == result["amplitude"]


def test_calibration_is_refused_for_other_packages_or_settings(calibrated, world_packages, tmp_path):
    out, _ = calibrated
    with pytest.raises(CalibrationError, match="made for the packages"):
        load_calibration(out, world_packages[:1])
    other = tmp_path / world_packages[1].split("/")[-1]
    shutil.copytree(world_packages[0], other)  # same name as package 1, package 0's weights
    with pytest.raises(CalibrationError, match="by weights digest"):
        load_calibration(out, [world_packages[0], str(other)])
    with pytest.raises(CalibrationError, match="model_noise"):
        apply_calibration(RunSettings(model_noise=False), out, world_packages)
    with pytest.raises(CalibrationError, match="noise_scale"):
        apply_calibration(RunSettings(noise_scale=0.5), out, world_packages)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CalibrationError, match="not a calibration file"):
        load_calibration(bad)
    bad.write_text("{")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(bad)


def test_calibration_refuses_training_init_times(world_archive, world_packages, tmp_path):
    with pytest.raises(CalibrationError, match="overlaps the training period"):
        calibrate(world_archive, world_packages, ["2001-03-01T00"], tmp_path / "c.json", SETTINGS, days=DAYS)
    assert not (tmp_path / "c.json").exists()


def test_calibrate_command_takes_a_validation_range(world_archive, world_packages, tmp_path, capsys):
    out = tmp_path / "cal.json"
    argv = ["-q", "calibrate", "--archive", world_archive, "--packages", *world_packages, "--out", str(out)]
    assert main([*argv, "--valid-start", "2001-11-10T00"]) == 2  # a range needs both ends
    assert "give --valid-start and --valid-end" in capsys.readouterr().err
    argv += ["--valid-start", "2001-11-10T00", "--valid-end", "2001-11-21T00", "--every-days", "5"]
    argv += ["--perturbations", "1", "--candidates", "0.1", "1.0", "--days", "1"]
    assert main(argv) == 0
    data = load_calibration(out, world_packages)
    assert data["init_times"] == ["2001-11-10T00", "2001-11-15T00", "2001-11-20T00"]
    assert data["settings"]["perturbations"] == 1 and data["lead_days"] == [1]
    assert "common amplitude" in capsys.readouterr().out


def test_calibration_refuses_unknown_channels_before_running(world_archive, world_packages, tmp_path):
    with pytest.raises(CalibrationError, match=r"channels \['z501'\] are not in the run"):
        calibrate(world_archive, world_packages, INITS, tmp_path / "c.json", SETTINGS, days=DAYS, channels=["z501"])
    assert not (tmp_path / "c.json.work").exists()  # refused before any hindcast
