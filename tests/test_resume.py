"""Resume after a crash: a training process killed with SIGKILL picks up from its last backup.

The child process trains a `SidewaysModel` with `BackupAndRestore`, `CSVLogger` and two
`ModelCheckpoint`s (``.keras`` and ``.weights.h5``), and records every epoch it begins. The first
run SIGKILLs itself in the middle of an epoch (a real, uncatchable kill: nothing is flushed or
cleaned up); the second run, same command, resumes. Training is deterministic (fixed seeds, no
shuffle), so the resumed run must end with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import csv
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_sideways import SidewaysModel
from tests.helpers import assert_weights_equal

CHILD_TIMEOUT_S = 180
EPOCHS, KILL_EPOCH, KILL_BATCH = 4, 2, 1

# The training program; imports only installed packages. The parent also imports it (runpy) to
# train the uninterrupted reference in-process with the very same code.
TRAIN_SOURCE = r'''
"""Train, back up every epoch, optionally SIGKILL self at (epoch, batch)."""
import os
import signal
import sys

import keras
import numpy as np

from keras_sideways import SidewaysModel

EPOCHS, NUM_CLIPS, NUM_FRAMES, FEATURES, BATCH = 4, 24, 5, 4, 8


class RecordEpochs(keras.callbacks.Callback):
    """Appends "begin <epoch>" to a file, synced, so that a killed run leaves a true record."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_begin(self, epoch, logs=None):
        with open(self.path, "a") as file:
            file.write(f"begin {epoch}\n")
            file.flush()
            os.fsync(file.fileno())


class KillAt(keras.callbacks.Callback):
    """SIGKILLs this process after batch `batch` of epoch `epoch`: a crash, not an exception."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.kill_epoch, self.kill_batch, self.epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (self.kill_epoch, self.kill_batch):
            os.kill(os.getpid(), signal.SIGKILL)


def make_model():
    keras.utils.set_random_seed(11)
    init = keras.initializers.RandomNormal(stddev=0.6, seed=11)
    model = SidewaysModel(
        [keras.layers.Dense(6, activation="tanh", kernel_initializer=init),
         keras.layers.Dense(6, activation="tanh", kernel_initializer=init),
         keras.layers.Dense(3, kernel_initializer=init)],
    )
    # Momentum: the optimizer has state that a resume must restore, not just the weights.
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    # Not built: `fit` builds it from the first batch before BackupAndRestore restores into it.
    return model


def data():
    rng = np.random.default_rng(11)
    clips = rng.normal(size=(NUM_CLIPS, NUM_FRAMES, FEATURES)).astype("float32")
    return clips, rng.normal(size=(NUM_CLIPS, 3)).astype("float32")


def train(workdir, kill=None):
    """Fit for EPOCHS epochs in ``workdir``; returns the model."""
    model = make_model()
    clips, targets = data()
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
        keras.callbacks.CSVLogger(os.path.join(workdir, "log.csv"), append=True),
        keras.callbacks.ModelCheckpoint(os.path.join(workdir, "ckpt", "epoch{epoch}.keras")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(workdir, "ckpt", "epoch{epoch}.weights.h5"), save_weights_only=True
        ),
        RecordEpochs(os.path.join(workdir, "epochs.txt")),
    ]
    if kill is not None:
        callbacks.append(KillAt(*kill))
    model.fit(clips, targets, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=callbacks)
    model.save_weights(os.path.join(workdir, "final.weights.h5"))
    return model


if __name__ == "__main__":
    workdir = sys.argv[1]
    kill = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else None
    train(workdir, kill)
'''


def run_child(script: Path, workdir: Path, *args: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    # `run` kills the child if it outlives the timeout.
    return subprocess.run(
        [sys.executable, str(script), str(workdir), *map(str, args)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The killed run and the resumed run (one directory), and an uninterrupted reference."""
    workdir = tmp_path_factory.mktemp("resume")
    script = workdir / "train.py"
    script.write_text(TRAIN_SOURCE)
    killed = run_child(script, workdir, KILL_EPOCH, KILL_BATCH)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    after_kill = {
        "epochs": (workdir / "epochs.txt").read_text().split("\n"),
        "backup": sorted(p.name for p in (workdir / "backup").iterdir()),
        "checkpoints": sorted(p.name for p in (workdir / "ckpt").iterdir()),
    }
    resumed = run_child(script, workdir)
    reference_dir = tmp_path_factory.mktemp("reference")
    reference = runpy.run_path(str(script), run_name="reference")["train"](str(reference_dir))
    return {"workdir": workdir, "killed": killed, "after_kill": after_kill, "resumed": resumed,
            "reference": reference, "reference_dir": reference_dir,
            "make_model": runpy.run_path(str(script), run_name="reference")["make_model"]}


