"""Installable (issue #12): a regular, non-editable install carries its default configs, and the
installed `forecast` command runs world, ingest, train, run and diagnose on their defaults from
a directory outside the source tree.

The install is `pip install --no-deps --no-build-isolation --target SITE` of a copy of the
project (an in-tree build would write build/ and *.egg-info into the checkout, and a stale
build/lib could slip deleted files into the wheel). The dependencies come from the running
environment, which may hold an editable install of a checkout: a sitecustomize.py ahead of
SITE removes the editable finders and every other path that holds the packages, so a module or
config missing from the install fails the test instead of being found in a source tree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("forecast", "flows")

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys

    site = os.environ["FORECAST_INSTALLED_SITE"]

    def _editable(obj):
        return str(getattr(obj, "__module__", "")).startswith("__editable__")

    def _elsewhere(entry):
        path = os.path.abspath(entry or ".")
        return path != site and any(os.path.isdir(os.path.join(path, p)) for p in {packages!r})

    sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
    sys.path[:] = [p for p in sys.path if not p.startswith("__editable__") and not _elsewhere(p)]
    sys.path_importer_cache.clear()
    """
).format(packages=PACKAGES)

PROBE = """
import json, sys
import flows, forecast
from forecast import config
from forecast.cli import build_parser

sub = build_parser()._subparsers._group_actions[0].choices
defaults = {name: sub[name].get_default("config") for name in ("world", "train", "run", "diagnose", "demo")}
print(json.dumps({
    "forecast": forecast.__file__,
    "flows": flows.__file__,
    "config_dir": str(config.CONFIG_DIR),
    "shipped": config.shipped_configs(),
    "by_name": str(config.config_path("train-demo.yaml")),
    "defaults": defaults,
    "editable_finders": [repr(f) for f in sys.meta_path if "editable" in repr(f)],
}))
"""

