"""Depth parallelism measured: Sideways stages running at the same time vs backprop, same cores.

    python benchmarks/depth.py                 # both reference models, all configurations
    python benchmarks/depth.py --quick         # isotropic model only, short rounds (~3 min)
    python benchmarks/depth.py --models isotropic --rounds 8 --output out.json

Every configuration is its own worker process (thread pools and logical devices are fixed when
TensorFlow starts), built and traced once, then all of them are timed in alternating rounds of a
few steps, so that a shared machine's drift hits them alike; ratios are medians of per-round
ratios. ``cpu/wall`` (process CPU seconds per wall second) says whether the stages really ran at
once: ~1 for one core's worth, ~K when K stages overlap (TensorFlow's multi-threaded pools also
spin while they wait, so for them it overstates the work done). The 1-minute load average is
recorded before every round. Configurations, for a model of K stages on a machine of P cores:

- ``sideways_depth``: K logical CPU devices, one intra-op thread, min(K, P) inter-op threads (one
  core per running stage), ``stage_devices`` (the skewed chunk schedule, the default there);
- ``sideways_depth_one_thread``: the same model and schedule on one thread (the same work, no
  concurrency): the speed-up of the stages running at once;
- ``sideways_depth_default_pools``: the same placement with TensorFlow's default thread pools
  (every op may use every core, and the stages' ops interleave on them);
- ``sideways_one_device``: Sideways as on one device (the chunked schedule), default pools;
- ``sideways_skewed_one_device``: the skewed schedule on one device, default pools;
- ``backprop``: ``mode="backprop"`` with TensorFlow's default pools on all cores;
- ``backprop_one_thread``: the same on one thread (backprop's own gain from the other cores);
- ``mirrored_backprop``: data-parallel backprop, `MirroredStrategy` over P logical CPU devices;
- ``sideways_servers``: K processes on loopback, each pinned to a core with ``taskset`` and
  running a `tf.distribute.Server`; the stages placed on them through TensorFlow's distributed
  runtime (``stage_devices=["/job:worker/task:k/device:CPU:0", …]``), driven by a client.

Also written: the modeled speed-up (per-stage forward+pullback times measured one at a time on
one thread, as in ``benchmarks/performance.py --sections depth``: a tick costs the slowest stage)
beside the measured one, and the bytes that cross between neighbouring stages per loop
iteration (up: a chunk of activations; down: a chunk of their cotangents).

Results: ``benchmarks/results/depth.json`` and ``depth.png``, copied to ``docs/depth.json`` and
``docs/figures/depth.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLASSES = 4
MODELS = {
    # The isotropic reference: two equal stages of two 3x3 convolutions, width 32.
    "isotropic": {"batch": 8, "frames": 32, "image": 64},
    # The example's model (examples/action_recognition.py): 3 stages, windows 3-2-1.
    "temporal": {"batch": 8, "frames": 32, "image": 64},
    # Small stages: a 4-stage per-frame CNN of 16-32 channels at 32x32, where per-call overhead
    # weighs most against the work of a stage.
    "small": {"batch": 8, "frames": 64, "image": 32},
}


# ---------------------------------------------------------------------------- worker side


def build_network(name: str) -> Any:
    from keras_sideways import models

    if name == "isotropic":
        return models.isotropic_cnn_classifier(CLASSES, num_stages=2, width=32)
    if name == "temporal":
        return models.temporal_cnn_classifier(CLASSES)
    if name == "small":
        return models.frame_cnn_classifier(CLASSES, filters=(16, 16, 32, 32))
    raise ValueError(f"Unknown model {name!r}; known: {sorted(MODELS)}.")


def worker(config: dict[str, Any]) -> None:
    """Build one configuration, warm it up, then time ``n`` steps per line read from stdin."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    if config.get("intra"):
        tf.config.threading.set_intra_op_parallelism_threads(config["intra"])
    if config.get("inter"):
        tf.config.threading.set_inter_op_parallelism_threads(config["inter"])
    if config.get("devices", 1) > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config["devices"])
    if config.get("cluster"):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": config["cluster"]}), rpc_layer="grpc")
        # The client is not a task of the cluster: its own device stays the default.
        tf.config.experimental_connect_to_cluster(resolver, make_master_device_default=False)
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    shape = MODELS[config["model"]]
    batch, frames = shape["batch"], config.get("frames", shape["frames"])
    rng = np.random.default_rng(0)
    image = shape["image"]
    clips = tf.constant(rng.uniform(size=(batch, frames, image, image, 3)).astype("float32"))
    labels = tf.constant(rng.integers(0, CLASSES, size=batch))
    if config["kind"] == "modeled":
        print(json.dumps(modeled(config["model"], batch, image)), flush=True)
        return
    strategy = (tf.distribute.MirroredStrategy([f"/CPU:{d}" for d in range(config["devices"])])
                if config["kind"] == "mirrored" else tf.distribute.get_strategy())
    with strategy.scope():
        net = build_network(config["model"])
        kwargs = {}
        if config.get("stage_devices"):
            kwargs["stage_devices"] = config["stage_devices"]
        if config.get("tick_chunk"):
            kwargs["tick_chunk"] = config["tick_chunk"]
        model = net.build_model(mode=config.get("mode", "sideways"), **kwargs)
        if config.get("schedule"):
            from keras_sideways.pipeline.policy import TickLoop

            model.tick_loop = TickLoop(schedule=config["schedule"], unroll=config.get("unroll"))
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if config["kind"] == "mirrored":
        dataset = tf.data.Dataset.from_tensors((clips, labels)).repeat()
        # `fit` builds the replicas' variables and the train function; later steps call that
        # function on an iterator of the distributed data set, as `fit` does, without the
        # per-call setup of `fit`.
        model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
        iterator = iter(strategy.experimental_distribute_dataset(dataset))

        def step() -> None:
            model.train_function(iterator)
    else:
        def step() -> None:
            model.train_on_batch(clips, labels)
    step()
    step()
    info: dict[str, Any] = {"ready": True}
    if config.get("mode", "sideways") == "sideways":
        plan = model.tick_plan(frames)
        info.update(schedule=plan.schedule, chunk=plan.chunk, unrolled=plan.unrolled)
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        steps = int(line)
        if steps == 0:
            break
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(json.dumps({"frames_per_second": steps * batch * frames / wall,
                          "cpu_per_wall": cpu / wall}), flush=True)


