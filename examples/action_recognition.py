"""Action recognition with Sideways training: the main job of keras-sideways.

With no arguments this script

1. writes the synthetic motion data set (real mp4 files; classes differ only in how a shape
   moves, so a single frame is at chance) into a cache folder, reused on later runs;
2. trains the reference temporal CNN (`keras_sideways.models.temporal_cnn_classifier`) with
   Sideways, showing Keras progress bars;
3. evaluates it on held-out videos (never trained on, and used for nothing but reporting);
4. exports a SavedModel and writes, into ``--output-dir`` (default ``runs/<timestamp>``):
   ``metrics.json``, ``learning_curves.png``, ``confusion_matrix.png`` and ``saved_model/``.

``--compare`` trains the exact-backprop baseline too and prints both side by side; ``--data DIR``
trains on any folder of class subfolders of videos (UCF101 / HMDB51 layout); with ``--split-file``
(the ``ucfTrainTestlist`` folder) and ``--split N`` it trains on UCF101's official trainlist0N and
evaluates on testlist0N. Run with ``--help`` for every option.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sideways import models, schedule  # noqa: E402
from keras_sideways.data import (  # noqa: E402
    DEFAULT_ACTIONS,
    SYNTHETIC_ACTIONS,
    VideoInputError,
    list_video_files,
    ucf101_split,
    video_dataset_from_directory,
    write_synthetic_actions,
)

MODES = ("sideways", "backprop")
# Bump when the generated data set changes, so that old caches are not reused.
SYNTHETIC_CACHE_VERSION = 1
SYNTHETIC_VIDEO_FRAMES = 24  # frames per generated video (at least); clips start at random


class UsageError(Exception):
    """A problem with the command line or the data that the user can fix: no traceback."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", metavar="DIR", help="a folder of class subfolders of videos; "
                      "if not given, the synthetic motion data set in --cache-dir")
    data.add_argument("--split-file", metavar="PATH",
                      help="with --data: train and evaluate on an official UCF101 split; "
                      "the ucfTrainTestlist folder (classInd.txt, trainlist0N.txt, "
                      "testlist0N.txt) or a file in it")
    data.add_argument("--split", type=int, default=1, choices=(1, 2, 3),
                      help="which official split --split-file gives (trainlist0N / testlist0N)")
    data.add_argument("--cache-dir", metavar="DIR",
                      default=os.path.join(os.path.expanduser("~"), ".cache", "keras-sideways"),
                      help="where the synthetic data set is written and reused")
    data.add_argument("--classes", nargs="+", default=list(DEFAULT_ACTIONS),
                      choices=SYNTHETIC_ACTIONS, metavar="ACTION",
                      help=f"synthetic classes, from {', '.join(SYNTHETIC_ACTIONS)}")
    data.add_argument("--videos-per-class", type=int, default=160,
                      help="synthetic videos per class (before the held-out split)")
    data.add_argument("--validation-split", type=float, default=0.25,
                      help="fraction of each class held out for evaluation (raised to hold out "
                      "at least one video per class)")
    data.add_argument("--frames", type=int, default=12, help="frames per clip (T)")
    data.add_argument("--frame-step", type=int, default=1, help="stride between clip frames")
    data.add_argument("--image-size", type=int, default=64, help="frame height and width")
    data.add_argument("--decode-cache", choices=("auto", "on", "off"), default="auto",
                      help="keep the decoded videos in memory after the first epoch, so that "
                      "training does not wait on decoding (auto: on for the synthetic data set, "
                      "off for --data, which may not fit in memory)")
    train = parser.add_argument_group("training")
    train.add_argument("--mode", choices=MODES, default="sideways", help="training mode")
    train.add_argument("--compare", action="store_true",
                       help="train both modes (same data, same initial weights)")
    train.add_argument("--epochs", type=int, default=30, help="passes over the training videos")
    train.add_argument("--batch-size", type=int, default=16, help="clips per step")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    train.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64],
                       help="channels per stage (K = number of stages)")
    train.add_argument("--windows", type=int, nargs="+", default=[3, 2, 1],
                       help="temporal window per stage")
    train.add_argument("--seed", type=int, default=0,
                       help="seeds the split, the batches and the initial weights")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", metavar="DIR",
                     help="where results go; if not given, runs/<timestamp>")
    out.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    out.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                     help="Keras verbosity (1: progress bars)")
    args = parser.parse_args(argv)

    positive = ("videos_per_class", "frames", "frame_step", "image_size", "epochs", "batch_size")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.split_file and not args.data:
        parser.error("--split-file needs --data (the UCF-101 folder the lists refer to)")
    if not 0.0 < args.validation_split < 1.0:
        parser.error("--validation-split must be between 0 and 1")
    if len(args.windows) != len(args.filters):
        parser.error(f"--windows needs one value per stage: {len(args.filters)} (--filters), "
                     f"got {len(args.windows)}")
    if min(args.windows) < 1 or min(args.filters) < 1:
        parser.error("--windows and --filters must be at least 1")
    num_stages = len(args.filters)
    needs_sideways = args.compare or args.mode == "sideways"
    if needs_sideways and args.frames < schedule.min_clip_length(num_stages):
        parser.error(
            f"Sideways training of {num_stages} stages needs clips of at least "
            f"2K-1={schedule.min_clip_length(num_stages)} frames; got --frames {args.frames}"
        )
    if args.data is None and args.image_size % 2:
        parser.error("--image-size must be even for the synthetic data set (yuv420p video)")
    if len(set(args.classes)) < 2 or len(set(args.classes)) != len(args.classes):
        parser.error("--classes needs at least 2 distinct actions")
    return args


