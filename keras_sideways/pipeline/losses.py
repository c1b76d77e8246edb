"""Losses of a step: the compiled loss per tick, and the regularisation added once per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from keras_sideways.pipeline.tensors import gradient, num_replicas

FrameLoss = Callable[[Any, tf.Tensor, Any], tf.Tensor]


def tick_losses(frame_loss: FrameLoss, targets: tf.Tensor, outputs: tf.Tensor,
                weights: Any) -> tf.Tensor:
    """The compiled loss of each tick's batch, ticks-first (n, B, …) -> (n,), in one call.

    Each tick's value is exactly what ``frame_loss`` gives for that tick's batch alone, whatever
    its reduction: the per-tick call is vectorised over ticks (`tf.vectorized_map`) rather than
    repeated, since C separate loss calls (and their gradients) measured as a quarter of a
    chunk's time here. Without user weights the loss gets none: implicit ones of shape (B,)
    would not broadcast against per-pixel losses (B, H, W).
    """
    if weights is None:
        return tf.vectorized_map(lambda pair: frame_loss(pair[0], pair[1], None),
                                 (targets, outputs))
    return tf.vectorized_map(lambda triple: frame_loss(*triple), (targets, outputs, weights))


def regularization(additional_loss: Callable[[], tf.Tensor], variables: Sequence[Any],
                   scale: Any) -> tuple[Any, list[Any]]:
    """Weight-regularisation loss (for the logs) and its gradient, computed once per step."""
    with tf.GradientTape() as tape:
        total = additional_loss()
        scaled = total * scale
    gradients = gradient(tape, scaled, list(variables))
    return total * num_replicas(), gradients
