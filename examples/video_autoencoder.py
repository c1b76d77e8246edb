"""A video encoder-decoder trained with Sideways and with backprop: the paper's second task.

The reference encoder-decoder (`keras_sideways.models.frame_autoencoder`, 4 stages by default)
learns to reconstruct every frame of the synthetic motion videos (or, with ``--next-frame``, to
predict the next frame from a window of the last two). Both modes train from the same initial
weights on the same clips; the script reports the held-out reconstruction error as PSNR (dB,
higher is better) next to a trivial baseline, and writes into ``--output-dir`` (default
``runs/autoencoder-<timestamp>``) ``metrics.json`` and ``reconstructions.png`` (held-out input
frames above each mode's reconstructions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# The synthetic data cache is shared with the main example (same folder, same files).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from action_recognition import synthetic_data  # noqa: E402

from keras_sideways import models, schedule  # noqa: E402
from keras_sideways.data import (  # noqa: E402
    DEFAULT_ACTIONS,
    SYNTHETIC_ACTIONS,
    video_dataset_from_directory,
)

MODES = ("sideways", "backprop")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--cache-dir", metavar="DIR",
                        default=os.path.join(os.path.expanduser("~"), ".cache", "keras-sideways"),
                        help="where the synthetic data set is written and reused")
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_ACTIONS),
                        choices=SYNTHETIC_ACTIONS, metavar="ACTION")
    parser.add_argument("--videos-per-class", type=int, default=160)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (T)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32],
                        help="encoder channels per stage (K = 2 x this many stages)")
    parser.add_argument("--next-frame", action="store_true",
                        help="predict frame t+1 from frames t-1 and t instead of reconstructing t")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", metavar="DIR",
                        help="default: runs/autoencoder-<timestamp> in the current folder")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    for name in ("videos_per_class", "frames", "image_size", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.videos_per_class < 2:
        parser.error("--videos-per-class must be at least 2 (one is held out)")
    if min(args.filters) < 1:
        parser.error("--filters must be at least 1")
    scale = 2 ** len(args.filters)
    if args.image_size % scale:
        parser.error(f"--image-size must be divisible by 2**len(--filters) = {scale}")
    num_stages = 2 * len(args.filters)
    # Next-frame prediction trains on T-1 input frames of each clip.
    usable = args.frames - 1 if args.next_frame else args.frames
    if "sideways" in args.modes and usable < schedule.min_clip_length(num_stages):
        needed = schedule.min_clip_length(num_stages) + (1 if args.next_frame else 0)
        parser.error(f"Sideways training of {num_stages} stages needs --frames >= {needed}")
    return args


def pairs(clips: tf.Tensor, next_frame: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """(inputs, per-frame targets): the clip twice, or the clip and its next frames."""
    if next_frame:
        return clips[:, :-1], clips[:, 1:]
    return clips, clips


def psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR in dB of frames in [0, 1], from per-frame mean squared errors."""
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def evaluate(model: keras.Model | None, held_out: Any, next_frame: bool) -> float:
    """Mean per-frame PSNR over the held-out clips. ``model=None``: the trivial baseline.

    Baseline: for reconstruction, every pixel set to the frame's mean colour; for next-frame
    prediction, the current frame copied (no motion predicted).
    """
    values = []
    for clips in held_out:
        inputs, targets = pairs(clips, next_frame)
        if model is not None:
            outputs = np.asarray(model(inputs, training=False))
        elif next_frame:
            outputs = np.asarray(inputs)
        else:
            outputs = np.broadcast_to(
                np.mean(np.asarray(inputs), axis=(2, 3), keepdims=True), inputs.shape
            )
        mse = np.mean((outputs - np.asarray(targets)) ** 2, axis=(2, 3, 4))  # (B, T)
        values.append(psnr(mse).ravel())
    return float(np.mean(np.concatenate(values)))


def build_model(args: argparse.Namespace, mode: str) -> keras.Model:
    keras.utils.set_random_seed(args.seed)  # both modes start from the same weights
    network = models.frame_autoencoder(filters=args.filters, window=2 if args.next_frame else 1)
    model = network.build_model(mode=mode, name=f"autoencoder_{mode}")
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss="mse")
    return model


