"""Small tensor helpers of the tick loop: the time axis, tiling, gradients with zeros."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf


def merge_time(x: tf.Tensor) -> tf.Tensor:
    """(B, T, …) -> (B·T, …), keeping the static feature shape."""
    tail = x.shape[2:]
    if tail.is_fully_defined():
        return tf.reshape(x, [-1] + tail.as_list())
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))


def split_time(x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """(B·T, …) -> (B, T, …) with B and T taken from ``like``."""
    if like.shape[1] is not None and x.shape[1:].is_fully_defined():
        # One reshape with a constant shape: fewer ops in the tick loop's body.
        result = tf.reshape(x, [-1, like.shape[1], *x.shape[1:]])
    else:
        shape = tf.concat([tf.shape(like)[:2], tf.shape(x)[1:]], axis=0)
        result = tf.reshape(x, shape)
    result.set_shape(like.shape[:2].concatenate(x.shape[1:]))
    return result


def repeat_time(x: tf.Tensor, num_frames: Any) -> tf.Tensor:
    """Repeat a per-clip tensor (B, …) along a new time axis: (B, num_frames, …)."""
    # Tile rather than tf.repeat: two ops instead of a dozen, in the tick loop's body.
    rest = [1] * (x.shape.rank - 1)
    if isinstance(num_frames, int):
        return tf.tile(x[:, None], [1, num_frames, *rest])
    return tf.tile(x[:, None], tf.stack([1, num_frames, *rest]))


def carried_then(carried: tf.Tensor, following: tf.Tensor | None) -> tf.Tensor:
    """(B, C, …): the element carried from the previous tick, then ``following`` but its last.

    With C = 1 (or ``following`` None) this is the carried element alone, without reading
    ``following``: no data dependency then ties a stage to its neighbour within the tick, so the
    K stages of a tick can run at once (on their own devices, with ``stage_devices``).
    """
    if following is None or following.shape[1] == 1:
        return carried[:, None]
    return tf.concat([carried[:, None], following[:, :-1]], axis=1)


def gradient(tape: tf.GradientTape, target: tf.Tensor, sources: Sequence[Any],
             output_gradients: Any = None) -> list[Any]:
    """`tape.gradient` with zeros for unconnected sources (Keras variables' dtype is a string,
    which `UnconnectedGradients.ZERO` cannot use)."""
    gradients = tape.gradient(target, list(sources), output_gradients=output_gradients)
    return [
        tf.zeros(s.shape, s.dtype) if g is None else g
        for g, s in zip(gradients, sources, strict=True)
    ]


def num_replicas() -> float:
    """Replicas of the current tf.distribute strategy (1 outside any)."""
    return float(tf.distribute.get_strategy().num_replicas_in_sync)
