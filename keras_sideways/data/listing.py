"""Listing step: find the video files of a folder, their labels and class names; split them.

Layout and rules follow ``keras.utils.image_dataset_from_directory`` (and the UCF101 / HMDB51 /
Kinetics folder layouts): one subfolder per class, searched recursively, classes in alphanumeric
order unless ``class_names`` is given.

What counts as a candidate:

- names starting with ``.`` (files or folders) are never listed: they are OS or editor
  metadata (``.DS_Store``, AppleDouble ``._clip.mp4``, ``.ipynb_checkpoints``);
- files with a known video extension (:data:`VIDEO_EXTENSIONS`, any case) are candidates, even
  when they turn out not to be readable videos: the probe then reports them per ``on_error``;
- a *folder* with a video extension is a candidate that fails (reported, never descended into);
- other files (``.txt``, ``.json``, ...) are ignored, as Keras ignores non-image files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".3g2", ".3gp", ".asf", ".avi", ".divx", ".dv", ".f4v", ".flv", ".gif", ".m2ts",
        ".m2v", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts", ".mxf", ".nut",
        ".ogg", ".ogv", ".qt", ".rm", ".rmvb", ".ts", ".vob", ".webm", ".wmv", ".y4m",
    }
)  # fmt: skip


def is_video_name(name: str) -> bool:
    """True when ``name`` has a video extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


@dataclass
class VideoListing:
    """Result of :func:`list_video_files`.

    Attributes:
        file_paths: candidate video files, in listing order (sorted by class, then path).
        labels: integer label per file (``None`` when ``labels=None``).
        class_names: class names in label order (``None`` unless labels are inferred).
        problems: ``(path, reason)`` for things found wrong while listing: a class folder
            without videos, a folder named like a video.
        ignored: files skipped for their extension (not videos by name).
    """

    file_paths: list[str]
    labels: list[int] | None
    class_names: list[str] | None
    problems: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _walk_videos(folder: str, problems: list[tuple[str, str]], ignored: list[str]) -> list[str]:
    """All candidate video paths under ``folder``, sorted, hidden entries left out."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        kept_dirs = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if is_video_name(d):
                # Listed so that the probe reports it ("is a directory"), not descended into.
                found.append(os.path.join(root, d))
            else:
                kept_dirs.append(d)
        dirs[:] = kept_dirs  # os.walk descends only into what is left in `dirs`
        for f in sorted(files):
            if f.startswith("."):
                continue
            if is_video_name(f):
                found.append(os.path.join(root, f))
            else:
                ignored.append(os.path.join(root, f))
    return sorted(found)


def _list_class_folders(directory: str, class_names: Sequence[str] | None) -> VideoListing:
    """The inferred-labels listing: one class per subfolder, labels in class order.

    Raises:
        ValueError: naming ``directory`` when ``class_names`` does not fit its subfolders, or
            when it has no class subfolders or no video files in them.
    """
    subdirs = sorted(
        d
        for d in os.listdir(directory)
        if not d.startswith(".")
        and os.path.isdir(os.path.join(directory, d))
        and not is_video_name(d)
    )
    if class_names is None:
        names = subdirs
    else:
        names = list(class_names)
        missing = [c for c in names if c not in subdirs]
        if missing or len(set(names)) != len(names):
            raise ValueError(
                f"{directory}: class_names {names} must be distinct names of its "
                f"subfolders {subdirs}; not found: {missing}"
            )
    if not names:
        raise ValueError(
            f"{directory}: no class subfolders found (labels='inferred' expects one "
            "subfolder per class; pass labels=None for a flat folder)"
        )
    problems: list[tuple[str, str]] = []
    ignored: list[str] = []
    paths: list[str] = []
    label_list: list[int] = []
    for index, name in enumerate(names):
        found = _walk_videos(os.path.join(directory, name), problems, ignored)
        if not found:
            problems.append(
                (os.path.join(directory, name), f"class folder {name!r} has no video files")
            )
        paths.extend(found)
        label_list.extend([index] * len(found))
    if not paths:
        raise ValueError(
            f"{directory}: no video files found in its class folders {names} "
            f"(extensions looked for: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    return VideoListing(paths, label_list, names, problems, ignored)


def list_video_files(
    directory: str,
    labels: str | Sequence[int] | None = "inferred",
    class_names: Sequence[str] | None = None,
) -> VideoListing:
    """List the candidate video files of ``directory`` with labels and class names.

    Args:
        directory: root folder. With ``labels="inferred"``: one subfolder per class.
        labels: ``"inferred"`` (from subfolders), ``None`` (no labels: every video under
            ``directory``), or a list of integer labels, one per video file in alphanumeric
            order of the paths found under ``directory``.
        class_names: with inferred labels, the classes to use and their order (a subset of the
            subfolders). ``None``: every subfolder, alphanumerically.

    Raises:
        ValueError: naming ``directory`` when it is missing, is not a folder, or holds no video
            files at all, or when ``class_names`` / ``labels`` do not fit it.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory (or it does not exist)")
    if labels == "inferred":
        return _list_class_folders(directory, class_names)
    if class_names is not None:
        raise ValueError('class_names can only be given with labels="inferred"')
    problems: list[tuple[str, str]] = []
    ignored: list[str] = []
    paths = _walk_videos(directory, problems, ignored)
    if not paths:
        raise ValueError(
            f"{directory}: no video files found "
            f"(extensions looked for: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    if labels is None:
        return VideoListing(paths, None, None, problems, ignored)
    if isinstance(labels, str):
        raise ValueError(f'labels must be "inferred", None or a list of ints, got {labels!r}')
    label_list = [int(x) for x in labels]
    if len(label_list) != len(paths):
        raise ValueError(
            f"{directory}: {len(label_list)} labels given for {len(paths)} video files"
        )
    return VideoListing(paths, label_list, None, problems, ignored)


def split_files(
    paths: Sequence[str],
    labels: Sequence[int] | None,
    validation_split: float,
    subset: str,
    seed: int,
) -> tuple[list[str], list[int] | None]:
    """Training or validation part of a listing, split per class with a seeded permutation.

    Splitting per class keeps every class's share equal in both parts (a plain tail split of a
    sorted listing would put whole classes in validation). The same ``seed`` on both calls gives
    disjoint parts that cover the listing. Each part keeps listing order.
    """
    if not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
    if subset not in ("training", "validation"):
        raise ValueError(f'subset must be "training" or "validation", got {subset!r}')
    rng = np.random.RandomState(seed)
    groups: dict[int, list[int]] = {}
    for i in range(len(paths)):
        groups.setdefault(labels[i] if labels is not None else 0, []).append(i)
    chosen: list[int] = []
    for key in sorted(groups):
        members = np.array(groups[key])
        members = members[rng.permutation(len(members))]
        num_val = int(round(validation_split * len(members)))
        part = (
            members[len(members) - num_val :]
            if subset == "validation"
            else members[: len(members) - num_val]
        )
        chosen.extend(int(i) for i in part)
    chosen.sort()
    return [paths[i] for i in chosen], ([labels[i] for i in chosen] if labels is not None else None)
