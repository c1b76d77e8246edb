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
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The models and shapes of the depth benchmark (a module that loads TensorFlow only to run).
from depth import MODELS  # noqa: E402

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
    arguments = parse_arguments()
    from tick_loop_measure import main

    main(arguments)
