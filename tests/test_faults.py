"""Faults with real processes: workers of a `MultiWorkerMirroredStrategy` run killed and restarted.

Two worker processes on 127.0.0.1 train a `SidewaysModel` for 4 epochs with `BackupAndRestore`
(one backup directory per worker: Keras 3's callback has no chief logic, and two writers of one
directory would race) and a `ModelCheckpoint` that overwrites one ``model.keras`` (the chief's;
the other worker writes to a scratch directory of its own, as `tf.distribute` advises).

1. **A worker SIGKILLed mid-epoch.** Worker 1 kills itself after batch 1 of epoch 2; worker 0 is
   then stopped (SIGTERM, then SIGKILL), as a cluster manager would stop a job whose task died
   (it waits in a collective until TensorFlow's health check reports the dead peer, which took
   anywhere from under 2 s to longer than the stop here).
   Both are restarted with the same command: they resume at epoch 2 from their backups and end
   with the weights of an uninterrupted two-worker run.
2. **The chief SIGKILLed while ModelCheckpoint writes.** The chief dies in the middle of writing
   ``model.keras`` at the end of epoch 2 (the archive's metadata and config are on disk, its
   weights not yet). ``model.keras`` still holds epoch 1's model, loadable, because
   `SidewaysModel.save` writes a temporary file and renames it; with Keras' own `save` the same
   kill leaves a truncated file and no checkpoint (pinned below with a plain `keras.Sequential`).

Tolerance for "equal weights": ``rtol=1e-6, atol=1e-7`` (float32). Both runs reduce the same
per-replica gradients with the same collective (ring all-reduce over the same two tasks, in task
order), so on one machine they agree bit for bit; the tolerance only allows for a reduction
order that the collective implementation may choose differently between runs. The measured
maximum difference is printed (``-s``) and was 0.0 here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import test_multi_worker, test_resume
from tests.test_multi_worker import free_ports

pytestmark = pytest.mark.slow

STEP_TIMEOUT_S = 240
EPOCHS, KILL_EPOCH, KILL_BATCH = 4, 2, 1

# The worker program; imports only installed packages. argv: workdir, scenario.
WORKER_SOURCE = r'''
"""One worker of the fault tests. argv: workdir, scenario ("none", "kill-worker-1-mid-epoch",
"kill-chief-in-checkpoint")."""
import json
import os
import signal
import sys
import zipfile

import keras
import numpy as np
import tensorflow as tf

from keras_sideways import SidewaysModel
# The other real-process tests' programs, written beside this one (see `Cluster`).
from multi_worker_program import CLASSES
from multi_worker_program import dataset as multi_worker_dataset
from resume_program import KillAt

EPOCHS, KILL_EPOCH, KILL_BATCH = 4, 2, 1


def dataset():
    """The multi-worker test's global batches, split between the workers."""
    return multi_worker_dataset()[0]


def sync(file):
    file.flush()
    os.fsync(file.fileno())