MAINS = "import json, sys\nfrom forecast.cli import main\nprint([main(['-q', *a]) for a in json.loads(sys.argv[1])])"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(directory of the non-editable install, the environment that uses only it)."""
    root = tmp_path_factory.mktemp("install")
    src, site, isolate = root / "src", root / "site", root / "isolate"
    src.mkdir()
    for p in ROOT.iterdir():  # pyproject.toml, README.md (the readme), ... and the packages
        if p.is_file() and not p.is_symlink():
            shutil.copy2(p, src / p.name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, src],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    isolate.mkdir()
    (isolate / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        **os.environ,
        "PYTHONPATH": f"{isolate}{os.pathsep}{site}",
        "FORECAST_INSTALLED_SITE": str(site),
        "JAX_PLATFORMS": "cpu",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return site, env


def _run(argv: list, env: dict, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd)
    if ok:
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
def test_installed_cli_runs_the_chain_on_its_shipped_configs(installed, tmp_path):
    from forecast.archive import Archive
    from forecast.config import CONFIG_DIR, load
    from forecast.diagnostics.scores_store import open_scores
    from forecast.ensemble.engine import RunSettings
    from forecast.ensemble.store import ForecastStore, open_forecast
    from forecast.model import load_package
    from forecast.training.loop import TrainConfig

    site, env = installed
    shipped = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    assert {"world.yaml", "train.yaml", "train-demo.yaml", "ensemble.yaml", "diagnose.yaml"} <= set(shipped)
    assert sorted(p.name for p in (site / "forecast" / "configs").glob("*.yaml")) == shipped  # all of them
    for name in shipped:  # the same files
        assert (site / "forecast" / "configs" / name).read_bytes() == (CONFIG_DIR / name).read_bytes()

    # the installed package, and only it, is what runs; its configs are its own
    probe = json.loads(_run([sys.executable, "-c", PROBE], env, tmp_path).stdout)
    installed_configs = site / "forecast" / "configs"
    assert probe["forecast"] == str(site / "forecast" / "__init__.py")
    assert probe["flows"] == str(site / "flows" / "__init__.py")
    assert probe["editable_finders"] == []
    assert probe["config_dir"] == str(installed_configs) and probe["shipped"] == shipped
    assert probe["by_name"] == str(installed_configs / "train-demo.yaml")
    assert probe["defaults"] == {c: str(installed_configs / f"{c}.yaml") for c in ("world", "train", "demo")} | {
        "run": str(installed_configs / "ensemble.yaml"),
        "diagnose": str(installed_configs / "diagnose.yaml"),
    }
    cli = site / "bin" / "forecast"
    help_text = "".join(_run([cli, "world", "--help"], env, tmp_path).stdout.split())  # unwrapped
    assert f"(default:{installed_configs / 'world.yaml'})" in help_text

    # the chain, with the defaults (only its length shortened by options) from outside the tree
    work = tmp_path / "work"
    work.mkdir()
    _run([cli, "-q", "world", "--out", "world", "--months", "1"], env, work)
    _run([cli, "-q", "ingest", "world", "--archive", "archive.zarr"], env, work)
    archive = Archive.open(str(work / "archive.zarr"))
    assert archive.attrs["contract"] == "forecast-archive/1" and len(archive.times) == 124
    assert str(archive.times[0])[:13] == "2000-01-01T00"  # world.yaml: start_year 2000, seed 0
    train = [cli, "-q", "train", "--archive", "archive.zarr", "--device", "cpu"]
    demo = ["--config", "train-demo.yaml"]  # a shipped config by its name, whose pretrain is another
    # The default train.yaml is train-mse.yaml's two stages at full size (its --config default is
    # checked above). Here: the demo's MSE config by its name, and two stages as the demo's
    # train-demo.yaml but with a 2-batch, 2-step CRPS stage (its full 16-step stage on this
    # archive cost about a minute; `make demo` trains it): a config outside the tree whose first
    # stage, `pretrain: train-demo-mse.yaml`, is found by its name among the installed configs.
    two_stage = yaml.safe_load((installed_configs / "train-demo.yaml").read_text())
    assert two_stage["pretrain"] == "train-demo-mse.yaml"
    two_stage |= {"finetune_rollout_steps": 2, "finetune_max_batches": 2, "skill_inits": 4}
    (work / "two-stage.yaml").write_text(yaml.safe_dump(two_stage))
    _run([*train, "--seed", "0", "--out", "pkg0", "--config", "train-demo-mse.yaml"], env, work)
    _run([*train, "--seed", "1", "--out", "pkg1", "--config", "two-stage.yaml"], env, work)
    for pkg, config in (
        ("pkg0", CONFIG_DIR / "train-demo-mse.yaml"),
        ("pkg1", work / "two-stage.yaml"),
        ("pkg1/.pretrain", CONFIG_DIR / "train-demo-mse.yaml"),
    ):
        cfg = load(TrainConfig, config)
        model, meta = load_package(work / pkg, channels=archive.channels, time_step_hours=6)
        assert meta["architecture"]["embed_dim"] == cfg.model.embed_dim and meta["seed"] == int(pkg[3])
        recorded = meta["training"]["config"]
        assert (recorded["epochs"], recorded["max_batches_per_epoch"]) == (cfg.epochs, cfg.max_batches_per_epoch)
        assert recorded["finetune_max_batches"] == cfg.finetune_max_batches  # two-stage.yaml's 2 for pkg1
        assert (recorded["loss"], recorded["pretrain"]) == (cfg.loss, cfg.pretrain)
        assert (work / pkg / "skill.json").is_file()
    run = ["run", "--archive", "archive.zarr", "--packages", "pkg0", "pkg1", "--init-time", "2000-01-20T00"]
    _run([cli, "-q", *run, "--perturbations", "2", "--lead-hours", "24", "--out", "fc.zarr", "--device", "cpu"],
         env, work)  # fmt: skip
    store = ForecastStore.open(str(work / "fc.zarr"))
    settings = RunSettings.from_dict(store.run["settings"])
    expected = dataclasses.replace(load(RunSettings, CONFIG_DIR / "ensemble.yaml"), perturbations=2, lead_hours=24)
    assert settings == dataclasses.replace(expected, block_size=settings.block_size)  # ensemble.yaml's otherwise
    assert store.complete(0).all() and list(store.lead_hours) == [0, 6, 12, 18, 24]
    forecast = open_forecast(str(work / "fc.zarr"))
    assert forecast.attrs["contract"] == "forecast-store/1" and forecast.sizes["member"] == 2 * 2 * 2
    _run([cli, "-q", "diagnose", "--store", "fc.zarr", "--archive", "archive.zarr", "--out", "scores.zarr",
          "--plots", "plots"], env, work)  # fmt: skip
    scores = open_scores(str(work / "scores.zarr"))
    assert scores.attrs["contract"] == "scores-store/1" and scores.attrs["scored_init_times"] == ["2000-01-20T00"]
    assert scores.attrs["verified_leads"]["2000-01-20T00"] == [0, 6, 12, 18, 24]
    assert bool(scores["crps"].notnull().all())
    assert (work / "plots" / "plume_z500.png").is_file()  # diagnose.yaml: z500 among the plotted channels

    # the files the command line read are the installed ones: break them there, and it says so
    for name in ("world.yaml", "train-demo.yaml", "ensemble.yaml", "diagnose.yaml"):
        with open(installed_configs / name, "a") as f:
            f.write("installed_copy: true\n")
    checks = [
        ["world", "--out", "w2"],
        ["train", "--archive", "archive.zarr", "--seed", "2", "--out", "pkg2", *demo],
        [*run, "--out", "fc2.zarr"],
        ["diagnose", "--store", "fc.zarr", "--archive", "archive.zarr", "--out", "s2.zarr"],
    ]
    done = _run([sys.executable, "-c", MAINS, json.dumps(checks)], env, work)
    assert done.stdout.strip().splitlines()[-1] == "[2, 2, 2, 2]", done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, done.stderr
    for error, name in zip(errors, ("world.yaml", "train-demo.yaml", "ensemble.yaml", "diagnose.yaml"), strict=True):
        assert error.startswith(f"error: {installed_configs / name}") and "installed_copy" in error, error
    assert not any((work / p).exists() for p in ("w2", "pkg2", "fc2.zarr", "s2.zarr"))
