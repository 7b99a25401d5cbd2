"""skill.json: RMSE per channel and lead, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forecast.archive import open_archive
from forecast.grid import cell_area_weights
from forecast.model import ModelConfig
from forecast.training.data import model_from_archive
from forecast.training.skill import climatology_map, score


@pytest.fixture(scope="module")
def archive(small_archive_40):
    return small_archive_40


def test_climatology_map_is_the_time_mean(archive):
    ds = open_archive(archive)
    clim = climatology_map(archive, "2020-01-02T00", "2020-01-04T18")
    np.testing.assert_allclose(clim, ds.fields.values[4:16].mean(axis=0), rtol=1e-6)


def test_a_zero_update_model_scores_exactly_as_persistence(archive):
    model, _ = model_from_archive(archive, ModelConfig(embed_dim=8, num_layers=1))
    for p in model.net.decoder.parameters():
        torch.nn.init.zeros_(p)
    ds = open_archive(archive)
    clim = climatology_map(archive, None, "2020-01-05T18")
    skill = score(model, archive, "2020-01-06T00", None, clim, max_inits=4, batch_size=3)
    assert skill["inits"] == 4 and set(skill["rmse"]["z500"]) == {"24", "48", "72"}
    for c in model.channels:
        for lead in ("24", "48", "72"):
            assert skill["rmse"][c][lead] == pytest.approx(skill["persistence"][c][lead], rel=1e-6)
    # Independent persistence RMSE of msl at 48 h over the same initial times.
    x = ds.fields.sel(channel="msl").values.astype(np.float64)
    starts = np.unique(np.linspace(20, 40 - 1 - 12, 4).round().astype(int))
    w = cell_area_weights(ds.lat.values)[:, None] * np.ones(16)
    err2 = [(((x[s] - x[s + 8]) ** 2) * w).sum() / w.sum() for s in starts]
    assert skill["persistence"]["msl"]["48"] == pytest.approx(np.sqrt(np.mean(err2)), rel=1e-6)
    err2 = [(((clim[list(ds.channel.values).index("msl")] - x[s + 12]) ** 2) * w).sum() / w.sum() for s in starts]
    assert skill["climatology"]["msl"]["72"] == pytest.approx(np.sqrt(np.mean(err2)), rel=1e-5)
