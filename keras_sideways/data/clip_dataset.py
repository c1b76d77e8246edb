"""The clip pipeline over already probed files: sample, decode, preprocess, batch.

:func:`build_clip_dataset` is the back half of
:func:`~keras_sideways.data.video_folder.video_dataset_from_directory`, one small function per
phase: the file items, an optional in-memory cache of whole decoded videos, the random values
for clip starts, clip sampling, decoding (clip by clip, or a batch at a time), and
preprocessing after batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from keras_sideways.data.sampling import sample_clip_indices

DecodeFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
LabelFn = Callable[[tf.Tensor], tf.Tensor]
Item = dict[str, tf.Tensor]


def preprocess_clip(frames: tf.Tensor) -> tf.Tensor:
    """The preprocess step: uint8 frames -> float32 in [0, 1]."""
    return tf.cast(frames, tf.float32) / 255.0


def label_encoder(label_mode: str, num_classes: int) -> LabelFn:
    """The label step: an int64 class index -> the ``label_mode`` encoding."""
    if label_mode == "int":
        return lambda y: tf.cast(y, tf.int32)
    if label_mode == "categorical":
        return lambda y: tf.one_hot(y, num_classes, dtype=tf.float32)
    if label_mode == "binary":
        return lambda y: tf.reshape(tf.cast(y, tf.float32), (1,))
    raise ValueError(f"unknown label_mode {label_mode!r}")


def build_clip_dataset(
    file_paths: Sequence[str],
    video_frames: Sequence[int],
    labels: Sequence[int] | None,
    decode_fn: DecodeFn,
    *,
    num_frames: int,
    frame_step: int,
    batch_size: int | None,
    shuffle: bool,
    seed: int | None,
    label_fn: LabelFn | None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    decode_video_fn: DecodeFn | None = None,
    decode_batch_fn: DecodeFn | None = None,
) -> tf.data.Dataset:
    """Steps 3-6 (sample, decode, preprocess, batch) over already probed files.

    With ``shuffle``, file order is reshuffled every epoch and clip starts are drawn from
    ``tf.data.Dataset.random``; both are seeded, and the parallel decode keeps order, so a given
    ``seed`` gives the same batches on every run. Without ``shuffle``, order and clips are fixed.

    With ``decode_video_fn`` (``(path, num_frames) -> uint8 (num_frames, H, W, 3)``) every video
    is decoded whole once, in the first epoch, and kept in memory; later epochs sample their
    clips from memory with in-graph gathers. The clips are the same as without it.

    With ``decode_batch_fn`` (``(paths (B,), indices (B, T)) -> uint8 (B, T, H, W, 3)``) and a
    ``batch_size``, clip indices are batched first and each batch decoded in one call (which
    parallelises inside); the batches are the same as decoding clip by clip.
    """
    ds = _file_items(file_paths, video_frames, labels)
    if decode_video_fn is not None:
        ds = _cached_videos(ds, decode_video_fn, num_parallel_calls)
    ds = _with_random_values(ds, len(file_paths), shuffle, seed)
    sample = _clip_sampler(num_frames, frame_step, shuffle)
    decode = _clip_decoder(decode_fn, label_fn)
    # From the cache a clip is a gather: cheaper in the iterator's own thread than handed to a
    # thread pool, which would compete with training for the cores.
    parallel = None if decode_video_fn is not None else num_parallel_calls
    if parallel is None:
        ds = ds.map(sample).map(decode)
    elif decode_batch_fn is not None and batch_size is not None:
        return _decoded_by_batch(ds, sample, decode_batch_fn, label_fn, batch_size, parallel)
    else:
        deterministic = (not shuffle) or seed is not None
        ds = ds.map(sample, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(decode, num_parallel_calls=parallel, deterministic=deterministic)
    return _batched_and_preprocessed(ds, batch_size)


def _file_items(
    file_paths: Sequence[str], video_frames: Sequence[int], labels: Sequence[int] | None
) -> tf.data.Dataset:
    """One item per file: ``{"path", "frames"}`` (its frame count), and ``"label"`` if any."""
    items = {
        "path": tf.constant(list(file_paths), tf.string),
        "frames": tf.constant(list(video_frames), tf.int64),
    }
    if labels is not None:
        items["label"] = tf.constant(list(labels), tf.int64)
    return tf.data.Dataset.from_tensor_slices(items)


def _cached_videos(
    ds: tf.data.Dataset, decode_video_fn: DecodeFn, num_parallel_calls: int
) -> tf.data.Dataset:
    """Every item with its whole decoded video (``"video"``), decoded once and kept in memory."""

    def decode_video(item: Item) -> Item:
        item = dict(item)
        item["video"] = decode_video_fn(item["path"], item["frames"])
        return item

    # Decode in listing order, then cache: the shuffle that follows permutes cached videos,
    # with the same seeded permutation as the uncached pipeline permutes paths.
    return ds.map(decode_video, num_parallel_calls=num_parallel_calls).cache()


def _with_random_values(
    ds: tf.data.Dataset, num_files: int, shuffle: bool, seed: int | None
) -> tf.data.Dataset:
    """``(item, random value)`` pairs: shuffled items with seeded random values for their clip
    starts, or listing order with 0 (centre clips) without ``shuffle``."""
    if not shuffle:
        return ds.map(lambda item: (item, tf.constant(0, tf.int64)))
    # Only paths are shuffled here, so a buffer of the whole listing costs nothing.
    ds = ds.shuffle(num_files, seed=seed, reshuffle_each_iteration=True)
    rand_seed = None if seed is None else seed + 1
    randoms = tf.data.Dataset.random(seed=rand_seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip((ds, randoms))


def _clip_sampler(
    num_frames: int, frame_step: int, shuffle: bool
) -> Callable[[Item, tf.Tensor], Item]:
    """The sample step: adds the clip's frame ``"indices"`` to an item."""

    def sample(item: Item, r: tf.Tensor) -> Item:
        item = dict(item)
        item["indices"] = sample_clip_indices(
            item["frames"], num_frames, frame_step, random=shuffle, random_value=r
        )
        return item

    return sample


