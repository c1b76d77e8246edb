"""Divergence and bad data are visible: a non-finite loss is logged, `TerminateOnNaN` stops the run
at that batch, and a non-finite update is never applied (weights, slots, step count unchanged).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from tests.helpers import assert_weights_equal
from tests.test_exactness import dense_stages

MODES = ["sideways", "backprop"]
NUM_CLIPS, NUM_FRAMES, FEATURES, BATCH = 12, 5, 4, 4


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = rng.normal(size=(NUM_CLIPS, NUM_FRAMES, FEATURES)).astype("float32")
    return clips, rng.normal(size=(NUM_CLIPS, 3)).astype("float32")


def model_for(mode: str, optimizer: keras.optimizers.Optimizer | None = None,
              **kwargs) -> SidewaysModel:
    keras.utils.set_random_seed(3)
    model = SidewaysModel(dense_stages(3, 3, seed=3), mode=mode, **kwargs)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


class RecordBatches(keras.callbacks.Callback):
    """Keeps the logged loss and a copy of the weights and optimizer state after every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.losses, self.weights, self.slots, self.iterations = [], [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))
        self.weights.append([np.array(w) for w in self.model.get_weights()])
        self.slots.append([np.array(v) for v in self.model.optimizer.variables])
        self.iterations.append(int(self.model.optimizer.iterations.numpy()))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("frame", [1, NUM_FRAMES - 1])
def test_a_nan_pixel_is_logged_and_terminate_on_nan_stops_at_that_batch(mode, frame):
    """Frame 1 reaches the loss; the last frame never does in Sideways mode (the top is K-1
    ticks behind), yet its NaN reaches stage 0's update: both are logged as NaN."""
    clips, targets = data()
    clips[BATCH + 1, frame, 2] = np.nan  # one pixel of one clip of the second batch
    model = model_for(mode)
    record = RecordBatches()
    history = model.fit(clips, targets, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                        callbacks=[record, keras.callbacks.TerminateOnNaN()])
    # Stopped at batch 1 of epoch 0; the epoch's running mean carries the NaN.
    assert len(record.losses) == 2 and np.isfinite(record.losses[0]), record.losses
    assert np.isnan(record.losses[1])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    # The non-finite update was not applied: weights, momentum and step count as after batch 0.
    assert record.iterations == [1, 1]
    assert_weights_equal(record.weights[1], record.weights[0], rtol=0, atol=0)
    assert_weights_equal(record.slots[1], record.slots[0], rtol=0, atol=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@pytest.mark.parametrize("mode", MODES)
def test_without_terminate_on_nan_training_continues_past_the_bad_batch(mode):
    """Keras' own contract: a NaN batch is logged; later batches still train (from the weights
    before the bad batch), so a run that ignores NaN losses is not silently broken."""
    clips, targets = data()
    clips[BATCH + 1, 1, 2] = np.nan
    model = model_for(mode)
    record = RecordBatches()
    model.fit(clips, targets, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[record])
    assert np.isfinite(record.losses[0]) and np.isnan(record.losses[1])
    assert record.iterations == [1, 1, 2]  # the bad batch is not counted as a step
    assert not np.allclose(record.weights[2][0], record.weights[1][0])
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@pytest.mark.parametrize("mode", MODES)
def test_divergence_is_logged_and_weights_stay_finite(mode):
    """SGD(1e3): the run blows up; the logs say so and TerminateOnNaN stops it."""
    clips, targets = data()
    model = model_for(mode, optimizer=keras.optimizers.SGD(1e3))
    record = RecordBatches()
    model.fit(clips * 10, targets * 10, batch_size=BATCH, epochs=20, shuffle=False, verbose=0,
              callbacks=[record, keras.callbacks.TerminateOnNaN()])
    assert not np.isfinite(record.losses[-1]), record.losses
    assert np.all(np.isfinite(record.losses[:-1]))
    assert len(record.losses) < 20 * 3  # stopped early
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def two_replicas() -> tf.distribute.MirroredStrategy:
    """Two replicas over the logical CPUs, reducing without collective ops: collective instance
    keys restart with every strategy in one process and TensorFlow keeps their shapes, so a
    second strategy's different model would clash with another test file's. (The collective
    path itself runs in real worker processes: tests/test_multi_worker.py, test_faults.py.)"""
    return tf.distribute.MirroredStrategy(
        ["/CPU:0", "/CPU:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def test_under_mirrored_strategy_one_replicas_nan_stops_every_replicas_update():
    """The NaN clip sits in replica 1's half of the global batch: no replica applies the step
    (replica 0's own update is finite, but the all-reduced one is not)."""
    strategy = two_replicas()
    clips, targets = data()
    clips[BATCH + BATCH // 2 + 1, 1, 2] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((clips, targets)).batch(BATCH)
    with strategy.scope():
        model = model_for("sideways")
    record = RecordBatches()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[record])
    assert np.isfinite(record.losses[0]) and np.isnan(record.losses[1]), record.losses
    assert record.iterations == [1, 1, 2]
    assert_weights_equal(record.weights[1], record.weights[0], rtol=0, atol=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@pytest.mark.slow  # ~25 s / ~6 s: the default suite keeps the common cases
def test_under_mirrored_strategy_a_filling_stateful_chunk_applies_no_update():
    """A chunk with no valid contribution is skipped on every replica (it used to apply zeros
    there, which moves momentum-carrying weights)."""
    strategy = two_replicas()
    clips, targets = data()
    # K=3: no cotangent is valid before tick 2, so a first chunk of 2 frames is empty.
    chunks = tf.data.Dataset.from_tensor_slices(
        (clips[:BATCH, :2], targets[:BATCH])).batch(BATCH, drop_remainder=True)
    with strategy.scope():
        model = model_for("sideways", stateful=True)
    record = RecordBatches()
    history = model.fit(chunks, epochs=1, verbose=0, callbacks=[record])
    assert record.iterations == [0]
    assert history.history["loss"] == [0.0]  # nothing to log: no output belonged to a frame


@pytest.mark.slow  # ~25 s / ~6 s: the default suite keeps the common cases
def test_with_update_every_a_non_finite_in_step_update_is_skipped():
    """K=3, T=5, u=1: updates after ticks 2, 3 and 4. A NaN in the last frame reaches stage 0's
    pullback at tick 4 only, so that update is skipped and the two before it apply; the loss
    (frames 0-2) stays finite, as docs/algorithm.md says."""
    clips, targets = data()
    clips[1, NUM_FRAMES - 1, 2] = np.nan
    model = model_for("sideways", update_every=1)
    history = model.fit(clips[:BATCH], targets[:BATCH], batch_size=BATCH, shuffle=False,
                        verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert np.isfinite(history.history["loss"][0])
    clean = model_for("sideways", update_every=1)
    clean.fit(clips[BATCH:2 * BATCH], targets[:BATCH], batch_size=BATCH, verbose=0)
    assert int(clean.optimizer.iterations.numpy()) == 3
