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


# ---------------------------------------------------------------------- export


def fitted_model() -> SidewaysModel:
    clips, targets = data()
    model = unbuilt_model()
    model.fit(clips, targets, batch_size=BATCH, shuffle=False, epochs=1, verbose=0)
    return model


@pytest.mark.parametrize("as_list", [False, True])
def test_export_takes_keras_input_signature(tmp_path, as_list):
    model = fitted_model()
    spec = tf.TensorSpec((None, NUM_FRAMES, FEATURES), "float32")
    model.export(tmp_path / "served", verbose=True, input_signature=[spec] if as_list else spec)
    served = tf.saved_model.load(str(tmp_path / "served"))
    serving = served.signatures["serving_default"]
    assert serving.structured_input_signature[1]["clips"].shape.as_list() == [
        None, NUM_FRAMES, FEATURES]
    clips = data()[0]
    np.testing.assert_allclose(serving(clips=tf.constant(clips))["output"],
                               model.predict(clips, verbose=0), rtol=1e-5, atol=1e-6)
    # The streaming signatures take one frame of the same shape.
    step = served.signatures["stream_step"]
    assert step.structured_input_signature[1]["frame"].shape.as_list() == [None, FEATURES]


def test_export_keras_spec_kinds(tmp_path):
    model = fitted_model()
    model.export(tmp_path / "a", input_signature=keras.InputSpec(shape=(None, 8, FEATURES)))
    model.export(tmp_path / "b", input_signature=keras.KerasTensor((2, None, FEATURES)))
    assert tf.saved_model.load(str(tmp_path / "a")).signatures[
        "serving_default"].structured_input_signature[1]["clips"].shape.as_list() == [
        None, 8, FEATURES]


def test_export_refuses_what_it_cannot_honour(tmp_path):
    model = fitted_model()
    with pytest.raises(TypeError, match=r"unsupported keyword arguments \['is_static'\]"):
        model.export(tmp_path / "x", is_static=True)
    with pytest.raises(ValueError, match=r"has shape \(None, 5, 7\), but this model takes clips "
                                         r"shaped \(batch, frames\) \+ \(4,\)"):
        model.export(tmp_path / "x", input_signature=tf.TensorSpec((None, 5, 7)))
    with pytest.raises(TypeError, match="must be one spec of the clips"):
        model.export(tmp_path / "x", input_signature=[tf.TensorSpec((None, 5, 4))] * 2)
    with pytest.raises(ValueError, match="format='tf_saved_model' only"):
        model.export(tmp_path / "x", format="onnx")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------- stateful streams


def chunks(batch: int, frames: int = 2) -> tf.data.Dataset:
    clips, targets = data()
    return tf.data.Dataset.from_tensor_slices((clips[:, :frames], targets)).batch(
        batch, drop_remainder=True)


def test_reset_buffers_forgets_the_batch_size():
    model = unbuilt_model(stateful=True)
    model.fit(chunks(4), epochs=1, verbose=0)
    # The traced step meets another batch size (TensorFlow retraces it with an unknown one).
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"runs 4 streams per replica but got a batch of another size.*"
                             r"reset_buffers\(\)"):
        model.fit(chunks(6), epochs=1, verbose=0)
    model.reset_buffers()
    steps = int(model.optimizer.iterations.numpy())
    model.fit(chunks(6), epochs=1, verbose=0)  # new streams, another batch size
    assert int(model.optimizer.iterations.numpy()) > steps
    with pytest.raises(ValueError, match="runs 6 streams per replica but got a batch of 12"):
        model.compute_gradients(*data()[:1], data()[1])  # 12 clips: eager, checked at once



@pytest.mark.parametrize("shuffle", [True, "batch"])
def test_stateful_fit_refuses_to_shuffle_arrays(shuffle):
    clips, targets = data()
    model = unbuilt_model(stateful=True)
    with pytest.raises(ValueError, match=rf"fit\(shuffle={shuffle!r}\) on a stateful "
                                         r"SidewaysModel.*Pass `shuffle=False`"):
        model.fit(clips[:, :2], targets, batch_size=BATCH, shuffle=shuffle, verbose=0)
    with pytest.raises(ValueError, match="would cut them"):  # Keras' default
        model.fit(clips[:, :2], targets, batch_size=BATCH, verbose=0)
    # Positional arguments are read the same way.
    with pytest.raises(ValueError, match="would cut them"):
        model.fit(clips[:, :2], targets, BATCH, 1, 0)
    assert int(model.optimizer.iterations.numpy()) == 0
    model.fit(clips[:, :2], targets, batch_size=BATCH, shuffle=False, verbose=0)
    model.fit(chunks(BATCH), verbose=0)  # a dataset is never shuffled by fit
    # A stateless model shuffles as Keras does.
    unbuilt_model().fit(clips, targets, batch_size=BATCH, verbose=0)


# ---------------------------------------------------------------------- arguments and messages


@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_stateful_must_be_a_boolean(value):
    with pytest.raises(TypeError, match=rf"`stateful` must be True or False, got {value!r}"):
        SidewaysModel(dense_stages(2, 3), stateful=value)


def test_stateful_booleans_round_trip_through_config():
    model = SidewaysModel(dense_stages(2, 3), stateful=True)
    assert SidewaysModel.from_config(model.get_config()).stateful is True


@pytest.mark.parametrize("pool", ["mean", None])
def test_per_frame_sample_weights_are_accepted_with_either_pool_as_the_message_says(pool):
    clips, targets = data()
    if pool is None:
        targets = np.repeat(targets[:, None], NUM_FRAMES, 1)
    model = unbuilt_model(pool=pool)
    frame_weights = np.ones((NUM_CLIPS, NUM_FRAMES), "float32")
    frame_weights[:, 0] = 0.0
    history = model.fit(clips, targets, sample_weight=frame_weights, batch_size=BATCH,
                        shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(ValueError, match=r"per clip \(B,\) or per frame \(B, T\), with "
                                         r"pool='mean' or None alike; got shape \(4, 5, 1\)"):
        unbuilt_model(pool=pool).fit(clips, targets, sample_weight=frame_weights[..., None],
                                     batch_size=BATCH, verbose=0, shuffle=False)
    with pytest.raises(ValueError, match="cover 3 frames but the clips have T=5"):
        model.compute_gradients(clips, targets, sample_weight=frame_weights[:, :3])
    with pytest.raises(ValueError, match="Got 12 clips but 4 sample weights"):
        model.compute_gradients(clips, targets, sample_weight=frame_weights[:4])
