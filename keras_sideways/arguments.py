"""Argument and batch checks of `SidewaysModel`: clear errors that name the argument and the
numbers involved, raised before anything reaches TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_sideways import schedule

MODES = ("sideways", "backprop")
POOLS = ("mean", None)


def check_stages(stages: Any) -> list[keras.layers.Layer]:
    if isinstance(stages, keras.layers.Layer) or not isinstance(stages, Sequence):
        raise TypeError(
            "`stages` must be a list of Keras layers, got "
            f"{type(stages).__name__}. Wrap a single network as `[layer]`."
        )
    if len(stages) == 0:
        raise ValueError("`stages` is empty: a SidewaysModel needs at least one stage.")
    for index, stage in enumerate(stages):
        if not isinstance(stage, keras.layers.Layer):
            raise TypeError(
                f"`stages[{index}]` is a {type(stage).__name__}, not a Keras layer. Every "
                "stage must be a `keras.layers.Layer` (a layer, a Sequential, a Model)."
            )
    if len({id(stage) for stage in stages}) != len(stages):
        raise ValueError(
            "The same layer appears twice in `stages`; stages cannot share weights."
        )
    return list(stages)


def check_options(mode: Any, pool: Any, update_every: Any, tick_chunk: Any) -> None:
    """`mode`, `pool`, `update_every` and `tick_chunk` of the constructor."""
    check_mode(mode)
    if pool not in POOLS:
        raise ValueError(f"`pool` must be 'mean' or None, got {pool!r}.")
    if update_every is not None:
        if isinstance(update_every, bool) or not isinstance(update_every, int):
            raise TypeError(
                f"`update_every` must be a positive int or None, got {update_every!r}."
            )
        if update_every < 1:
            raise ValueError(f"`update_every` must be at least 1, got {update_every}.")
    if tick_chunk is not None and (
        isinstance(tick_chunk, bool) or not isinstance(tick_chunk, int) or tick_chunk < 1
    ):
        raise ValueError(f"`tick_chunk` must be a positive int or None, got {tick_chunk!r}.")


def check_stateful(stateful: Any) -> bool:
    """``stateful`` as given, if a bool: ``bool("no")`` is True, so nothing else is taken."""
    if not isinstance(stateful, bool):
        raise TypeError(f"`stateful` must be True or False, got {stateful!r}.")
    return stateful


def check_mode(mode: Any, or_none: str = "") -> None:
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}{or_none}, got {mode!r}.")


def check_temporal_windows(windows: Sequence[int] | None, num_stages: int) -> list[int]:
    if windows is None:
        return [1] * num_stages
    if isinstance(windows, int) or not isinstance(windows, Sequence):
        raise TypeError(
            f"`temporal_windows` must be a list of {num_stages} ints (one per stage), got "
            f"{windows!r}."
        )
    windows = list(windows)
    if len(windows) != num_stages:
        raise ValueError(
            f"`temporal_windows` gives {len(windows)} window lengths for {num_stages} stages; "
            "give exactly one per stage (1 for no window)."
        )
    for k, window in enumerate(windows):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"`temporal_windows[{k}]` must be an int >= 1, got {window!r}."
            )
    return windows


def check_input_shape(input_shape: tuple) -> None:
    if len(input_shape) < 3:
        raise ValueError(
            "SidewaysModel expects clips shaped (batch, frames, …features), e.g. "
            f"(B, T, D) or (B, T, H, W, C); got input shape {input_shape}."
        )


def convert_batch(clips: Any, targets: Any,
                  sample_weight: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
    """Tensors of a batch, or a clear error for missing targets or integer clips."""
    if clips is None or targets is None:
        raise ValueError(
            "Training or evaluating a SidewaysModel needs (clips, targets); targets are None."
        )
    clips = tf.convert_to_tensor(clips)
    targets = tf.convert_to_tensor(targets)
    if not clips.dtype.is_floating:
        raise TypeError(
            f"Clips must be floating point, got dtype {clips.dtype.name}. Convert frames "
            "first, e.g. `tf.cast(clips, 'float32') / 255.0`."
        )
    if clips.shape.rank is None or clips.shape.rank < 3:
        raise ValueError(
            "Clips must be shaped (batch, frames, …features); got shape "
            f"{clips.shape}."
        )
    if sample_weight is not None:
        sample_weight = tf.convert_to_tensor(sample_weight, dtype=tf.float32)
    return clips, targets, sample_weight


def check_targets(pool: str | None, output_shape: tuple, clips: tf.Tensor, targets: tf.Tensor,
                  sample_weight: Any) -> None:
    output_rank = len(output_shape)
    rank = targets.shape.rank
    num_frames = clips.shape[1]
    if pool == "mean":
        if rank > output_rank:
            raise ValueError(
                f"With pool='mean' targets are per clip, of rank at most {output_rank} "
                f"(per-frame outputs are {output_shape}), but targets have "
                f"shape {targets.shape}. For per-frame targets (B, T, …) use pool=None."
            )
    else:
        if rank < 2 or rank > output_rank + 1:
            raise ValueError(
                "With pool=None targets are per frame, shaped (B, T, …) with rank 2 to "
                f"{output_rank + 1}, but targets have shape {targets.shape}. For one target "
                "per clip use pool='mean'."
            )
        if targets.shape[1] is not None and num_frames is not None:
            if targets.shape[1] != num_frames:
                raise ValueError(
                    f"Per-frame targets cover {targets.shape[1]} frames but the clips have "
                    f"T={num_frames}; targets must be shaped (B, T, …) with the clip's T."
                )
    if targets.shape[0] is not None and clips.shape[0] is not None:
        if targets.shape[0] != clips.shape[0]:
            raise ValueError(
                f"Got {clips.shape[0]} clips but {targets.shape[0]} targets in the batch."
            )
    if sample_weight is not None:
        check_sample_weight(clips, sample_weight)


def check_sample_weight(clips: tf.Tensor, sample_weight: tf.Tensor) -> None:
    """Per-clip (B,) or per-frame (B, T) weights, with either pool (per-frame weights weigh each
    frame's loss in training), matching the clips' B and T."""
    rank = sample_weight.shape.rank
    if rank is not None and rank not in (1, 2):
        raise ValueError(
            "sample_weight must be per clip (B,) or per frame (B, T), with pool='mean' or "
            f"None alike; got shape {sample_weight.shape}."
        )
    if None not in (sample_weight.shape[0], clips.shape[0]):
        if sample_weight.shape[0] != clips.shape[0]:
            raise ValueError(
                f"Got {clips.shape[0]} clips but {sample_weight.shape[0]} sample weights in the "
                "batch."
            )
    if rank == 2 and None not in (sample_weight.shape[1], clips.shape[1]):
        if sample_weight.shape[1] != clips.shape[1]:
            raise ValueError(
                f"Per-frame sample weights cover {sample_weight.shape[1]} frames but the clips "
                f"have T={clips.shape[1]}; they must be shaped (B, T)."
            )


def weights_for_build(pool: str | None, sample_weight: Any) -> Any:
    """Sample weights shaped for Keras' symbolic build of the compiled loss and metrics, which
    runs against `call`'s output: per clip for ``pool="mean"`` (B, …)."""
    if pool == "mean" and sample_weight is not None and sample_weight.shape.rank == 2:
        return sample_weight[:, 0]
    return sample_weight


def check_clip_length(num_stages: int, clips: tf.Tensor) -> None:
    """A stateless Sideways clip has at least 2K-1 frames (checked in the graph if unknown)."""
    num_frames = clips.shape[1]
    if num_frames is not None:
        schedule.check_clip_length(num_stages, num_frames)
        return
    tf.debugging.assert_greater_equal(
        tf.shape(clips)[1], schedule.min_clip_length(num_stages),
        message=schedule.short_clip_message(num_stages),
    )


def check_stream_batch(known: int | None, clips: tf.Tensor) -> tuple[int, tf.Tensor]:
    """The fixed batch size of a stateful model's streams and the clips, or a clear error.

    ``known``: the streams' batch size, None before the first batch (after creation, loading or
    `reset_buffers`). A step that TensorFlow retraced with an unknown batch size (it relaxes
    shapes after a second one) is checked at run time, the clips returned behind that check.
    """
    batch_size = clips.shape[0]
    if batch_size is None and known is not None:
        check = tf.debugging.assert_equal(
            tf.shape(clips)[0], known,
            message=(f"This stateful SidewaysModel runs {known} streams per replica but got a "
                     "batch of another size (x below). Keep the batch size fixed (e.g. "
                     "`drop_remainder=True`), or call `reset_buffers()` to start new streams "
                     "with another batch size."),
        )
        with tf.control_dependencies([check]):
            return known, tf.identity(clips)
    if batch_size is None:
        raise ValueError(
            "A stateful SidewaysModel needs a fixed batch size, but the batch size is "
            "unknown here. Batch the dataset with `drop_remainder=True`."
        )
    if known is not None and known != batch_size:
        raise ValueError(
            f"This stateful SidewaysModel runs {known} streams per "
            f"replica but got a batch of {batch_size} clips. Keep the batch size fixed "
            "(e.g. `drop_remainder=True`), or call `reset_buffers()` to start new streams "
            "with another batch size."
        )
    return int(batch_size), clips


def check_update_every_replicas(update_every: int | None, mode: str, replicas: float) -> None:
    """In-loop updates cannot be synchronised across replicas: a clear error instead."""
    if update_every is not None and mode == "sideways" and replicas > 1:
        raise NotImplementedError(
            f"update_every={update_every} applies optimizer updates inside the tick "
            "loop, which a multi-replica tf.distribute strategy cannot synchronise "
            f"({replicas:.0f} replicas here: a merge_call inside control flow). Use "
            "update_every=None (one update per step) under the strategy."
        )
