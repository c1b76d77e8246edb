"""Reference models: shapes, causal receptive fields, training in both modes, `.keras` trips."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_sideways import SidewaysModel, models
from tests.helpers import check_layer_or_model

SIZE = 16  # small frames keep these tests fast; the defaults are sized for 64×64


def sparse_ce() -> dict:
    return {
        "optimizer": keras.optimizers.SGD(0.05, momentum=0.9),
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "metrics": ["accuracy"],
    }


def clips(num_clips: int, num_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(num_clips, num_frames, SIZE, SIZE, 3)).astype("float32")


# ---------------------------------------------------------------------- FoldTime


def test_fold_time_puts_the_window_into_channels_time_major():
    x = np.arange(2 * 3 * 4 * 5 * 2, dtype="float32").reshape(2, 3, 4, 5, 2)
    folded = np.asarray(models.FoldTime()(x))
    assert folded.shape == (2, 4, 5, 6)
    # Channel j*C + c of pixel (h, w) is channel c of window element j.
    for j in range(3):
        for c in range(2):
            np.testing.assert_array_equal(folded[..., j * 2 + c], x[:, j, :, :, c])


def test_fold_time_rejects_inputs_that_are_not_windows_of_maps():
    with pytest.raises(ValueError, match="window of feature maps"):
        models.FoldTime()(np.zeros((2, 4, 4, 3), "float32"))


def test_fold_time_round_trips_in_a_trained_model(tmp_path):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(6, 2, 5, 5, 3)).astype("float32")
    targets = rng.normal(size=(6, 5, 5, 4)).astype("float32")

    def make() -> keras.Model:
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((2, 5, 5, 3)), models.FoldTime(),
                                 keras.layers.Conv2D(4, 3, padding="same")])

    loaded = check_layer_or_model(make, inputs, targets, tmp_path=tmp_path,
                                  expected_output_shape=(6, 5, 5, 4))
    assert type(loaded.layers[0]) is models.FoldTime


# ---------------------------------------------------------------------- structure


def test_temporal_classifier_structure():
    net = models.temporal_cnn_classifier(5, filters=(4, 8, 8), windows=(3, 2, 1), dropout=0.2)
    assert net.num_stages == 3 and net.temporal_windows == [3, 2, 1] and net.pool == "mean"
    model = net.build_model(mode="backprop")
    assert isinstance(model, SidewaysModel)
    assert model.mode == "backprop" and model.temporal_windows == [3, 2, 1]
    assert model(clips(2, 5)).shape == (2, 5)
    # Stage 0 folds its 3-frame window: its first conv sees 3 × 3 = 9 input channels.
    conv = model.stages[0].get_layer("temporal_cnn_stage0_conv")
    assert conv.kernel.shape == (5, 5, 9, 4)
    assert model.stages[2].get_layer("temporal_cnn_dropout").rate == 0.2


def test_frame_classifier_has_no_temporal_context():
    net = models.frame_cnn_classifier(3, filters=(4, 8))
    assert net.temporal_windows == [1, 1]
    model = net.build_model()
    assert model(clips(2, 3)).shape == (2, 3)


@pytest.mark.parametrize(
    "factory,expected",
    [
        # Receptive field 1 + (3-1) + (2-1) = 4 frames: frame 2 reaches outputs 2..5.
        (lambda: models.temporal_cnn_classifier(3, filters=(4, 4, 4), windows=(3, 2, 1)),
         [2, 3, 4, 5]),
        (lambda: models.frame_cnn_classifier(3, filters=(4, 4, 4)), [2]),
    ],
    ids=["temporal", "frame"],
)
def test_per_frame_outputs_depend_on_the_causal_window_only(factory, expected):
    """Changing frame 2 changes exactly the outputs whose causal window contains it."""
    keras.utils.set_random_seed(0)
    model = factory().build_model(pool=None)
    x = clips(2, 8)
    changed = x.copy()
    changed[:, 2] = 1.0 - changed[:, 2]
    difference = np.abs(np.asarray(model(changed)) - np.asarray(model(x))).max(axis=(0, 2))
    assert list(np.flatnonzero(difference > 1e-6)) == expected, difference


def test_autoencoder_structure_and_range():
    net = models.frame_autoencoder(filters=(4, 8))
    assert net.num_stages == 4 and net.pool is None and net.temporal_windows == [1, 1, 1, 1]
    model = net.build_model()
    outputs = np.asarray(model(clips(2, 3)))
    assert outputs.shape == (2, 3, SIZE, SIZE, 3)
    assert outputs.min() >= 0.0 and outputs.max() <= 1.0  # sigmoid: frames in [0, 1]
    windowed = models.frame_autoencoder(filters=(4,), window=2)
    assert windowed.temporal_windows == [2, 1]


def test_isotropic_classifier_has_identical_blocks_in_every_stage():
    net = models.isotropic_cnn_classifier(3, num_stages=3, blocks_per_stage=2, width=8,
                                          window=2)
    assert net.num_stages == 3 and net.temporal_windows == [2, 1, 1] and net.pool == "mean"
    model = net.build_model()
    assert model(clips(2, 4)).shape == (2, 3)
    blocks = [[layer for layer in stage.layers if "_block" in layer.name] for stage in net.stages]
    assert [len(b) for b in blocks] == [2, 2, 2]
    assert {(b.kernel.shape, b.strides) for stage in blocks for b in stage} == {
        ((3, 3, 8, 8), (1, 1))}
    # The stem (stage 0) maps 16×16 frames to 4×4 maps; the blocks keep that resolution.
    assert net.stages[0].layers[-1].output.shape == (None, SIZE // 4, SIZE // 4, 8)
    assert net.stages[1].output.shape == (None, SIZE // 4, SIZE // 4, 8)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: models.temporal_cnn_classifier(1), "num_classes"),
        (lambda: models.temporal_cnn_classifier(3, filters=(4, 8), windows=(2,)), "one per stage"),
        (lambda: models.temporal_cnn_classifier(3, windows=(3, 0, 1)), "windows"),
        (lambda: models.frame_cnn_classifier(3, filters=()), "filters"),
        (lambda: models.frame_cnn_classifier(3, global_pool="median"), "global_pool"),
        (lambda: models.frame_cnn_classifier(3, dropout=1.5), "dropout"),
        (lambda: models.frame_autoencoder(window=0), "window"),
        (lambda: models.isotropic_cnn_classifier(1), "num_classes"),
        (lambda: models.isotropic_cnn_classifier(3, num_stages=0), "num_stages"),
        (lambda: models.isotropic_cnn_classifier(3, blocks_per_stage=2.0), "blocks_per_stage"),
        (lambda: models.isotropic_cnn_classifier(3, patch_size=True), "patch_size"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------- train and save


CLASSIFIERS = {
    # No dropout here: its random masks would differ between the saved and reloaded models.
    "temporal": lambda: models.temporal_cnn_classifier(3, filters=(4, 8, 8), windows=(3, 2, 1)),
    "frame": lambda: models.frame_cnn_classifier(3, filters=(4, 8, 8), global_pool="avg"),
    "isotropic": lambda: models.isotropic_cnn_classifier(3, num_stages=3, blocks_per_stage=1,
                                                         width=4, window=2),
}


@pytest.mark.parametrize("mode", ["sideways", "backprop"])
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_trains_and_round_trips(tmp_path, name, mode):
    x = clips(8, 5, seed=1)  # K = 3 stages: Sideways needs T >= 5
    labels = np.arange(8) % 3

    def make() -> SidewaysModel:
        keras.utils.set_random_seed(1)
        return CLASSIFIERS[name]().build_model(mode=mode, name=f"{name}_{mode}")

    loaded = check_layer_or_model(make, x, labels, tmp_path=tmp_path, batch_size=4,
                                  compile_kwargs=sparse_ce(), expected_output_shape=(8, 3),
                                  rtol=1e-4, atol=1e-5)
    assert loaded.mode == mode and loaded.temporal_windows == make().temporal_windows


def autoencoder(mode: str, window: int) -> SidewaysModel:
    keras.utils.set_random_seed(2)
    net = models.frame_autoencoder(filters=(4, 8), window=window)
    return net.build_model(mode=mode, name=f"autoencoder_{mode}_{window}")


@pytest.mark.parametrize("mode", ["sideways", "backprop"])
@pytest.mark.parametrize("window", [1, 2])
def test_autoencoder_trains_and_round_trips(tmp_path, mode, window):
    x = clips(4, 7, seed=2)  # K = 4 stages: T >= 7
    # The helper's default compile: SGD with momentum and a per-pixel "mse".
    check_layer_or_model(lambda: autoencoder(mode, window), x, x, tmp_path=tmp_path,
                         batch_size=2, expected_output_shape=x.shape, rtol=1e-4, atol=1e-5)


def test_autoencoder_trains_with_plain_mse_in_sideways_mode():
    """A per-pixel loss (values (B, H, W)) with no sample weights, in the Sideways pass."""
    x = clips(4, 7, seed=2)
    model = autoencoder("sideways", 1)
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, x, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # On a static clip the update is exactly backprop's, per-pixel loss included.
    static = np.repeat(x[:, :1], 7, axis=1)
    sideways = model.compute_gradients(static, static, mode="sideways")
    backprop = model.compute_gradients(static, static, mode="backprop")
    for a, b in zip(sideways, backprop, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
