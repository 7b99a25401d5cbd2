"""The ensemble engine on the world archive with two small checkpoints: the store contract,
online statistics against the stored members, batch invariance, subsets, statistics-only
runs, refusal to mix runs, kill/resume and regeneration."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_per_channel, tree_digest

import forecast
from forecast.archive import Archive
from forecast.ensemble.engine import RunSettings, run_ensemble
from forecast.ensemble.members import Layout
from forecast.ensemble.store import ForecastStore, StoreError, open_forecast

INIT = "2001-11-01T00"
ROOT = str(Path(__file__).resolve().parents[1])


def _run(world_archive, packages, out, low_memory=False, **settings):
    base = {"perturbations": 3, "lead_hours": 48, "block_size": 4, "thresholds": {"t2m": (280.0, 290.0)}}
    settings = RunSettings(**{**base, **settings})
    return run_ensemble(world_archive, packages, INIT, str(out), settings, progress=False, low_memory=low_memory)


@pytest.fixture(scope="module")
def reference(world_archive, world_packages, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "ref.zarr"
    summary = _run(world_archive, world_packages, out)
    return out, summary


def test_store_matches_the_contract(reference, world_archive, world_packages):
    out, summary = reference
    assert summary["members"] == 12 and summary["blocks_run"] == 4 and summary["statistics_complete"]
    ds = open_forecast(str(out))
    assert ds.fields.dims == ("init_time", "member", "lead_time", "channel", "lat", "lon")
    assert ds.fields.shape == (1, 12, 9, 21, 33, 64)
    assert str(ds.init_time.values[0])[:13] == INIT
    assert list(ds.lead_time.values) == list(range(0, 49, 6))
    names = [Path(p).name for p in world_packages]
    coords = Layout(tuple(names), 3).coords()
    for name in ("checkpoint", "perturbation", "sign"):
        assert list(ds[name].values) == list(coords[name])
    assert ds.complete.values.all()
    fields = ds.fields.values
    assert np.isfinite(fields).all()
    # lead 0: the analysis plus and minus each perturbation (centred pairs)
    analysis = np.asarray(
        Archive.open(world_archive).fields[np.searchsorted(Archive.open(world_archive).times, np.datetime64(INIT, "h"))]
    )
    plus, minus = fields[0, 0::2, 0], fields[0, 1::2, 0]
    clipped = (plus == 0) | (minus == 0)
    centre = (plus + minus) / 2
    assert np.allclose(centre[~clipped], np.broadcast_to(analysis, centre.shape)[~clipped], rtol=1e-6, atol=1e-3)
    assert not np.allclose(plus, minus)
    # checkpoints are different models: their members diverge
    assert not np.allclose(fields[0, 0, -1], fields[0, 6, -1])


def test_online_statistics_equal_those_of_the_stored_members(reference):
    out, _ = reference
    ds = open_forecast(str(out))
    x = ds.fields.values[0].astype(np.float64)  # (member, lead, channel, lat, lon)
    assert np.allclose(ds.ensemble_mean.values[0], x.mean(0), rtol=1e-6, atol=1e-6 * np.abs(x).max())
    assert np.allclose(ds.ensemble_variance.values[0], x.var(0, ddof=1), rtol=1e-4, atol=1e-4 * x.var(0).max())
    assert np.array_equal(ds.ensemble_min.values[0], x.min(0).astype(np.float32))
    assert np.array_equal(ds.ensemble_max.values[0], x.max(0).astype(np.float32))
    t2m = x[:, :, list(ds.channel.values).index("t2m")]
    assert list(ds.threshold.values) == ["t2m>280", "t2m>290"]
    assert np.array_equal(ds.exceedance_count.values[0, :, 0], (t2m > 280).sum(0))
    assert np.array_equal(ds.exceedance_count.values[0, :, 1], (t2m > 290).sum(0))
    assert (ds.member_count.values == 12).all()


def test_low_memory_takes_turns_and_gives_the_same_store(reference, world_archive, world_packages, tmp_path):
    """`low_memory`: the statistics run between the model's steps instead of beside them; every
    member, statistic and count is the same, bit for bit."""
    out, _ = reference
    _run(world_archive, world_packages, tmp_path / "low.zarr", low_memory=True)
    ref, low = ForecastStore.open(str(out)).group, ForecastStore.open(str(tmp_path / "low.zarr")).group
    for name in ("fields", "ensemble_mean", "ensemble_variance", "ensemble_min", "ensemble_max", "exceedance_count"):
        assert np.array_equal(ref[name][:], low[name][:]), name


def test_a_member_does_not_depend_on_batch_size_or_order(reference, world_archive, world_packages, tmp_path):
    out, _ = reference
    ref = ForecastStore.open(str(out)).group["fields"][:]
    # blocks of one pair, run in reverse order
    reverse = list(range(2 * 3 * 2 // 2))[::-1]
    run_ensemble(
        world_archive,
        world_packages,
        INIT,
        str(tmp_path / "pairs.zarr"),
        RunSettings(perturbations=3, lead_hours=48, block_size=2, thresholds={"t2m": (280.0, 290.0)}),
        progress=False,
        blocks=reverse,
    )
    pairs = ForecastStore.open(str(tmp_path / "pairs.zarr")).group["fields"][:]
    assert_close_per_channel(pairs, ref, 1e-5, channel_axis=3)  # (init, member, lead, channel, lat, lon)


def test_output_subset_and_crop_are_cut_from_the_same_members(reference, world_archive, world_packages, tmp_path):
    out, _ = reference
    full = open_forecast(str(out))
    _run(
        world_archive,
        world_packages,
        tmp_path / "cut.zarr",
        channels=("z500", "t2m"),
        crop=(20.0, 70.0, 350.0, 30.0),  # crosses the prime meridian
        output_leads=(0, 24, 48),
        thresholds={},
    )
    cut = open_forecast(str(tmp_path / "cut.zarr"))
    assert list(cut.channel.values) == ["z500", "t2m"] and list(cut.lead_time.values) == [0, 24, 48]
    assert float(cut.lat.min()) >= 20 and float(cut.lat.max()) <= 70
    lon = cut.lon.values
    assert ((lon >= 350) | (lon <= 30)).all() and len(lon) == len(full.lon.values[(full.lon >= 350) | (full.lon <= 30)])
    expect = full.fields.sel(channel=["z500", "t2m"], lead_time=[0, 24, 48], lat=cut.lat, lon=cut.lon)
    assert np.array_equal(cut.fields.values, expect.values)
    assert "exceedance_count" not in cut


def test_statistics_only_runs_use_disk_independent_of_the_member_count(
    reference, world_archive, world_packages, tmp_path
):
    out, _ = reference
    sizes = {}
    for k in (1, 3):
        path = tmp_path / f"stats{k}.zarr"
        _run(world_archive, world_packages, path, perturbations=k, store_members=False)
        sizes[k] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        ds = open_forecast(str(path))
        assert "fields" not in ds and "member" not in ds.dims and int(ds.member_count.values[0, 0]) == 4 * k
    # the same bytes but for the run record's digits (16 or 12 members in the attributes)
    assert abs(sizes[1] - sizes[3]) < 64, sizes
    # the statistics do not need the members stored: bit-identical to the run that stored them
    ref, alone = open_forecast(str(out)), open_forecast(str(tmp_path / "stats3.zarr"))
    for name in ("ensemble_mean", "ensemble_variance", "ensemble_min", "ensemble_max", "exceedance_count"):
        assert np.array_equal(ref[name].values, alone[name].values), name


def test_a_rerun_with_other_settings_is_refused(reference, world_archive, world_packages):
    out, _ = reference
    with pytest.raises(StoreError, match="different run"):
        _run(world_archive, world_packages, out, base_seed=1)
    again = _run(world_archive, world_packages, out)  # the same run: nothing left to do
    assert again["blocks_run"] == 0


def test_a_scored_run_needs_its_score_accumulators_given_and_writes_nothing_without(
    world_archive, world_packages, tmp_path
):
    out = tmp_path / "scored.zarr"
    with pytest.raises(ValueError, match="hindcast_scores"):
        run_ensemble(world_archive, world_packages, "2001-11-11T00", str(out), RunSettings(score=True), progress=False)
    assert not out.exists()


LOWER_LAYERS = ("ensemble", "model", "training", "world", "ingest", "archive.py")
HIGHER_LAYERS = ("forecast.diagnostics", "forecast.calibration", "forecast.report", "forecast.cli", "flows")


def test_lower_layers_never_import_higher_ones():
    # an import inside a function counts too: the scores reach the engine injected (ScoreFactory)
    root = Path(forecast.__file__).parent
    files = [root / n for n in LOWER_LAYERS if n.endswith(".py")]
    files += [f for n in LOWER_LAYERS if not n.endswith(".py") for f in (root / n).rglob("*.py")]
    assert len(files) > 20
    found = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{f.relative_to(root)}: {n}" for n in names if n.startswith(HIGHER_LAYERS)]
    assert found == []


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "forecast.cli", "-q", *args]


def _at_write(store: Path, key: str, *args: str) -> list[str]:
    """The real `forecast` command line under tests/kill_at_write.py's hook on `store`."""
    return [sys.executable, str(Path(__file__).parent / "kill_at_write.py"), "--store", str(store), "--key", key, *args]


