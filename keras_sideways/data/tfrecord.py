"""The scale path: TFRecord shards of JPEG frames, read back with pure TensorFlow ops.

Format (the one DeepMind's DMVR and the TF Model Garden video readers use): one
``tf.train.SequenceExample`` per video,

- context ``clip/label/index`` (int64), ``clip/label/text`` (bytes), ``video/filename``
  (bytes), ``image/height`` / ``image/width`` (int64);
- feature list ``image/encoded``: one JPEG per frame, in presentation order.

Writing decodes every video once (PyAV). Reading parses a record, **samples clip indices first**,
gathers only those JPEG strings and decodes just them, so a 16-frame clip of a 300-frame video
decodes 16 JPEGs, not 300. No Python runs per element, so the dataset works under any
``tf.distribute`` strategy, multi-worker auto-sharding (by file) and tf.data service.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_sideways.data.clip_dataset import preprocess_clip
from keras_sideways.data.listing import list_video_files
from keras_sideways.data.pyav_decoder import iter_frames
from keras_sideways.data.sampling import sample_clip_indices
from keras_sideways.data.video_folder import select_usable

METADATA_FILE = "video_tfrecords.json"
"""Written next to the shards: class names, counts, shard list, skipped files."""

IMAGE_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def video_sequence_example(
    jpeg_frames: Sequence[bytes],
    *,
    label: int = -1,
    label_text: str = "",
    filename: str = "",
    height: int = 0,
    width: int = 0,
) -> tf.train.SequenceExample:
    """Build one video's ``SequenceExample`` from already JPEG-encoded frames."""
    context = tf.train.Features(
        feature={
            LABEL_KEY: _int_feature(label),
            TEXT_KEY: _bytes_feature(label_text.encode()),
            FILENAME_KEY: _bytes_feature(filename.encode()),
            "image/height": _int_feature(height),
            "image/width": _int_feature(width),
        }
    )
    frames = tf.train.FeatureList(feature=[_bytes_feature(j) for j in jpeg_frames])
    return tf.train.SequenceExample(
        context=context, feature_lists=tf.train.FeatureLists(feature_list={IMAGE_KEY: frames})
    )


def write_video_tfrecords(
    directory: str,
    output_dir: str,
    *,
    labels: str | Sequence[int] | None = "inferred",
    class_names: Sequence[str] | None = None,
    num_shards: int = 8,
    image_size: tuple[int, int] | None = None,
    jpeg_quality: int = 90,
    on_error: str = "raise",
    prefix: str = "videos",
) -> list[str]:
    """Turn a folder of videos into sharded TFRecord ``SequenceExample``\\ s of JPEG frames.

    Args:
        directory: a folder laid out as for
            :func:`~keras_sideways.data.video_dataset_from_directory`.
        output_dir: where shards and :data:`METADATA_FILE` go (created if missing).
        labels: as for ``video_dataset_from_directory``.
        class_names: as for ``video_dataset_from_directory``.
        num_shards: number of shard files (fewer when there are fewer videos). Videos are dealt
            round-robin in listing order, so every shard holds every class.
        image_size: ``(height, width)`` to resize frames to before JPEG encoding; ``None``
            keeps each video's own size.
        jpeg_quality: JPEG quality, 0-100.
        on_error: ``"raise"`` or ``"skip"`` files that fail the probe, as for
            ``video_dataset_from_directory``; skipped files are listed in the metadata file.
        prefix: shard file name prefix: ``<prefix>-00000-of-00008.tfrecord``.

    Returns:
        The shard paths, in order.
    """
    listing = list_video_files(directory, labels, class_names)
    paths, file_labels, _, bad = select_usable(
        listing.file_paths, listing.labels, listing.problems, on_error, directory
    )
    os.makedirs(output_dir, exist_ok=True)
    num_shards = max(1, min(int(num_shards), len(paths)))
    shard_paths = [
        os.path.join(output_dir, f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord")
        for i in range(num_shards)
    ]
    writers = [tf.io.TFRecordWriter(p) for p in shard_paths]
    try:
        for i, path in enumerate(paths):
            jpegs: list[bytes] = []
            height = width = 0
            for frame in iter_frames(path, image_size):
                height, width = frame.shape[:2]
                jpegs.append(tf.io.encode_jpeg(frame, quality=jpeg_quality).numpy())
            label = file_labels[i] if file_labels is not None else -1
            text = listing.class_names[label] if listing.class_names and label >= 0 else ""
            example = video_sequence_example(
                jpegs,
                label=label,
                label_text=text,
                filename=os.path.relpath(path, directory),
                height=height,
                width=width,
            )
            writers[i % num_shards].write(example.SerializeToString())
    finally:
        for w in writers:
            w.close()
    metadata = {
        "class_names": listing.class_names,
        "num_videos": len(paths),
        "shards": [os.path.basename(p) for p in shard_paths],
        "skipped": [list(b) for b in bad],
    }
    with open(os.path.join(output_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=1)
    return shard_paths


def parse_video_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """The parse step: a serialized record -> ``{"jpegs": (N,) string, "label": int64}``."""
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        },
        sequence_features={IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)},
    )
    return {
        "jpegs": sequence[IMAGE_KEY],
        "label": context[LABEL_KEY],
        "filename": context[FILENAME_KEY],
    }


