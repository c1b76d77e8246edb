"""The exactness properties of DESIGN.md §2 and §7: where Sideways must equal the plain thing."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from tests import numpy_reference

FEATURES = 5
HIDDEN = 7


def dense_stages(num_stages: int, outputs: int, seed: int = 0) -> list[keras.layers.Layer]:
    """Tanh dense stages and a linear top, with weights large enough for non-trivial gradients."""
    initializer = keras.initializers.RandomNormal(stddev=0.6, seed=seed)
    stages = [
        keras.layers.Dense(HIDDEN, activation="tanh", kernel_initializer=initializer,
                           bias_initializer=keras.initializers.RandomNormal(stddev=0.2, seed=seed))
        for _ in range(num_stages - 1)
    ]
    stages.append(keras.layers.Dense(outputs, kernel_initializer=initializer))
    return stages


def build_model(num_stages: int, outputs: int, loss: str, pool: str | None, seed: int = 0,
                **kwargs) -> SidewaysModel:
    keras.utils.set_random_seed(seed)
    model = SidewaysModel(dense_stages(num_stages, outputs, seed), pool=pool, **kwargs)
    keras_loss = (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if loss == "sparse_crossentropy"
        else "mse"
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras_loss)
    return model


def reference_stages(model: SidewaysModel) -> list[numpy_reference.DenseStage]:
    return [
        numpy_reference.DenseStage(
            kernel=np.asarray(stage.kernel.numpy(), np.float64),
            bias=np.asarray(stage.bias.numpy(), np.float64),
            activation="tanh" if stage.activation is keras.activations.tanh else "linear",
        )
        for stage in model.stages
    ]


def make_batch(rng: np.random.Generator, batch: int, frames: int, outputs: int, loss: str,
               per_frame: bool, smooth: bool = False):
    if smooth:
        # A static clip: every frame the same.
        clips = np.repeat(rng.normal(size=(batch, 1, FEATURES)), frames, axis=1)
    else:
        clips = rng.normal(size=(batch, frames, FEATURES))
    target_shape = (batch, frames) if per_frame else (batch,)
    if loss == "sparse_crossentropy":
        targets = rng.integers(0, outputs, size=target_shape)
    else:
        targets = rng.normal(size=target_shape + (outputs,))
    return clips.astype("float32"), targets


def max_relative_difference(actual: list, expected: list) -> float:
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        worst = max(worst, float(np.max(np.abs(a - e)) / max(np.max(np.abs(e)), 1e-12)))
    return worst


CASES = [
    # (K, T, loss, per-frame targets)
    (1, 3, "mse", True),
    (2, 3, "sparse_crossentropy", False),
    (2, 6, "mse", False),
    (3, 5, "mse", True),
    (3, 9, "sparse_crossentropy", True),
    (4, 7, "sparse_crossentropy", False),
    (4, 12, "mse", True),
    (5, 9, "mse", False),
    (5, 14, "sparse_crossentropy", True),
]


@pytest.mark.parametrize("tick_chunk", [1, 3, None])
@pytest.mark.parametrize("num_stages,num_frames,loss,per_frame", CASES)
def test_matches_independent_numpy_reference(num_stages, num_frames, loss, per_frame,
                                             tick_chunk):
    """Any chunking of the ticks (1 = literal per-tick pipeline) gives the reference's update."""
    rng = np.random.default_rng(num_stages * 100 + num_frames)
    outputs = 4
    model = build_model(num_stages, outputs, loss, pool=None if per_frame else "mean",
                        tick_chunk=tick_chunk)
    clips, targets = make_batch(rng, 3, num_frames, outputs, loss, per_frame)
    gradients, details = model.compute_gradients(clips, targets, return_details=True)

    means, counts, tick_losses = numpy_reference.sideways_gradients(
        reference_stages(model), clips.astype(np.float64), targets, loss, per_frame
    )
    expected = [g for stage in means for g in stage]
    # Dense stages list kernel then bias, stage by stage: the order of trainable_variables.
    assert [v.path for v in model.trainable_variables] == [
        w.path for s in model.stages for w in (s.kernel, s.bias)
    ]
    difference = max_relative_difference(gradients, expected)
    assert difference < 1e-5, f"largest relative difference to NumPy: {difference:.2e}"
    np.testing.assert_array_equal(details["contributions"].numpy(), counts)
    reference_losses = np.array([np.nan if v is None else v for v in tick_losses])
    np.testing.assert_allclose(details["tick_losses"].numpy(), reference_losses, rtol=1e-5)