def _temp_files(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if ".partial" in p.name)


def test_a_run_killed_mid_chunk_write_resumes_only_missing_blocks_and_leaves_nothing_stray(
    world_archive, world_packages, tmp_path
):
    # The subprocess computes with this process's thread count: rounding depends on it.
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    args = ["run", "--archive", world_archive, "--packages", *world_packages, "--init-time", INIT]
    args += ["--perturbations", "4", "--lead-hours", "48", "--block-size", "2", "--device", "cpu"]
    args += ["--threshold", "t2m>285"]
    leads, blocks = 9, 8  # 16 members in blocks of one +- pair, 18 member chunks each
    killed = tmp_path / "killed.zarr"
    # SIGKILL in the middle of block 2's 9th chunk write: its temporary file half written,
    # not renamed; blocks 0 and 1 are written and marked complete before it
    cut = tmp_path / "cut-short.txt"
    proc = subprocess.run(
        _at_write(killed, "fields/c/*", "--nth", str(2 * 2 * leads + leads), "--ready", str(cut), "--", "-q", *args)
        + ["--out", str(killed)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    member = int(cut.read_text().split("/")[3])
    assert member in (4, 5)
    # zarr writes a block's member chunks of one lead concurrently: the cut chunk's temporary
    # file is there, and its pair member's too when that write had begun as the process died
    key = cut.read_text()
    stray = _temp_files(killed)
    assert any(s.startswith(key + ".") for s in stray), stray
    lead = key.split("/")[4]
    assert all(s.split("/")[3] in ("4", "5") and s.split("/")[4] == lead for s in stray), stray
    complete = ForecastStore.open(str(killed)).group["complete"][:]
    np.testing.assert_array_equal(complete[0], [1] * 4 + [0] * 12)
    assert "ensemble_mean" not in ForecastStore.open(str(killed)).group

    # the rerun (the real CLI; the hook only records) writes exactly the missing blocks' chunks
    written = tmp_path / "written.txt"
    resumed = subprocess.run(
        _at_write(killed, "fields/c/*", "--record", str(written), "--", "-q", *args) + ["--out", str(killed)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    keys = written.read_text().split()
    assert sorted(keys) == sorted(f"fields/c/0/{m}/{k}/0/0/0" for m in range(4, 2 * blocks) for k in range(leads))
    clean = tmp_path / "clean.zarr"
    subprocess.run(_cli(*args, "--out", str(clean)), env=env, check=True, capture_output=True)
    stray = _temp_files(killed)
    a, b = tree_digest(killed), tree_digest(clean)
    assert a.keys() - set(stray) == b.keys()  # every object of the clean run, and no other
    differ = [k for k in b if a[k] != b[k]]
    assert not differ, differ[:5]

    # regenerate: members recomputed from the store's record equal the stored ones bit for bit
    regen = subprocess.run(
        _cli("regenerate", "--store", str(killed), "--member", "0", str(member)),
        env=env,
        capture_output=True,
        text=True,
    )
    assert regen.returncode == 0, regen.stdout + regen.stderr
    assert regen.stdout.count("identical to the stored one") == 2
    assert not stray, f"{killed}: the killed writes' temporary files are still there: {stray}"
