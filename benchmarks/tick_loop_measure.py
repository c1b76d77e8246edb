"""What `benchmarks/tick_loop.py` measures: the speed and memory of each configuration.

Kept apart from the command line so that the script checks its arguments before TensorFlow
loads (a refused argument answers at once) and imports this module only to run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# The models of the depth benchmark and the step memory of the performance benchmark, so that
# these figures are measured exactly like those they are compared with.
from depth import CLASSES, MODELS, build_network
from performance import peak_step_bytes
from tick_loop import parse_config

from keras_sideways.pipeline.policy import TickLoop


def make_model(name: str, config: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    net = build_network(name)
    if config == "backprop":
        model = net.build_model(mode="backprop")
    else:
        chunk, in_flight = parse_config(config)
        model = net.build_model(mode="sideways",
                                **({} if chunk is None else {"tick_chunk": chunk}))
        model.tick_loop = TickLoop(parallel_iterations=in_flight)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def clip_batch(name: str, num_frames: int, batch: int) -> tuple[tf.Tensor, tf.Tensor]:
    image = MODELS[name]["image"]
    rng = np.random.default_rng(0)
    clips = rng.uniform(size=(batch, num_frames, image, image, 3)).astype("float32")
    return tf.constant(clips), tf.constant(rng.integers(0, CLASSES, size=batch))


def speed(name: str, configs: list[str], batch: int, rounds: int, steps: int) -> dict[str, Any]:
    num_frames = MODELS[name]["frames"]
    data = clip_batch(name, num_frames, batch)
    built = {c: make_model(name, c) for c in ["backprop", *configs]}
    for model in built.values():
        model.train_on_batch(*data)  # trace
        model.train_on_batch(*data)
    rates: dict[str, list[float]] = {c: [] for c in built}
    for _ in range(rounds):
        for config, model in built.items():
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(*data)
            rates[config].append(steps * batch * num_frames / (time.perf_counter() - start))
    def over_backprop(config: str) -> float:
        pairs = zip(rates[config], rates["backprop"], strict=True)
        return statistics.median(a / b for a, b in pairs)

    return {
        "frames": num_frames,
        "frames_per_second": {c: statistics.median(r) for c, r in rates.items()},
        "over_backprop": {c: over_backprop(c) for c in configs},
        "plans": {c: repr(built[c].tick_plan(num_frames)) for c in configs},
    }


def memory(name: str, configs: list[str], batch: int, repeats: int,
           frames: tuple[int, ...]) -> dict[str, Any]:
    result = {}
    for config in ["backprop", *configs]:
        peaks = {}
        for num_frames in frames:
            data = clip_batch(name, num_frames, batch)
            peaks[num_frames] = statistics.median(
                peak_step_bytes(make_model(name, config), data) for _ in range(repeats)) / 2**20
        result[config] = {"mib": {f"T{t}": v for t, v in peaks.items()},
                          "longest_over_shortest": peaks[frames[-1]] / peaks[frames[0]]}
    return result


def main(args: argparse.Namespace) -> None:
    configs, frames = args.configs, args.memory_frames
    report: dict[str, Any] = {"model": args.model, "batch": args.batch, "configs": configs,
                              "threads": "TensorFlow's default pools", "rounds": args.rounds}
    report["speed"] = speed(args.model, configs, args.batch, args.rounds, args.steps)
    report["memory"] = memory(args.model, configs, args.batch, args.repeats, frames)
    print(f"{args.model}, B={args.batch}, speed at T={report['speed']['frames']}; "
          f"memory MiB at T={' / '.join(map(str, frames))}")
    for config in ["backprop", *configs]:
        ratio = report["speed"]["over_backprop"].get(config, 1.0)
        entry = report["memory"][config]
        mib = " / ".join(f"{v:.1f}" for v in entry["mib"].values())
        print(f"  {config:>9}  {ratio:5.2f}x backprop  {mib:>22}  "
              f"ratio {entry['longest_over_shortest']:.2f}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"Wrote {output}")

