"""Scoring on the world archive: hindcasts build an M-climate in the archive's side store, a
scored run keeps CRPS, ranks, skill, spectra and EFI online, and `diagnose` computes the same
scores offline from the stored members with the public functions: equal to 1e-10."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
import zarr

from forecast.diagnostics import crps, efi
from forecast.diagnostics.mclimate import build_mclimate, hindcast_pool, load_mclimate, side_store_path
from forecast.diagnostics.online_scores import hindcast_scores
from forecast.diagnostics.scores_store import open_scores
from forecast.diagnostics.verify import diagnose, verification
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.store import ForecastStore, open_forecast
from forecast.storage import find_temp_files

INIT = "2001-11-20T00"
HINDCASTS = ("2001-11-17T00", "2001-11-23T00")
SETTINGS = {"perturbations": 3, "lead_hours": 12, "block_size": 2}
ONLINE_EQUALS_OFFLINE = [
    "crps",
    "crps_map",
    "ensemble_mean_rmse",
    "spread_skill_ratio",
    "rank_histogram",
    "outlier_fraction",
    "member_mean_spectrum",
    "ensemble_mean_spectrum",
    "perturbation_spectrum",
    "verification_spectrum",
    "efi",
    "subset_outlier_fraction",
    "subset_best_member_error",
    "subset_missed_extreme_fraction",
    "subset_missed_extreme_count",
    "observed_extreme_count",
    "verification_anomaly_distribution",
    "largest_member_anomaly_distribution",
    "q99_event_weight",
    "q99_other_weight",
    "q99_brier_score",
    "efi_q99_event_weight",
    "efi_q99_other_weight",
]


@pytest.fixture(scope="module")
def scored(world_archive, world_packages, tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    hindcast = str(root / "hindcast.zarr")
    for init in HINDCASTS:
        run_ensemble(world_archive, world_packages, init, hindcast, RunSettings(**SETTINGS), progress=False)
    side = build_mclimate(world_archive, [hindcast], INIT, window_days=5, min_samples=20)
    settings = RunSettings(**SETTINGS, score=True)
    members = str(root / "members.zarr")
    run_ensemble(world_archive, world_packages, INIT, members, settings, progress=False, scores=hindcast_scores)
    stats_only = str(root / "stats.zarr")
    run_ensemble(
        world_archive,
        world_packages,
        INIT,
        stats_only,
        RunSettings(**SETTINGS, score=True, store_members=False),
        progress=False,
        scores=hindcast_scores,
    )
    fewer = str(root / "stats-8.zarr")  # the same, at 8 members instead of 12
    fewer_settings = RunSettings(**{**SETTINGS, "perturbations": 2}, score=True, store_members=False)
    run_ensemble(world_archive, world_packages, INIT, fewer, fewer_settings, progress=False, scores=hindcast_scores)
    scores = str(root / "scores.zarr")
    summary = diagnose(members, world_archive, scores, progress=False)
    yield {
        "hindcast": hindcast,
        "side": side,
        "members": members,
        "stats": stats_only,
        "stats_8": fewer,
        "scores": scores,
        "summary": summary,
    }
    shutil.rmtree(side, ignore_errors=True)  # the archive fixture is shared with other tests


def test_m_climate_pools_the_hindcasts_within_the_window(scored, world_archive):
    assert scored["side"] == side_store_path(world_archive)
    clim = load_mclimate(world_archive, INIT)
    assert clim.attrs["samples"] == 2 * 12  # two hindcast inits x 12 members
    fields = ForecastStore.open(scored["hindcast"]).group["fields"][:]  # (init, member, lead, ...)
    pooled = fields.reshape(-1, *fields.shape[2:])
    expected = np.quantile(pooled.astype(np.float64), np.linspace(0, 1, 101), axis=0).astype(np.float32)
    np.testing.assert_array_equal(clim.values, np.moveaxis(expected, 0, 2))
    assert load_mclimate(world_archive, "2001-06-01T00") is None  # no M-climate for that day
    # the forecast's own date never enters its M-climate, even when a hindcast store holds it
    pool = hindcast_pool([scored["hindcast"], scored["members"]], INIT, window_days=5)
    assert sorted(pool.inits) == ["2001-11-17T00", "2001-11-23T00"] and pool.samples == 24


def test_online_scores_equal_the_offline_diagnosis(scored):
    online = xr.open_zarr(scored["members"], consolidated=False, drop_variables=["online_state"])
    offline = open_scores(scored["scores"])
    assert scored["summary"] == {"2001-11-20T00": 3}  # every lead (0..12 h) verifiable
    for name in ONLINE_EQUALS_OFFLINE:
        a = np.asarray(online[name].values, np.float64)
        b = np.asarray(offline[name].values, np.float64)
        assert a.shape == b.shape, name
        if name in ("ensemble_mean_rmse", "spread_skill_ratio"):
            # lead 0: the ensemble mean is the analysis itself (centred pairs), so its error is
            # float rounding (ratios of 1e8 or inf) and agrees only to rounding
            a, b = a[:, 1:], b[:, 1:]
        assert np.isfinite(b).all(), name
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)
    # the store states each estimator
    assert offline.crps.attrs["crps_estimator"] == "fair"
    assert offline.crps_ensemble.attrs["crps_estimator"] == "ensemble"
    assert (offline.outlier_expected == 2.0 / 13).all()


def test_tails_and_q99_event_scores_are_consistent(scored):
    offline = open_scores(scored["scores"])
    m = offline.attrs["members"]
    # the anomaly distributions are area-weighted fractions: 1 per (init, lead > 0, channel)
    dist = offline.verification_anomaly_distribution.isel(lead_time=slice(1, None)).sum("anomaly")
    np.testing.assert_allclose(dist, 1.0, rtol=1e-12)
    # the q99 event's binned weights cover the whole (verified) globe, and the fair Brier score
    # follows from them alone: sum_k E_k (p_k - 1)^2 + N_k p_k^2 - (E_k + N_k) p_k (1 - p_k) / (m - 1)
    e, n = offline.q99_event_weight, offline.q99_other_weight
    np.testing.assert_allclose((e + n).sum("probability"), 1.0, rtol=1e-10)
    # m <= 100: each non-empty 1 % bin holds one k/m, the nearest to its centre
    pk = np.round(offline.probability * m) / m
    brier = (e * (pk - 1) ** 2 + n * pk**2 - (e + n) * pk * (1 - pk) / (m - 1)).sum("probability")
    np.testing.assert_allclose(brier, offline.q99_brier_score, rtol=1e-9, atol=1e-12)
    assert float(e.sum()) > 0  # the world has events above its M-climate's 99th percentile
    np.testing.assert_allclose((offline.efi_q99_event_weight + offline.efi_q99_other_weight).sum("efi_bin"), 1.0)


def test_the_report_line_says_what_the_largest_ensemble_bought(scored):
    from forecast.diagnostics.plots_extremes import size_summary

    offline = open_scores(scored["scores"]).load()
    channels = ["z500", "t850"]
    line = size_summary(offline, channels, days=0.5)  # the world's run reaches 12 h
    s = offline.sel(lead_time=12, channel=channels).mean("init_time")
    first, last = s.isel(ensemble_size=0), s.isel(ensemble_size=-1)
    fractions = [float(x.subset_outlier_fraction.mean()) for x in (first, last)]
    expected = f"outliers {fractions[0]:.3f} -> {fractions[1]:.3f}"
    assert line.startswith("From 2 to 12 members (+0.5 d, mean over z500, t850)") and expected in line
    bought = -100 * float((1 - last.subset_best_member_error / first.subset_best_member_error).mean())
    assert f"best-member error {bought:+.0f} %" in line and bought < 0  # nested subsets: never worse
    assert "missed q99 extremes" in line


def test_a_statistics_only_run_scores_the_same_without_keeping_members(scored):
    stats = zarr.open_group(scored["stats"], mode="r")
    assert "fields" not in stats
    members = zarr.open_group(scored["members"], mode="r")
    for name in (
        "crps",
        "rank_histogram",
        "efi",
        "member_mean_spectrum",
        "subset_best_member_error",
        "q99_event_weight",
    ):
        np.testing.assert_allclose(stats[name][:], members[name][:], rtol=1e-12, err_msg=name)
    leftovers = [p.name for p in Path(scored["stats"]).parent.iterdir() if "scratch" in p.name]
    assert leftovers == []  # the CRPS scratch members are deleted once the scores are written


def test_a_store_whose_later_init_time_has_no_m_climate_still_opens(scored, world_archive, world_packages, tmp_path):
    """The EFI and q99 arrays are created and grown only by init times with an M-climate: an
    init time without one leaves them shorter than `init_time`. `open_forecast` reads them
    padded with NaN there, and the first init time's values as written."""
    store = str(tmp_path / "mixed.zarr")
    settings = RunSettings(**SETTINGS, score=True, store_members=False)
    without = "2001-06-01T00"
    assert load_mclimate(world_archive, without) is None and load_mclimate(world_archive, INIT) is not None
    for init in (INIT, without):
        run_ensemble(world_archive, world_packages, init, store, settings, progress=False, scores=hindcast_scores)
    raw = zarr.open_group(store, mode="r")
    assert raw["q99_brier_score"].shape[0] == 1 and raw["crps"].shape[0] == 2  # the layout the reader must handle
    ds = open_forecast(store)
    assert ds.sizes["init_time"] == 2
    for name in ("q99_brier_score", "efi", "subset_missed_extreme_count"):
        values = ds[name].values
        assert np.isnan(values[1]).all(), name
        np.testing.assert_array_equal(values[0], raw[name][0], err_msg=name)
    alone = open_forecast(scored["stats"])  # the same init time in a store of its own
    np.testing.assert_array_equal(ds.crps.values[0], alone.crps.values[0])
    np.testing.assert_array_equal(ds.q99_brier_score.values[0], alone.q99_brier_score.values[0])


