"""The skewed tick loop (`pipeline.skewed`, DESIGN.md §2a) computes the per-tick updates.

Pinned against the independent NumPy reference (any K, chunk sizes that do and do not divide T,
temporal windows, both target kinds, stateful streams whose steps drain), against the chunked
loop where the reference has no counterpart (sample weights, metrics, `fit`), and its fallbacks.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from keras_sideways.model import TickLoop
from tests import numpy_reference
from tests.helpers import assert_weights_equal
from tests.test_exactness import build_model, make_batch, max_relative_difference, reference_stages
from tests.test_temporal_windows import build as build_windowed
from tests.test_temporal_windows import reference_stages as windowed_reference_stages

SKEWED = TickLoop(schedule="skewed")  # unrolled where T is known, as here
LOOPED = TickLoop(schedule="skewed", unroll=False)  # the `tf.while_loop` form
CHUNKED = TickLoop(schedule="chunked")


def use(model: SidewaysModel, tick_loop: TickLoop, chunk: int | None = None) -> SidewaysModel:
    model.tick_loop = tick_loop
    model.tick_chunk = chunk
    return model


def assert_matches_reference(model, stages, clips, targets, loss, per_frame, windows=None):
    assert model.tick_plan(clips.shape[1]).schedule == "skewed"
    grads, details = model.compute_gradients(clips, targets, return_details=True)
    means, counts, tick_losses = numpy_reference.sideways_gradients(
        stages, clips.astype(np.float64), targets, loss, per_frame, windows)
    assert max_relative_difference(grads, [g for stage in means for g in stage]) < 1e-5
    np.testing.assert_array_equal(details["contributions"].numpy(), counts)
    for value, reference in zip(details["tick_losses"].numpy(), tick_losses, strict=True):
        if reference is None:
            assert np.isnan(value)
        else:
            np.testing.assert_allclose(value, reference, rtol=1e-5)


SLOW = pytest.mark.slow
# The loop form's full grid is slow-marked; `test_the_loop_form_matches_the_numpy_reference`
# keeps it in the default suite.
BOTH_FORMS = pytest.mark.parametrize("tick_loop", [SKEWED, pytest.param(LOOPED, marks=SLOW)],
                                     ids=["unrolled", "looped"])


@pytest.mark.parametrize("num_stages,num_frames,chunk", [
    (1, 5, 2), pytest.param(2, 3, 1, marks=SLOW), (2, 7, 3), (3, 9, 4),
    pytest.param(4, 11, 2, marks=SLOW), (5, 12, 5), pytest.param(3, 10, 10, marks=SLOW)])
@pytest.mark.parametrize("loss,per_frame", [("mse", False), ("sparse_crossentropy", True)])
@BOTH_FORMS
def test_skewed_matches_the_numpy_reference(num_stages, num_frames, chunk, loss, per_frame,
                                            tick_loop):
    model = use(build_model(num_stages, 3, loss, None if per_frame else "mean"), tick_loop,
                chunk)
    assert model.tick_plan(num_frames).unrolled == (tick_loop is SKEWED)
    rng = np.random.default_rng(num_stages * 100 + num_frames)
    clips, targets = make_batch(rng, 2, num_frames, 3, loss, per_frame)
    model.build(clips.shape)
    assert_matches_reference(model, reference_stages(model), clips, targets, loss, per_frame)


@pytest.mark.parametrize("windows,num_frames,chunk", [
    pytest.param([3], 5, 2, marks=SLOW), pytest.param([3, 1], 6, 4, marks=SLOW),
    ([1, 3, 2], 9, 2), pytest.param([2, 2, 2], 7, 3, marks=SLOW), ([4, 1, 3, 2], 11, 4)])
@BOTH_FORMS
def test_skewed_windows_match_the_numpy_reference(windows, num_frames, chunk, tick_loop):
    for loss, per_frame in (("mse", True), ("sparse_crossentropy", False)):
        model = use(build_windowed(windows, 3, loss, None if per_frame else "mean"), tick_loop,
                    chunk)
        rng = np.random.default_rng(len(windows) + num_frames)
        clips, targets = make_batch(rng, 2, num_frames, 3, loss, per_frame)
        model.build(clips.shape)
        assert_matches_reference(model, windowed_reference_stages(model), clips, targets, loss,
                                 per_frame, windows)


@pytest.mark.parametrize("windows,pieces,chunk,per_frame", [
    ([1, 1], [1, 2, 4, 3], 2, True), ([2, 1, 3], [2, 4, 6], 4, False),
    pytest.param([1, 1, 1, 1], [3, 6, 9], 3, True, marks=SLOW),
    pytest.param([2, 1, 3], [2, 4, 6], 4, True, marks=SLOW)])
@BOTH_FORMS
def test_stateful_skewed_steps_continue_the_stream_exactly(windows, pieces, chunk, per_frame,
                                                           tick_loop):
    """Each step drains: its sums add up to one tick-by-tick pass over the whole stream."""
    loss = "mse"
    model = use(build_windowed(windows, 3, loss, None if per_frame else "mean", stateful=True),
                tick_loop, chunk)
    rng = np.random.default_rng(sum(pieces))
    clips, targets = make_batch(rng, 2, sum(pieces), 3, loss, per_frame)
    model.build(clips.shape)
    stage_of = [k for k, stage in enumerate(model.stages) for _ in stage.trainable_variables]
    means, counts, tick_losses = numpy_reference.sideways_gradients(
        windowed_reference_stages(model), clips.astype(np.float64), targets, loss, per_frame,
        windows)
    sums = [np.zeros_like(g) for stage in means for g in stage]
    total_counts, losses, begin = np.zeros(len(windows)), [], 0
    for length in pieces:
        piece = slice(begin, begin + length)
        assert model.tick_plan(length).schedule == "skewed"
        grads, details = model.compute_gradients(
            clips[:, piece], targets[:, piece] if per_frame else targets, return_details=True)
        step_counts = details["contributions"].numpy()
        for position, k in enumerate(stage_of):  # a step's means back to its sums
            sums[position] += grads[position].numpy() * step_counts[k]
        total_counts += step_counts
        losses += list(details["tick_losses"].numpy())
        begin += length
    np.testing.assert_array_equal(total_counts, counts)
    expected = [g * max(counts[k], 1) for k, stage in enumerate(means) for g in stage]
    assert max_relative_difference(sums, expected) < 1e-5
    got = [v for v in losses if not np.isnan(v)]
    np.testing.assert_allclose(got, [v for v in tick_losses if v is not None], rtol=1e-5)


def test_the_loop_form_matches_the_numpy_reference():
    """The `tf.while_loop` form (stash, second forward) on a clip T that C does not divide, with
    windows, and on a stateful stream of two steps."""
    test_skewed_matches_the_numpy_reference(3, 9, 4, "mse", False, LOOPED)
    test_skewed_windows_match_the_numpy_reference([1, 3, 2], 9, 2, LOOPED)
    test_stateful_skewed_steps_continue_the_stream_exactly([2, 1, 3], [2, 4], 2, False, LOOPED)


@pytest.mark.parametrize("stateful,per_frame", [
    (True, True), pytest.param(True, False, marks=SLOW), pytest.param(False, True, marks=SLOW),
    pytest.param(False, False, marks=SLOW)])
def test_sample_weights_and_metrics_as_in_the_chunked_loop(stateful, per_frame):
    """Per-clip targets and weights, or per-frame ones: the same weights, losses and metrics."""
    rng = np.random.default_rng(3)
    clips, targets = make_batch(rng, 2, 9, 3, "mse", per_frame=per_frame)
    weights = rng.uniform(0.2, 2.0, size=(2, 9) if per_frame else (2,)).astype("float32")
    # Equal pieces: `train_on_batch` retraces a new T with an unknown length.
    pieces = (slice(0, 3), slice(3, 6), slice(6, 9)) if stateful else (slice(0, 9),) * 2
    results = {}
    for name, tick_loop in (("skewed", SKEWED), ("chunked", CHUNKED)):
        model = build_windowed([2, 1, 1], 3, "mse", None if per_frame else "mean",
                               stateful=stateful)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
        use(model, tick_loop, 3)
        logs = []
        for piece in pieces:
            logs.append(model.train_on_batch(
                clips[:, piece], targets[:, piece] if per_frame else targets,
                sample_weight=weights[:, piece] if per_frame else weights, return_dict=True))
        results[name] = (model.get_weights(), logs)
    assert_weights_equal(results["skewed"][0], results["chunked"][0], rtol=1e-5, atol=1e-6)
    for skewed_logs, chunked_logs in zip(results["skewed"][1], results["chunked"][1],
                                         strict=True):
        for key, value in chunked_logs.items():
            np.testing.assert_allclose(skewed_logs[key], value, rtol=1e-5, err_msg=key)


@pytest.mark.slow
def test_unknown_clip_length_inside_tf_function():
    """A stateless clip of unknown T gets its partial first chunk at run time."""
    rng = np.random.default_rng(5)
    clips, targets = make_batch(rng, 2, 7, 3, "mse", per_frame=False)
    results = []
    for tick_loop in (SKEWED, CHUNKED):
        model = use(build_model(3, 3, "mse", "mean"), tick_loop, 3)
        model.build(clips.shape)
        traced = tf.function(lambda c, t, m=model: m.compute_gradients(c, t),
                             input_signature=[tf.TensorSpec([2, None, 5]),
                                              tf.TensorSpec([2, 3])])
        results.append([g.numpy() for g in traced(clips, targets.astype("float32"))])
    assert max_relative_difference(results[0], results[1]) < 1e-5


def test_skewed_is_the_default_with_stage_devices_and_falls_back_with_a_warning():
    placed = build_model(3, 3, "mse", "mean", stage_devices=["/CPU:0", "/CPU:1", "/CPU:0"])
    assert placed.tick_plan(8).schedule == "skewed"
    assert placed.tick_plan(8).chunk == 4
    assert build_model(3, 3, "mse", "mean").tick_plan(8).schedule == "chunked"
    with pytest.warns(UserWarning, match="update_every=2"):
        plan = use(build_model(2, 3, "mse", "mean", update_every=2), SKEWED).tick_plan(8)
    assert plan.schedule == "chunked"
    dropout = [keras.Sequential([keras.layers.Dense(4), keras.layers.Dropout(0.5)]),
               keras.layers.Dense(3)]
    model = SidewaysModel(dropout)
    model.compile(optimizer="sgd", loss="mse")
    model.build((2, 8, 5))
    with pytest.warns(UserWarning, match="hold state"):
        assert use(model, SKEWED).tick_plan(8).schedule == "chunked"
    stateful = use(build_model(2, 3, "mse", "mean", stateful=True), SKEWED, 4)
    with pytest.warns(UserWarning, match="known at tracing"):
        assert stateful.tick_plan(None).schedule == "chunked"
    # A stateful step ends on a chunk boundary: the chunk divides T.
    assert stateful.tick_plan(6).chunk == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stateful.tick_plan(8).schedule == "skewed"


def test_skewed_graph_does_not_grow_with_the_clip_length():
    """The `tf.while_loop` form is one body whatever T; the unrolled form, which grows with T,
    is used only up to `MAX_UNROLLED_ITERATIONS` iterations."""
    from keras_sideways.pipeline.policy import MAX_UNROLLED_ITERATIONS
    from tests.test_graph_size import graph_size

    model = use(build_model(3, 3, "mse", pool=None), TickLoop(schedule="skewed", unroll=False))
    looped = graph_size(model, 16, "sideways")
    assert looped == graph_size(model, 64, "sideways")
    assert looped == graph_size(model, 15, "sideways")  # padded
    model.tick_loop = SKEWED
    assert model.tick_plan(16).unrolled and graph_size(model, 16, "sideways") > looped
    longest = (MAX_UNROLLED_ITERATIONS - 4) * 4  # 4-tick chunks, 2K-2 = 4 to fill and drain
    assert model.tick_plan(longest).unrolled and not model.tick_plan(longest + 1).unrolled
    assert graph_size(model, longest + 1, "sideways") == looped