def plot_reconstructions(inputs: np.ndarray, targets: np.ndarray,
                         outputs: dict[str, np.ndarray], next_frame: bool, path: Path) -> None:
    """Rows: input (or target) frames of one held-out clip, then each mode's output frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("target (next frame)" if next_frame else "input", targets)]
    rows += [(mode, frames) for mode, frames in outputs.items()]
    num_frames = targets.shape[0]
    figure, axes = plt.subplots(len(rows), num_frames, squeeze=False,
                                figsize=(1.3 * num_frames, 1.4 * len(rows)))
    for row, (label, frames) in enumerate(rows):
        for t in range(num_frames):
            axis = axes[row][t]
            axis.imshow(np.clip(frames[t], 0, 1))
            axis.set_xticks([])
            axis.set_yticks([])
            if t == 0:
                axis.set_ylabel(label, fontsize=8)
            if row == 0:
                axis.set_title(f"frame {t + 1 if next_frame else t}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns what it writes to ``metrics.json``."""
    args = parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = Path(args.output_dir or Path("runs") / f"autoencoder-{stamp}")
    output_dir.mkdir(parents=True, exist_ok=True)
    directory = synthetic_data(args.cache_dir, args.classes, args.videos_per_class,
                               args.image_size, args.frames)
    common = {
        "labels": None,
        "batch_size": args.batch_size,
        "num_frames": args.frames,
        "image_size": (args.image_size, args.image_size),
        "validation_split": 0.25,
        "seed": args.seed,
    }
    train = video_dataset_from_directory(directory, subset="training", shuffle=True, **common)
    held_out = video_dataset_from_directory(directory, subset="validation", shuffle=False,
                                            **common)
    train_pairs = train.map(lambda clips: pairs(clips, args.next_frame))

    metrics: dict[str, Any] = {
        "task": "next_frame" if args.next_frame else "reconstruction",
        "baseline_psnr": evaluate(None, held_out, args.next_frame),
        "baseline": "copy the current frame" if args.next_frame else "each frame's mean colour",
        "data": {"directory": os.path.abspath(directory), "train_videos": len(train.file_paths),
                 "test_videos": len(held_out.file_paths), "frames": args.frames,
                 "image_size": args.image_size},
        "model": {"factory": "keras_sideways.models.frame_autoencoder",
                  "filters": args.filters, "num_stages": 2 * len(args.filters)},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "seed": args.seed},
    }
    sample = next(iter(held_out))[:1]
    sample_inputs, sample_targets = pairs(sample, args.next_frame)
    outputs = {}
    for mode in args.modes:
        print(f"\n=== {mode}: training {args.epochs} epoch(s) ===", flush=True)
        model = build_model(args, mode)
        start = time.perf_counter()
        history = model.fit(train_pairs, epochs=args.epochs, verbose=args.verbose,
                            shuffle=False)
        seconds = time.perf_counter() - start
        metrics[mode] = {
            "test_psnr": evaluate(model, held_out, args.next_frame),
            "train_seconds": round(seconds, 2),
            "final_train_loss": float(history.history["loss"][-1]),
            "loss_history": [float(v) for v in history.history["loss"]],
        }
        outputs[mode] = np.asarray(model(sample_inputs, training=False))[0]
        print(f"{mode}: held-out PSNR {metrics[mode]['test_psnr']:.2f} dB "
              f"(baseline {metrics['baseline_psnr']:.2f} dB), trained in {seconds:.1f} s")

    plot_reconstructions(np.asarray(sample_inputs)[0], np.asarray(sample_targets)[0], outputs,
                         args.next_frame, output_dir / "reconstructions.png")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("\nmode      held-out PSNR (dB)   train seconds")
    for mode in args.modes:
        print(f"{mode:<9} {metrics[mode]['test_psnr']:>18.2f}   "
              f"{metrics[mode]['train_seconds']:>13.1f}")
    print(f"baseline  {metrics['baseline_psnr']:>18.2f}   ({metrics['baseline']})")
    print(f"\nWrote {output_dir}/: metrics.json, reconstructions.png")
    return metrics


if __name__ == "__main__":
    main()
