"""The notebooks run top to bottom on a small archive (their code cells, executed in order)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from synthetic import six_hourly, write_cds

from forecast.ingest import ingest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_explore_archive_notebook(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    archive = tmp_path / "archive.zarr"
    src = write_cds(tmp_path / "a.nc", six_hourly("2020-01-01T00", 8), nlat=19, nlon=36)
    ingest([src], archive, progress=False)
    monkeypatch.setenv("FORECAST_ARCHIVE", str(archive))
    monkeypatch.setenv("FORECAST_CHANNEL", "t850")
    nb = json.loads((NOTEBOOKS / "explore_archive.ipynb").read_text())
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        exec(compile("".join(cell["source"]), "notebook", "exec"), namespace)  # noqa: S102
    assert namespace["ds"].sizes["time"] == 8
    assert np.isfinite(namespace["north"].values).all() and len(namespace["north"]) == 8