# ---------------------------------------------------------------------- data


def synthetic_data(
    cache_dir: str,
    classes: Sequence[str],
    videos_per_class: int,
    image_size: int,
    clip_span: int = SYNTHETIC_VIDEO_FRAMES,
) -> str:
    """The synthetic data set's folder in the cache, written once per configuration.

    Videos get at least ``clip_span`` frames (frames x frame step of a clip), so that clips never
    wrap around the end of a video (a jump in the motion).
    """
    num_frames = max(SYNTHETIC_VIDEO_FRAMES, clip_span)
    key = (
        f"synthetic_actions_v{SYNTHETIC_CACHE_VERSION}_{'-'.join(classes)}"
        f"_{videos_per_class}x{num_frames}f_{image_size}px_seed0"
    )
    folder = Path(cache_dir) / key
    if (folder / "COMPLETE").exists():
        print(f"Using the cached synthetic data set in {folder}")
        return str(folder)
    print(f"Writing the synthetic data set ({len(classes)} classes x {videos_per_class} "
          f"videos) to {folder} ...", flush=True)
    start = time.perf_counter()
    # Written beside its final place and renamed once complete: an interrupted run never leaves
    # a half-written folder that a later run would take for the data set.
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    write_synthetic_actions(
        str(partial),
        classes=list(classes),
        videos_per_class=videos_per_class,
        num_frames=num_frames,
        image_size=(image_size, image_size),
        seed=0,
    )
    (partial / "COMPLETE").write_text("written by examples/action_recognition.py\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    print(f"  done in {time.perf_counter() - start:.1f} s")
    return str(folder)


def held_out_fraction(directory: str, requested: float) -> float:
    """A validation split that holds out at least one video of every class and keeps one.

    ``video_dataset_from_directory`` holds out ``round(split * n)`` videos of a class of n, which
    is 0 for small classes (e.g. 2 videos at 0.25); the split is raised until the smallest class
    gives one. A class with fewer than 2 videos cannot be both trained on and evaluated.
    """
    try:
        listing = list_video_files(directory)
    except ValueError as error:  # missing folder, no class subfolders, no videos: it says which
        raise UsageError(
            f"{error}\n--data expects a folder with one subfolder of videos per class, e.g. "
            "DIR/walk/clip1.mp4, DIR/run/clip2.avi (the UCF101 / HMDB51 layout)."
        ) from error
    counts = {name: listing.labels.count(i) for i, name in enumerate(listing.class_names)}
    counts = {name: n for name, n in counts.items() if n > 0}
    if len(counts) < 2:
        raise UsageError(
            f"{directory}: found videos for {len(counts)} class(es) ({', '.join(counts) or 'none'})"
            "; classification needs at least 2 class subfolders with videos."
        )
    small = {name: n for name, n in counts.items() if n < 2}
    if small:
        raise UsageError(
            f"{directory}: every class needs at least 2 videos (one to train on, one held out); "
            + ", ".join(f"{name!r} has {n}" for name, n in small.items())
        )
    smallest = min(counts.values())
    split = requested
    # round() halves to even, so 0.5 would still round to 0: ask for a bit more than half a video.
    if round(split * smallest) < 1:
        split = 0.6 / smallest
    if split * smallest > smallest - 0.5:  # keep at least one training video in every class
        split = (smallest - 0.6) / smallest
    if split != requested:
        print(f"Validation split raised from {requested} to {split:.3f} so that every class "
              f"(smallest: {smallest} videos) holds out at least one video.")
    return split


def load_split(args: argparse.Namespace, directory: str) -> tuple[Any, Any, list[str]]:
    """Training and test datasets of an official UCF101 split (``--split-file``, ``--split``)."""
    split_dir = args.split_file if os.path.isdir(args.split_file) else os.path.dirname(
        args.split_file)
    try:
        parts = [ucf101_split(directory, split_dir, args.split, s) for s in ("training", "test")]
    except ValueError as error:  # a missing list or listed video: it says which
        raise UsageError(str(error)) from error
    common = {
        "batch_size": args.batch_size,
        "num_frames": args.frames,
        "frame_step": args.frame_step,
        "image_size": (args.image_size, args.image_size),
        "seed": args.seed,
        "on_error": "skip",
        "cache": args.decode_cache == "on",
    }
    train = video_dataset_from_directory(directory, split_file=parts[0], shuffle=True, **common)
    held_out = video_dataset_from_directory(directory, split_file=parts[1], shuffle=False,
                                            **common)
    return train, held_out, list(train.class_names)


def load_data(args: argparse.Namespace, directory: str) -> tuple[Any, Any, list[str]]:
    """Training and held-out datasets of (clips, labels), and the class names."""
    if args.split_file:
        return load_split(args, directory)
    split = held_out_fraction(directory, args.validation_split)
    common = {
        "batch_size": args.batch_size,
        "num_frames": args.frames,
        "frame_step": args.frame_step,
        "image_size": (args.image_size, args.image_size),
        "validation_split": split,
        "seed": args.seed,
        "on_error": "skip" if args.data else "raise",
        "cache": args.decode_cache == "on" or (args.decode_cache == "auto" and not args.data),
    }
    # Training: shuffled, random clip starts. Held out: the same split (same seed), centre
    # clips, fixed order, so that the evaluation is the same every time.
    train = video_dataset_from_directory(directory, subset="training", shuffle=True, **common)
    held_out = video_dataset_from_directory(directory, subset="validation", shuffle=False,
                                            **common)
    if not held_out.file_paths:
        raise UsageError(f"{directory}: no videos were held out for evaluation.")
    return train, held_out, list(train.class_names)


# ---------------------------------------------------------------------- training


class Timing(keras.callbacks.Callback):
    """Seconds spent training per epoch, without the per-epoch validation pass."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds: list[float] = []
        self._validation = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch_start, self._validation = time.perf_counter(), 0.0

    def on_test_begin(self, logs: Any = None) -> None:
        self._test_start = time.perf_counter()

    def on_test_end(self, logs: Any = None) -> None:
        self._validation += time.perf_counter() - self._test_start

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.train_seconds.append(time.perf_counter() - self._epoch_start - self._validation)


def build_model(args: argparse.Namespace, mode: str, num_classes: int) -> keras.Model:
    keras.utils.set_random_seed(args.seed)  # both modes start from the same weights
    network = models.temporal_cnn_classifier(
        num_classes, filters=args.filters, windows=args.windows
    )
    model = network.build_model(mode=mode, name=f"temporal_cnn_{mode}")
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # In Sideways mode the metrics see each frame's output once, at the tick it reaches the
        # top (the pipeline-filling ticks have none): per-frame training accuracy. `evaluate`
        # (val_accuracy) scores every frame too; clip_metrics score the pooled clip outputs
        # (val_clip_accuracy), as the held-out test accuracy does.
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        clip_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def evaluate(model: keras.Model, held_out: Any, num_classes: int) -> dict[str, Any]:
    """Held-out accuracy and confusion matrix (rows: true class, columns: predicted)."""
    labels, predictions = [], []
    for clips, batch_labels in held_out:
        logits = model(clips, training=False)
        predictions.append(np.argmax(np.asarray(logits), axis=-1))
        labels.append(np.asarray(batch_labels))
    y_true, y_pred = np.concatenate(labels), np.concatenate(predictions)
    confusion = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    return {
        "test_accuracy": float(np.mean(y_true == y_pred)),
        "test_videos": int(len(y_true)),
        "confusion_matrix": confusion.tolist(),
    }


def train_one(args: argparse.Namespace, mode: str, train: Any, held_out: Any,
              num_classes: int) -> tuple[keras.Model, dict[str, Any]]:
    print(f"\n=== {mode}: training {args.epochs} epoch(s) ===", flush=True)
    model = build_model(args, mode, num_classes)
    timing = Timing()
    start = time.perf_counter()
    # shuffle=False: the dataset shuffles itself (Keras cannot shuffle a tf.data pipeline).
    history = model.fit(train, epochs=args.epochs, validation_data=held_out,
                        callbacks=[timing], verbose=args.verbose, shuffle=False)
    wall = time.perf_counter() - start
    result = evaluate(model, held_out, num_classes)
    result.update(
        {
            "train_seconds": round(sum(timing.train_seconds), 2),
            "fit_seconds_with_validation": round(wall, 2),
            "epoch_train_seconds": [round(s, 2) for s in timing.train_seconds],
            "epochs": args.epochs,
            "final_train_loss": float(history.history["loss"][-1]),
            "history": {key: [float(v) for v in values]
                        for key, values in history.history.items()},
            "parameters": int(model.count_params()),
        }
    )
    print(f"{mode}: held-out accuracy {result['test_accuracy']:.3f} on "
          f"{result['test_videos']} videos, trained in {result['train_seconds']:.1f} s")
    return model, result


# ---------------------------------------------------------------------- outputs


def plot_learning_curves(results: dict[str, dict[str, Any]], chance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"sideways": "tab:blue", "backprop": "tab:orange"}
    for mode, result in results.items():
        history = result["history"]
        epochs = np.arange(1, len(history["loss"]) + 1)
        colour = colours.get(mode)
        loss_axis.plot(epochs, history["loss"], color=colour, label=f"{mode} train")
        accuracy_axis.plot(epochs, history["accuracy"], color=colour,
                           label=f"{mode} train (per frame)")
        if "val_loss" in history:  # held out: dashed, same colour
            loss_axis.plot(epochs, history["val_loss"], "--", color=colour,
                           label=f"{mode} held-out")
            accuracy_axis.plot(epochs, history["val_clip_accuracy"], "--", color=colour,
                               label=f"{mode} held-out (per clip)")
    accuracy_axis.axhline(chance, color="grey", linestyle=":", label="chance")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    loss_axis.legend()
    accuracy_axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion(results: dict[str, dict[str, Any]], class_names: list[str],
                   path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(3.5, 0.5 * len(class_names) + 2)
    figure, axes = plt.subplots(1, len(results), figsize=(size * len(results), size),
                                squeeze=False)
    for axis, (mode, result) in zip(axes[0], results.items(), strict=True):
        matrix = np.asarray(result["confusion_matrix"])
        axis.imshow(matrix, cmap="Blues", vmin=0)
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(column, row, str(count), ha="center", va="center", color=colour)
        ticks = np.arange(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=45, ha="right")
        axis.set_yticks(ticks, class_names)
        axis.set(xlabel="predicted", ylabel="true",
                 title=f"{mode}: accuracy {result['test_accuracy']:.3f}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_table(results: dict[str, dict[str, Any]], chance: float) -> None:
    print("\nmode      held-out accuracy   train seconds   s/epoch")
    for mode, result in results.items():
        per_epoch = result["train_seconds"] / max(result["epochs"], 1)
        print(f"{mode:<9} {result['test_accuracy']:>17.3f}   {result['train_seconds']:>13.1f}"
              f"   {per_epoch:>7.2f}")
    print(f"chance    {chance:>17.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns what it writes to ``metrics.json``."""
    args = parse_args(argv)
    run_start = time.perf_counter()
    output_dir = Path(args.output_dir or Path("runs") / datetime.datetime.now().strftime(
        "%Y%m%d-%H%M%S"))
    output_dir.mkdir(parents=True, exist_ok=True)
    tf.get_logger().setLevel("ERROR")

    if args.data is None:
        directory = synthetic_data(args.cache_dir, args.classes, args.videos_per_class,
                                   args.image_size, args.frames * args.frame_step)
    else:
        directory = args.data
    train, held_out, class_names = load_data(args, directory)
    # decoder="auto": tensorflow-io where it can decode video, else PyAV (docs/data.md).
    print(f"Decoding with {'tensorflow-io' if train.decoder == 'tfio' else 'PyAV'} "
          f"(decoder {train.decoder!r}; KERAS_SIDEWAYS_DECODER=pyav|tfio chooses).")
    if train.cached:
        # One pass decodes every video into memory, before training: no training step then
        # waits on decoding (benchmarks/performance.py --sections input measures the rest).
        start = time.perf_counter()
        for dataset in (train, held_out):
            for _ in dataset:
                pass
        print(f"Decoded {len(train.file_paths) + len(held_out.file_paths)} videos into memory "
              f"in {time.perf_counter() - start:.1f} s.")
    num_classes = len(class_names)
    chance = 1.0 / num_classes
    num_stages = len(args.filters)
    print(f"\nTick schedule of the {num_stages}-stage pipeline over a {args.frames}-frame clip "
          f"(temporal windows {args.windows}):")
    print(schedule.format_grid(num_stages, args.frames))

    modes = list(MODES) if args.compare else [args.mode]
    results, trained = {}, {}
    for mode in modes:
        trained[mode], results[mode] = train_one(args, mode, train, held_out, num_classes)

    metrics: dict[str, Any] = {
        "chance": chance,
        "num_classes": num_classes,
        "class_names": class_names,
        "data": {
            "directory": os.path.abspath(directory),
            "synthetic": args.data is None,
            "train_videos": len(train.file_paths),
            "test_videos": len(held_out.file_paths),
            "frames": args.frames,
            "frame_step": args.frame_step,
            "image_size": args.image_size,
            "decoder": train.decoder,
        },
        "model": {
            "factory": "keras_sideways.models.temporal_cnn_classifier",
            "filters": args.filters,
            "temporal_windows": args.windows,
            "num_stages": num_stages,
        },
        "training": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "seed": args.seed},
    }
    metrics.update(results)

    plot_learning_curves(results, chance, output_dir / "learning_curves.png")
    plot_confusion(results, class_names, output_dir / "confusion_matrix.png")
    if not args.no_export:
        exported = output_dir / "saved_model"
        primary = "sideways" if args.compare else args.mode
        trained[primary].export(str(exported))
        metrics["saved_model"] = {"path": str(exported), "mode": primary}
        print(f"Exported the {primary} model as a SavedModel to {exported}")
    metrics["run_seconds"] = round(time.perf_counter() - run_start, 2)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    print_table(results, chance)
    print(f"\nWrote {output_dir}/: metrics.json, learning_curves.png, confusion_matrix.png"
          + ("" if args.no_export else ", saved_model/")
          + f" (whole run {metrics['run_seconds']:.0f} s)")
    return metrics


def cli(argv: Sequence[str] | None = None) -> int:
    """`main` with the problems a user can fix reported in one line, not a traceback."""
    try:
        main(argv)
    except (UsageError, VideoInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