class Record(keras.callbacks.Callback):
    """Appends "begin <epoch>" / "end <epoch>" (synced) and keeps each epoch's weights."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def write(self, line):
        with open(os.path.join(self.directory, "epochs.txt"), "a") as file:
            file.write(line + "\n")
            sync(file)

    def on_epoch_begin(self, epoch, logs=None):
        self.write(f"begin {epoch}")

    def on_epoch_end(self, epoch, logs=None):
        np.savez(os.path.join(self.directory, f"weights_epoch{epoch}.npz"),
                 *self.model.get_weights())
        self.write(f"end {epoch}")


def kill_while_writing_keras_file(number):
    """SIGKILL this process during its `number`-th `.keras` write (1-based): the archive's
    metadata and config are on disk, its weights member is about to be written."""
    original = zipfile.ZipFile.writestr
    count = [0]

    def writestr(self, name, *args, **kwargs):
        if str(name) == "model.weights.h5":
            count[0] += 1
            if count[0] == number:
                sync(self.fp)
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, name, *args, **kwargs)

    zipfile.ZipFile.writestr = writestr


def make_model():
    keras.utils.set_random_seed(7)
    init = keras.initializers.RandomNormal(stddev=0.6, seed=7)
    model = SidewaysModel(
        [keras.layers.Dense(6, activation="tanh", kernel_initializer=init),
         keras.layers.Dense(6, activation="tanh", kernel_initializer=init),
         keras.layers.Dense(CLASSES, kernel_initializer=init)],
    )
    model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


if __name__ == "__main__":
    workdir, scenario = sys.argv[1], sys.argv[2]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    own = os.path.join(workdir, f"worker{index}")
    os.makedirs(own, exist_ok=True)
    checkpoints = os.path.join(workdir, "ckpt") if index == 0 else os.path.join(own, "scratch")
    with strategy.scope():
        model = make_model()  # not built: fit builds it before BackupAndRestore restores
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(own, "backup")),
        Record(own),  # after the backup: "end e" means epoch e's backup is written
        keras.callbacks.ModelCheckpoint(os.path.join(checkpoints, "model.keras")),
    ]
    if scenario == "kill-worker-1-mid-epoch" and index == 1:
        callbacks.append(KillAt(KILL_EPOCH, KILL_BATCH))
    if scenario == "kill-chief-in-checkpoint" and index == 0:
        kill_while_writing_keras_file(KILL_EPOCH + 1)  # one checkpoint per finished epoch
    model.fit(dataset(), epochs=EPOCHS, verbose=0, callbacks=callbacks)
    with open(os.path.join(own, "final.json"), "w") as file:
        json.dump({"weights": [w.tolist() for w in model.get_weights()],
                   "iterations": int(model.optimizer.iterations.numpy())}, file)
'''

# Keras' own `save`, killed the same way: what a plain model's checkpoint is left as.
PLAIN_SAVE_SOURCE = r'''
import sys

import keras

from worker import kill_while_writing_keras_file

path = sys.argv[1]
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
model.save(path)  # the previous checkpoint, whole
kill_while_writing_keras_file(1)
model.save(path)  # killed while overwriting it
'''


def write_programs(workdir: Path) -> Path:
    """The worker program and the programs it imports from, into ``workdir``."""
    (workdir / "multi_worker_program.py").write_text(test_multi_worker.WORKER_SOURCE)
    (workdir / "resume_program.py").write_text(test_resume.TRAIN_SOURCE)
    script = workdir / "worker.py"
    script.write_text(WORKER_SOURCE)
    return script


class Cluster:
    """Two worker processes on 127.0.0.1 (fresh ports each start), run in ``workdir``."""

    def __init__(self, workdir: Path, scenario: str, num_workers: int = 2):
        self.workdir, self.scenario = workdir, scenario
        script = write_programs(workdir)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
        self.processes, self.logs = [], []
        for index in range(num_workers):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
            env["TF_CONFIG"] = json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}})
            log = open(workdir / f"{scenario}.worker{index}.log", "a")  # closed in `stop`
            self.logs.append(log)
            self.processes.append(subprocess.Popen(
                [sys.executable, str(script), str(workdir), scenario],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            ))

    def wait(self, index: int, timeout: float = STEP_TIMEOUT_S) -> int:
        return self.processes[index].wait(timeout=timeout)

    def stop(self, index: int) -> int:
        """SIGTERM, then SIGKILL after 5 s: how a cluster manager stops a task."""
        process = self.processes[index]
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def close(self) -> None:
        for index in range(len(self.processes)):
            self.stop(index)
        for log in self.logs:
            log.close()

    def log(self, index: int) -> str:
        return (self.workdir / f"{self.scenario}.worker{index}.log").read_text()[-3000:]


def run_to_completion(workdir: Path, scenario: str = "none") -> None:
    cluster = Cluster(workdir, scenario)
    try:
        codes = [cluster.wait(i) for i in range(2)]
    finally:
        cluster.close()
    assert codes == [0, 0], [cluster.log(i) for i in range(2)]


def epochs_of(workdir: Path, index: int) -> list[str]:
    return (workdir / f"worker{index}" / "epochs.txt").read_text().split("\n")[:-1]


def final(workdir: Path, index: int) -> dict:
    return json.loads((workdir / f"worker{index}" / "final.json").read_text())


def wait_for_line(workdir: Path, index: int, line: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = workdir / f"worker{index}" / "epochs.txt"
        if path.exists() and line in path.read_text().split("\n"):
            return True
        time.sleep(0.2)
    return False


def max_difference(a: list, b: list) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b,
                                                                                    strict=True))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted two-worker run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_to_completion(workdir)
    return workdir


def test_a_worker_killed_mid_epoch_resumes_at_that_epoch_with_the_uninterrupted_weights(
        reference, tmp_path):
    cluster = Cluster(tmp_path, "kill-worker-1-mid-epoch")
    try:
        assert cluster.wait(1) == -signal.SIGKILL, cluster.log(1)
        # Worker 0 now waits on a collective with a dead peer (or fails on it): stop it.
        time.sleep(2)
        survivor = cluster.stop(0)
    finally:
        cluster.close()
    # It never finished: TensorFlow's health check aborts its collective ("tasks are unhealthy
    # (stopped sending heartbeats)") and it exits with an error, or the stop ends it.
    print(f"\nsurvivor (worker 0) exit status: {survivor}")
    assert survivor != 0, cluster.log(0)
    for index in range(2):
        assert epochs_of(tmp_path, index)[-1] == f"begin {KILL_EPOCH}", epochs_of(tmp_path, index)
        assert not (tmp_path / f"worker{index}" / "final.json").exists()

    run_to_completion(tmp_path, "none")  # the same command again
    for index in range(2):
        begun = [int(line.split()[1]) for line in epochs_of(tmp_path, index)
                 if line.startswith("begin")]
        # First run: 0, 1 and the killed epoch; the restart resumes at the killed epoch.
        assert begun == [0, 1, KILL_EPOCH] + list(range(KILL_EPOCH, EPOCHS)), begun
        assert not (tmp_path / f"worker{index}" / "backup").exists()  # removed when done
    resumed, uninterrupted = final(tmp_path, 0), final(reference, 0)
    assert resumed["iterations"] == uninterrupted["iterations"] == EPOCHS * 4
    difference = max_difference(resumed["weights"], uninterrupted["weights"])
    print(f"\nresumed at epoch {KILL_EPOCH} of {EPOCHS}; max |resumed - uninterrupted| = "
          f"{difference:.3g}")
    for a, b in zip(resumed["weights"], uninterrupted["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # The other worker agrees bit for bit (the all-reduce hands both the same update).
    assert final(tmp_path, 1)["weights"] == resumed["weights"]


def test_a_chief_killed_while_writing_a_checkpoint_leaves_the_previous_one_loadable(
        reference, tmp_path):
    import keras

    from keras_sideways import SidewaysModel

    cluster = Cluster(tmp_path, "kill-chief-in-checkpoint")
    try:
        assert cluster.wait(0) == -signal.SIGKILL, cluster.log(0)
        # Worker 1 finishes the epoch's own callbacks (its backup), then waits on the chief.
        assert wait_for_line(tmp_path, 1, f"end {KILL_EPOCH}", timeout=60), cluster.log(1)
        cluster.stop(1)
    finally:
        cluster.close()
    assert epochs_of(tmp_path, 0)[-1] == f"end {KILL_EPOCH}"  # killed in the checkpoint after
    checkpoints = tmp_path / "ckpt"
    partial = [p for p in checkpoints.iterdir() if p.name.startswith(".partial-")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the write that was cut short
    with pytest.raises(Exception):  # noqa: B017 - what a cut-short archive raises varies
        keras.models.load_model(partial[0])
    previous = keras.models.load_model(checkpoints / "model.keras")
    assert type(previous) is SidewaysModel
    expected = np.load(reference / "worker0" / f"weights_epoch{KILL_EPOCH - 1}.npz")
    difference = max_difference(previous.get_weights(), list(expected.values()))
    print(f"\ncheckpoint left by the killed chief = epoch {KILL_EPOCH - 1}'s model; max "
          f"|checkpoint - uninterrupted epoch {KILL_EPOCH - 1}| = {difference:.3g}")
    for a, b in zip(previous.get_weights(), expected.values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(previous.optimizer.iterations.numpy()) == KILL_EPOCH * 4

    # Restarted, both resume after the epoch whose backups were written, and finish.
    run_to_completion(tmp_path, "none")
    begun = [int(line.split()[1]) for line in epochs_of(tmp_path, 0) if line.startswith("begin")]
    assert begun == list(range(KILL_EPOCH + 1)) + list(range(KILL_EPOCH + 1, EPOCHS)), begun
    for a, b in zip(final(tmp_path, 0)["weights"], final(reference, 0)["weights"], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    last = keras.models.load_model(checkpoints / "model.keras")
    assert int(last.optimizer.iterations.numpy()) == EPOCHS * 4


def test_keras_own_save_killed_the_same_way_leaves_no_checkpoint(tmp_path):
    """Why `SidewaysModel.save` is atomic: Keras truncates the file it overwrites first."""
    import keras

    write_programs(tmp_path)
    script = tmp_path / "plain_save.py"
    script.write_text(PLAIN_SAVE_SOURCE)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "model.keras")],
                            env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    with pytest.raises(Exception):  # noqa: B017 - a truncated zip archive
        keras.models.load_model(tmp_path / "model.keras")
