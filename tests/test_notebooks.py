"""The notebooks run top to bottom on a small archive (their code cells, executed in order)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from synthetic import six_hourly, write_cds

from forecast.ingest import ingest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str, namespace: dict) -> dict:
    """Every code cell of the notebook, in order, in one namespace (as a kernel runs them)."""
    nb = json.loads((NOTEBOOKS / name).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), name, "exec"), namespace)  # noqa: S102
    return namespace


def test_explore_archive_notebook(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    archive = tmp_path / "archive.zarr"
    src = write_cds(tmp_path / "a.nc", six_hourly("2020-01-01T00", 8), nlat=19, nlon=36)
    ingest([src], archive, progress=False)
    monkeypatch.setenv("FORECAST_ARCHIVE", str(archive))
    monkeypatch.setenv("FORECAST_CHANNEL", "t850")
    monkeypatch.chdir(tmp_path)
    namespace = _run("explore_archive.ipynb", {})
    assert namespace["ds"].sizes["time"] == 8
    assert np.isfinite(namespace["north"].values).all() and len(namespace["north"]) == 8


def test_diagnostics_notebook_on_the_demo_outputs(tiny_demo, monkeypatch, tmp_path):
    matplotlib.use("Agg")
    out, _ = tiny_demo
    monkeypatch.setenv("FORECAST_SCORES", str(out / "forecast" / "scores.zarr"))
    monkeypatch.chdir(tmp_path)
    ns = _run("diagnostics.ipynb", {})
    assert ns["m"] == 8 and np.isfinite(ns["ssr"].values[1:]).all()
    assert ns["identity_error"] < 1e-6 * float(ns["s"].member_mean_spectrum.max())
    assert ns["efi_map"] is not None and np.isfinite(ns["efi_map"].values).all()
    assert abs(float(ns["hist"].sum("rank").sel(channel="z500")) - 33 * 64) < 1e-6  # every point ranked once
    # the ensemble-size curves of the forecast: 2, 4, 8 members, the best member never worse in a larger subset
    assert ns["sizes"].tolist() == [2, 4, 8]
    best = ns["curves"].subset_best_member_error.sel(channel=ns["channels"]).values
    assert np.all(np.diff(best, axis=0) <= 0) and np.all(best > 0)
    assert ns["roc"] is None or np.all((ns["roc"].values >= 0) & (ns["roc"].values <= 1) | np.isnan(ns["roc"].values))


def test_ensemble_notebook_regenerates_a_stored_member(tiny_demo, monkeypatch, tmp_path):
    matplotlib.use("Agg")
    out, _ = tiny_demo
    monkeypatch.setenv("FORECAST_STORE", str(out / "forecast" / "forecast.zarr"))
    monkeypatch.chdir(tmp_path)
    ns = _run("explore_ensemble.ipynb", {})
    assert ns["point"].sizes["member"] == 8 and np.isfinite(ns["point"].values).all()
    assert ns["same"]  # bit for bit
    assert float(ns["spread"].mean()) > 0