def test_matches_reference_inside_tf_function():
    """The traced path (what fit runs) gives the same update direction as the NumPy reference."""
    rng = np.random.default_rng(7)
    model = build_model(3, 4, "mse", pool=None)
    clips, targets = make_batch(rng, 2, 8, 4, "mse", per_frame=True)
    traced = tf.function(lambda c, t: model.compute_gradients(c, t))
    gradients = traced(tf.constant(clips), tf.constant(targets, tf.float32))
    means, _, _ = numpy_reference.sideways_gradients(
        reference_stages(model), clips.astype(np.float64), targets, "mse", True
    )
    expected = [g for stage in means for g in stage]
    assert max_relative_difference(gradients, expected) < 1e-5


@pytest.mark.parametrize("loss,per_frame", [("mse", True), ("sparse_crossentropy", False)])
def test_single_stage_equals_backprop_on_any_clip(loss, per_frame):
    rng = np.random.default_rng(1)
    model = build_model(1, 3, loss, pool=None if per_frame else "mean")
    clips, targets = make_batch(rng, 4, 6, 3, loss, per_frame)
    sideways = model.compute_gradients(clips, targets, mode="sideways")
    backprop = model.compute_gradients(clips, targets, mode="backprop")
    assert max_relative_difference(sideways, backprop) < 1e-5


@pytest.mark.parametrize("num_stages", [2, 3, 4, 5])
def test_static_clip_equals_backprop_for_any_depth(num_stages):
    rng = np.random.default_rng(num_stages)
    model = build_model(num_stages, 3, "sparse_crossentropy", pool="mean")
    clips, targets = make_batch(
        rng, 3, 2 * num_stages + 1, 3, "sparse_crossentropy", per_frame=False, smooth=True
    )
    sideways = model.compute_gradients(clips, targets, mode="sideways")
    backprop = model.compute_gradients(clips, targets, mode="backprop")
    assert max_relative_difference(sideways, backprop) < 1e-5
    # A moving clip must not: the test above would be empty if the two always agreed.
    moving, _ = make_batch(rng, 3, 2 * num_stages + 1, 3, "sparse_crossentropy", False)
    assert max_relative_difference(
        model.compute_gradients(moving, targets, mode="sideways"),
        model.compute_gradients(moving, targets, mode="backprop"),
    ) > 1e-3


def test_static_image_clip_equals_backprop_with_convolutional_stages():
    """Image frames (B, T, H, W, C) through convolutional stages, with a weight regulariser."""
    keras.utils.set_random_seed(3)
    stages = [
        keras.layers.Conv2D(4, 3, padding="same", activation="relu",
                            kernel_regularizer=keras.regularizers.L2(1e-2)),
        keras.layers.Conv2D(4, 3, strides=2, activation="tanh"),
        keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]),
    ]
    model = SidewaysModel(stages)
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(3)
    frame = rng.uniform(size=(2, 1, 8, 8, 2)).astype("float32")
    clips = np.repeat(frame, 6, axis=1)
    targets = np.array([0, 2])
    sideways = model.compute_gradients(clips, targets, mode="sideways")
    backprop = model.compute_gradients(clips, targets, mode="backprop")
    assert max_relative_difference(sideways, backprop) < 1e-5


@pytest.mark.parametrize("num_stages", [1, 2, 4])
def test_pipelined_top_output_is_synchronous_output_delayed(num_stages):
    """The tick loss at tick t is the loss of the synchronous output for frame t-(K-1)."""
    rng = np.random.default_rng(11)
    model = build_model(num_stages, 2, "mse", pool=None)
    clips, targets = make_batch(rng, 3, 9, 2, "mse", per_frame=True)
    assert_tick_losses_are_frame_losses_delayed(model, clips, targets)


def assert_tick_losses_are_frame_losses_delayed(model: SidewaysModel, clips: np.ndarray,
                                                targets: np.ndarray) -> None:
    """Tick t's (MSE) loss is the loss of `predict`'s output for frame t-(K-1); none before."""
    _, details = model.compute_gradients(clips, targets, return_details=True)
    synchronous = model.predict(clips, verbose=0)
    frame_losses = np.mean((synchronous - targets) ** 2, axis=(0, 2))
    tick_losses = details["tick_losses"].numpy()
    delay, num_frames = model.num_stages - 1, clips.shape[1]
    assert np.all(np.isnan(tick_losses[:delay]))
    np.testing.assert_allclose(tick_losses[delay:], frame_losses[: num_frames - delay],
                               rtol=1e-5)
