"""Crash-safe `save` / `save_weights`: the previous file survives a write that does not finish.

A real SIGKILL during `ModelCheckpoint` is in `tests/test_faults.py` (slow); here an exception
stands in for it, in-process."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest

from keras_sideways import SidewaysModel
from tests.test_exactness import dense_stages


def built_model(seed: int) -> SidewaysModel:
    model = SidewaysModel(dense_stages(2, 3, seed=seed))
    model.build((None, 5, 4))
    return model


def test_save_replaces_the_file_and_leaves_nothing_else(tmp_path):
    first, second = built_model(1), built_model(2)
    first.save(tmp_path / "m.keras")
    first.save_weights(tmp_path / "m.weights.h5")
    second.save(tmp_path / "m.keras")
    second.save_weights(tmp_path / "m.weights.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "m.weights.h5"]
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.get_weights()[0], second.get_weights()[0])
    fresh = built_model(3)
    fresh.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(fresh.get_weights()[0], second.get_weights()[0])


def test_a_save_that_fails_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    first, second = built_model(1), built_model(2)
    first.save(tmp_path / "m.keras")

    def fail(self, name, *args, **kwargs):
        raise OSError("disk full")  # while the archive is half written

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail)
    with pytest.raises(OSError, match="disk full"):
        second.save(tmp_path / "m.keras")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.get_weights()[0], first.get_weights()[0])


def test_directories_are_saved_as_in_keras(tmp_path):
    model = built_model(1)
    model.save(tmp_path / "unzipped", zipped=False)
    assert (tmp_path / "unzipped").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["unzipped"]
