"""The chunked tick loop's two knobs on one device: chunk size C and iterations in flight.

    python benchmarks/tick_loop.py                       # small stages, the docs' grid (~8 min)
    python benchmarks/tick_loop.py --model isotropic --configs 8:2,8:1
    python benchmarks/tick_loop.py --quick               # a short check that it runs

A configuration ``C:P`` is ``tick_chunk=C`` and ``TickLoop(parallel_iterations=P)``; ``d`` for
either leaves the model's default. For each, in one process:

- speed: Sideways frames/s over backprop's, the median of per-round ratios (every round times
  every configuration and backprop in turn, so a shared machine's drift hits them alike);
- memory: the peak of one training step beyond what was allocated before it (the input, the
  optimizer state), MiB at T=16 / 64 / 128 (``--memory-frames``), the median of a few fresh
  models, and the longest clip's over the shortest's.

Both knobs trade memory for speed, never what a step computes (docs/scaling.md has the grid for
small stages, where the trade is sharpest). Results: ``benchmarks/results/tick_loop.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The models and shapes of the depth benchmark (a module that loads TensorFlow only to run).
from depth import CLASSES, MODELS, build_network  # noqa: E402

MEMORY_FRAMES = (16, 64, 128)
DEFAULTS = {"configs": "4:d,8:1,d:d,16:1,16:2,32:1,32:2", "rounds": 6, "steps": 3, "repeats": 3,
            "memory_frames": ",".join(map(str, MEMORY_FRAMES))}
QUICK = {"configs": "d:d,d:1", "rounds": 1, "steps": 1, "repeats": 1, "memory_frames": "16,32"}


def parse_config(text: str) -> tuple[int | None, int | None]:
    """``"C:P"`` -> (tick_chunk, parallel_iterations); ``d``: the default."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p == "d" or (p.isdigit() and int(p) > 0) for p in parts):
        raise SystemExit(f"--configs: {text!r} is not C:P (positive integers or 'd', e.g. 8:1)")
    chunk, in_flight = (None if p == "d" else int(p) for p in parts)
    return chunk, in_flight


def parse_frames(text: str) -> tuple[int, ...]:
    """``"16,64,128"`` -> clip lengths for the memory figures, at least two, increasing."""
    parts = text.split(",")
    if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) < 2:
        raise SystemExit(f"--memory-frames: {text!r} is not two or more positive clip lengths "
                         "(e.g. 16,64,128)")
    frames = tuple(int(p) for p in parts)
    if list(frames) != sorted(set(frames)):
        raise SystemExit(f"--memory-frames: {text!r} must increase (e.g. 16,64,128)")
    return frames


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; ``--quick`` fills only the arguments not given."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", choices=sorted(MODELS))
    parser.add_argument("--configs", help=f"default {DEFAULTS['configs']}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, help=f"default {DEFAULTS['rounds']}")
    parser.add_argument("--steps", type=int, help=f"default {DEFAULTS['steps']}")
    parser.add_argument("--repeats", type=int, help=f"default {DEFAULTS['repeats']}")
    parser.add_argument("--memory-frames",
                        help=f"clip lengths of the memory figures (default "
                             f"{DEFAULTS['memory_frames']})")
    parser.add_argument("--quick", action="store_true",
                        help="a short check: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                             + " where not given")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" /
                                                "tick_loop.json"))
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.configs = args.configs.split(",")
    for config in args.configs:
        parse_config(config)
    args.memory_frames = parse_frames(args.memory_frames)
    return args


if __name__ == "__main__":
    # Checked before TensorFlow loads, so that a refused argument answers at once.
    ARGUMENTS = parse_arguments()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# The step memory of the performance benchmark.
from performance import peak_step_bytes  # noqa: E402

from keras_sideways.pipeline.policy import TickLoop  # noqa: E402


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


if __name__ == "__main__":
    main(ARGUMENTS)
