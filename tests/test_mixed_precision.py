"""`mixed_float16`: fit, evaluate, `.keras` round trip and export in both modes.

Under the policy the stages compute in float16 with float32 variables, and `compile` wraps the
optimizer in Keras' `LossScaleOptimizer` (the step scales the loss by its factor before the
pullbacks, the optimizer unscales the update, and skips overflowing steps). Tolerance against
float32: a float16 mantissa has 11 bits (relative rounding ~5e-4 per operation), so a few chained
layers and the loss reduction give ~1e-2 relative differences on a step's update; the checks use
``rtol=5e-2`` (measured here: at most 1.7e-3 of each variable's largest update).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from tests.test_exactness import dense_stages
from tests.test_model import motion_task

MODES = ["sideways", "backprop"]
NUM_FRAMES = 6


@pytest.fixture
def mixed_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


def classifier(mode: str) -> SidewaysModel:
    keras.utils.set_random_seed(2)
    model = SidewaysModel(dense_stages(3, 3, seed=2), mode=mode)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def one_step_update(mode: str) -> tuple[list[np.ndarray], SidewaysModel]:
    clips, labels = motion_task(8, NUM_FRAMES, seed=4)
    model = classifier(mode)
    model.build(clips.shape)
    before = [np.array(w) for w in model.trainable_weights]
    model.fit(clips, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return [np.array(w) - b for w, b in zip(model.trainable_weights, before, strict=True)], model


@pytest.mark.parametrize("mode", MODES)
def test_a_mixed_precision_update_is_the_float32_update_within_float16_tolerance(mode):
    float32_update, _ = one_step_update(mode)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed_update, model = one_step_update(mode)
    finally:
        keras.config.set_dtype_policy(previous)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    assert model.stages[0].compute_dtype == "float16"
    # The first step applied (a skipped overflowing step would leave the update at zero).
    assert int(model.optimizer.iterations.numpy()) == 1
    for mixed, exact in zip(mixed_update, float32_update, strict=True):
        assert np.all(np.isfinite(mixed))
        np.testing.assert_allclose(mixed, exact, rtol=5e-2, atol=5e-2 * np.abs(exact).max())


@pytest.mark.parametrize("mode", MODES)
def test_fit_evaluate_save_and_export_under_mixed_float16(mode, mixed_policy, tmp_path):
    clips, labels = motion_task(32, NUM_FRAMES, seed=4)
    model = classifier(mode)
    history = model.fit(clips, labels, batch_size=8, epochs=2, shuffle=False, verbose=0,
                        validation_data=(clips, labels))
    for key in ("loss", "val_loss"):
        assert np.all(np.isfinite(history.history[key])), history.history
    results = model.evaluate(clips, labels, verbose=0, return_dict=True)
    assert np.isfinite(results["loss"])
    predictions = model.predict(clips, verbose=0)
    assert predictions.dtype == np.float16 and np.all(np.isfinite(predictions))

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.dtype_policy.name == "mixed_float16"
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    np.testing.assert_array_equal(loaded.predict(clips, verbose=0), predictions)
    continued = loaded.fit(clips, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(continued.history["loss"][0])

    model.export(tmp_path / "served")
    served = tf.saved_model.load(str(tmp_path / "served"))
    output = served.signatures["serving_default"](clips=tf.constant(clips))["output"]
    np.testing.assert_allclose(np.asarray(output, "float32"), predictions.astype("float32"),
                               rtol=1e-3, atol=1e-3)
    state = served.signatures["stream_init"](batch_size=tf.constant(len(clips)))
    step = served.signatures["stream_step"](frame=tf.constant(clips[:, 0]), **state)
    assert np.all(np.isfinite(np.asarray(step["output"], "float32")))
