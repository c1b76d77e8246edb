"""Multi-worker `fit`: two real worker processes on 127.0.0.1 under `MultiWorkerMirroredStrategy`.

One pair of workers runs every scenario (starting TensorFlow twice costs more than the training):

1. a plain `keras.Sequential` still fails in this Keras (keras-team/keras#20585, first failure:
   `_maybe_symbolic_build`); with only that part of the workaround it fails at the second
   (`reduce_per_replica`). These two pins FAIL when upstream changes, which is the signal to
   drop (or shrink) `keras_sideways.distribute.MultiWorkerFitMixin`.
2. a `SidewaysModel` (with the mixin) fits, evaluates and predicts; both workers end with the same
   weights, equal to one process training on the same global batches.
"""

from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_sideways.distribute import is_multi_worker

WORKER_TIMEOUT_S = 240

# The worker program. It imports only installed packages (keras_sideways included), never this
# test package, and doubles as a module: the parent runs `train(None)` from it for the reference.
WORKER_SOURCE = r'''
"""One worker of the multi-worker test (TF_CONFIG names the cluster and this worker's index)."""
import json
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_sideways import SidewaysModel
from keras_sideways.distribute import MultiWorkerFitMixin

GLOBAL_BATCH, NUM_CLIPS, NUM_FRAMES, FEATURES, CLASSES = 8, 32, 5, 4, 3

# SidewaysModel carries the workaround itself: users need no subclass.
assert issubclass(SidewaysModel, MultiWorkerFitMixin)
Sideways = SidewaysModel


def dataset():
    """Smooth clips whose class sets the drift direction; the same global batches everywhere."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=NUM_CLIPS)
    time = np.linspace(0.0, 1.0, NUM_FRAMES)[None, :, None]
    clips = 0.3 * rng.normal(size=(NUM_CLIPS, 1, FEATURES)) + directions[labels][:, None] * time
    data = tf.data.Dataset.from_tensor_slices((clips.astype("float32"), labels))
    options = tf.data.Options()
    # Split every global batch between the workers (the in-memory source has no files to shard).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.batch(GLOBAL_BATCH).with_options(options), clips.astype("float32")


def compile_kwargs():
    return {
        "optimizer": keras.optimizers.SGD(0.2, momentum=0.5),
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "metrics": ["accuracy"],
    }


def train(strategy):
    """Fit a 3-stage SidewaysModel for 2 epochs; return its weights, logs and results."""
    scope = strategy.scope() if strategy is not None else tf.device("/CPU:0")
    with scope:
        keras.utils.set_random_seed(7)
        init = keras.initializers.RandomNormal(stddev=0.6, seed=7)
        model = Sideways(
            [keras.layers.Dense(6, activation="tanh", kernel_initializer=init),
             keras.layers.Dense(6, activation="tanh", kernel_initializer=init),
             keras.layers.Dense(CLASSES, kernel_initializer=init)],
        )
        model.compile(**compile_kwargs())
    data, clips = dataset()
    history = model.fit(data, epochs=2, verbose=0)
    evaluation = model.evaluate(data, verbose=0, return_dict=True)
    predictions = model.predict(clips[:GLOBAL_BATCH], batch_size=GLOBAL_BATCH, verbose=0)
    return {
        "weights": [w.tolist() for w in model.get_weights()],
        "history": history.history,
        "evaluation": evaluation,
        "predictions": predictions.tolist(),
        "iterations": int(model.optimizer.iterations.numpy()),
    }


def attempt(function):
    try:
        function()
        return {"ok": True}
    except Exception as error:  # what fails, and how, is the result
        return {"ok": False, "type": type(error).__name__, "message": str(error)[:2000]}


def fit_plain(model_class, strategy):
    def run():
        with strategy.scope():
            model = model_class([keras.Input((NUM_FRAMES, FEATURES)), keras.layers.Flatten(),
                                 keras.layers.Dense(CLASSES)])
            model.compile(**compile_kwargs())
        model.fit(dataset()[0], epochs=1, verbose=0)
    return attempt(run)


class SymbolicBuildFixOnly(keras.Sequential):
    """Only the first half of the workaround: shows the second upstream failure on its own."""

    _maybe_symbolic_build = MultiWorkerFitMixin._maybe_symbolic_build


if __name__ == "__main__":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    results = {
        "num_replicas": strategy.num_replicas_in_sync,
        "plain": fit_plain(keras.Sequential, strategy),
        "symbolic_build_fix_only": fit_plain(SymbolicBuildFixOnly, strategy),
        "plain_with_mixin": fit_plain(type("Fixed", (MultiWorkerFitMixin, keras.Sequential), {}),
                                      strategy),
        "sideways": train(strategy),
    }
    with open(sys.argv[1], "w") as file:
        json.dump(results, file)
'''


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so that they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(tmp_path: Path, num_workers: int = 2) -> list[dict]:
    """Start the workers with TF_CONFIG, wait (bounded), and return each one's results."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SOURCE)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
    processes, logs = [], []
    try:
        for index in range(num_workers):
            env = dict(os.environ)
            env["TF_CPP_MIN_LOG_LEVEL"] = "2"
            env["TF_CONFIG"] = json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            )
            env["CUDA_VISIBLE_DEVICES"] = "-1"  # CPU workers, comparable with the CPU reference
            log = open(tmp_path / f"worker{index}.log", "w")  # closed in `finally`
            logs.append(log)
            processes.append(subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"result{index}.json")],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            ))
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        # A worker whose peer died waits on collectives forever: never leave one behind.
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    failures = [
        f"worker {i} exited with {p.returncode}:\n"
        + (tmp_path / f"worker{i}.log").read_text()[-3000:]
        for i, p in enumerate(processes)
        if p.returncode != 0
    ]
    assert not failures, "\n".join(failures)
    return [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(num_workers)]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory) -> list[dict]:
    return run_workers(tmp_path_factory.mktemp("multi_worker"))


UPSTREAM_FIXED = (
    "keras-team/keras#20585 looks fixed in this Keras ({part}): check whether "
    "keras_sideways.distribute.MultiWorkerFitMixin's override of `{method}` is still needed, "
    "then remove it and update this pin."
)


def test_upstream_multi_worker_fit_still_fails(worker_results):
    """Pins keras-team/keras#20585. When this test fails, the workaround may go."""
    for results in worker_results:
        assert results["num_replicas"] == 2
        plain = results["plain"]
        assert not plain["ok"], UPSTREAM_FIXED.format(
            part="plain fit works", method="_maybe_symbolic_build")
        assert plain["type"] == "ValueError", plain
        assert "PerReplica" in plain["message"] and "to a Tensor" in plain["message"], plain
        second = results["symbolic_build_fix_only"]
        assert not second["ok"], UPSTREAM_FIXED.format(
            part="reduce_per_replica accepts scalar logs", method="_make_function")
        assert "Invalid reduction dimension 0" in second["message"], second


