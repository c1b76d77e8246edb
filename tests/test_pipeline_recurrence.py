"""The recurrence itself (`keras_sideways.pipeline.recurrence`), one chunk at a time.

A chunk of C ticks from a given, non-empty pipeline state is checked against the per-tick
recurrence of DESIGN.md §2 written out in NumPy with the reference's dense stages: every stage
computes at every tick from the state of the tick before, the top's cotangent is exact, every
other stage's is one tick old. No model, optimizer or `compute_gradients` is involved. Chunk
tensors are ticks-first, (C, B, …), as the tick loop holds them.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways.pipeline.plan import chunk_plan
from keras_sideways.pipeline.recurrence import chunk_forward, chunk_pullback, stream_tick
from keras_sideways.pipeline.state import PipelineState
from tests import numpy_reference
from tests.test_exactness import dense_stages, reference_stages

BATCH, FEATURES, OUTPUTS, K = 2, 4, 3, 3


def no_device(stage: int) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def built_stages() -> list[keras.layers.Layer]:
    """The dense stages of tests/test_exactness.py, built for (B, FEATURES) frames."""
    keras.utils.set_random_seed(0)
    stages = dense_stages(K, OUTPUTS)
    for stage in stages:
        stage.build((None, FEATURES if stage is stages[0] else stages[0].units))
    return stages


def ticks_first(clips: np.ndarray) -> tf.Tensor:
    """(B, C, …) -> the chunk layout (C, B, …)."""
    return tf.constant(np.moveaxis(clips, 1, 0), tf.float32)


def random_state(rng: np.random.Generator, hidden: int) -> tuple[PipelineState, dict]:
    """A mid-stream state: every activation and cotangent buffer holds something."""
    arrays = {
        "activations": [rng.normal(size=(BATCH, hidden)) for _ in range(K - 1)],
        "cotangents": [rng.normal(size=(BATCH, hidden)) * 0.1 for _ in range(K - 1)],
    }
    state = PipelineState(
        tick=tf.constant(10, tf.int32),  # long after the fill: everything valid
        activations=[tf.constant(a, tf.float32) for a in arrays["activations"]],
        cotangents=[tf.constant(e, tf.float32) for e in arrays["cotangents"]],
        histories={}, targets=[], weights=[])
    return state, arrays


def numpy_chunk(stages, arrays, clips, targets):
    """The per-tick recurrence over the chunk: top outputs, gradient sums, carried buffers."""
    activations = list(arrays["activations"])
    cotangents = list(arrays["cotangents"])
    sums = [[np.zeros_like(s.kernel), np.zeros_like(s.bias)] for s in stages]
    tops = []
    for c in range(clips.shape[1]):
        inputs = [clips[:, c]] + activations
        outputs = [stage.forward(x) for stage, x in zip(stages, inputs, strict=True)]
        _, top_cotangent = numpy_reference.mse_and_cotangent(outputs[-1], targets[:, c])
        used = cotangents + [top_cotangent]
        new_cotangents = [None] * (K - 1)
        for k in range(K):
            d_kernel, d_bias, d_input = stages[k].pullback(inputs[k], used[k])
            sums[k][0] += d_kernel
            sums[k][1] += d_bias
            if k > 0:
                new_cotangents[k - 1] = d_input
        tops.append(outputs[-1])
        activations, cotangents = outputs[:-1], new_cotangents
    return np.stack(tops), sums, activations, cotangents  # tops ticks-first, (C, B, …)


@pytest.mark.parametrize("size", [1, 4])
def test_one_chunk_forward_and_pullback_equal_the_per_tick_recurrence(size):
    rng = np.random.default_rng(size)
    stages = built_stages()
    hidden = stages[0].units
    state, arrays = random_state(rng, hidden)
    clips = rng.normal(size=(BATCH, size, FEATURES))
    targets = rng.normal(size=(BATCH, size, OUTPUTS))
    mse = keras.losses.MeanSquaredError()

    def top_loss(outputs):
        losses = tf.stack([mse(targets[:, c], outputs[c]) for c in range(size)])
        return tf.reduce_sum(losses), losses

    plans = chunk_plan(K, size)
    forwards, activations, _ = chunk_forward(
        stages, [1] * K, no_device, state, plans, ticks_first(clips), top_loss, fill=False)
    gradients, cotangents = chunk_pullback(
        forwards, [s.trainable_variables for s in stages], state, [1] * K, no_device, False)

    tops, sums, next_activations, next_cotangents = numpy_chunk(
        reference_stages(SimpleNamespace(stages=stages)), arrays, clips, targets)
    np.testing.assert_allclose(forwards[-1].outputs, tops, rtol=1e-5, atol=1e-6)
    for k in range(K):
        np.testing.assert_allclose(gradients[k][0], sums[k][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gradients[k][1], sums[k][1], rtol=1e-4, atol=1e-6)
    for actual, expected in zip(activations, next_activations, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    for actual, expected in zip(cotangents, next_cotangents, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-7)


def test_a_filling_chunk_skips_exactly_the_ticks_that_add_nothing():
    """From the empty pipeline, the filling chunk's gradient sums equal the full chunk's."""
    rng = np.random.default_rng(3)
    stages = built_stages()
    size = 5  # 2K-1: stage 0's first valid cotangent arrives at the last tick
    clips = ticks_first(rng.normal(size=(BATCH, size, FEATURES)))
    targets = rng.normal(size=(BATCH, size, OUTPUTS))
    zeros = [tf.zeros((BATCH, stages[0].units)) for _ in range(K - 1)]
    empty = PipelineState(tf.constant(0, tf.int32), zeros, zeros, {}, [], [])
    mse = keras.losses.MeanSquaredError()
    results = {}
    for fill in (False, True):
        plans = chunk_plan(K, size, fill)
        top_from = plans[-1].taped_from
        # Ticks before K-1 have no frame: their loss is masked, as the loop does.
        valid = tf.range(top_from, size) >= K - 1

        def top_loss(outputs, top_from=top_from, valid=valid):
            losses = tf.stack([mse(targets[:, top_from + c], outputs[c])
                               for c in range(outputs.shape[0])])
            return tf.reduce_sum(tf.where(valid, losses, 0.0)), losses

        forwards, _, _ = chunk_forward(stages, [1] * K, no_device, empty, plans, clips,
                                       top_loss, fill)
        results[fill], _ = chunk_pullback(forwards, [s.trainable_variables for s in stages],
                                          empty, [1] * K, no_device, fill)
    for skipped, computed in zip(results[True], results[False], strict=True):
        for a, b in zip(skipped, computed, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_stream_tick_is_the_pipelined_forward_of_one_tick():
    rng = np.random.default_rng(4)
    stages = built_stages()
    state, arrays = random_state(rng, stages[0].units)
    frame = rng.normal(size=(BATCH, FEATURES))
    output, following = stream_tick(stages, [1] * K, no_device, state,
                                    tf.constant(frame, tf.float32))
    reference = reference_stages(SimpleNamespace(stages=stages))
    inputs = [frame] + arrays["activations"]
    expected = [stage.forward(x) for stage, x in zip(reference, inputs, strict=True)]
    np.testing.assert_allclose(output, expected[-1], rtol=1e-5, atol=1e-6)
    for actual, wanted in zip(following.activations, expected[:-1], strict=True):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)
    assert int(following.tick) == 11
