"""Keras contracts a user relies on: `fit` builds the model itself (so callbacks that restore or
save before the first step work), `export` takes Keras' arguments, stateful streams are not
broken silently, and arguments are checked with messages that say what is accepted."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from tests.helpers import assert_weights_equal
from tests.test_exactness import dense_stages

NUM_CLIPS, NUM_FRAMES, FEATURES, BATCH = 12, 5, 4, 4


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = rng.normal(size=(NUM_CLIPS, NUM_FRAMES, FEATURES)).astype("float32")
    return clips, rng.normal(size=(NUM_CLIPS, 3)).astype("float32")


def unbuilt_model(**kwargs) -> SidewaysModel:
    keras.utils.set_random_seed(9)
    model = SidewaysModel(dense_stages(3, 3, seed=9), **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


# ---------------------------------------------------------------------- fit builds the model


class BuiltAtTrainBegin(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.built = self.model.built and all(len(s.weights) for s in self.model.stages)


class InterruptAt(keras.callbacks.Callback):
    """Raises at the start of an epoch: the in-process stand-in for a crash."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("as_dataset", [False, True])
def test_fit_builds_an_unbuilt_model_before_callbacks_and_backup_resumes(tmp_path, as_dataset):
    clips, targets = data()
    inputs = {"x": clips, "y": targets, "batch_size": BATCH, "shuffle": False}
    if as_dataset:
        inputs = {"x": tf.data.Dataset.from_tensor_slices((clips, targets)).batch(BATCH)}
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    check = BuiltAtTrainBegin()
    model = unbuilt_model()
    assert not model.built
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(**inputs, epochs=3, verbose=0,
                  callbacks=[backup, checkpoint, check, InterruptAt(2)])
    assert check.built
    # A fresh, unbuilt model resumes from the backup at epoch 2 and ends where one
    # uninterrupted run does.
    resumed = unbuilt_model()
    history = resumed.fit(**inputs, epochs=3, verbose=0, callbacks=[backup, checkpoint])
    assert history.epoch == [2]
    reference = unbuilt_model()
    reference.fit(**inputs, epochs=3, verbose=0)
    assert_weights_equal(resumed.get_weights(), reference.get_weights(), rtol=1e-6, atol=1e-7)
    assert (tmp_path / "epoch3.keras").exists()


def test_a_model_built_by_hand_still_fits():
    clips, targets = data()
    model = unbuilt_model()
    model.build((None, NUM_FRAMES, FEATURES))
    weights = [np.array(w) for w in model.get_weights()]
    model.fit(clips, targets, batch_size=BATCH, shuffle=False, epochs=1, verbose=0)
    assert not np.allclose(weights[0], model.get_weights()[0])
