"""Core training-step figures: first-step (trace) time vs T, and training throughput per mode.

Everything is measured in one process, alternating the configurations, so that the ratios are
comparable on a shared, noisy machine. Writes JSON (``--output``) and prints a table.

    python benchmarks/core_step.py [--output benchmarks/results/core_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sideways import SidewaysModel  # noqa: E402


def small_video_stages(classes: int = 5) -> list[keras.layers.Layer]:
    """Three stages of a small per-frame CNN for 32×32 RGB frames."""
    return [
        keras.Sequential([keras.layers.Conv2D(16, 3, strides=2, padding="same",
                                              activation="relu")]),
        keras.Sequential([keras.layers.Conv2D(32, 3, strides=2, padding="same",
                                              activation="relu")]),
        keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)]),
    ]


def make_model(mode: str) -> SidewaysModel:
    model = SidewaysModel(small_video_stages(), mode=mode)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def batch(num_frames: int, batch_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    clips = rng.uniform(size=(batch_size, num_frames, 32, 32, 3)).astype("float32")
    return tf.constant(clips), tf.constant(rng.integers(0, 5, size=batch_size))


def first_step_seconds(mode: str, num_frames: int, batch_size: int) -> float:
    model = make_model(mode)
    clips, labels = batch(num_frames, batch_size)
    start = time.perf_counter()
    model.train_on_batch(clips, labels)
    return time.perf_counter() - start


def throughput(models: dict, clips_labels: dict, steps: int, repeats: int) -> dict:
    """Frames per second per configuration; configurations alternate within each repeat."""
    samples: dict = {key: [] for key in models}
    for _ in range(repeats):
        for key, model in models.items():
            clips, labels = clips_labels[key]
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(clips, labels)
            elapsed = time.perf_counter() - start
            samples[key].append(steps * int(clips.shape[0]) * int(clips.shape[1]) / elapsed)
    return {key: statistics.median(values) for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="benchmarks/results/core_step.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    # Warm up the runtime once so that one-off start-up costs land on no measurement.
    first_step_seconds("sideways", 6, 2)

    first = {}
    for mode in ("sideways", "backprop"):
        for num_frames in (16, 64):
            first[(mode, num_frames)] = first_step_seconds(mode, num_frames, args.batch_size)

    models, data = {}, {}
    for mode in ("sideways", "backprop"):
        for num_frames in (16, 64):
            key = (mode, num_frames)
            models[key] = make_model(mode)
            data[key] = batch(num_frames, args.batch_size)
            models[key].train_on_batch(*data[key])  # trace outside the timing
    rates = throughput(models, data, args.steps, args.repeats)

    results = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "keras": keras.__version__},
        "model": f"3-stage CNN, 32x32x3 frames, batch {args.batch_size}",
        "first_step_seconds": {f"{m}_T{t}": v for (m, t), v in first.items()},
        "first_step_ratio_T64_over_T16": {
            m: first[(m, 64)] / first[(m, 16)] for m in ("sideways", "backprop")
        },
        "frames_per_second": {f"{m}_T{t}": v for (m, t), v in rates.items()},
        "throughput_ratio_sideways_over_backprop": {
            f"T{t}": rates[("sideways", t)] / rates[("backprop", t)] for t in (16, 64)
        },
    }
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))

    print(f"{'mode':<10}{'T':>4}{'first step s':>14}{'frames/s':>12}")
    for mode in ("sideways", "backprop"):
        for num_frames in (16, 64):
            print(f"{mode:<10}{num_frames:>4}{first[(mode, num_frames)]:>14.2f}"
                  f"{rates[(mode, num_frames)]:>12.1f}")
    for mode, ratio in results["first_step_ratio_T64_over_T16"].items():
        print(f"first-step time T=64/T=16 ({mode}): {ratio:.2f}")
    for key, ratio in results["throughput_ratio_sideways_over_backprop"].items():
        print(f"throughput sideways/backprop at {key}: {ratio:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