def decode_jpeg_frames(jpegs: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """The decode step: JPEG strings ``(T,)`` -> uint8 ``(T, H, W, 3)`` at ``image_size``.

    Frames already at ``image_size`` are not resampled, so a round trip through
    :func:`write_video_tfrecords` differs from direct decoding only by JPEG loss.
    """
    height, width = image_size

    def one(jpeg: tf.Tensor) -> tf.Tensor:
        frame = tf.io.decode_jpeg(jpeg, channels=3)
        shape = tf.shape(frame)
        same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
        frame = tf.cond(
            same,
            lambda: frame,
            lambda: tf.cast(
                tf.clip_by_value(tf.round(tf.image.resize(frame, image_size)), 0, 255), tf.uint8
            ),
        )
        return tf.ensure_shape(frame, (height, width, 3))

    return tf.map_fn(one, jpegs, fn_output_signature=tf.TensorSpec((height, width, 3), tf.uint8))


def _resolve_files(files: str | Sequence[str]) -> tuple[list[str], dict]:
    """Shard paths from a directory (with metadata), a glob pattern, or a list."""
    metadata: dict = {}
    if isinstance(files, str | os.PathLike):
        files = os.fspath(files)
        if os.path.isdir(files):
            meta_path = os.path.join(files, METADATA_FILE)
            if os.path.exists(meta_path):
                with open(meta_path) as f:
                    metadata = json.load(f)
                paths = [os.path.join(files, s) for s in metadata["shards"]]
            else:
                paths = sorted(glob.glob(os.path.join(files, "*.tfrecord")))
        else:
            paths = sorted(glob.glob(files))
    else:
        paths = [os.fspath(p) for p in files]
    if not paths:
        raise ValueError(f"{files}: no TFRecord files found")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise ValueError(f"TFRecord shard(s) not found: {missing}")
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if not metadata and len(folders) == 1:
        # Shards given by pattern or list: use the metadata written beside them, if any.
        meta_path = os.path.join(folders.pop(), METADATA_FILE)
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                metadata = json.load(f)
    return paths, metadata


def tfrecord_video_dataset(
    files: str | Sequence[str],
    *,
    batch_size: int | None = 8,
    num_frames: int = 16,
    frame_step: int = 1,
    image_size: tuple[int, int] = (112, 112),
    shuffle: bool = True,
    seed: int | None = None,
    label_mode: str | None = "int",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    shuffle_buffer_size: int = 256,
    cycle_length: int | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    sample_before_decode: bool = True,
) -> tf.data.Dataset:
    """Clips and labels from :func:`write_video_tfrecords` shards, with pure TF ops.

    Same output contract and sampling rules as
    :func:`~keras_sideways.data.video_dataset_from_directory`: ``(clips, labels)`` with clips
    ``float32 (batch, num_frames, H, W, 3)`` in [0, 1]; random clips when ``shuffle``, centre
    clips otherwise; short videos loop.

    Args:
        files: the output folder of ``write_video_tfrecords`` (class names are read from its
            metadata), a glob pattern, or a list of shard paths.
        batch_size: clips per batch; ``None`` for unbatched.
        num_frames: frames per clip.
        frame_step: stride between sampled frames.
        image_size: ``(height, width)`` output size (bilinear resize when frames differ).
        shuffle: shuffle shards and records (and sample random clips).
        seed: makes shuffling and clip starts deterministic.
        label_mode: ``"int"``, ``"categorical"`` (needs class names or ``num_classes``), or
            ``None`` (clips only).
        num_classes: number of classes for ``"categorical"`` when not in the metadata.
        class_names: overrides the metadata's class names.
        shuffle_buffer_size: records in the shuffle buffer (each is one video's JPEGs).
        cycle_length: shards read at once (default: all, up to the CPU count).
        num_parallel_calls: records decoded in parallel.
        sample_before_decode: gather the clip's JPEGs, then decode only those (default). ``False``
            decodes every frame and then gathers; kept to measure the difference.

    Returns:
        A ``tf.data.Dataset`` with ``class_names`` and ``file_paths`` (the shards) attributes.
    """
    if label_mode not in ("int", "categorical", None):
        raise ValueError(f'label_mode must be "int", "categorical" or None, got {label_mode!r}')
    paths, metadata = _resolve_files(files)
    names = list(class_names) if class_names is not None else metadata.get("class_names")
    if label_mode == "categorical":
        num_classes = num_classes or (len(names) if names else None)
        if not num_classes:
            raise ValueError('label_mode="categorical" needs class_names or num_classes')
    image_size = (int(image_size[0]), int(image_size[1]))
    if shuffle and seed is None:
        seed = int(np.random.randint(1_000_000))
    deterministic = (not shuffle) or seed is not None

    ds = _records(paths, shuffle=shuffle, seed=seed, cycle_length=cycle_length,
                  shuffle_buffer_size=shuffle_buffer_size, deterministic=deterministic)
    load = _clip_loader(num_frames, frame_step, image_size, shuffle=shuffle,
                        label_mode=label_mode, num_classes=num_classes,
                        sample_before_decode=sample_before_decode)
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if batch_size is not None:
        ds = ds.batch(batch_size)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds.class_names = names
    ds.file_paths = paths
    return ds


def _records(paths: list[str], *, shuffle: bool, seed: int | None, cycle_length: int | None,
             shuffle_buffer_size: int, deterministic: bool) -> tf.data.Dataset:
    """The read phase: serialized records, each paired with a random value for its clip start
    (0 without shuffling), shards interleaved."""
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    cycle = cycle_length or min(len(paths), os.cpu_count() or 1)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
        randoms = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        return tf.data.Dataset.zip((ds, randoms))
    return ds.map(lambda r: (r, tf.constant(0, tf.int64)))


def _clip_loader(num_frames: int, frame_step: int, image_size: tuple[int, int], *,
                 shuffle: bool, label_mode: str | None, num_classes: int | None,
                 sample_before_decode: bool) -> Any:
    """The sample, decode and preprocess phases: (record, random value) -> clip (and label)."""

    def load(serialized: tf.Tensor, random_value: tf.Tensor) -> tf.Tensor | tuple:
        item = parse_video_example(serialized)
        jpegs = item["jpegs"]
        indices = sample_clip_indices(
            tf.shape(jpegs, out_type=tf.int64)[0],
            num_frames,
            frame_step,
            random=shuffle,
            random_value=random_value,
        )
        if sample_before_decode:
            frames = decode_jpeg_frames(tf.gather(jpegs, indices), image_size)
        else:
            frames = tf.gather(decode_jpeg_frames(jpegs, image_size), indices)
        clip = preprocess_clip(tf.ensure_shape(frames, (num_frames, *image_size, 3)))
        if label_mode is None:
            return clip
        if label_mode == "categorical":
            return clip, tf.one_hot(item["label"], num_classes, dtype=tf.float32)
        return clip, tf.cast(item["label"], tf.int32)

    return load
