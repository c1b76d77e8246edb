"""Clip sampling: which frame indices of a video make up one clip.

This is the "sample indices" step of the input pipeline. It runs before any decoding, so decoders
only have to produce the frames a clip actually uses.

Rules (shared by every pipeline in this package, so the folder and TFRecord paths agree):

- A clip is ``num_frames`` indices ``start, start + frame_step, ...``; indices count decoded
  frames in presentation order, not time, so variable-frame-rate videos are sampled by frame.
- Training (``random=True``): ``start`` is uniform over every position where the whole clip fits.
- Evaluation (``random=False``): the centre clip, ``start = (video_frames - span) // 2``.
- Videos shorter than the clip's span **loop**: the clip starts at frame 0 and indices wrap
  around modulo the video length (as DMVR does), so every clip has exactly ``num_frames`` frames.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def clip_span(num_frames: int, frame_step: int) -> int:
    """Number of consecutive video frames a clip covers, first to last index inclusive."""
    return (num_frames - 1) * frame_step + 1


def _check_clip_args(num_frames: int, frame_step: int) -> None:
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if int(frame_step) < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")


def clip_indices(
    video_frames: int,
    num_frames: int,
    frame_step: int = 1,
    *,
    start: int | None = None,
) -> np.ndarray:
    """NumPy version of the sampling rule for a given start (``None`` means the centre clip).

    Args:
        video_frames: number of frames in the video (>= 1).
        num_frames: frames per clip.
        frame_step: stride between sampled frames.
        start: first frame; clipped to the valid range. ``None`` picks the centre clip.

    Returns:
        ``int64`` array of shape ``(num_frames,)``.
    """
    _check_clip_args(num_frames, frame_step)
    if video_frames < 1:
        raise ValueError(f"video_frames must be >= 1, got {video_frames}")
    max_start = max(0, video_frames - clip_span(num_frames, frame_step))
    if start is None:
        start = max_start // 2
    start = min(max(0, int(start)), max_start)
    return (start + np.arange(num_frames, dtype=np.int64) * frame_step) % video_frames


def sample_clip_indices(
    video_frames: tf.Tensor,
    num_frames: int,
    frame_step: int = 1,
    *,
    random: bool = False,
    random_value: tf.Tensor | None = None,
) -> tf.Tensor:
    """Graph version of :func:`clip_indices` (pure TF ops, usable inside ``Dataset.map``).

    Args:
        video_frames: scalar integer tensor, the video's frame count.
        num_frames: frames per clip.
        frame_step: stride between sampled frames.
        random: random start (training) instead of the centre clip (evaluation).
        random_value: an ``int64`` scalar used to pick the random start, typically
            an element of ``tf.data.Dataset.random(seed)`` zipped into the pipeline; that keeps
            sampling deterministic under a seed even with parallel maps. When ``None`` and
            ``random`` is set, an unseeded ``tf.random.uniform`` draw is used.

    Returns:
        ``int64`` tensor of shape ``(num_frames,)``.
    """
    _check_clip_args(num_frames, frame_step)
    video_frames = tf.maximum(tf.cast(video_frames, tf.int64), 1)
    span = tf.constant(clip_span(num_frames, frame_step), tf.int64)
    max_start = tf.maximum(tf.constant(0, tf.int64), video_frames - span)
    if random:
        if random_value is None:
            random_value = tf.random.uniform((), maxval=tf.int64.max, dtype=tf.int64)
        # Dataset.random yields values over the whole int64 range, negatives included; floormod
        # by a positive divisor always lands in [0, max_start].
        start = tf.math.floormod(tf.cast(random_value, tf.int64), max_start + 1)
    else:
        start = max_start // 2
    steps = tf.range(num_frames, dtype=tf.int64) * frame_step
    return tf.math.floormod(start + steps, video_frames)