def modeled(name: str, batch: int, image: int, repeats: int = 20) -> dict[str, Any]:
    """Per-stage forward+pullback seconds per tick on one thread, and the modeled speed-up."""
    import tensorflow as tf

    from keras_sideways.partition import modeled_speedup

    net = build_network(name)
    x = tf.random.uniform((batch, image, image, 3))
    calls, output_sizes = [], []
    for k, stage in enumerate(net.stages):
        window = net.temporal_windows[k]
        inputs = tf.stack([x] * window, 1) if window > 1 else x
        stage(inputs)

        @tf.function
        def forward_and_pullback(inputs: tf.Tensor, stage: Any = stage, k: int = k) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                outputs = stage(inputs, training=True)
            sources = ([inputs] if k else []) + stage.trainable_variables
            return outputs, tape.gradient(outputs, sources, tf.ones_like(outputs))

        x, _ = forward_and_pullback(inputs)
        calls.append((forward_and_pullback, inputs))
        output_sizes.append(int(x.shape[1:].num_elements()))
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for (call, inputs), times in zip(calls, samples, strict=True):
            begin = time.perf_counter()
            call(inputs)
            times.append(time.perf_counter() - begin)
    costs = [statistics.median(times) for times in samples]
    # float32 activations of one tick at each boundary k -> k+1 (their cotangents come back).
    boundary_bytes = [size * 4 for size in output_sizes[:-1]]
    return {"stage_seconds_per_tick": costs, "modeled_speedup": modeled_speedup(costs),
            "boundary_bytes_per_frame": boundary_bytes}


# ---------------------------------------------------------------------------- controller side


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


SERVER = """
import os, sys, tensorflow as tf
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(2)
cluster = tf.train.ClusterSpec({"worker": sys.argv[1].split(",")})
tf.distribute.Server(cluster, job_name="worker", task_index=int(sys.argv[2]),
                     protocol="grpc").join()
"""


