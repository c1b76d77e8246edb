"""``video_dataset_from_directory``: a ``tf.data`` pipeline over a folder of video files.

The pipeline is a chain of explicit steps, each replaceable (DMVR style):

1. **list** files, labels and class names (:func:`~keras_sideways.data.listing.list_video_files`),
   then split into training / validation;
2. **probe** each file once (:func:`~keras_sideways.data.pyav_decoder.probe_video`): bad files
   are reported per ``on_error`` before anything is iterated, and each good file's frame count
   and timestamp table are kept;
3. **sample** clip indices in-graph (:func:`~keras_sideways.data.sampling.sample_clip_indices`):
   random start when shuffling (training), centre clip otherwise (evaluation);
4. **decode** only those frames (:func:`~keras_sideways.data.pyav_decoder.decode_clip`: seek to
   the keyframe before the clip, stop after its last frame), several files in parallel;
5. **preprocess**: uint8 -> float32 in [0, 1];
6. **batch** and prefetch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from keras_sideways.data.errors import BadVideoFilesError, VideoInputError
from keras_sideways.data.listing import VideoListing, list_video_files, split_files
from keras_sideways.data.pyav_decoder import VideoInfo, decode_clip, probe_video
from keras_sideways.data.sampling import sample_clip_indices
from keras_sideways.data.splits import VideoSplit, read_split_file
from keras_sideways.data.tfio_decoder import (
    TfioUnavailableError,
    make_tfio_decoders,
    tfio_decoder_status,
)

logger = logging.getLogger("keras_sideways.data")

DECODERS = ("auto", "pyav", "tfio")
DECODER_VARIABLE = "KERAS_SIDEWAYS_DECODER"


def resolve_decoder(decoder: str) -> str:
    """Map ``"auto"``/``"pyav"``/``"tfio"`` to the decoder that will run, or raise why not.

    ``"auto"`` follows the ``KERAS_SIDEWAYS_DECODER`` environment variable when it is set
    (``"pyav"`` or ``"tfio"``: one decoder for a whole run without changing code; CI's tfio job
    forces tfio this way), and otherwise picks tensorflow-io when its probe passes and PyAV when
    not. It logs (INFO on the ``keras_sideways.data`` logger) which one it chose and why.

    Raises:
        TfioUnavailableError: for ``"tfio"`` (asked for, or set by the variable) when
            tensorflow-io cannot decode video here; the message lists every reason.
        ValueError: for an unknown decoder name, or variable value.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    forced = os.environ.get(DECODER_VARIABLE, "").strip()
    if decoder == "auto" and forced:
        if forced not in ("pyav", "tfio"):
            raise ValueError(f'{DECODER_VARIABLE} must be "pyav" or "tfio", got {forced!r}')
        logger.info('decoder="auto": using %s (%s=%s)', forced, DECODER_VARIABLE, forced)
        decoder = forced
    if decoder == "pyav":
        return "pyav"
    status = tfio_decoder_status()
    if decoder == "tfio":
        if not status.available:
            raise TfioUnavailableError(status.message)
        return "tfio"
    if status.available:
        logger.info(
            'decoder="auto": using tensorflow-io %s (FFmpeg %s)',
            status.tfio_version,
            ", ".join(status.ffmpeg_libraries),
        )
        return "tfio"
    logger.info(
        'decoder="auto": using PyAV (tensorflow-io unavailable: %s)', "; ".join(status.reasons)
    )
    return "pyav"


def probe_files(
    paths: Sequence[str], max_workers: int | None = None
) -> list[VideoInfo | VideoInputError]:
    """Probe every file (in threads: PyAV releases the GIL while reading); keep order."""
    workers = max_workers or min(8, os.cpu_count() or 1)

    def one(path: str) -> VideoInfo | VideoInputError:
        try:
            return probe_video(path)
        except VideoInputError as e:
            return e

    if workers <= 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, paths))


