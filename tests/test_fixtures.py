"""Files written by the code at 506fc2d (tests/fixtures) still load and compute the same.

The `.keras` files record the module path ``keras_sideways.model.SidewaysModel`` and the config
keys of that version; a refactor that moves code must keep both. Regenerate the fixtures only for
a deliberate format change (`python -m tests.fixtures.make_fixtures`).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from tests.fixtures.make_fixtures import VARIANTS, observe

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "expected.npz") as stored:
        return dict(stored)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_old_keras_file_loads_and_computes_the_same(name, expected):
    path = FIXTURES / f"{name}.keras"
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert config["module"] == "keras_sideways.model"
    model = keras.models.load_model(path)
    assert type(model) is SidewaysModel
    for option, value in VARIANTS[name].items():
        assert getattr(model, option) == value
    clips, targets = expected[f"{name}/clips"], expected[f"{name}/targets"]
    observed = observe(model, clips, targets, name)
    for key, value in observed.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_old_saved_model_serves_and_streams_the_same(expected):
    loaded = tf.saved_model.load(str(FIXTURES / "windowed_savedmodel"))
    clips = expected["windowed/clips"]
    served = loaded.signatures["serving_default"](clips=tf.constant(clips))["output"]
    np.testing.assert_allclose(served, expected["windowed/predict"], rtol=1e-5, atol=1e-6)
    state = loaded.signatures["stream_init"](batch_size=tf.constant(len(clips)))
    outputs = []
    for t in range(clips.shape[1]):
        step = loaded.signatures["stream_step"](frame=tf.constant(clips[:, t]), **state)
        outputs.append(step.pop("output").numpy())
        step.pop("valid")
        state = step
    np.testing.assert_allclose(np.stack(outputs, 1), expected["windowed/stream"], rtol=1e-5,
                               atol=1e-6)
