"""The exact, synchronous computations: the forward over all frames and the backprop baseline.

Evaluation, prediction and ``call`` use `sequence_forward`; ``mode="backprop"`` trains with
`backprop_gradients`. Both batch the T frames (B·T) through each stage, windows gathered by
`windows.gather_windows` with the same edge padding as the pipeline's stream start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from keras_sideways.pipeline.recurrence import Device
from keras_sideways.pipeline.tensors import (
    gradient,
    merge_time,
    num_replicas,
    repeat_time,
    split_time,
)
from keras_sideways.pipeline.windows import gather_windows


def sequence_forward(stages: Sequence[Any], windows: Sequence[int], device: Device,
                     clips: tf.Tensor, training: bool | None) -> tf.Tensor:
    """(B, T, …) -> per-frame top outputs (B, T, …), all frames batched through each stage.

    A stage with a temporal window reads, for frame s, the stage below's outputs for frames
    s-w+1 … s, clamped at frame 0: the same edge padding as the pipeline's stream start.
    """
    sequence = tf.convert_to_tensor(clips)
    for k, stage in enumerate(stages):
        window = windows[k]
        inputs = sequence
        if window > 1:
            inputs = gather_windows(sequence, 1 - window, tf.shape(sequence)[1], window,
                                    1 - window)
        with device(k):
            outputs = stage(merge_time(inputs), training=training)
        sequence = split_time(outputs, sequence)
    return sequence


def backprop_gradients(
    forward: Callable[[tf.Tensor], tf.Tensor],
    frame_loss: Callable[..., tf.Tensor],
    additional_loss: Callable[[], tf.Tensor],
    variables: Sequence[Any],
    clips: tf.Tensor,
    targets: tf.Tensor,
    sample_weight: Any,
    *,
    per_clip: bool,
    num_stages: int,
    loss_scale: Any,
    update_metrics: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Exact gradient of the mean per-frame loss, frames batched (B·T) through the stages.

    ``forward``: `sequence_forward` in training mode; ``frame_loss``: the compiled loss;
    ``additional_loss``: ``model.losses`` summed. Returns the step result of `compute_gradients`.
    """
    num_frames = tf.shape(clips)[1]
    frame_targets, frame_weights = per_frame(targets, sample_weight, num_frames, per_clip)
    with tf.GradientTape() as tape:
        outputs = merge_time(forward(clips))
        loss = frame_loss(frame_targets, outputs, frame_weights)
        total = loss + additional_loss()
        scaled = total * loss_scale
    gradients = gradient(tape, scaled, variables)
    if update_metrics is not None:
        update_metrics(frame_targets, outputs, frame_weights)
    return {
        "gradients": gradients,
        "loss": total * num_replicas(),
        "tick_losses": tf.fill([num_frames], tf.constant(math.nan)),
        "contributions": tf.fill([num_stages], tf.cast(num_frames, tf.float32)),
    }


def per_frame(targets: tf.Tensor, sample_weight: Any, num_frames: Any,
              per_clip: bool) -> tuple[tf.Tensor, Any]:
    """Targets and sample weights of every frame, (B·T, …): per-clip ones repeated over T."""
    frame_targets = merge_time(repeat_time(targets, num_frames) if per_clip else targets)
    if sample_weight is None:
        return frame_targets, None
    if sample_weight.shape.rank == 1:
        sample_weight = repeat_time(sample_weight, num_frames)
    return frame_targets, merge_time(sample_weight)
