"""Training windows read lazily from the archive, and a model built from its statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forecast.archive import open_archive
from forecast.model import ModelConfig
from forecast.training.data import ArchiveWindows, model_from_archive


@pytest.fixture(scope="module")
def archive(small_archive_40):
    return small_archive_40


def test_windows_hold_consecutive_archive_steps(archive):
    ds = open_archive(archive)
    w = ArchiveWindows(archive, start="2020-01-02T00", end="2020-01-05T18", rollout_steps=3)
    assert w.starts[0] == 4 and len(w) == 16
    b = w.read(np.array([0, 5]))
    assert b.state.shape == (2, 5, 9, 16) and b.targets.shape == (2, 3, 5, 9, 16)
    np.testing.assert_array_equal(b.state[1].numpy(), ds.fields.values[9])
    np.testing.assert_array_equal(b.targets[1, 2].numpy(), ds.fields.values[12])
    expected_hours = (ds.time.values[[4, 9]] - np.datetime64("1970-01-01")) / np.timedelta64(1, "h")
    np.testing.assert_array_equal(b.time_hours.numpy(), expected_hours)
    # The end of the archive bounds the windows: the last must fit its targets.
    tail = ArchiveWindows(archive, rollout_steps=4)
    assert tail.starts[-1] + 4 == 39


def test_shuffled_batches_are_reproducible_and_split_across_ranks(archive):
    w = ArchiveWindows(archive)
    a = [b.time_hours for b in w.batches(4, seed=3, epoch=1)]
    b = [b.time_hours for b in w.batches(4, seed=3, epoch=1)]
    c = [b.time_hours for b in w.batches(4, seed=3, epoch=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert len(a) == len(w) // 4
    r0, r1 = w.order(3, 1, 0, 2), w.order(3, 1, 1, 2)
    assert len(r0) == len(r1) == len(w) // 2 and not set(r0) & set(r1)


def test_errors_in_the_reader_reach_the_consumer(archive):
    w = ArchiveWindows(archive)
    w.starts = w.starts + 10_000  # beyond the archive: the zarr read returns too few steps
    with pytest.raises(ValueError, match="run past the archive's end"):
        list(w.batches(2))


def test_model_from_archive_uses_its_statistics(archive):
    ds = open_archive(archive)
    model, static = model_from_archive(archive, ModelConfig(embed_dim=8, num_layers=1))
    np.testing.assert_allclose(model.mean.view(-1).numpy(), ds["mean"].values.astype(np.float32))
    np.testing.assert_allclose(model.diff_std.view(-1).numpy(), ds["diff_std"].values.astype(np.float32))
    assert model.channels == list(ds.channel.values) and static.shape == (2, 9, 16)
    x = torch.from_numpy(ds.fields.values[:2])
    y = model(x, torch.zeros(2))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_leaving_early_stops_the_reader_thread(archive):
    import threading

    before = threading.active_count()
    w = ArchiveWindows(archive)
    for i, _ in enumerate(w.batches(2, prefetch=1)):
        if i == 1:
            break
    assert threading.active_count() == before