class Fleet:
    """The worker processes of one model, timed in alternating rounds."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.workers: dict[str, subprocess.Popen] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.servers: list[subprocess.Popen] = []

    def start(self, name: str, config: dict[str, Any], prefix: list[str] | None = None) -> None:
        process = subprocess.Popen(
            [*(prefix or []), sys.executable, __file__, "--worker", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self.env)
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"Configuration {name} failed to start:\n{process.stderr.read()}")
        self.workers[name] = process
        self.info[name] = json.loads(line)

    def start_servers(self, count: int) -> list[str]:
        addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
        cores = sorted(os.sched_getaffinity(0))
        for task in range(count):
            core = str(cores[task % len(cores)])
            self.servers.append(subprocess.Popen(
                ["taskset", "-c", core, sys.executable, "-c", SERVER, ",".join(addresses),
                 str(task)], env=self.env, stderr=subprocess.DEVNULL))
        time.sleep(3)  # the servers listen before the client connects
        return addresses

    def rounds(self, rounds: int, steps: int) -> tuple[dict[str, list], dict[str, list], list]:
        rates = {name: [] for name in self.workers}
        cpu = {name: [] for name in self.workers}
        loads = []
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            for name, process in self.workers.items():
                process.stdin.write(f"{steps}\n")
                process.stdin.flush()
                sample = json.loads(process.stdout.readline())
                rates[name].append(sample["frames_per_second"])
                cpu[name].append(sample["cpu_per_wall"])
        return rates, cpu, loads

    def close(self) -> None:
        """Ask every worker to stop; one that does not (a strategy's threads) is killed."""
        for process in self.workers.values():
            try:
                process.stdin.write("0\n")
                process.stdin.flush()
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for server in self.servers:
            server.terminate()
            server.wait(timeout=30)


def balanced_devices(costs: list[float], cores: int) -> list[int]:
    """Contiguous stages per core, balancing the measured stage costs."""
    from keras_sideways.partition import balanced_partition

    if len(costs) <= cores:
        return list(range(len(costs)))
    cuts = balanced_partition(costs, cores)
    bounds = [0, *cuts, len(costs)]
    return [d for d, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
            for _ in range(a, b)]


def run_model(name: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    base = {"model": name, "frames": args.frames or MODELS[name]["frames"],
            "tick_chunk": args.tick_chunk}
    fleet = Fleet(env)
    try:
        fleet.start("modeled", {**base, "kind": "modeled", "intra": 1, "inter": 1})
        model_info = fleet.info.pop("modeled")
        fleet.workers.pop("modeled").wait(timeout=60)
        costs = model_info["stage_seconds_per_tick"]
        num_stages = len(costs)
        placement = balanced_devices(costs, cores)
        devices = max(placement) + 1
        stage_devices = [f"/CPU:{d}" for d in placement]
        depth = {**base, "kind": "train", "intra": 1, "inter": devices, "devices": devices,
                 "stage_devices": stage_devices}
        fleet.start("sideways_depth", depth)
        fleet.start("sideways_depth_one_thread", {**depth, "inter": 1})
        if not args.quick:
            # The skewed schedule's `tf.while_loop` form (what runs past the unrolling limit):
            # the stages below the top run each chunk's forward twice.
            fleet.start("sideways_depth_looped", {**depth, "schedule": "skewed",
                                                  "unroll": False})
        fleet.start("sideways_depth_default_pools", {**depth, "intra": 0, "inter": 0})
        fleet.start("sideways_skewed_one_device", {**base, "kind": "train",
                                                   "schedule": "skewed"})
        fleet.start("backprop", {**base, "kind": "train", "mode": "backprop"})
        # Backprop's own gain from the second core (intra-op threads): with the one-thread
        # figures it bounds what overlapping stages can reach against it (see `ceiling`).
        fleet.start("backprop_one_thread", {**base, "kind": "train", "mode": "backprop",
                                            "intra": 1, "inter": 1})
        fleet.start("sideways_one_device", {**base, "kind": "train"})
        fleet.start("mirrored_backprop", {**base, "kind": "mirrored", "mode": "backprop",
                                          "intra": 1, "inter": cores, "devices": cores})
        if not args.no_servers:
            addresses = fleet.start_servers(devices)
            fleet.start("sideways_servers", {
                **base, "kind": "train", "cluster": addresses,
                "stage_devices": [f"/job:worker/task:{d}/device:CPU:0" for d in placement]})
        rates, cpu, loads = fleet.rounds(args.rounds, args.steps)
    finally:
        fleet.close()
    medians = {key: statistics.median(values) for key, values in rates.items()}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    ratios = {f"sideways_depth/{other}": paired("sideways_depth", other)
              for other in rates if other != "sideways_depth"}
    # Per-frame work of the two methods on one thread, and what a perfect overlap of the
    # stages on ``devices`` cores would reach against backprop on all of them.
    ratios["sideways_depth_one_thread/backprop_one_thread"] = paired(
        "sideways_depth_one_thread", "backprop_one_thread")
    ratios["backprop/backprop_one_thread"] = paired("backprop", "backprop_one_thread")
    ratios["ceiling: devices*sideways_depth_one_thread/backprop"] = devices * paired(
        "sideways_depth_one_thread", "backprop")
    if "sideways_servers" in rates:
        ratios["sideways_servers/backprop"] = paired("sideways_servers", "backprop")
        ratios["sideways_servers/sideways_depth_one_thread"] = paired(
            "sideways_servers", "sideways_depth_one_thread")
    chunk = fleet.info["sideways_depth"].get("chunk", 1)
    batch = MODELS[name]["batch"]
    # What crosses between neighbouring stages per loop iteration: a chunk of activations up,
    # a chunk of their cotangents down (B frames per tick, C ticks).
    transfers = [{"boundary": f"{k}->{k + 1}", "up_bytes": size * batch * chunk,
                  "down_bytes": size * batch * chunk, "crosses_devices":
                  placement[k] != placement[k + 1]}
                 for k, size in enumerate(model_info["boundary_bytes_per_frame"])]
    return {
        "num_stages": num_stages, "cores": cores, "stage_devices": stage_devices,
        "transfer_per_iteration": transfers,
        "batch_size": MODELS[name]["batch"], "frames": base["frames"],
        "frames_per_second": medians, "samples": rates,
        "cpu_per_wall": {key: statistics.median(values) for key, values in cpu.items()},
        "paired_ratios": ratios, "load_average_1min_per_round": loads,
        "configurations": fleet.info,
        "modeled": {**model_info, "devices": devices,
                    "modeled_speedup_on_these_devices": modeled_on(costs, placement)},
        "targets": {"sideways_depth/sideways_depth_one_thread": 1.7,
                    "sideways_depth/backprop": 1.25},
    }


def modeled_on(costs: list[float], placement: list[int]) -> float:
    per_device = [0.0] * (max(placement) + 1)
    for cost, device in zip(costs, placement, strict=True):
        per_device[device] += cost
    return sum(costs) / max(per_device)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        entry = results["models"][name]
        configs = list(entry["frames_per_second"])
        values = [entry["frames_per_second"][c] for c in configs]
        bars = axis.barh(configs, values, color=["tab:green" if c.startswith("sideways_depth")
                                                 or c == "sideways_servers" else "tab:gray"
                                                 for c in configs])
        for bar, c in zip(bars, configs, strict=True):
            axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                      f" cpu/wall {entry['cpu_per_wall'][c]:.2f}", va="center", fontsize=8)
        axis.set_title(f"{name}: K={entry['num_stages']}, B={entry['batch_size']}, "
                       f"T={entry['frames']}, {entry['cores']} cores")
        axis.set_xlabel("training frames/s (median of alternating rounds)")
        axis.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", default=None, help="comma-separated: isotropic,temporal")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="train steps per round")
    parser.add_argument("--frames", type=int, default=None, help="clip length T")
    parser.add_argument("--tick-chunk", type=int, default=None,
                        help="Sideways ticks per call C (default: the model's own, 4 for the "
                             "skewed schedule and modeled for the chunked one; the JSON "
                             "records it per configuration)")
    parser.add_argument("--quick", action="store_true", help="isotropic only, short rounds")
    parser.add_argument("--no-servers", action="store_true",
                        help="skip the multi-process tf.distribute.Server configuration")
    parser.add_argument("--output", default=str(RESULTS / "depth.json"))
    parser.add_argument("--no-docs-copy", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    names = (args.models or ("isotropic" if args.quick else "isotropic,temporal")).split(",")
    for name in names:
        if name not in MODELS:
            parser.error(f"--models: unknown model {name!r}; known: {', '.join(MODELS)}")
    args.rounds = args.rounds or (4 if args.quick else 8)
    args.steps = args.steps or (2 if args.quick else 3)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), TF_CPP_MIN_LOG_LEVEL="3")
    results: dict[str, Any] = {
        "command": " ".join(sys.argv), "machine": platform.platform(),
        "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": os.getloadavg(), "rounds": args.rounds, "steps": args.steps,
        "models": {},
    }
    for name in names:
        entry = run_model(name, args, env)
        results["models"][name] = entry
        print(f"\n{name}: K={entry['num_stages']} on {entry['cores']} cores, stage devices "
              f"{entry['stage_devices']}, load {min(entry['load_average_1min_per_round']):.2f}-"
              f"{max(entry['load_average_1min_per_round']):.2f}")
        for config, rate in entry["frames_per_second"].items():
            print(f"  {config:<28}{rate:9.1f} frames/s   cpu/wall "
                  f"{entry['cpu_per_wall'][config]:.2f}")
        for ratio, value in entry["paired_ratios"].items():
            print(f"  {ratio:<56}{value:6.2f}")
        print(f"  modeled speed-up on {entry['modeled']['devices']} devices: "
              f"{entry['modeled']['modeled_speedup_on_these_devices']:.2f}")
        for transfer in entry["transfer_per_iteration"]:
            print(f"  per iteration across {transfer['boundary']}: "
                  f"{transfer['up_bytes'] / 1024:.0f} KiB up, "
                  f"{transfer['down_bytes'] / 1024:.0f} KiB down")
    results["load_average_after"] = os.getloadavg()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    figure = output.with_suffix(".png")
    plot(results, figure)
    print(f"\nWrote {output} and {figure}")
    if not args.no_docs_copy:
        shutil.copy(output, ROOT / "docs" / "depth.json")
        shutil.copy(figure, ROOT / "docs" / "figures" / "depth.png")


if __name__ == "__main__":
    main()