def epochs_logged(path: Path) -> list[int]:
    with open(path) as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def test_killed_run_died_by_sigkill_mid_epoch(runs):
    killed = runs["killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    after = runs["after_kill"]
    assert after["epochs"] == ["begin 0", "begin 1", f"begin {KILL_EPOCH}", ""]
    # The last backup is the end of the last finished epoch; nothing of the killed epoch.
    assert "latest.weights.h5" in after["backup"] and "training_metadata.json" in after["backup"]
    assert after["checkpoints"] == sorted(
        f"epoch{e}.{ext}" for e in range(1, KILL_EPOCH + 1) for ext in ("keras", "weights.h5")
    )


def test_resumed_run_starts_at_the_interrupted_epoch_and_finishes(runs):
    resumed, workdir = runs["resumed"], runs["workdir"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    begun = (workdir / "epochs.txt").read_text().split()[1::2]
    # First run: 0, 1 and the killed epoch; second run: the killed epoch again, then the rest.
    assert [int(e) for e in begun] == [0, 1, KILL_EPOCH] + list(range(KILL_EPOCH, EPOCHS))
    # Every epoch finished exactly once, in order: the log has no gap and no repeat.
    assert epochs_logged(workdir / "log.csv") == list(range(EPOCHS))
    assert not (workdir / "backup").exists()  # removed once training completed


def test_resumed_run_equals_an_uninterrupted_run(runs):
    workdir, reference = runs["workdir"], runs["reference"]
    resumed = runs["make_model"]()
    resumed.build((None, 5, 4))
    resumed.optimizer.build(resumed.trainable_variables)  # so that its state loads too
    resumed.load_weights(workdir / "final.weights.h5")
    assert_weights_equal(resumed.get_weights(), reference.get_weights(), rtol=1e-6, atol=1e-7)
    # Momentum included: the optimizer state was restored at the resume, not restarted.
    assert_weights_equal(resumed.optimizer.variables, reference.optimizer.variables,
                         rtol=1e-6, atol=1e-7)
    # Same losses epoch by epoch, the resumed epochs included.
    with open(workdir / "log.csv") as a, open(runs["reference_dir"] / "log.csv") as b:
        resumed_losses = [float(row["loss"]) for row in csv.DictReader(a)]
        reference_losses = [float(row["loss"]) for row in csv.DictReader(b)]
    np.testing.assert_allclose(resumed_losses, reference_losses, rtol=1e-6)


def test_model_checkpoints_reload(runs):
    """Both checkpoint formats, written across the crash, hold the final model."""
    workdir, reference = runs["workdir"], runs["reference"]
    checkpoints = workdir / "ckpt"
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        f"epoch{e}.{ext}" for e in range(1, EPOCHS + 1) for ext in ("keras", "weights.h5")
    )
    last = keras.models.load_model(checkpoints / f"epoch{EPOCHS}.keras")
    assert type(last) is SidewaysModel
    assert_weights_equal(last.get_weights(), reference.get_weights(), rtol=1e-6, atol=1e-7)
    # The .keras checkpoint carries the optimizer too: it trained 3 steps per epoch.
    assert int(last.optimizer.iterations.numpy()) == EPOCHS * 3
    fresh = runs["make_model"]()
    fresh.build((None, 5, 4))
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(checkpoints / f"epoch{EPOCHS}.weights.h5")
    assert_weights_equal(fresh.get_weights(), reference.get_weights(), rtol=1e-6, atol=1e-7)
    # An epoch written before the crash differs from the final weights (it is a real snapshot).
    early = keras.models.load_model(checkpoints / "epoch1.keras")
    assert not np.allclose(early.get_weights()[0], reference.get_weights()[0])