def test_workaround_fits_a_plain_model(worker_results):
    for results in worker_results:
        assert results["plain_with_mixin"] == {"ok": True}


def test_two_workers_end_with_identical_weights_equal_to_one_process(worker_results, tmp_path):
    first, second = (results["sideways"] for results in worker_results)
    assert first["iterations"] == second["iterations"] == 2 * 4  # 2 epochs of 32 clips / 8
    # The all-reduce hands both workers the same update: their weights agree bit for bit.
    for a, b in zip(first["weights"], second["weights"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert first["history"] == second["history"]
    assert first["evaluation"] == second["evaluation"]

    # One process on the same global batches of 8 (each worker took 4 clips of each).
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SOURCE)
    reference = runpy.run_path(str(script), run_name="reference")["train"](None)
    assert reference["iterations"] == first["iterations"]
    for a, b in zip(first["weights"], reference["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(first["history"][key], reference["history"][key], rtol=1e-5)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(first["evaluation"][key], reference["evaluation"][key],
                                   rtol=1e-5)
    # predict under the strategy gathers both workers' halves back in order.
    np.testing.assert_allclose(first["predictions"], reference["predictions"], rtol=1e-5,
                               atol=1e-6)


def test_mixin_is_inert_without_a_multi_worker_cluster():
    """Off a multi-worker cluster the mixin defers to Keras unchanged."""
    assert not is_multi_worker(tf.distribute.get_strategy())
    assert not is_multi_worker(tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"]))