def _array_shapes(path: str) -> dict[str, dict[str, int]]:
    """{array path: {dim: size}} of every array of a store, its groups' too."""
    out = {}
    for name, array in zarr.open_group(path, mode="r").arrays():
        out[name] = dict(zip(array.metadata.dimension_names, array.shape, strict=True))
    for name, group in zarr.open_group(path, mode="r").groups():
        for sub, array in group.arrays():
            out[f"{name}/{sub}"] = dict(zip(array.metadata.dimension_names or (), array.shape, strict=False))
    return out


def test_a_statistics_only_store_has_the_same_layout_at_any_member_count(scored):
    """No array of a statistics-only scored run grows with the member count (issue #14) but two
    that count something of the members by construction: the ensemble-size curves, one entry
    per nested size (2, 4, ..., m: log2 m of them), and the commit record of the online state,
    one byte per block of members (what a resumed run skips)."""
    many, few = _array_shapes(scored["stats"]), _array_shapes(scored["stats_8"])
    assert many.keys() == few.keys()
    assert {"rank_histogram", "q99_event_weight", "subset_outlier_fraction"} <= many.keys()
    differ = {name: (few[name], many[name]) for name in many if many[name] != few[name]}
    grown = {dim for a, b in differ.values() for dim in a if a[dim] != b[dim]}
    assert grown == {"ensemble_size", "record"}, differ
    assert many["rank_histogram"]["rank"] == few["rank_histogram"]["rank"] == 100
    assert many["online_commit"]["record"] - few["online_commit"]["record"] == 2  # 6 blocks of 2 against 4
    sizes = [zarr.open_group(scored[k], mode="r")["ensemble_size"][:].tolist() for k in ("stats", "stats_8")]
    assert sizes == [[2, 4, 8, 12], [2, 4, 8]]


