"""`.keras` round trips: same class, config and predictions after reload, and training continues."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_sideways import SidewaysModel
from tests.helpers import check_layer_or_model
from tests.test_exactness import FEATURES, dense_stages

NUM_CLIPS, NUM_FRAMES, OUTPUTS = 8, 5, 3  # K = 3 stages need T >= 2K-1 = 5 frames


def data(pool: str | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = rng.normal(size=(NUM_CLIPS, NUM_FRAMES, FEATURES)).astype("float32")
    shape = (NUM_CLIPS, OUTPUTS) if pool == "mean" else (NUM_CLIPS, NUM_FRAMES, OUTPUTS)
    return clips, rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("pool", ["mean", None])
@pytest.mark.parametrize("mode", ["sideways", "backprop"])
def test_keras_round_trip(tmp_path, mode, pool):
    clips, targets = data(pool)
    expected_shape = targets.shape

    def make() -> SidewaysModel:
        keras.utils.set_random_seed(1)
        return SidewaysModel(dense_stages(3, OUTPUTS, seed=1), mode=mode, pool=pool,
                             name=f"sideways_{mode}_{pool}")

    loaded = check_layer_or_model(make, clips, targets, tmp_path=tmp_path, batch_size=4,
                                  expected_output_shape=expected_shape)
    assert (loaded.mode, loaded.pool, loaded.num_stages) == (mode, pool, 3)
    assert [type(s) for s in loaded.stages] == [keras.layers.Dense] * 3


def test_keras_round_trip_of_image_stages(tmp_path):
    """Stages that are themselves models (a Sequential) and image frames (B, T, H, W, C)."""
    rng = np.random.default_rng(2)
    clips = rng.uniform(size=(4, 3, 6, 6, 2)).astype("float32")
    labels = np.array([0, 1, 1, 0])

    def make() -> SidewaysModel:
        keras.utils.set_random_seed(2)
        return SidewaysModel([
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]),
        ])

    loaded = check_layer_or_model(
        make, clips, labels, tmp_path=tmp_path, expected_output_shape=(4, 2),
        compile_kwargs={
            "optimizer": keras.optimizers.Adam(0.01),
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "metrics": ["accuracy"],
        },
    )
    assert isinstance(loaded.stages[1], keras.Sequential)


@keras.saving.register_keras_serializable(package="keras_sideways_tests")
class Scale(keras.layers.Layer):
    """A user-defined stage: needs registration (or `custom_objects`) to reload, like any layer."""

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.gain * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def test_custom_stage_round_trip(tmp_path):
    clips, targets = data("mean", seed=3)

    def make() -> SidewaysModel:
        keras.utils.set_random_seed(3)
        return SidewaysModel([Scale(0.5), keras.layers.Dense(OUTPUTS)])

    loaded = check_layer_or_model(make, clips, targets, tmp_path=tmp_path)
    assert isinstance(loaded.stages[0], Scale) and loaded.stages[0].factor == 0.5


def test_a_stage_alone_round_trips(tmp_path):
    """The helper also takes a bare layer (wrapped in a Sequential to train and save)."""
    frames = np.random.default_rng(4).normal(size=(NUM_CLIPS, FEATURES)).astype("float32")
    check_layer_or_model(lambda: Scale(3.0), frames, 2 * frames, tmp_path=tmp_path,
                         expected_output_shape=(NUM_CLIPS, FEATURES))


def test_reloaded_stateful_model_starts_new_streams(tmp_path):
    """Buffers are not saved: the reloaded model refills its pipeline, the original continues."""
    clips, targets = data(None, seed=5)
    keras.utils.set_random_seed(5)
    model = SidewaysModel(dense_stages(2, OUTPUTS, seed=5), pool=None, stateful=True)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    model.fit(clips, targets, batch_size=NUM_CLIPS, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "stateful.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.stateful and type(loaded) is SidewaysModel

    # One more one-frame chunk, without updating anything: with K=2 the top output at the first
    # tick belongs to a frame of the previous chunk, which only the original still holds.
    chunk, chunk_targets = clips[:, :1], targets[:, :1]
    _, original = model.compute_gradients(chunk, chunk_targets, return_details=True)
    _, reloaded = loaded.compute_gradients(chunk, chunk_targets, return_details=True)
    assert np.isfinite(original["tick_losses"].numpy()[0])
    assert np.isnan(reloaded["tick_losses"].numpy()[0])
    np.testing.assert_array_equal(reloaded["contributions"], [0, 0])


def test_stateful_round_trip_continues_like_a_reset_original(tmp_path):
    """A reloaded stateful model trains exactly like the original after `reset_buffers()`."""
    clips, targets = data(None, seed=6)

    def make() -> SidewaysModel:
        keras.utils.set_random_seed(6)
        return SidewaysModel(dense_stages(2, OUTPUTS, seed=6), pool=None, stateful=True)

    # Chunks of 2 frames, shorter than 2K-1 = 3: only a stateful model accepts them. The first
    # chunk of a stream updates the top stage only (stage 0's first cotangent is at tick 2).
    check_layer_or_model(make, clips[:, :2], targets[:, :2], tmp_path=tmp_path,
                         batch_size=NUM_CLIPS, before_continue=lambda m: m.reset_buffers())
