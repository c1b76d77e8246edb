"""``video_dataset_from_directory``: a ``tf.data`` pipeline over a folder of video files.

The pipeline is a chain of explicit steps, each replaceable (DMVR style):

1. **list** files, labels and class names (:func:`~keras_sideways.data.listing.list_video_files`),
   then split into training / validation;
2. **probe** each file once (:func:`~keras_sideways.data.frame_index.probe_video`): bad files
   are reported per ``on_error`` before anything is iterated, and each good file's frame count
   and timestamp table are kept;
3. **sample** clip indices in-graph (:func:`~keras_sideways.data.sampling.sample_clip_indices`):
   random start when shuffling (training), centre clip otherwise (evaluation);
4. **decode** only those frames (:func:`~keras_sideways.data.pyav_decoder.decode_clip`: seek to
   the keyframe before the clip, stop after its last frame), several files in parallel; which
   decoder runs is chosen in :mod:`~keras_sideways.data.folder_decoding`;
5. **preprocess**: uint8 -> float32 in [0, 1];
6. **batch** and prefetch.

Steps 1-2 are here, 3-6 in :mod:`~keras_sideways.data.clip_dataset`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import tensorflow as tf

from keras_sideways.data.clip_dataset import (
    LabelFn,
    build_clip_dataset,
    label_encoder,
    preprocess_clip,
)
from keras_sideways.data.errors import BadVideoFilesError, VideoInputError
from keras_sideways.data.folder_decoding import (
    DECODER_VARIABLE,
    DECODERS,
    make_decode_steps,
    resolve_decoder,
)
from keras_sideways.data.frame_index import VideoInfo, probe_video
from keras_sideways.data.listing import VideoListing, list_video_files, split_files
from keras_sideways.data.splits import VideoSplit, read_split_file

__all__ = [
    "DECODERS",
    "DECODER_VARIABLE",
    "preprocess_clip",
    "probe_files",
    "select_usable",
    "video_dataset_from_directory",
]

logger = logging.getLogger("keras_sideways.data")


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


@dataclass(frozen=True)
class _FolderArguments:
    """The arguments of :func:`video_dataset_from_directory`, under the same names."""

    directory: str
    labels: str | Sequence[int] | None
    label_mode: str | None
    class_names: Sequence[str] | None
    batch_size: int | None
    num_frames: int
    frame_step: int
    image_size: tuple[int, int]
    shuffle: bool
    seed: int | None
    validation_split: float | None
    subset: str | None
    decoder: str
    on_error: str
    num_parallel_calls: int
    cache: bool
    split_file: str | VideoSplit | None


def _checked_arguments(arguments: _FolderArguments) -> _FolderArguments:
    """The arguments checked before any file is touched, with ``decoder`` resolved (see
    :func:`resolve_decoder`), ``image_size`` as ints, and no ``label_mode`` without labels.

    Raises:
        ValueError: naming the first argument that does not fit.
        TfioUnavailableError: for ``decoder="tfio"`` where tensorflow-io cannot decode video.
    """
    label_mode, image_size = arguments.label_mode, arguments.image_size
    num_frames, frame_step = arguments.num_frames, arguments.frame_step
    subset, validation_split = arguments.subset, arguments.validation_split
    if label_mode not in ("int", "categorical", "binary", None):
        raise ValueError(
            f'label_mode must be "int", "categorical", "binary" or None, got {label_mode!r}'
        )
    if arguments.on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {arguments.on_error!r}')
    if arguments.labels is None:
        label_mode = None  # nothing to yield; label_mode=None alone keeps the class listing
    if len(tuple(image_size)) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    if int(num_frames) < 1 or int(frame_step) < 1:
        raise ValueError(f"num_frames and frame_step must be >= 1, got {num_frames}, {frame_step}")
    if subset is not None and subset not in ("training", "validation", "both"):
        raise ValueError(f'subset must be "training", "validation" or "both", got {subset!r}')
    if bool(validation_split) != (subset is not None):
        raise ValueError("validation_split and subset must be given together")
    if validation_split and arguments.seed is None:
        raise ValueError(
            "validation_split needs a seed, so that the training and validation subsets "
            "(one call each) are disjoint"
        )
    return replace(
        arguments,
        label_mode=label_mode,
        image_size=(int(image_size[0]), int(image_size[1])),
        decoder=resolve_decoder(arguments.decoder),
    )


def _list_phase(arguments: _FolderArguments) -> VideoListing:
    """Step 1: the files, labels and class names, from class folders or from ``split_file``."""
    if arguments.split_file is None:
        listing = list_video_files(arguments.directory, arguments.labels, arguments.class_names)
    else:
        listing = _split_listing(
            arguments.directory,
            arguments.split_file,
            arguments.labels,
            arguments.class_names,
            arguments.validation_split,
        )
    if arguments.label_mode == "binary" and listing.class_names and len(listing.class_names) != 2:
        raise ValueError(
            f'label_mode="binary" needs exactly 2 classes, found {listing.class_names}'
        )
    return listing


def _with_seed(arguments: _FolderArguments) -> _FolderArguments:
    """A drawn seed when shuffling without one: one seed for the file order and the clips."""
    if arguments.shuffle and arguments.seed is None:
        return replace(arguments, seed=int(np.random.randint(1_000_000)))
    return arguments


def _subset_names(subset: str | None) -> list[str | None]:
    """The subsets to build, in the order they are returned."""
    return ["training", "validation"] if subset == "both" else [subset]


def _subset_dataset(
    arguments: _FolderArguments, listing: VideoListing, part: str | None
) -> tf.data.Dataset:
    """Steps 2-6 for one subset (``part``; ``None`` for the whole listing): split, probe, then
    the clip pipeline, with the dataset's attributes set."""
    paths, part_labels = listing.file_paths, listing.labels
    if part is not None:
        paths, part_labels = split_files(
            paths, part_labels, arguments.validation_split, part, arguments.seed
        )
    kept_paths, kept_labels, infos, bad = select_usable(
        paths, part_labels, listing.problems, arguments.on_error, arguments.directory
    )
    what = f"{len(kept_paths)} files"
    if listing.class_names is not None:
        what += f" belonging to {len(listing.class_names)} classes"
    print(f"Found {what}" + (f", using them for {part}." if part else "."))
    steps = make_decode_steps(
        arguments.decoder,
        infos,
        arguments.image_size,
        arguments.num_frames,
        arguments.num_parallel_calls,
        arguments.cache,
    )
    ds = build_clip_dataset(
        kept_paths,
        [infos[p].num_frames for p in kept_paths],
        kept_labels,
        steps.clip,
        num_frames=arguments.num_frames,
        frame_step=arguments.frame_step,
        batch_size=arguments.batch_size,
        shuffle=arguments.shuffle,
        seed=arguments.seed,
        label_fn=_label_fn(arguments.label_mode, listing),
        num_parallel_calls=arguments.num_parallel_calls,
        decode_video_fn=steps.video,
        decode_batch_fn=steps.batch,
    )
    ds.class_names = listing.class_names
    ds.file_paths = kept_paths
    ds.skipped_files = bad
    ds.decoder = arguments.decoder
    ds.cached = arguments.cache
    return ds


def _label_fn(label_mode: str | None, listing: VideoListing) -> LabelFn | None:
    """The label encoding for ``label_mode`` over the listing's classes, or ``None``."""
    if not label_mode:
        return None
    num_classes = (
        len(listing.class_names)
        if listing.class_names
        else (max(listing.labels) + 1 if listing.labels else 0)
    )
    return label_encoder(label_mode, num_classes)


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
    # The first statement, so that locals() is exactly the arguments, gathered for the phases.
    arguments = _checked_arguments(_FolderArguments(**locals()))
    listing = _list_phase(arguments)
    arguments = _with_seed(arguments)
    datasets = [_subset_dataset(arguments, listing, part) for part in _subset_names(subset)]
    return tuple(datasets) if subset == "both" else datasets[0]
