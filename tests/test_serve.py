"""`forecast serve` against a real `prefect server start` on 127.0.0.1: the daily deployment is
served, a run is triggered with `prefect deployment run` at a past scheduled time, and it
completes with the init time derived from that scheduled time. Also: prefect.yaml's
deployments point at real flows with parameters those flows take."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, procs=()):
    """Poll until `predicate()`; `timeout` only stops a hang. It is generous (a loaded 2-core
    CI host can take minutes to import and start Prefect): the test asserts that the thing
    happens, not how fast."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{what}: a process exited early with {p.returncode}"
        if predicate():
            return
        time.sleep(1.0)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_prefect_yaml_points_at_real_flows():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert {d["name"] for d in spec["deployments"]} == {"daily", "calibrate", "backfill"}
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d["parameters"]) <= accepted, (d["name"], set(d["parameters"]) - accepted)


def test_served_daily_deployment_runs_from_its_scheduled_time(world_archive, world_packages, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}  # fmt: skip
    (tmp_path / "prefect").mkdir()
    config = tmp_path / "operations.yaml"
    out = tmp_path / "daily"
    config.write_text(
        yaml.safe_dump(
            {
                "archive": world_archive,
                "packages": world_packages,
                "out_dir": str(out),
                "cron": "0 6 * * *",
                "perturbations": 1,
                "lead_hours": 24,
            }
        )
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    serve = None
    try:
        _wait(lambda: _healthy(url), 300, "prefect server start", [server])
        serve = subprocess.Popen(
            [sys.executable, "-m", "forecast.cli", "serve", "--config", str(config)],
            env=env, stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT, cwd=str(ROOT),
        )  # fmt: skip

        def deployed() -> bool:
            r = subprocess.run([sys.executable, "-m", "prefect", "deployment", "ls"], env=env, capture_output=True,
                               text=True)  # fmt: skip
            return "forecast/daily" in r.stdout and "hindcast/backfill" in r.stdout

        _wait(deployed, 300, "forecast serve registers its deployments", [server, serve])
        # the run a 06:00 schedule would have made on 2001-11-21: it must forecast from 00 UTC
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", "forecast/daily", "--start-at",
             "2001-11-21 06:00:00", "--watch", "--watch-timeout", "400"],
            env=env, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Completed" in run.stdout, run.stdout[-3000:]
        report = out / "report-2001-11-21T00.md"
        assert report.is_file() and "| z500 | 1 |" in report.read_text()
        listing = json.loads(
            subprocess.run(
                [sys.executable, "-c", "import json, zarr; g = zarr.open_group(" + repr(str(out / "forecast.zarr"))
                 + ", mode='r'); print(json.dumps(g.attrs['statistics_complete']))"],
                env=env, capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        assert listing == ["2001-11-21T00"]
    finally:
        for p in (serve, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_served_deployments_pass_the_calibration_to_their_flows(tmp_path, monkeypatch):
    """`calibration:` in the operations config reaches both deployments as an absolute path
    (the flows read the file at the start of each run)."""
    from flows.serve import deployments
    from forecast.config import OperationsConfig

    monkeypatch.chdir(tmp_path)
    cfg = OperationsConfig(archive="a.zarr", packages=["p0"], out_dir="daily", calibration="cal.json")
    daily, backfill = deployments(cfg)
    assert daily.parameters["calibration"] == backfill.parameters["calibration"] == str(tmp_path / "cal.json")
    daily, backfill = deployments(OperationsConfig(archive="a.zarr", packages=["p0"], out_dir="daily"))
    assert daily.parameters["calibration"] is None and backfill.parameters["calibration"] is None
