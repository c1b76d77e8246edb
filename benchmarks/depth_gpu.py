"""Depth parallelism on GPUs: one command for the first GPU measurement (under 5 minutes).

    python benchmarks/depth_gpu.py                  # every model, K stages on K GPUs
    python benchmarks/depth_gpu.py --stages 2 --rounds 5

Stage k goes on GPU k; with fewer GPUs than stages (one GPU, typically) the GPUs are split into
logical GPUs first, so that the stages are still placed on separate devices (they then share
the physical GPU's streams and memory bandwidth: a check that the placement and the skewed
schedule work on GPUs, not a depth-parallel speed-up). In one process, alternating rounds:

- ``sideways_depth``: ``stage_devices`` over the K (logical) GPUs, the skewed chunk schedule;
- ``sideways_one_gpu``: every stage on GPU 0, the chunked schedule (the one-device default);
- ``backprop``: ``mode="backprop"`` on GPU 0;
- ``mirrored_backprop``: data-parallel backprop, `MirroredStrategy` over the K (logical) GPUs.

Each model is measured in its own process (a second `MirroredStrategy` over another number of
devices in one process clashes with the first one's collective groups: "joining a group with
size 3, but that group has size 4", seen on logical CPUs). Writes
``benchmarks/results/depth_gpu.json``. Without a GPU it stops at once with an error.
``--device-type CPU`` runs the same code on K logical CPU devices instead (tiny sizes, e.g.
``--batch 12 --frames 8 --rounds 1 --steps 1``): a check, on a machine without a GPU, that the
script itself works before the first GPU is lent (``tests/test_benchmarks.py``), not a figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 4
IMAGE = 64


def stage_devices(device_type: str, num_stages: int, memory_mb: int) -> tuple[list[str], int]:
    """K device names and the number of physical devices of ``device_type``."""
    if device_type == "CPU":
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_stages)
        logical = tf.config.list_logical_devices("CPU")
        return [device.name for device in logical[:num_stages]], len(cpus)
    return gpu_devices(num_stages, memory_mb)


def gpu_devices(num_stages: int, memory_mb: int) -> tuple[list[str], int]:
    """K device names, splitting the GPUs into logical ones if there are fewer than K."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise SystemExit(
            "depth_gpu.py needs a GPU, and TensorFlow finds none here "
            f"(tf.config.list_physical_devices('GPU') is empty; TensorFlow {tf.__version__}, "
            f"built with CUDA: {tf.test.is_built_with_cuda()}). Run benchmarks/depth.py for "
            "the CPU measurement.")
    if len(gpus) < num_stages:
        # Logical GPUs need a memory limit each (--memory-mb).
        tf.config.set_logical_device_configuration(
            gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=memory_mb)] * num_stages)
    logical = tf.config.list_logical_devices("GPU")
    return [device.name for device in logical[:num_stages]], len(gpus)


def build(name: str, num_stages: int) -> Any:
    from keras_sideways import models

    if name == "isotropic":
        return models.isotropic_cnn_classifier(CLASSES, num_stages=num_stages, width=128)
    return models.temporal_cnn_classifier(CLASSES, filters=(32, 64, 128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, default=4, help="K for the isotropic model")
    # 48 splits evenly over 2, 3, 4 or 6 replicas: the data-parallel baseline gets equal shares.
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--memory-mb", type=int, default=4096,
                        help="memory of each logical GPU when one GPU is split")
    parser.add_argument("--device-type", choices=("GPU", "CPU"), default="GPU",
                        help="CPU: logical CPU devices, a check of this script without a GPU")
    parser.add_argument("--model", choices=("isotropic", "temporal"),
                        help="measure this model only (each model's own process runs this)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" /
                                                "depth_gpu.json"))
    args = parser.parse_args()
    stages = {"isotropic": args.stages, "temporal": 3}
    for num_stages in sorted(set(stages.values())):
        if args.batch % num_stages:
            parser.error(f"--batch {args.batch} does not split evenly over {num_stages} replicas "
                         f"(the MirroredStrategy baseline of the {num_stages}-stage model); use a "
                         f"multiple of {math.lcm(*stages.values())}.")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        result = measure(args, args.model, stages[args.model])
        output.write_text(json.dumps(result, indent=2))
        return
    results: dict[str, Any] = {}
    for name in stages:
        part = output.with_suffix(f".{name}.json")
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--model", name,
                        "--output", str(part)], check=True)
        result = json.loads(part.read_text())
        part.unlink()
        models = {**results.get("models", {}), **result["models"]}
        results = {**result, "command": " ".join(sys.argv), "models": models}
    output.write_text(json.dumps(results, indent=2))
    print(f"\nWrote {output}")


