"""Official train/test splits of the public action data sets, read from their own files.

Each reader gives a :class:`VideoSplit` (files, labels, class names) that
``video_dataset_from_directory(directory, split_file=...)`` takes in place of listing class
folders, so a published split is reproduced exactly:

- :func:`ucf101_split`: UCF101's ``ucfTrainTestlist/`` (``classInd.txt``, ``trainlist0N.txt``,
  ``testlist0N.txt``; N = 1, 2, 3) over ``UCF-101/<class>/v_<class>_gXX_cYY.avi``;
- :func:`hmdb51_split`: HMDB51's ``testTrainMulti_7030_splits/<class>_test_split<N>.txt``
  (each video marked 1 = training, 2 = testing, 0 = unused) over ``hmdb51/<class>/<video>.avi``;
- :func:`kinetics_csv`: a Kinetics annotation CSV (``label,youtube_id,time_start,time_end,split``)
  over a folder of clips named ``<youtube_id>_<start:06d>_<end:06d>.<ext>``, anywhere below it.

Listed files that are missing raise an error naming them (never a silently smaller data set).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from keras_sideways.data.listing import is_video_name

SUBSETS = ("training", "test")


@dataclass(frozen=True)
class VideoSplit:
    """One subset of an official split: video files, integer labels, class names.

    Attributes:
        file_paths: the subset's video files, in the order the split lists them.
        labels: integer label per file, indexing ``class_names``.
        class_names: every class of the data set, in label order.
        source: the split file(s) read, for messages.
    """

    file_paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    source: str


def _missing_error(source: str, directory: str, missing: Sequence[str]) -> ValueError:
    shown = "\n".join(f"  {m}" for m in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    return ValueError(
        f"{source}: {len(missing)} listed video file(s) not found under {directory}:\n{shown}{more}"
    )


def _check_args(directory: str, split: int, subset: str, splits: Sequence[int]) -> None:
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory (or it does not exist)")
    if split not in splits:
        raise ValueError(f"split must be one of {tuple(splits)}, got {split!r}")
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: split file not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def ucf101_split(
    directory: str, split_dir: str, split: int = 1, subset: str = "training"
) -> VideoSplit:
    """UCF101's official split ``split`` (1-3): its training or test list.

    Args:
        directory: the ``UCF-101`` folder (``<class>/v_<class>_gXX_cYY.avi``).
        split_dir: the ``ucfTrainTestlist`` folder (``classInd.txt``, ``trainlist0N.txt``,
            ``testlist0N.txt``).
        split: 1, 2 or 3.
        subset: ``"training"`` (``trainlist0N.txt``) or ``"test"`` (``testlist0N.txt``).

    Raises:
        ValueError: naming the file, for a missing or malformed split file, or for listed videos
            missing under ``directory`` (all of them counted, the first ten named).
    """
    directory, split_dir = os.fspath(directory), os.fspath(split_dir)
    _check_args(directory, split, subset, (1, 2, 3))
    class_file = os.path.join(split_dir, "classInd.txt")
    class_names: list[str] = []
    for n, line in enumerate(_read_lines(class_file), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != n:
            raise ValueError(f'{class_file}: line {n} should be "{n} <ClassName>", got {line!r}')
        class_names.append(parts[1])
    label_of = {name.lower(): i for i, name in enumerate(class_names)}
    list_file = os.path.join(
        split_dir, f"{'train' if subset == 'training' else 'test'}list0{split}.txt"
    )
    paths, labels, missing = [], [], []
    for n, line in enumerate(_read_lines(list_file), start=1):
        relative = line.split()[0].replace("\\", "/")
        folder = relative.split("/")[0].lower()
        if folder not in label_of:
            raise ValueError(f"{list_file}: line {n}: class {folder!r} is not in {class_file}")
        path = os.path.join(directory, *relative.split("/"))
        if not os.path.isfile(path):
            missing.append(path)
        paths.append(path)
        labels.append(label_of[folder])
    if missing:
        raise _missing_error(list_file, directory, missing)
    return VideoSplit(tuple(paths), tuple(labels), tuple(class_names), list_file)


_HMDB_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>\d)\.txt$")


def hmdb51_split(
    directory: str, split_dir: str, split: int = 1, subset: str = "training"
) -> VideoSplit:
    """HMDB51's official split ``split`` (1-3): the videos its files mark for ``subset``.

    Args:
        directory: the folder of class subfolders (``<class>/<video>.avi``).
        split_dir: the folder of ``<class>_test_split<N>.txt`` files, one per class, each line
            ``<video file name> <mark>`` with mark 1 = training, 2 = test, 0 = unused.
        split: 1, 2 or 3.
        subset: ``"training"`` (mark 1) or ``"test"`` (mark 2).

    Classes are the split files' class names in alphanumeric order.

    Raises:
        ValueError: naming the file, for missing or malformed split files, or for listed videos
            missing under ``directory``.
    """
    directory, split_dir = os.fspath(directory), os.fspath(split_dir)
    _check_args(directory, split, subset, (1, 2, 3))
    if not os.path.isdir(split_dir):
        raise ValueError(f"{split_dir}: not a directory of HMDB51 split files")
    per_class = {}
    for name in os.listdir(split_dir):
        m = _HMDB_FILE.match(name)
        if m and int(m["split"]) == split:
            per_class[m["name"]] = os.path.join(split_dir, name)
    if not per_class:
        raise ValueError(f"{split_dir}: no <class>_test_split{split}.txt files found")
    class_names = sorted(per_class)
    wanted_mark = "1" if subset == "training" else "2"
    paths, labels, missing = [], [], []
    for label, name in enumerate(class_names):
        for n, line in enumerate(_read_lines(per_class[name]), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(
                    f'{per_class[name]}: line {n} should be "<video> <0|1|2>", got {line!r}'
                )
            if parts[1] != wanted_mark:
                continue
            path = os.path.join(directory, name, parts[0])
            if not os.path.isfile(path):
                missing.append(path)
            paths.append(path)
            labels.append(label)
    if missing:
        raise _missing_error(f"{split_dir} (split {split})", directory, missing)
    return VideoSplit(tuple(paths), tuple(labels), tuple(class_names), split_dir)


KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def kinetics_csv(directory: str, csv_path: str, subset: str | None = None) -> VideoSplit:
    """The clips a Kinetics annotation CSV lists, found by name anywhere under ``directory``.

    Args:
        directory: folder holding the clips, in any layout (``<split>/<label>/<clip>``,
            ``<label>/<clip>`` or flat), named ``<youtube_id>_<start:06d>_<end:06d>.<ext>``.
        csv_path: the annotation CSV with columns ``label,youtube_id,time_start,time_end`` and
            optionally ``split`` (e.g. ``train.csv``, ``validate.csv`` of Kinetics-400/600/700).
        subset: keep only rows whose ``split`` column has this value (``"train"``, ``"val"``,
            ``"test"``); ``None`` keeps every row.

    Classes are the CSV's labels in alphanumeric order (all rows, whatever ``subset``).

    Raises:
        ValueError: naming the CSV, for missing columns or for listed clips not found.
    """
    directory, csv_path = os.fspath(directory), os.fspath(csv_path)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory}: not a directory (or it does not exist)")
    if not os.path.isfile(csv_path):
        raise ValueError(f"{csv_path}: annotation CSV not found")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
        columns = rows[0].keys() if rows else ()
    absent = [c for c in KINETICS_COLUMNS if c not in columns]
    if absent or (subset is not None and "split" not in columns):
        need = list(KINETICS_COLUMNS) + (["split"] if subset is not None else [])
        raise ValueError(f"{csv_path}: needs columns {need}, has {list(columns)}")
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if is_video_name(name) and not name.startswith("."):
                found.setdefault(os.path.splitext(name)[0], os.path.join(root, name))
    class_names = sorted({row["label"] for row in rows})
    label_of = {name: i for i, name in enumerate(class_names)}
    paths, labels, missing = [], [], []
    for row in rows:
        if subset is not None and row["split"] != subset:
            continue
        stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_"
        stem += f"{int(float(row['time_end'])):06d}"
        path = found.get(stem)
        if path is None:
            missing.append(f"{stem}.* ({row['label']})")
            continue
        paths.append(path)
        labels.append(label_of[row["label"]])
    if missing:
        raise _missing_error(csv_path, directory, missing)
    if not paths:
        raise ValueError(f"{csv_path}: no rows with split == {subset!r}")
    return VideoSplit(tuple(paths), tuple(labels), tuple(class_names), csv_path)


_UCF_LIST = re.compile(r"^(?P<kind>train|test)list0(?P<split>[1-3])\.txt$")


def read_split_file(directory: str, split_file: str) -> VideoSplit:
    """A split named by one file: UCF101's ``trainlist0N.txt`` / ``testlist0N.txt`` (with
    ``classInd.txt`` beside it). Other data sets' splits: use their reader.

    Raises:
        ValueError: naming the file when it is not a UCF101 list, or per :func:`ucf101_split`.
    """
    split_file = os.fspath(split_file)
    m = _UCF_LIST.match(os.path.basename(split_file))
    if m is None:
        raise ValueError(
            f"{split_file}: split_file as a path must be UCF101's trainlist0N.txt or "
            "testlist0N.txt; for HMDB51 or Kinetics pass hmdb51_split(...) or kinetics_csv(...)"
        )
    subset = "training" if m["kind"] == "train" else "test"
    return ucf101_split(directory, os.path.dirname(split_file) or ".", int(m["split"]), subset)