def test_offline_scores_are_the_public_functions_on_the_stored_members(scored, world_archive):
    store = ForecastStore.open(scored["members"])
    lead = 2
    x = store.group["fields"][0, :, lead]
    lat, lon = store.group["lat"][:], store.group["lon"][:]
    truth = verification(world_archive, store.init_times[:1] + np.timedelta64(12, "h"), store.channels, lat, lon)[0]
    xa = xr.DataArray(x, dims=("member", "channel", "lat", "lon"))
    ya = xr.DataArray(truth, dims=("channel", "lat", "lon"))
    offline = open_scores(scored["scores"])
    np.testing.assert_allclose(offline.crps_map.values[0, lead], crps(xa, ya).values, rtol=1e-13)
    clim = load_mclimate(world_archive, INIT).isel(lead_time=lead).drop_vars(["lat", "lon"])
    np.testing.assert_allclose(offline.efi.values[0, lead], efi(clim, xa).values, rtol=1e-13)
    # a later valid time than the archive holds is not verifiable: NaN, not an error
    late = verification(world_archive, np.array(["2030-01-01T00"], "datetime64[h]"), store.channels, lat, lon)
    assert np.isnan(late).all()


def test_diagnose_cli_resumes_and_refuses_another_source(scored, world_archive, tmp_path, capsys):
    from forecast.cli import main

    out, plots = tmp_path / "cli_scores.zarr", tmp_path / "plots"
    args = ["-q", "diagnose", "--store", scored["members"], "--archive", world_archive, "--out", str(out)]
    assert main([*args, "--plots", str(plots)]) == 0
    np.testing.assert_array_equal(open_scores(str(out)).crps.values, open_scores(scored["scores"]).crps.values)
    expected = {"crps_spread_skill", "rank_histograms", "spectra_z500", "efi_maps", "plume_z500", "reliability_z500"}
    expected |= {"ensemble_size_curves", "tails", "roc_q99"}
    assert expected <= {p.stem for p in plots.glob("*.png")}
    for png in plots.glob("*.png"):
        image = plt.imread(png)
        assert image.shape[0] > 200 and image.shape[1] > 200 and image[..., :3].std() > 0.05, png.name
    capsys.readouterr()
    assert main(args) == 0
    assert "nothing new to score" in capsys.readouterr().out
    other = ["-q", "diagnose", "--store", scored["hindcast"], "--archive", world_archive, "--out", str(out)]
    assert main(other) == 2  # one clear line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hindcast.zarr" in err and "Traceback" not in err


