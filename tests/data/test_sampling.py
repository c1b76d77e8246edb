"""Clip sampling rules: centre clip, random start range, frame_step, looping short videos."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_sideways.data import clip_indices, sample_clip_indices


def test_centre_clip_with_stride():
    # span = (4 - 1) * 3 + 1 = 10 of 20 frames: start (20 - 10) // 2 = 5.
    assert clip_indices(20, 4, 3).tolist() == [5, 8, 11, 14]


def test_start_is_clipped_to_where_the_clip_fits():
    assert clip_indices(20, 4, 3, start=100).tolist() == [10, 13, 16, 19]
    assert clip_indices(20, 4, 3, start=-5).tolist() == [0, 3, 6, 9]


def test_short_video_loops_from_the_first_frame():
    assert clip_indices(5, 8, 1).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert clip_indices(5, 4, 2).tolist() == [0, 2, 4, 1]  # span 7 > 5: wraps
    assert clip_indices(1, 3, 1).tolist() == [0, 0, 0]


def test_exact_fit():
    assert clip_indices(16, 16, 1).tolist() == list(range(16))


@pytest.mark.parametrize("frames,num,step", [(20, 4, 3), (5, 8, 1), (300, 16, 2), (16, 16, 1)])
def test_graph_centre_matches_numpy(frames, num, step):
    got = sample_clip_indices(tf.constant(frames), num, step, random=False).numpy()
    assert got.tolist() == clip_indices(frames, num, step).tolist()


def test_graph_random_start_covers_exactly_the_valid_range():
    frames, num, step = 30, 4, 3  # span 10: starts 0..20
    randoms = np.random.default_rng(0).integers(-(2**62), 2**62, 400)
    starts = set()
    for r in randoms:
        idx = sample_clip_indices(frames, num, step, random=True, random_value=tf.constant(r))
        idx = idx.numpy()
        assert np.all(np.diff(idx) == step)
        starts.add(int(idx[0]))
    assert starts == set(range(21))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        clip_indices(10, 0)
    with pytest.raises(ValueError, match="frame_step"):
        sample_clip_indices(10, 4, 0)
