"""Replica safety: the tick loop under MirroredStrategy over two logical CPUs (see conftest)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from tests.test_exactness import dense_stages
from tests.test_model import motion_task


def train(strategy: tf.distribute.Strategy | None, mode: str, stateful: bool = False,
          pool: str | None = "mean"):
    clips, labels = motion_task(32, 7, seed=3)
    targets = labels if pool == "mean" else np.repeat(labels[:, None], 7, axis=1)
    dataset = tf.data.Dataset.from_tensor_slices((clips, targets)).batch(8, drop_remainder=True)
    scope = strategy.scope() if strategy is not None else tf.device("/CPU:0")
    with scope:
        keras.utils.set_random_seed(4)
        model = SidewaysModel(dense_stages(3, 3, seed=4), mode=mode, stateful=stateful, pool=pool)
        model.compile(
            optimizer=keras.optimizers.SGD(0.2, momentum=0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    history = model.fit(dataset, epochs=2, verbose=0)
    return model, history.history


@pytest.mark.parametrize("mode,pool", [("sideways", "mean"), ("sideways", None),
                                       ("backprop", "mean")])
def test_mirrored_strategy_gives_the_same_weights_as_one_device(mode, pool):
    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    assert strategy.num_replicas_in_sync == 2
    single, single_logs = train(None, mode, pool=pool)
    mirrored, mirrored_logs = train(strategy, mode, pool=pool)
    for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single_logs["loss"], mirrored_logs["loss"], rtol=1e-5)
    np.testing.assert_allclose(single_logs["accuracy"], mirrored_logs["accuracy"], rtol=1e-6)
    assert single.optimizer.iterations.numpy() == mirrored.optimizer.iterations.numpy() == 8


def test_mirrored_stateful_streams_are_per_replica():
    """Each replica carries its own half of the streams; the update equals one device's."""
    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    single, single_logs = train(None, "sideways", stateful=True)
    mirrored, mirrored_logs = train(strategy, "sideways", stateful=True)
    for a, b in zip(single.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single_logs["loss"], mirrored_logs["loss"], rtol=1e-5)


def test_update_every_under_mirrored_strategy_is_a_clear_error():
    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    with strategy.scope():
        model = SidewaysModel(dense_stages(2, 3), update_every=2)
        model.compile(optimizer="sgd", loss="mse")
    clips = np.zeros((4, 5, 5), "float32")
    with pytest.raises(NotImplementedError, match=r"update_every=2 .*\(2 replicas here"):
        model.fit(clips, np.zeros((4, 3), "float32"), batch_size=4, verbose=0)


def uneven_first_batch(num_clips: int = 5) -> tf.data.Dataset:
    """One global batch of an odd size: MirroredStrategy over two replicas splits it 3 / 2."""
    clips, labels = motion_task(num_clips, 7, seed=5)
    return tf.data.Dataset.from_tensor_slices((clips, labels)).batch(num_clips)


def test_upstream_mirrored_fit_of_an_uneven_first_batch_still_fails():
    """Pins keras-team/keras#19246: Keras' eager mean of the first batch's replica values fails
    when they differ in size, for a plain model. When this test fails, the one-host half of
    `MultiWorkerFitMixin._maybe_symbolic_build` may go."""
    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((7, 6)), keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(tf.errors.InvalidArgumentError, match="AddN"):
        model.fit(uneven_first_batch(), epochs=1, verbose=0)


@pytest.mark.parametrize("mode", ["sideways", "backprop"])
def test_an_uneven_first_batch_trains_as_the_mean_of_the_replicas_updates(mode):
    """5 clips on 2 replicas (3 and 2): `fit` builds and trains, and its step is the mean of the
    two replicas' own updates (each the mean over its clips), as Keras' steps make it."""
    learning_rate = 0.3
    clips, labels = next(iter(uneven_first_batch()))
    keras.utils.set_random_seed(6)
    reference = SidewaysModel(dense_stages(3, 3, seed=6), mode=mode)
    reference.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    halves = [reference.compute_gradients(clips[:3], labels[:3]),
              reference.compute_gradients(clips[3:], labels[3:])]
    before = [v.numpy() for v in reference.trainable_variables]  # built by the first call
    expected = [w - learning_rate * (a.numpy() + b.numpy()) / 2
                for w, a, b in zip(before, *halves, strict=True)]

    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    with strategy.scope():
        keras.utils.set_random_seed(6)
        model = SidewaysModel(dense_stages(3, 3, seed=6), mode=mode)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(uneven_first_batch(), epochs=1, verbose=0)
    for actual, want in zip(model.trainable_variables, expected, strict=True):
        np.testing.assert_allclose(actual.numpy(), want, rtol=1e-5, atol=1e-6)