def test_a_diagnose_killed_mid_chunk_write_rescores_and_leaves_nothing_stray(scored, world_archive, tmp_path):
    out, cut = tmp_path / "killed_scores.zarr", tmp_path / "cut-short.txt"
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")]))
    # SIGKILL in the middle of the second CRPS-map chunk (lead 6 h): zarr's temporary file
    # half written, not renamed (tests/kill_at_write.py)
    hook = [sys.executable, str(tests / "kill_at_write.py"), "--store", str(out), "--key", "crps_map/c/*"]
    hook += ["--nth", "2", "--ready", str(cut), "--", "-q", "diagnose", "--store", scored["members"]]
    hook += ["--archive", world_archive, "--out", str(out)]
    proc = subprocess.run(hook, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert len(find_temp_files(out, keys=[cut.read_text()])) == 1
    assert open_scores(str(out)).sizes["init_time"] == 0  # the init time is not counted as scored

    assert diagnose(scored["members"], world_archive, str(out), progress=False) == {"2001-11-20T00": 3}
    again, reference = open_scores(str(out)), open_scores(scored["scores"])
    for name in [*ONLINE_EQUALS_OFFLINE, "crps_ensemble"]:
        np.testing.assert_array_equal(again[name].values, reference[name].values, err_msg=name)
    assert [p for p in out.rglob("*") if ".partial" in p.name] == []


def test_a_scores_store_of_another_layout_is_refused_with_its_name_and_left_as_it_was(tmp_path):
    from forecast.diagnostics.scores_store import ScoresStore

    path = str(tmp_path / "old-layout.zarr")
    args = (np.array(["2001-01-01T00"], "datetime64[h]"), [0, 6], ["z500"], np.zeros(2), np.zeros(3), {"s": 1})
    store = ScoresStore.open_or_create(path, *args)
    store.write("rank_histogram", 0, 0, ("channel", "rank"), np.ones((1, 9)), {})  # m + 1 bins of 8 members
    again = ScoresStore.open_or_create(path, *args)
    with pytest.raises(ValueError, match=r"old-layout\.zarr: array 'rank_histogram' holds \(1, 9\)"):
        again.write("rank_histogram", 0, 1, ("channel", "rank"), np.ones((1, 100)), {})
    kept = zarr.open_group(path, mode="r")["rank_histogram"][:]
    assert kept.shape == (1, 2, 1, 9) and (kept[0, 0] == 1).all() and np.isnan(kept[0, 1]).all()
