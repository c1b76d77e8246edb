"""The skewed chunk schedule: its timing (pure Python) and its exactness (NumPy, DESIGN.md §2a).

The NumPy execution of the skewed order (`tests/numpy_skewed.py`, which only lets a stage read
what the previous iteration left) must give the per-tick reference's sums, counts and tick
losses exactly, for any K, chunk size, temporal windows, both kinds of targets, and a stream
split into steps that each drain.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from keras_sideways import schedule
from tests import numpy_reference, numpy_skewed


def test_offsets_follow_the_dependencies():
    """Every read of the skewed order is of something a previous iteration computed."""
    for num_stages, chunks in itertools.product(range(1, 6), (1, 2, 5)):
        K = num_stages
        plan = schedule.skewed_plan(K, chunks * 3, 3)
        assert len(plan) == schedule.skewed_iterations(K, chunks) == chunks + 2 * K - 2
        done_forward, done_pullback = {}, {}
        for i, row in enumerate(plan):
            for k, (forward, _) in enumerate(row):
                if forward is not None:
                    if k > 0:  # the chunk below's forward, one iteration earlier at the latest
                        assert done_forward[(k - 1, forward)] < i
                    done_forward[(k, forward)] = i
            for k, (_, pullback) in enumerate(row):
                if pullback is not None:
                    # Its own forward of the chunk (the top: this very iteration).
                    assert done_forward[(k, pullback)] == i - schedule.skewed_lag(K, k)
                    if k < K - 1:
                        assert done_pullback[(k + 1, pullback)] == i - 1
                    done_pullback[(k, pullback)] = i
        # Every stage runs every chunk's forward and pullback exactly once.
        assert sorted(done_forward) == sorted(itertools.product(range(K), range(chunks)))
        assert sorted(done_pullback) == sorted(done_forward)


def test_stash_and_iteration_counts():
    assert [schedule.skewed_stash_size(3, k) for k in range(3)] == [5, 3, 1]
    assert [schedule.skewed_lag(4, k) for k in range(4)] == [6, 4, 2, 0]
    assert schedule.num_chunks(32, 4) == 8 and schedule.num_chunks(33, 4) == 9
    assert schedule.skewed_iterations(2, 8) == 10
    assert schedule.skewed_iterations(1, 8) == 8
    assert schedule.skewed_iterations(3, 0) == 0
    # Fill and drain are 2K-2 iterations however long the clip: the bubble shrinks with N.
    assert schedule.skewed_busy_fraction(2, 32, 4) == pytest.approx(8 / 10)
    assert schedule.skewed_busy_fraction(1, 12, 4) == 1.0
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        schedule.num_chunks(8, 0)


def test_stash_never_exceeds_the_chunks_in_flight():
    K, chunks = 4, 6
    for i, row in enumerate(schedule.skewed_plan(K, chunks * 2, 2)):
        for k, _ in enumerate(row):
            held = [c for c in range(chunks)
                    if schedule.skewed_forward_chunk(k, i) >= c
                    >= schedule.skewed_pullback_chunk(K, k, i)]
            assert len(held) <= schedule.skewed_stash_size(K, k)


def test_skewed_grid_prints_the_plan():
    text = schedule.format_skewed_grid(2, 8, 4)
    lines = text.splitlines()
    assert "2 chunks, 4 iterations (2 to fill and drain)" in lines[0]
    assert lines[1].split() == ["|", "i0", "i1", "i2", "i3"]
    assert lines[3].split()[3:] == ["F./P.", "F0/P0", "F1/P1", "F./P.", "stash=1"]
    assert lines[4].split()[3:] == ["F0/P.", "F1/P.", "F./P0", "F./P1", "stash=3"]


# ---------------------------------------------------------------------- exactness in NumPy

FEATURES, HIDDEN, OUTPUTS = 3, 4, 3


def random_stages(rng: np.random.Generator, num_stages: int, windows: list[int]):
    stages, width = [], FEATURES
    for k in range(num_stages):
        top = k == num_stages - 1
        out = OUTPUTS if top else HIDDEN
        stages.append(numpy_reference.DenseStage(
            kernel=rng.normal(scale=0.6, size=(width * windows[k], out)),
            bias=rng.normal(scale=0.2, size=out),
            activation="linear" if top else "tanh",
        ))
        width = out
    return stages


def random_batch(rng: np.random.Generator, frames: int, loss: str, per_frame: bool):
    clips = rng.normal(size=(2, frames, FEATURES))
    shape = (2, frames) if per_frame else (2,)
    if loss == "sparse_crossentropy":
        return clips, rng.integers(0, OUTPUTS, size=shape)
    return clips, rng.normal(size=shape + (OUTPUTS,))


def assert_same_as_reference(stages, clips, targets, loss, per_frame, windows, pieces, chunk):
    """The skewed order over ``pieces`` (consecutive steps of one stream) vs one tick-by-tick
    pass over the whole clip."""
    means, counts, losses = numpy_reference.sideways_gradients(
        stages, clips, targets, loss, per_frame, windows)
    state, total_counts, total_losses = None, [0] * len(stages), []
    totals = [[np.zeros_like(s.kernel), np.zeros_like(s.bias)] for s in stages]
    begin = 0
    for length in pieces:
        piece = slice(begin, begin + length)
        sums, step_counts, step_losses, state = numpy_skewed.skewed_step(
            stages, clips[:, piece], targets[:, piece] if per_frame else targets, loss,
            per_frame, chunk, windows, state)
        for k in range(len(stages)):
            totals[k][0] += sums[k][0]
            totals[k][1] += sums[k][1]
            total_counts[k] += step_counts[k]
        total_losses += step_losses
        begin += length
    assert total_counts == counts
    for k in range(len(stages)):
        for got, mean in zip(totals[k], means[k], strict=True):
            np.testing.assert_allclose(got, mean * max(counts[k], 1), rtol=1e-12, atol=1e-12)
    assert [v is None for v in total_losses] == [v is None for v in losses]
    np.testing.assert_allclose([v for v in total_losses if v is not None],
                               [v for v in losses if v is not None], rtol=1e-12)


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7])
def test_stateless_skewed_order_equals_the_per_tick_reference(num_stages, chunk):
    rng = np.random.default_rng(10 * num_stages + chunk)
    frames = 2 * num_stages - 1 + 5  # not a multiple of most chunk sizes: a partial last chunk
    for loss, per_frame in (("mse", False), ("sparse_crossentropy", True)):
        windows = [1] * num_stages
        stages = random_stages(rng, num_stages, windows)
        clips, targets = random_batch(rng, frames, loss, per_frame)
        assert_same_as_reference(stages, clips, targets, loss, per_frame, windows, [frames],
                                 chunk)


@pytest.mark.parametrize("windows", [[3], [2, 1], [3, 2, 1], [1, 3, 2], [2, 1, 2, 3]])
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_windows_in_the_skewed_order(windows, chunk):
    rng = np.random.default_rng(len(windows) * 7 + chunk)
    frames = 2 * len(windows) + 6
    for loss, per_frame in (("sparse_crossentropy", False), ("mse", True)):
        stages = random_stages(rng, len(windows), windows)
        clips, targets = random_batch(rng, frames, loss, per_frame)
        assert_same_as_reference(stages, clips, targets, loss, per_frame, windows, [frames],
                                 chunk)


@pytest.mark.parametrize("num_stages,windows", [(2, [1, 1]), (3, [2, 1, 3]), (4, [1] * 4),
                                                (5, [3, 1, 1, 2, 1])])
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_stateful_steps_drain_and_carry_the_per_tick_state(num_stages, windows, chunk):
    """Steps shorter than 2K-1, and longer ones, continue the stream exactly."""
    rng = np.random.default_rng(num_stages * 13 + chunk)
    pieces = [1, 2, 5, 3, 7]
    frames = sum(pieces)
    for loss, per_frame in (("mse", True), ("sparse_crossentropy", False)):
        stages = random_stages(rng, num_stages, windows)
        clips, targets = random_batch(rng, frames, loss, per_frame)
        assert_same_as_reference(stages, clips, targets, loss, per_frame, windows, pieces, chunk)
