"""Sideways vs backprop on one machine: throughput, memory, trace time, depth parallelism, input.

Every figure that is compared is measured in this one process, configurations alternating, so
that the ratios hold on a shared, noisy machine. Writes JSON and prints a table per section.

    python benchmarks/performance.py                       # all sections
    python benchmarks/performance.py --sections throughput,memory --output out.json

The output file keeps the sections it already holds that this run did not measure.

Sections:
- ``throughput``: training frames/s, both modes, T in {16, 64}, same stages/data/process,
  alternating rounds; the Sideways tick chunk (``tick_chunk``) and the loop's two iterations in
  flight as knobs.
- ``memory``: peak memory of one training step beyond what was allocated before it (the input
  clip is allocated before, so it is excluded), T in {16, 64, 128}.
- ``trace``: first-step time (trace + one step) vs T, median of fresh models.
- ``depth``: per-stage forward+pullback time per tick, and the modeled throughput on K devices
  (Sideways: a tick costs the slowest stage; backprop streamed frame by frame: the sum of all
  stages), for the reference models as shipped and after `split_sequential` balancing.
- ``input``: the fraction of training time that waits on real video decoding in the example's
  pipeline (`video_dataset_from_directory(cache=True)` over the synthetic mp4 set), and how much
  slower epochs fed from the pipeline are than epochs fed batches of the same shape from memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sideways import SidewaysModel, models  # noqa: E402
from keras_sideways.partition import (  # noqa: E402
    balanced_partition,
    measure_costs,
    modeled_speedup,
)
from keras_sideways.pipeline.policy import TickLoop  # noqa: E402

IMAGE = 64
CLASSES = 4


def reference_model(mode: str, **kwargs: Any) -> SidewaysModel:
    """The example's temporal reference model (64×64 frames, 3 stages, windows 3-2-1)."""
    net = models.temporal_cnn_classifier(CLASSES)
    model = net.build_model(mode=mode, **kwargs)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def clip_batch(num_frames: int, batch_size: int, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    rng = np.random.default_rng(seed)
    clips = rng.uniform(size=(batch_size, num_frames, IMAGE, IMAGE, 3)).astype("float32")
    return tf.constant(clips), tf.constant(rng.integers(0, CLASSES, size=batch_size))


def timed_steps(model: SidewaysModel, data: tuple, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*data)
    return time.perf_counter() - start


def throughput(batch_size: int, steps: int, repeats: int) -> dict[str, Any]:
    """Frames/s of both modes, configurations alternating within every round.

    The ratio is the median over rounds of each round's Sideways/backprop ratio (paired, so
    that the machine's drift between rounds cancels). Besides the default (chunks of 4 ticks,
    two loop iterations in flight) it shows chunks of 8, the literal per-tick pipeline (chunk
    1), and chunks of 4 one iteration at a time (the loop's parallelism switched off).
    """
    configs = [("backprop", None, True), ("sideways", None, True), ("sideways", None, False),
               ("sideways", 8, True), ("sideways", 1, True)]
    runs: dict[tuple, tuple] = {}
    for num_frames in (16, 64):
        data = clip_batch(num_frames, batch_size)
        for mode, chunk, overlap in configs:
            keras.utils.set_random_seed(0)
            model = reference_model(mode, **({"tick_chunk": chunk} if chunk else {}))
            if not overlap:
                model.tick_loop = TickLoop(parallel_iterations=1)
            model.train_on_batch(*data)  # trace outside the timing
            runs[(mode, chunk, overlap, num_frames)] = (model, data)
    samples: dict[tuple, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, (model, data) in runs.items():
            seconds = timed_steps(model, data, steps)
            samples[key].append(steps * batch_size * key[3] / seconds)

    def name(mode: str, chunk: int | None, overlap: bool) -> str:
        return mode + ("" if chunk is None else f"_chunk{chunk}") + (
            "" if overlap else "_one_iteration_at_a_time")

    rates = {key: statistics.median(values) for key, values in samples.items()}
    table = {f"{name(*key[:3])}_T{key[3]}": rate for key, rate in rates.items()}
    ratios = {
        f"T{t}": statistics.median(
            s / b for s, b in zip(samples[("sideways", None, True, t)],
                                  samples[("backprop", None, True, t)], strict=True))
        for t in (16, 64)
    }
    print(f"\nTraining throughput (frames/s, median of {repeats} alternating rounds)")
    print(f"{'configuration':<44}{'T=16':>10}{'T=64':>10}")
    for mode, chunk, overlap in configs:
        label = mode + ("" if chunk is None else f" (tick_chunk={chunk})") + (
            "" if overlap else " (one iteration at a time)")
        print(f"{label:<44}{rates[(mode, chunk, overlap, 16)]:>10.1f}"
              f"{rates[(mode, chunk, overlap, 64)]:>10.1f}")
    print("sideways/backprop (median of paired rounds): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return {"frames_per_second": table, "ratio_sideways_over_backprop": ratios,
            "per_round_frames_per_second": {f"{name(*k[:3])}_T{k[3]}": v
                                            for k, v in samples.items()},
            "batch_size": batch_size, "steps_per_round": steps, "rounds": repeats}


def peak_step_bytes(model: SidewaysModel, data: tuple) -> int:
    model.train_on_batch(*data)  # trace and allocate optimizer state first
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    model.train_on_batch(*data)
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def memory(batch_size: int, repeats: int = 3) -> dict[str, Any]:
    # The allocator's counters move by whole MiB and vary by a few MiB between fresh models:
    # the median of a few fresh models per configuration.
    peaks: dict[str, dict[int, int]] = {"sideways": {}, "backprop": {}}
    for num_frames in (16, 64, 128):
        data = clip_batch(num_frames, batch_size)
        for mode in peaks:
            peaks[mode][num_frames] = int(statistics.median(
                peak_step_bytes(reference_model(mode), data) for _ in range(repeats)
            ))
        del data
    ratios = {
        "sideways_T128_over_T16": peaks["sideways"][128] / peaks["sideways"][16],
        "backprop_T128_over_T16": peaks["backprop"][128] / peaks["backprop"][16],
        "sideways_over_backprop_T64": peaks["sideways"][64] / peaks["backprop"][64],
    }
    print(f"\nPeak step memory beyond the input (MiB, median of {repeats} fresh models)")
    print(f"{'mode':<10}" + "".join(f"{f'T={t}':>10}" for t in (16, 64, 128)))
    for mode, values in peaks.items():
        print(f"{mode:<10}" + "".join(f"{values[t] / 2**20:>10.1f}" for t in (16, 64, 128)))
    print(", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return {"peak_bytes": {m: {f"T{t}": v for t, v in p.items()} for m, p in peaks.items()},
            "ratios": ratios, "batch_size": batch_size}


def trace(batch_size: int, rounds: int = 3) -> dict[str, Any]:
    """First-step seconds (trace + one step) of fresh models: the median of a few rounds.

    One first step is a single sample of a noisy machine (a stall of a second has been seen):
    every round times a fresh model per mode and T, in the same order, and each figure is the
    median over rounds.
    """
    samples: dict[str, dict[int, list[float]]] = {
        "sideways": {t: [] for t in (16, 64, 128)}, "backprop": {t: [] for t in (16, 64, 128)}}
    reference_model("sideways").train_on_batch(*clip_batch(6, 2))  # runtime warm-up
    batches = {t: clip_batch(t, batch_size) for t in (16, 64, 128)}
    for _ in range(rounds):
        for num_frames, data in batches.items():
            for mode in samples:
                model = reference_model(mode)
                start = time.perf_counter()
                model.train_on_batch(*data)
                samples[mode][num_frames].append(time.perf_counter() - start)
    seconds = {m: {t: statistics.median(v) for t, v in s.items()} for m, s in samples.items()}
    ratios = {f"{m}_T64_over_T16": s[64] / s[16] for m, s in seconds.items()}
    print(f"\nFirst step (trace + one step) seconds, median of {rounds} fresh models")
    print(f"{'mode':<10}" + "".join(f"{f'T={t}':>10}" for t in (16, 64, 128)))
    for mode, values in seconds.items():
        print(f"{mode:<10}" + "".join(f"{values[t]:>10.2f}" for t in (16, 64, 128)))
    print(", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return {"seconds": {m: {f"T{t}": v for t, v in s.items()} for m, s in seconds.items()},
            "samples": {m: {f"T{t}": v for t, v in s.items()} for m, s in samples.items()},
            "ratios": ratios}


def _layers_of(stages: list[keras.layers.Layer]) -> list[keras.layers.Layer]:
    layers = []
    for stage in stages:
        layers.extend(stage.layers if isinstance(stage, keras.Sequential) else [stage])
    return layers


def depth(batch_size: int, repeats: int = 30) -> dict[str, Any]:
    """Per-stage costs of per-frame reference networks, as shipped and re-balanced.

    Layer costs within a stage (`measure_costs(within_stage=True)`) choose the balanced cuts
    (`balanced_partition`, as `split_sequential` does); the stages so formed are then measured
    as stages, one call each, and those figures give the modeled speed-up.
    """
    results = {}
    networks = {
        "frame_cnn_classifier": models.frame_cnn_classifier(CLASSES),
        "frame_cnn_classifier_extra_conv": models.frame_cnn_classifier(
            CLASSES, filters=(16, 32, 64, 64), extra_conv=True),
        "frame_autoencoder": models.frame_autoencoder(filters=(16, 32, 64)),
        # 12 identical blocks: stages of equal cost for every K that divides 12.
        "isotropic_cnn_classifier": models.isotropic_cnn_classifier(
            CLASSES, num_stages=4, blocks_per_stage=3),
    }
    counts = {"isotropic_cnn_classifier": (2, 3, 4, 6)}
    frame = (IMAGE, IMAGE, 3)
    print("\nDepth parallelism (modeled from measured per-tick stage costs)")
    print(f"{'network':<34}{'K':>3}{'as shipped':>12}{'balanced':>10}{'target':>8}"
          f"{'largest layer':>15}")
    for name, net in networks.items():
        layers = _layers_of(net.stages)
        layer_costs = measure_costs(layers, frame, batch_size, repeats, within_stage=True)
        shipped = measure_costs(net.stages, frame, batch_size, repeats)
        # The stage holding the largest layer costs at least that layer, so a layer with a share
        # s of the network keeps the speed-up near 1/s, whatever the cuts (approximately: the
        # per-stage call each measured stage pays is not in the layer figures).
        largest_share = max(layer_costs) / sum(layer_costs)
        entry: dict[str, Any] = {"layer_seconds_within_stage": layer_costs,
                                 "largest_layer_share": largest_share,
                                 "shipped_stage_seconds": shipped, "stages": {}}
        for num_stages in sorted({net.num_stages, *counts.get(name, (2, 3, 4))}):
            if num_stages > len(layers):
                continue
            cuts = balanced_partition(layer_costs, num_stages)
            bounds = [0, *cuts, len(layers)]
            groups = [keras.Sequential(layers[a:b])
                      for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            balanced = measure_costs(groups, frame, batch_size, repeats)
            as_shipped = modeled_speedup(shipped) if num_stages == net.num_stages else None
            entry["stages"][f"K{num_stages}"] = {
                "cuts": cuts,
                "balanced_stage_seconds": balanced,
                "modeled_speedup_balanced": modeled_speedup(balanced),
                "modeled_speedup_as_shipped": as_shipped,
                "target": 0.9 * num_stages,
            }
            shown = "-" if as_shipped is None else f"{as_shipped:.2f}"
            print(f"{name:<34}{num_stages:>3}{shown:>12}{modeled_speedup(balanced):>10.2f}"
                  f"{0.9 * num_stages:>8.2f}{100 * largest_share:>14.0f}%")
        results[name] = entry
    return results


class _EpochTimes(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def input_wait(batch_size: int, epochs: int = 16) -> dict[str, Any]:
    """The example's training fed by its real pipeline vs fed the same shapes from memory.

    The example's configuration: synthetic mp4 videos of 24 frames at 64×64, 12-frame clips,
    batch 16, `cache=True`, every video decoded once before training as the example does. Both
    models are traced before the timing. Two figures:

    - waiting: the fraction of training time spent blocked on the next batch of the prefetched
      pipeline (batches taken one by one and trained on, each wait timed): the target's figure;
    - slowdown: 1 - (epoch time fed from memory / epoch time fed by the pipeline), epochs of
      `fit` alternating. It also counts the pipeline's own CPU work, which shares the two cores
      with training even when training never waits, and it is noisy at that scale.
    """
    from keras_sideways.data import video_dataset_from_directory, write_synthetic_actions

    num_frames, batch_size = 12, 16
    with tempfile.TemporaryDirectory() as directory:
        write_synthetic_actions(directory, videos_per_class=80, num_frames=24,
                                image_size=(IMAGE, IMAGE), seed=0)
        dataset = video_dataset_from_directory(
            directory, batch_size=batch_size, num_frames=num_frames, image_size=(IMAGE, IMAGE),
            shuffle=True, seed=0, cache=True,
        )
        steps = int(dataset.cardinality())
        start = time.perf_counter()
        for _ in dataset:  # the example decodes every video once, before training
            pass
        decode_seconds = time.perf_counter() - start
        clips, labels = clip_batch(num_frames, batch_size)
        in_memory = tf.data.Dataset.from_tensors((clips, labels)).repeat(steps)
        models_and_data = {}
        for name, data in (("memory", in_memory), ("pipeline", dataset)):
            keras.utils.set_random_seed(0)
            model = reference_model("sideways")
            model.train_on_batch(clips, labels)  # trace outside the timing
            models_and_data[name] = (model, data)
        # Epochs alternate between the two feeds, so that the machine's drift hits both alike.
        times: dict[str, list[float]] = {"memory": [], "pipeline": []}
        for _ in range(epochs):
            for name, (model, data) in models_and_data.items():
                callback = _EpochTimes()
                model.fit(data, epochs=1, verbose=0, callbacks=[callback])
                times[name].append(callback.seconds[0])
        model = models_and_data["pipeline"][0]
        blocked, total = [], []
        for _ in range(max(2, epochs // 4)):
            iterator, waited, elapsed = iter(dataset), 0.0, 0.0
            while True:
                start = time.perf_counter()
                batch = next(iterator, None)
                got = time.perf_counter()
                if batch is None:
                    break
                model.train_on_batch(*batch)
                waited += got - start
                elapsed += time.perf_counter() - start
            blocked.append(waited)
            total.append(elapsed)
    waiting = sum(blocked) / sum(total)
    per_epoch_slowdown = [max(0.0, 1 - m / p) for m, p in zip(times["memory"], times["pipeline"],
                                                           strict=True)]
    # The first fit call of each model pays Keras' one-off set-up: the median is the figure.
    slowdown = 1 - statistics.median(times["memory"]) / statistics.median(times["pipeline"])
    print("\nInput wait (the example's pipeline: mp4 decoded once with PyAV before training, "
          "clips sampled from memory)")
    print(f"decoding {steps * batch_size} videos before training: {decode_seconds:.1f} s")
    print(f"{'epoch':<8}{'memory s':>10}{'pipeline s':>12}{'slower':>8}")
    for epoch, (m, p, w) in enumerate(zip(times["memory"], times["pipeline"], per_epoch_slowdown,
                                          strict=True)):
        print(f"{epoch + 1:<8}{m:>10.2f}{p:>12.2f}{100 * w:>7.1f}%")
    print(f"fed by the pipeline, training is {100 * max(slowdown, 0.0):.1f}% slower than fed from "
          "memory (median epochs)")
    print(f"training waits on input {100 * waiting:.1f}% of its time ({len(total)} epochs, "
          f"{sum(blocked):.2f} s of {sum(total):.1f} s; target <= 5%)")
    return {"waiting": waiting, "waiting_seconds": blocked, "training_seconds": total,
            "slowdown": max(slowdown, 0.0), "epoch_seconds": times,
            "slowdown_per_epoch": per_epoch_slowdown,
            "decode_seconds_before_training": decode_seconds, "steps_per_epoch": steps,
            "batch_size": batch_size, "num_frames": num_frames}


SECTIONS = {"throughput": throughput, "memory": memory, "trace": trace, "depth": depth,
            "input": input_wait}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--output", default="benchmarks/results/performance.json")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {sorted(SECTIONS)}")
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "keras": keras.__version__,
                    "load_average": os.getloadavg()},
        "model": "models.temporal_cnn_classifier(4): 3 stages, windows 3-2-1, 64x64 frames",
    }
    for section in chosen:
        function = SECTIONS[section]
        if section == "throughput":
            results[section] = function(args.batch_size, args.steps, args.repeats)
        else:
            results[section] = function(args.batch_size)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        # Sections run separately accumulate in one file; each keeps its latest measurement.
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
