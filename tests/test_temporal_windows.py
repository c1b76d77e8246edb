"""Temporal windows: a stage reads the last w outputs of the stage below (causal kernels)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from tests import numpy_reference
from tests.test_exactness import (
    FEATURES,
    HIDDEN,
    assert_tick_losses_are_frame_losses_delayed,
    make_batch,
    max_relative_difference,
)


def windowed_stages(windows: list[int], outputs: int, seed: int = 0) -> list[keras.layers.Layer]:
    """Dense stages; a windowed stage flattens its (B, w, D) window first."""
    initializer = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    stages = []
    for k, window in enumerate(windows):
        top = k == len(windows) - 1
        dense = keras.layers.Dense(
            outputs if top else HIDDEN,
            activation=None if top else "tanh",
            kernel_initializer=initializer,
            bias_initializer=keras.initializers.RandomNormal(stddev=0.2, seed=seed + k),
        )
        stages.append(keras.Sequential([keras.layers.Flatten(), dense]) if window > 1 else dense)
    return stages


def build(windows, outputs, loss, pool, **kwargs) -> SidewaysModel:
    keras.utils.set_random_seed(0)
    model = SidewaysModel(windowed_stages(windows, outputs), pool=pool,
                          temporal_windows=windows, **kwargs)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if loss == "sparse_crossentropy" else "mse",
    )
    return model


def reference_stages(model: SidewaysModel) -> list[numpy_reference.DenseStage]:
    result = []
    for stage in model.stages:
        dense = stage.layers[-1] if isinstance(stage, keras.Sequential) else stage
        result.append(numpy_reference.DenseStage(
            kernel=dense.kernel.numpy().astype(np.float64),
            bias=dense.bias.numpy().astype(np.float64),
            activation="tanh" if dense.activation is keras.activations.tanh else "linear",
        ))
    return result


@pytest.mark.parametrize(
    "windows,num_frames,loss,per_frame",
    [
        ([3], 5, "mse", True),
        ([3, 1], 6, "sparse_crossentropy", False),
        ([1, 3, 2], 9, "mse", True),
        ([2, 2, 2], 7, "sparse_crossentropy", True),
        ([4, 1, 3, 2], 11, "mse", False),
    ],
)
@pytest.mark.parametrize("tick_chunk", [1, 2, None])
def test_windows_match_the_numpy_reference(windows, num_frames, loss, per_frame, tick_chunk):
    rng = np.random.default_rng(len(windows) * 10 + num_frames)
    model = build(windows, 3, loss, pool=None if per_frame else "mean", tick_chunk=tick_chunk)
    clips, targets = make_batch(rng, 3, num_frames, 3, loss, per_frame)
    gradients, details = model.compute_gradients(clips, targets, return_details=True)
    means, counts, tick_losses = numpy_reference.sideways_gradients(
        reference_stages(model), clips.astype(np.float64), targets, loss, per_frame, windows
    )
    expected = [g for stage in means for g in stage]
    assert max_relative_difference(gradients, expected) < 1e-5
    np.testing.assert_array_equal(details["contributions"], counts)
    reference_losses = np.array([np.nan if v is None else v for v in tick_losses])
    np.testing.assert_allclose(details["tick_losses"], reference_losses, rtol=1e-5)


@pytest.mark.parametrize("windows", [[3, 1], [2, 3, 1], [1, 2, 2, 3]])
def test_static_clip_with_windows_equals_backprop(windows):
    rng = np.random.default_rng(3)
    model = build(windows, 3, "sparse_crossentropy", pool="mean")
    clips, targets = make_batch(rng, 2, 2 * len(windows) + 2, 3, "sparse_crossentropy",
                                per_frame=False, smooth=True)
    sideways = model.compute_gradients(clips, targets, mode="sideways")
    backprop = model.compute_gradients(clips, targets, mode="backprop")
    assert max_relative_difference(sideways, backprop) < 1e-5


@pytest.mark.parametrize("windows", [[3, 1], [2, 1, 3]])
def test_pipeline_with_windows_is_the_causal_forward_delayed(windows):
    rng = np.random.default_rng(4)
    model = build(windows, 2, "mse", pool=None)
    clips, targets = make_batch(rng, 2, 8, 2, "mse", per_frame=True)
    assert_tick_losses_are_frame_losses_delayed(model, clips, targets)


def test_exact_forward_uses_edge_padded_causal_windows():
    model = build([3, 1], 2, "mse", pool=None)
    clips = np.random.default_rng(5).normal(size=(2, 5, FEATURES)).astype("float32")
    outputs = model.predict(clips, verbose=0)
    for s in range(5):
        window = np.stack([clips[:, max(s - 2 + j, 0)] for j in range(3)], axis=1)
        expected = model.stages[1](model.stages[0](window))
        np.testing.assert_allclose(outputs[:, s], expected, rtol=1e-5, atol=1e-6)
    # Backprop is the exact gradient of that forward's mean per-frame loss.
    targets = np.zeros((2, 5, 2), "float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(clips, training=True) - targets) ** 2)
    expected = tape.gradient(loss, model.trainable_variables)
    backprop = model.compute_gradients(clips, targets, mode="backprop")
    assert max_relative_difference(backprop, expected) < 1e-5


@pytest.mark.parametrize(
    "windows,pieces",
    [([2, 3], [(0, 2), (2, 5), (5, 9)]),
     # Pieces shorter than stage 0's history: it keeps frames from earlier steps.
     ([3, 2], [(0, 1), (1, 2), (2, 5), (5, 6), (6, 9)])],
)
def test_stateful_chunks_carry_the_window_histories(windows, pieces):
    rng = np.random.default_rng(6)
    clips, targets = make_batch(rng, 2, 9, 2, "mse", per_frame=True)
    one_pass = build(windows, 2, "mse", pool=None)
    streaming = build(windows, 2, "mse", pool=None, stateful=True, tick_chunk=2)
    for model in (one_pass, streaming):
        model.build(clips.shape)
    streaming.set_weights(one_pass.get_weights())
    _, full = one_pass.compute_gradients(clips, targets, return_details=True)
    losses = []
    for start, stop in pieces:
        _, details = streaming.compute_gradients(clips[:, start:stop], targets[:, start:stop],
                                                 return_details=True)
        losses.append(details["tick_losses"].numpy())
    np.testing.assert_allclose(np.concatenate(losses), full["tick_losses"], rtol=1e-5)


@pytest.mark.parametrize("stateful", [False, True])
def test_chunked_windows_equal_the_per_tick_pipeline_for_known_and_unknown_lengths(stateful):
    """Chunks of 3 over T = 7 (a shorter last chunk, or a one-tick loop when T is unknown at
    tracing) give the per-tick pipeline's gradients, stage 0's windows gathered from the clip."""
    rng = np.random.default_rng(8)
    clips, targets = make_batch(rng, 2, 7, 2, "mse", per_frame=True)
    options = {"stateful": True} if stateful else {}
    reference = build([3, 2, 1], 2, "mse", pool=None, tick_chunk=1, **options)
    expected = reference.compute_gradients(clips, targets)
    for num_frames in (7, None):
        model = build([3, 2, 1], 2, "mse", pool=None, tick_chunk=3, **options)
        model.build(clips.shape)
        model.set_weights(reference.get_weights())
        traced = tf.function(
            lambda c, t, m=model: m.compute_gradients(c, t),
            input_signature=[tf.TensorSpec([2, num_frames, FEATURES]),
                             tf.TensorSpec([2, num_frames, 2])],
        )
        difference = max_relative_difference(traced(clips, targets), expected)
        assert difference < 1e-5, (num_frames, difference)


@pytest.mark.parametrize(
    "windows,match",
    [([2], "gives 1 window lengths for 2 stages"), ([0, 1], r"`temporal_windows\[0\]` must be"),
     (3, "must be a list of 2 ints")],
)
def test_bad_windows(windows, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SidewaysModel([keras.layers.Dense(2), keras.layers.Dense(2)], temporal_windows=windows)
