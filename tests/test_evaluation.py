"""One objective in `fit` and `evaluate`: ``val_loss`` is the training objective (the mean per-frame
loss on the exact forward), and clip-level scores of the pooled outputs are ``clip_metrics``."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_sideways import SidewaysModel
from tests.test_exactness import dense_stages
from tests.test_model import motion_task

NUM_FRAMES = 7


def classifier(mode: str, learning_rate: float = 0.0, pool: str | None = "mean",
               **compile_kwargs) -> SidewaysModel:
    keras.utils.set_random_seed(5)
    model = SidewaysModel(dense_stages(3, 3, seed=5), mode=mode, pool=pool)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], **compile_kwargs)
    return model


def per_frame_outputs(model: SidewaysModel, clips: np.ndarray) -> np.ndarray:
    """Every frame through the stages, one frame at a time: (B, T, classes)."""
    frames = []
    for t in range(clips.shape[1]):
        x = clips[:, t]
        for stage in model.stages:
            x = stage(x)
        frames.append(np.asarray(x))
    return np.stack(frames, 1)


def cross_entropy(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]


@pytest.mark.parametrize("pool", ["mean", None])
def test_backprop_with_zero_learning_rate_logs_loss_equal_to_val_loss(pool):
    clips, labels = motion_task(16, NUM_FRAMES, seed=2)
    targets = labels if pool == "mean" else np.repeat(labels[:, None], NUM_FRAMES, 1)
    logs = {}
    for mode in ("backprop", "sideways"):
        model = classifier(mode, pool=pool)
        history = model.fit(clips, targets, batch_size=8, epochs=1, shuffle=False, verbose=0,
                            validation_data=(clips, targets))
        logs[mode] = {key: values[0] for key, values in history.history.items()}
    backprop, sideways = logs["backprop"], logs["sideways"]
    np.testing.assert_allclose(backprop["val_loss"], backprop["loss"], rtol=1e-6)
    np.testing.assert_allclose(backprop["val_accuracy"], backprop["accuracy"], rtol=1e-6)
    # Same weights, same exact forward, same objective: Sideways' val_loss is that number too.
    np.testing.assert_allclose(sideways["val_loss"], backprop["loss"], rtol=1e-6)
    np.testing.assert_allclose(sideways["val_accuracy"], backprop["accuracy"], rtol=1e-6)
    # And it is the mean per-frame cross-entropy over all T frames, not that of pooled logits.
    model = classifier("backprop", pool=pool)
    model.build(clips.shape)
    frames = per_frame_outputs(model, clips)
    per_frame = cross_entropy(np.repeat(labels[:, None], NUM_FRAMES, 1), frames).mean()
    pooled = cross_entropy(labels, frames.mean(1)).mean()
    np.testing.assert_allclose(backprop["val_loss"], per_frame, rtol=1e-5)
    assert abs(pooled - per_frame) > 1e-3 * per_frame  # the two really differ on this data


def test_val_loss_includes_regularization_like_loss():
    clips, labels = motion_task(8, NUM_FRAMES, seed=2)
    keras.utils.set_random_seed(5)
    stages = dense_stages(3, 3, seed=5)
    stages[0].kernel_regularizer = keras.regularizers.L2(0.1)
    model = SidewaysModel(stages, mode="backprop")
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(clips, labels, batch_size=8, epochs=1, verbose=0,
                        validation_data=(clips, labels))
    np.testing.assert_allclose(history.history["val_loss"], history.history["loss"], rtol=1e-6)


def test_per_clip_sample_weights_weigh_val_loss_as_they_weigh_loss():
    clips, labels = motion_task(8, NUM_FRAMES, seed=2)
    weights = np.linspace(0.0, 2.0, 8).astype("float32")
    model = classifier("backprop")
    history = model.fit(clips, labels, sample_weight=weights, batch_size=8, epochs=1, verbose=0,
                        validation_data=(clips, labels, weights))
    np.testing.assert_allclose(history.history["val_loss"], history.history["loss"], rtol=1e-6)
    unweighted = model.evaluate(clips, labels, verbose=0, return_dict=True)["loss"]
    assert abs(unweighted - history.history["loss"][0]) > 1e-4


def test_clip_metrics_score_the_pooled_outputs_that_predict_returns():
    clips, labels = motion_task(48, NUM_FRAMES, seed=1)
    # Some training, so that the accuracies differ.
    model = classifier("sideways", learning_rate=0.5,
                       clip_metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(2)])
    history = model.fit(clips, labels, batch_size=16, epochs=3, shuffle=False, verbose=0,
                        validation_data=(clips, labels))
    assert "clip_accuracy" not in history.history  # training has no pooled outputs
    assert {"val_clip_accuracy", "val_clip_sparse_top_k_categorical_accuracy"} <= set(
        history.history)
    results = model.evaluate(clips, labels, verbose=0, return_dict=True)
    logits = model.predict(clips, verbose=0)
    np.testing.assert_allclose(results["clip_accuracy"],
                               np.mean(logits.argmax(-1) == labels), rtol=1e-6)
    frames = per_frame_outputs(model, clips)
    np.testing.assert_allclose(results["accuracy"],
                               np.mean(frames.argmax(-1) == labels[:, None]), rtol=1e-6)
    assert results["clip_accuracy"] != results["accuracy"]
    np.testing.assert_allclose(history.history["val_clip_accuracy"][-1],
                               results["clip_accuracy"])
    # The list form of `evaluate` carries each value once.
    assert len(model.evaluate(clips, labels, verbose=0)) == len(results) == 4


def test_clip_metrics_survive_a_keras_round_trip(tmp_path):
    clips, labels = motion_task(8, NUM_FRAMES, seed=1)
    model = classifier("sideways", clip_metrics=["accuracy"])
    model.fit(clips, labels, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.evaluate(clips, labels, verbose=0, return_dict=True) == pytest.approx(
        model.evaluate(clips, labels, verbose=0, return_dict=True))


def test_clip_metrics_need_pooled_outputs():
    with pytest.raises(ValueError, match="pool=None, whose outputs are per frame"):
        classifier("sideways", pool=None, clip_metrics=["accuracy"])
