"""The pipeline's small parts: window gathering, chunk plans, the tick-loop policy, the state
layout. (The recurrence has tests/test_pipeline_recurrence.py.)"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel, schedule
from keras_sideways.pipeline.plan import chunk_plan
from keras_sideways.pipeline.policy import TickLoop, stage_holds_state, stage_mixes_batch
from keras_sideways.pipeline.state import StateLayout
from keras_sideways.pipeline.windows import gather_windows, stage_inputs
from tests.test_exactness import dense_stages


def test_windows_are_causal_and_edge_padded_from_the_first_real_element():
    elements = tf.constant(np.arange(6, dtype="float32")[None, :, None])  # (1, 6, 1): 0 … 5
    # The whole sequence, frame 0 first: frame s reads s-2 … s, clamped at 0.
    windows = gather_windows(elements, -2, 6, 3, -2)[0, :, :, 0].numpy()
    np.testing.assert_array_equal(windows, [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3],
                                            [2, 3, 4], [3, 4, 5]])
    # Chunk-relative: tick c's newest element is c + w - 1 (after w-1 of history). The stage's
    # first real element arrives at tick 1: its window repeats it, and older ticks (still
    # filling) read only their own newest element.
    windows = gather_windows(elements, 0, 3, 2, 1)[0, :, :, 0].numpy()
    np.testing.assert_array_equal(windows, [[1, 1], [2, 2], [2, 3]])
    np.testing.assert_array_equal(gather_windows(elements, 1, 2, 1, 0)[0, :, 0], [1, 2])


def test_stage_inputs_of_a_one_tick_chunk_do_not_read_the_stage_below():
    carried, history = tf.ones([2, 3]), tf.zeros([2, 1, 3])
    inputs, following = stage_inputs(2, carried, history, None, 1, first=-5)
    # A chunk's inputs are ticks-first (1, B, w, …); the history keeps the state's (B, w-1, …).
    np.testing.assert_array_equal(inputs[0], tf.stack([history[:, 0], carried], 1))
    np.testing.assert_array_equal(following, carried[:, None])
    inputs, following = stage_inputs(1, carried, None, None, 1, first=0)
    assert following is None and inputs.shape == (1, 2, 3)


@pytest.mark.parametrize("window,start,size,first", [(1, 0, 6, 0), (1, 2, 3, 0), (3, -2, 6, -2),
                                                     (2, 0, 3, 1), (3, 1, 4, 2)])
def test_ticks_first_windows_are_the_batch_major_ones_transposed(window, start, size, first):
    """A chunk's inputs (size, B, [w,] …), gathered from a batch-major clip or a ticks-first
    sequence, hold exactly what the exact forward's batch-major gathering reads."""
    clip = tf.constant(np.random.default_rng(window).normal(size=(3, 7, 2)), tf.float32)
    expected = np.moveaxis(gather_windows(clip, start, size, window, first).numpy(), 1, 0)
    from_clip = gather_windows(clip, start, size, window, first, ticks_first=True)
    from_ticks = gather_windows(tf.transpose(clip, [1, 0, 2]), start, size, window, first,
                                ticks_first=True, batch_major_source=False)
    np.testing.assert_array_equal(from_clip, expected)
    np.testing.assert_array_equal(from_ticks, expected)


@pytest.mark.parametrize("num_stages,size", [(1, 3), (3, 4), (3, 6), (4, 2)])
def test_the_filling_plan_follows_the_schedule(num_stages, size):
    for k, plan in enumerate(chunk_plan(num_stages, size, fill=True)):
        assert plan.begin == min(schedule.first_valid_input_tick(k), size)
        first_taped = max(plan.begin, schedule.first_valid_cotangent_tick(num_stages, k))
        assert plan.taped_from == min(first_taped, size)
    assert all(p == (0, 0, size) for p in chunk_plan(num_stages, size))


def test_the_policy_asks_two_questions_of_stages():
    dropout = keras.Sequential([keras.layers.Dense(3), keras.layers.Dropout(0.5)])
    batch_norm = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization()])
    for stage in (dropout, batch_norm):
        stage.build((None, 2))
    assert stage_holds_state(dropout) and not stage_mixes_batch(dropout)
    assert stage_holds_state(batch_norm) and stage_mixes_batch(batch_norm)
    plain = keras.layers.Dense(3)
    plain.build((None, 2))
    assert not stage_holds_state(plain) and not stage_mixes_batch(plain)
    plan = TickLoop().plan([dropout, plain], 16, tick_chunk=None, placed=False,
                           stateful=False, update_every=None)
    assert (plan.chunk, plan.parallel_iterations, plan.fill_first) == (4, 1, False)


def test_tick_loop_overrides_change_the_plan_and_are_checked():
    model = SidewaysModel(dense_stages(3, 4))
    assert model.tick_plan(10) == (4, True, 2, 2, "chunked", False)
    model.tick_loop = TickLoop(parallel_iterations=1, fill_first_chunk=False)
    assert model.tick_plan(10) == (4, False, 2, 1, "chunked", False)
    assert model.tick_plan(None).remainder is None
    with pytest.raises(ValueError, match="schedule"):
        TickLoop(schedule="skewed-typo")
    # Asking to fill where it would be wrong (stateful) is not obeyed.
    stateful = SidewaysModel(dense_stages(3, 4), stateful=True)
    stateful.tick_loop = TickLoop(fill_first_chunk=True)
    assert not stateful.tick_plan(10).fill_first


def test_one_state_layout_for_training_and_streaming():
    layout = StateLayout(windows=(2, 1, 3), frame_shape=(4,), frame_dtype="float32",
                         output_shapes=((None, 5), (None, 6), (None, 2)),
                         output_dtypes=("float32",) * 3)
    state = layout.fresh(3, tf.zeros([3]), tf.zeros([3]))
    assert [a.shape for a in state.activations] == [(3, 5), (3, 6)]
    assert {k: v.shape for k, v in state.histories.items()} == {"0": (3, 1, 4), "2": (3, 2, 6)}
    flat = layout.to_stream(state)
    assert set(flat) == layout.stream_keys() == {
        "tick", "activation_0", "activation_1", "history_0", "history_2"}
    back = layout.from_stream(flat)
    assert back.activations[1] is state.activations[1] and back.histories["2"] is (
        state.histories["2"])
    with pytest.raises(ValueError, match=r"expected \['activation_0'"):
        layout.from_stream({"tick": 0})