def select_usable(
    paths: Sequence[str],
    labels: Sequence[int] | None,
    problems: Sequence[tuple[str, str]],
    on_error: str,
    directory: str,
) -> tuple[list[str], list[int] | None, dict[str, VideoInfo], list[tuple[str, str]]]:
    """The probe step with ``on_error`` applied: keep the files that probe well.

    Returns:
        ``(paths, labels, infos, bad)``: the usable files with their labels and probe results,
        and ``(path, reason)`` for everything left out (listing problems included).

    Raises:
        BadVideoFilesError: with ``on_error="raise"`` when anything is bad, naming all of it.
        ValueError: naming ``directory`` when no usable file is left.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    results = probe_files(paths)
    bad = list(problems) + [(r.path, r.reason) for r in results if isinstance(r, VideoInputError)]
    if bad and on_error == "raise":
        raise BadVideoFilesError(bad)
    keep = [i for i, r in enumerate(results) if isinstance(r, VideoInfo)]
    infos = {paths[i]: results[i] for i in keep}
    kept_paths = [paths[i] for i in keep]
    kept_labels = [labels[i] for i in keep] if labels is not None else None
    if bad:
        logger.warning(
            "Skipped %d unusable video file(s)/folder(s) in %s:\n%s",
            len(bad),
            directory,
            "\n".join(f"  {p}: {r}" for p, r in bad),
        )
    if not kept_paths:
        raise ValueError(f"{directory}: no usable video files left (all {len(paths)} failed)")
    return kept_paths, kept_labels, infos, bad


def _encode_label(label_mode: str, num_classes: int) -> Callable[[tf.Tensor], tf.Tensor]:
    if label_mode == "int":
        return lambda y: tf.cast(y, tf.int32)
    if label_mode == "categorical":
        return lambda y: tf.one_hot(y, num_classes, dtype=tf.float32)
    if label_mode == "binary":
        return lambda y: tf.reshape(tf.cast(y, tf.float32), (1,))
    raise ValueError(f"unknown label_mode {label_mode!r}")


def make_pyav_decode_fn(
    infos: dict[str, VideoInfo],
    image_size: tuple[int, int],
    num_frames: int,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The decode step for PyAV: ``(path, indices) -> uint8 (num_frames, H, W, 3)``.

    Runs :func:`decode_clip` through ``tf.numpy_function`` (it takes NumPy values directly:
    less work per clip than ``tf.py_function``'s eager tensors, measured in
    ``benchmarks/decoders.py``). A failure raises (never ends iteration quietly): TensorFlow
    re-raises it from the iterator with the file's name in the message.
    """

    def decode(path: bytes, indices: np.ndarray) -> np.ndarray:
        p = path.decode()
        return decode_clip(p, indices, image_size, info=infos.get(p))

    def fn(path: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        frames = tf.numpy_function(decode, [path, indices], Tout=tf.uint8)
        frames.set_shape((num_frames, image_size[0], image_size[1], 3))
        return frames

    return fn


_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def make_pyav_batch_decode_fn(
    infos: dict[str, VideoInfo],
    image_size: tuple[int, int],
    num_frames: int,
    workers: int,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The decode step for a batch: ``(paths (B,), indices (B, T)) -> uint8 (B, T, H, W, 3)``.

    tf.data runs Python ops one at a time (measured in ``benchmarks/decoders.py``: a second
    parallel ``tf.numpy_function`` call gains nothing), so the clips of a batch are decoded in
    one call, by ``workers`` threads (PyAV releases the GIL while decoding). Results keep the
    batch's order.
    """
    workers = max(1, workers if workers > 0 else os.cpu_count() or 1)
    if workers not in _POOLS:
        _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="keras_sideways_decode"
        )
    pool = _POOLS[workers]

    def decode(paths: np.ndarray, indices: np.ndarray) -> np.ndarray:
        def one(k: int) -> np.ndarray:
            p = paths[k].decode()
            return decode_clip(p, indices[k], image_size, info=infos.get(p))

        if workers == 1 or len(paths) == 1:
            return np.stack([one(k) for k in range(len(paths))])
        return np.stack(list(pool.map(one, range(len(paths)))))

    def fn(paths: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        frames = tf.numpy_function(decode, [paths, indices], Tout=tf.uint8)
        frames.set_shape((None, num_frames, image_size[0], image_size[1], 3))
        return frames

    return fn


def make_pyav_video_fn(
    infos: dict[str, VideoInfo], image_size: tuple[int, int]
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Decode a whole video with PyAV: ``(path, num_frames) -> uint8 (num_frames, H, W, 3)``."""

    def decode(path: tf.Tensor, video_frames: tf.Tensor) -> np.ndarray:
        p = path.numpy().decode()
        indices = np.arange(int(video_frames.numpy()), dtype=np.int64)
        return decode_clip(p, indices, image_size, info=infos.get(p))

    def fn(path: tf.Tensor, video_frames: tf.Tensor) -> tf.Tensor:
        frames = tf.py_function(decode, [path, video_frames], Tout=tf.uint8)
        frames.set_shape((None, image_size[0], image_size[1], 3))
        return frames

    return fn


def preprocess_clip(frames: tf.Tensor) -> tf.Tensor:
    """The preprocess step: uint8 frames -> float32 in [0, 1]."""
    return tf.cast(frames, tf.float32) / 255.0


def build_clip_dataset(
    file_paths: Sequence[str],
    video_frames: Sequence[int],
    labels: Sequence[int] | None,
    decode_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    *,
    num_frames: int,
    frame_step: int,
    batch_size: int | None,
    shuffle: bool,
    seed: int | None,
    label_fn: Callable[[tf.Tensor], tf.Tensor] | None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    decode_video_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
    decode_batch_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
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
    n = len(file_paths)
    items = {
        "path": tf.constant(list(file_paths), tf.string),
        "frames": tf.constant(list(video_frames), tf.int64),
    }
    if labels is not None:
        items["label"] = tf.constant(list(labels), tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(items)
    if decode_video_fn is not None:

        def decode_video(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            item = dict(item)
            item["video"] = decode_video_fn(item["path"], item["frames"])
            return item

        # Decode in listing order, then cache: the shuffle below permutes cached videos, with
        # the same seeded permutation as the uncached pipeline permutes paths.
        ds = ds.map(decode_video, num_parallel_calls=num_parallel_calls).cache()
    if shuffle:
        # Only paths are shuffled here, so a buffer of the whole listing costs nothing.
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        rand_seed = None if seed is None else seed + 1
        randoms = tf.data.Dataset.random(seed=rand_seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, randoms))
    else:
        ds = ds.map(lambda item: (item, tf.constant(0, tf.int64)))

    def sample(item: dict[str, tf.Tensor], r: tf.Tensor) -> dict[str, tf.Tensor]:
        item = dict(item)
        item["indices"] = sample_clip_indices(
            item["frames"], num_frames, frame_step, random=shuffle, random_value=r
        )
        return item

    def decode(item: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...] | tf.Tensor:
        if "video" in item:
            frames = tf.gather(item["video"], item["indices"])
        else:
            frames = decode_fn(item["path"], item["indices"])
        if label_fn is None or "label" not in item:
            return frames
        return frames, label_fn(item["label"])

    def preprocess(frames: tf.Tensor, *label: tf.Tensor) -> tuple[tf.Tensor, ...] | tf.Tensor:
        return (preprocess_clip(frames), *label) if label else preprocess_clip(frames)

    deterministic = (not shuffle) or seed is not None
    # From the cache a clip is a gather: cheaper in the iterator's own thread than handed to a
    # thread pool, which would compete with training for the cores.
    parallel = None if decode_video_fn is not None else num_parallel_calls
    if parallel is None:
        ds = ds.map(sample).map(decode)
    elif decode_batch_fn is not None and batch_size is not None:

        def sample_and_label(item: dict[str, tf.Tensor], r: tf.Tensor) -> dict[str, tf.Tensor]:
            item = sample(item, r)
            if label_fn is not None and "label" in item:
                item["label"] = label_fn(item["label"])
            return item

        def decode_batch(items: dict[str, tf.Tensor]) -> tuple[tf.Tensor, ...] | tf.Tensor:
            frames = decode_batch_fn(items["path"], items["indices"])
            return (frames, items["label"]) if label_fn is not None and "label" in items else frames

        ds = ds.map(sample_and_label, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
        # Several batches in flight, so that one batch's slowest clip does not leave the
        # workers idle; deterministic, so batches keep their order.
        ds = ds.map(decode_batch, num_parallel_calls=parallel, deterministic=True)
        return ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    else:
        ds = ds.map(sample, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(decode, num_parallel_calls=parallel, deterministic=deterministic)
    # Batch the uint8 frames, then convert whole batches: one vectorised op per step, and a
    # quarter of the bytes through the batching copy.
    if batch_size is not None:
        ds = ds.batch(batch_size)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _split_listing(
    directory: str,
    split_file: str | VideoSplit,
    labels: str | Sequence[int] | None,
    class_names: Sequence[str] | None,
    validation_split: float | None,
) -> VideoListing:
    """The listing step for ``split_file``: the split's files, labels and class names."""
    if labels != "inferred" or class_names is not None or validation_split:
        raise ValueError(
            "split_file gives the files, labels and class names: leave labels, class_names "
            "and validation_split at their defaults"
        )
    split = (
        split_file if isinstance(split_file, VideoSplit) else read_split_file(directory, split_file)
    )
    if not split.file_paths:
        raise ValueError(f"{split.source}: the split lists no video files")
    return VideoListing(list(split.file_paths), list(split.labels), list(split.class_names))


def video_dataset_from_directory(
    directory: str,
    labels: str | Sequence[int] | None = "inferred",
    label_mode: str | None = "int",
    class_names: Sequence[str] | None = None,
    batch_size: int | None = 8,
    num_frames: int = 16,
    frame_step: int = 1,
    image_size: tuple[int, int] = (112, 112),
    shuffle: bool = True,
    seed: int | None = None,
    validation_split: float | None = None,
    subset: str | None = None,
    decoder: str = "auto",
    on_error: str = "raise",
    *,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    cache: bool = False,
    split_file: str | VideoSplit | None = None,
) -> tf.data.Dataset | tuple[tf.data.Dataset, tf.data.Dataset]:
    """Clips and labels from a folder of videos, shaped after ``image_dataset_from_directory``.

    ``directory`` holds one subfolder per class (UCF101 / HMDB51 / Kinetics layout), searched
    recursively; any container and codec FFmpeg reads works (mp4, avi, mkv, mov, webm, gif, ...).

    Clip sampling: with ``shuffle=True`` (training) each epoch takes a clip at a random start,
    ``num_frames`` frames ``frame_step`` apart; with ``shuffle=False`` (evaluation) the centre
    clip, always the same. Videos shorter than the clip **loop** (indices wrap around from the
    first frame). Frames are resized to ``image_size`` (bilinear, aspect ratio not kept) and
    decoded only as far as the clip needs (seek to the keyframe before it, stop after it).

    Args:
        directory: the root folder.
        labels: ``"inferred"`` (class subfolders), ``None``, or a list of ints (one per file in
            alphanumeric path order).
        label_mode: ``"int"`` (int32 scalars), ``"categorical"`` (one-hot float32),
            ``"binary"`` (float32 ``(1,)``, two classes), or ``None`` (yield clips only).
        class_names: explicit class subset and order (labels inferred only).
        batch_size: clips per batch; ``None`` for unbatched clips.
        num_frames: frames per clip.
        frame_step: stride between sampled frames.
        image_size: ``(height, width)`` of the output frames.
        shuffle: shuffle files every epoch and sample random clips; ``False`` gives listing
            order and centre clips.
        seed: makes shuffling, random clip starts and the validation split deterministic.
        validation_split: fraction held out for validation (split per class; needs ``seed``).
        subset: ``"training"``, ``"validation"`` or ``"both"`` (returns a tuple).
        decoder: ``"auto"`` (the ``KERAS_SIDEWAYS_DECODER`` environment variable when set,
            else tensorflow-io when its probe passes, else PyAV; logs the choice), ``"pyav"``,
            or ``"tfio"`` (raises :class:`TfioUnavailableError` saying why not). The dataset's
            ``decoder`` attribute says which one runs.
        on_error: for files that fail the listing-time probe (truncated, corrupt, zero-byte,
            not video, audio-only, unreadable) and class folders without videos: ``"raise"``
            an error naming every one, or ``"skip"`` them (counted, logged as a warning with
            their names, and kept in the dataset's ``skipped_files``). A file that fails later,
            while decoding, always raises an error naming it.
        num_parallel_calls: clips decoded in parallel (default: autotuned).
        cache: decode every video whole once (first epoch) and keep its resized uint8 frames
            in memory, so later epochs sample clips without decoding: about
            ``frames × H × W × 3`` bytes per video. For data sets that fit in memory (the
            synthetic one: 480 videos of 24 frames at 64×64 take 141 MB); the clips are the
            same as without caching. Works with either decoder.
        split_file: an official split instead of class folders: a UCF101
            ``trainlist0N.txt`` / ``testlist0N.txt`` path (``classInd.txt`` beside it), or a
            :class:`~keras_sideways.data.splits.VideoSplit` from ``ucf101_split``,
            ``hmdb51_split`` or ``kinetics_csv``. Its files, labels and class names are used
            as listed (a missing listed file raises); not with ``validation_split``.

    Returns:
        A ``tf.data.Dataset`` yielding ``(clips, labels)`` (or ``clips`` when unlabelled),
        clips ``float32 (batch, num_frames, H, W, 3)`` in [0, 1]; with ``subset="both"`` a
        ``(training, validation)`` pair. Each dataset has ``class_names``, ``file_paths``,
        ``skipped_files`` (list of ``(path, reason)``), ``decoder`` and ``cached`` attributes.
    """
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(
            f'label_mode must be "int", "categorical", "binary" or None, got {label_mode!r}'
        )
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    if labels is None:
        label_mode = None  # nothing to yield; label_mode=None alone keeps the class listing
    if len(tuple(image_size)) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    image_size = (int(image_size[0]), int(image_size[1]))
    if int(num_frames) < 1 or int(frame_step) < 1:
        raise ValueError(f"num_frames and frame_step must be >= 1, got {num_frames}, {frame_step}")
    if subset is not None and subset not in ("training", "validation", "both"):
        raise ValueError(f'subset must be "training", "validation" or "both", got {subset!r}')
    if bool(validation_split) != (subset is not None):
        raise ValueError("validation_split and subset must be given together")
    if validation_split and seed is None:
        raise ValueError(
            "validation_split needs a seed, so that the training and validation subsets "
            "(one call each) are disjoint"
        )
    chosen = resolve_decoder(decoder)

    if split_file is None:
        listing = list_video_files(directory, labels, class_names)
    else:
        listing = _split_listing(directory, split_file, labels, class_names, validation_split)
    if label_mode == "binary" and listing.class_names and len(listing.class_names) != 2:
        raise ValueError(
            f'label_mode="binary" needs exactly 2 classes, found {listing.class_names}'
        )
    num_classes = (
        len(listing.class_names)
        if listing.class_names
        else (max(listing.labels) + 1 if listing.labels else 0)
    )
    if shuffle and seed is None:
        seed = int(np.random.randint(1_000_000))  # one seed for the file order and the clips

    subsets = ["training", "validation"] if subset == "both" else [subset]
    datasets = []
    for part in subsets:
        paths, part_labels = listing.file_paths, listing.labels
        if part is not None:
            paths, part_labels = split_files(paths, part_labels, validation_split, part, seed)
        kept_paths, kept_labels, infos, bad = select_usable(
            paths, part_labels, listing.problems, on_error, directory
        )
        what = f"{len(kept_paths)} files"
        if listing.class_names is not None:
            what += f" belonging to {len(listing.class_names)} classes"
        print(f"Found {what}" + (f", using them for {part}." if part else "."))

        decode_batch_fn = None
        if chosen == "tfio":
            decode_fn, tfio_video_fn = make_tfio_decoders(image_size, num_frames)
        else:
            decode_fn = make_pyav_decode_fn(infos, image_size, num_frames)
            decode_batch_fn = make_pyav_batch_decode_fn(
                infos, image_size, num_frames, num_parallel_calls
            )
        decode_video_fn = None
        if cache:
            decode_video_fn = (
                tfio_video_fn if chosen == "tfio" else make_pyav_video_fn(infos, image_size)
            )
        ds = build_clip_dataset(
            kept_paths,
            [infos[p].num_frames for p in kept_paths],
            kept_labels,
            decode_fn,
            num_frames=num_frames,
            frame_step=frame_step,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            label_fn=_encode_label(label_mode, num_classes) if label_mode else None,
            num_parallel_calls=num_parallel_calls,
            decode_video_fn=decode_video_fn,
            decode_batch_fn=decode_batch_fn,
        )
        ds.class_names = listing.class_names
        ds.file_paths = kept_paths
        ds.skipped_files = bad
        ds.decoder = chosen
        ds.cached = cache
        datasets.append(ds)
    return tuple(datasets) if subset == "both" else datasets[0]