def measure(args: argparse.Namespace, name: str, num_stages: int) -> dict[str, Any]:
    """One model's alternating rounds on its K (logical) devices, in this process."""
    devices, physical = stage_devices(args.device_type, num_stages, args.memory_mb)
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    clips = tf.constant(rng.uniform(size=(args.batch, args.frames, IMAGE, IMAGE, 3)),
                        tf.float32)
    labels = tf.constant(rng.integers(0, CLASSES, size=args.batch))
    results: dict[str, Any] = {"machine": platform.platform(), "device_type": args.device_type,
                               "physical_devices": physical, "batch_size": args.batch,
                               "frames": args.frames, "models": {}}
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps: dict[str, Any] = {}
    for config in ("sideways_depth", "sideways_one_gpu", "backprop", "mirrored_backprop"):
        keras.utils.set_random_seed(0)
        placed = devices if config == "sideways_depth" else None
        strategy = (tf.distribute.MirroredStrategy(devices)
                    if config == "mirrored_backprop" else tf.distribute.get_strategy())
        # Placed stages and replicas name their own devices; the rest run on the first.
        device = None if placed or config == "mirrored_backprop" else devices[0]
        with strategy.scope(), tf.device(device):
            model = build(name, num_stages).build_model(
                mode="backprop" if "backprop" in config else "sideways", stage_devices=placed)
            model.compile(optimizer="adam", loss=loss)
        # Every configuration steps through Keras' compiled train function on an iterator (as
        # `fit` does), so that none pays `train_on_batch`'s per-call conversion.
        dataset = tf.data.Dataset.from_tensors((clips, labels)).repeat()
        with tf.device(device):
            model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)  # traced and warm
        iterator = iter(strategy.experimental_distribute_dataset(dataset)
                        if config == "mirrored_backprop" else dataset)

        def step(m: Any = model, it: Any = iterator, device: Any = device) -> Any:
            with tf.device(device):
                return m.train_function(it)
        steps[config] = step
        steps[config]()
    rates: dict[str, list[float]] = {config: [] for config in steps}
    for _ in range(args.rounds):
        for config, step in steps.items():
            begin = time.perf_counter()
            for _ in range(args.steps):
                logs = step()
            # Wait for the queued GPU work: the last step's logs on the host.
            tf.nest.map_structure(np.asarray, logs)
            rates[config].append(args.steps * args.batch * args.frames /
                                 (time.perf_counter() - begin))
    medians = {config: statistics.median(values) for config, values in rates.items()}
    ratios = {f"sideways_depth/{c}": statistics.median(
        a / b for a, b in zip(rates["sideways_depth"], rates[c], strict=True))
        for c in rates if c != "sideways_depth"}
    results["models"][name] = {"num_stages": num_stages, "stage_devices": devices,
                               "frames_per_second": medians, "samples": rates,
                               "paired_ratios": ratios}
    print(f"\n{name}: K={num_stages} on {physical} physical {args.device_type}(s), devices "
          f"{devices}")
    for config, rate in medians.items():
        print(f"  {config:<22}{rate:10.1f} frames/s")
    for ratio, value in ratios.items():
        print(f"  {ratio:<40}{value:6.2f}")
    return results


if __name__ == "__main__":
    main()