def _clip_decoder(
    decode_fn: DecodeFn, label_fn: LabelFn | None
) -> Callable[[Item], tuple[tf.Tensor, ...] | tf.Tensor]:
    """The decode step, clip by clip: an item -> uint8 frames (and its encoded label).

    Frames come from the cached video where there is one, else from ``decode_fn``.
    """

    def decode(item: Item) -> tuple[tf.Tensor, ...] | tf.Tensor:
        if "video" in item:
            frames = tf.gather(item["video"], item["indices"])
        else:
            frames = decode_fn(item["path"], item["indices"])
        if label_fn is None or "label" not in item:
            return frames
        return frames, label_fn(item["label"])

    return decode


def _decoded_by_batch(
    ds: tf.data.Dataset,
    sample: Callable[[Item, tf.Tensor], Item],
    decode_batch_fn: DecodeFn,
    label_fn: LabelFn | None,
    batch_size: int,
    parallel: int,
) -> tf.data.Dataset:
    """The decode step a batch at a time: sample and label clip by clip, batch the indices,
    decode each batch in one ``decode_batch_fn`` call, then preprocess and prefetch."""

    def sample_and_label(item: Item, r: tf.Tensor) -> Item:
        item = sample(item, r)
        if label_fn is not None and "label" in item:
            item["label"] = label_fn(item["label"])
        return item

    def decode_batch(items: Item) -> tuple[tf.Tensor, ...] | tf.Tensor:
        frames = decode_batch_fn(items["path"], items["indices"])
        return (frames, items["label"]) if label_fn is not None and "label" in items else frames

    ds = ds.map(sample_and_label, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    # Several batches in flight, so that one batch's slowest clip does not leave the
    # workers idle; deterministic, so batches keep their order.
    ds = ds.map(decode_batch, num_parallel_calls=parallel, deterministic=True)
    return ds.map(_preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _batched_and_preprocessed(ds: tf.data.Dataset, batch_size: int | None) -> tf.data.Dataset:
    """The batch and preprocess steps, in that order, then prefetch.

    Batching the uint8 frames, then converting whole batches: one vectorised op per step, and
    a quarter of the bytes through the batching copy.
    """
    if batch_size is not None:
        ds = ds.batch(batch_size)
    ds = ds.map(_preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _preprocess(frames: tf.Tensor, *label: tf.Tensor) -> tuple[tf.Tensor, ...] | tf.Tensor:
    """:func:`preprocess_clip` on the frames of a ``frames`` or ``(frames, label)`` element."""
    return (preprocess_clip(frames), *label) if label else preprocess_clip(frames)
