"""SidewaysModel through plain Keras: fit, evaluate, predict, stateful streams, online updates."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from keras_sideways.pipeline.policy import DEFAULT_TICK_CHUNK, TickLoop, modeled_tick_chunk
from tests.test_exactness import build_model, dense_stages, make_batch


def motion_task(num_clips: int, num_frames: int, features: int = 6, seed: int = 0):
    """Smooth vector 'videos': class c drifts along its own direction from a random start."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(3, features))
    labels = rng.integers(0, 3, size=num_clips)
    start = rng.normal(size=(num_clips, 1, features))
    time = np.linspace(0.0, 1.0, num_frames)[None, :, None]
    clips = start * 0.3 + directions[labels][:, None, :] * (0.5 + time)
    clips += 0.05 * rng.normal(size=clips.shape)
    return clips.astype("float32"), labels


@pytest.mark.parametrize("mode", ["sideways", "backprop"])
def test_fit_learns_a_small_video_task(mode):
    keras.utils.set_random_seed(0)
    clips, labels = motion_task(96, 8)
    model = SidewaysModel(dense_stages(3, 3), mode=mode)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(clips, labels, batch_size=16, epochs=12, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert history.history["accuracy"][-1] > 0.8  # per-tick, averaged over the epoch
    loss, accuracy = model.evaluate(clips, labels, verbose=0)
    assert accuracy > 0.9 and np.isfinite(loss)
    assert model.optimizer.iterations.numpy() == 12 * 6


@pytest.mark.parametrize("pool", ["mean", None])
def test_evaluate_and_predict_shapes(pool):
    clips, labels = motion_task(10, 5)
    targets = labels if pool == "mean" else np.repeat(labels[:, None], 5, axis=1)
    model = SidewaysModel(dense_stages(2, 3), pool=pool)
    model.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(clips, targets, batch_size=5, epochs=1, verbose=0)
    predictions = model.predict(clips, batch_size=4, verbose=0)
    assert predictions.shape == ((10, 3) if pool == "mean" else (10, 5, 3))
    results = model.evaluate(clips, targets, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    # The exact forward: pooled output is the mean over frames of per-frame outputs.
    per_frame = np.stack([model.stages[1](model.stages[0](clips[:, t])) for t in range(5)], 1)
    expected = per_frame.mean(axis=1) if pool == "mean" else per_frame
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)


def test_image_frames_fit():
    keras.utils.set_random_seed(1)
    stages = [
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]),
    ]
    model = SidewaysModel(stages)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clips = np.random.default_rng(0).uniform(size=(4, 3, 8, 8, 3)).astype("float32")
    history = model.fit(clips, np.array([0, 1, 0, 1]), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_regularization_is_added_once_per_step():
    keras.utils.set_random_seed(2)
    stages = [keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.5)),
              keras.layers.Dense(2)]
    model = SidewaysModel(stages)
    model.compile(optimizer="sgd", loss="mse")
    clips = np.zeros((2, 5, 4), "float32")  # zero input: the data loss has no kernel gradient
    targets = np.zeros((2, 2), "float32")
    gradients, details = model.compute_gradients(clips, targets, return_details=True)
    kernel = model.stages[0].kernel.numpy()
    np.testing.assert_allclose(gradients[0], 2 * 0.5 * kernel, rtol=1e-6)
    regularization = 0.5 * np.sum(kernel**2)
    np.testing.assert_allclose(details["loss"], np.nanmean(details["tick_losses"]) + regularization,
                               rtol=1e-6)


# ---------------------------------------------------------------------- stateful


def test_stateful_chunks_continue_one_pass():
    rng = np.random.default_rng(5)
    clips, targets = make_batch(rng, 2, 10, 3, "mse", per_frame=True)
    one_pass = build_model(3, 3, "mse", pool=None)
    streaming = build_model(3, 3, "mse", pool=None, stateful=True)
    for model in (one_pass, streaming):
        model.build(clips.shape)
    streaming.set_weights(one_pass.get_weights())

    full, full_details = one_pass.compute_gradients(clips, targets, return_details=True)
    chunks = [(0, 3), (3, 4), (4, 10)]  # the first two are shorter than 2K-1 = 5
    tick_losses, summed, counts = [], None, 0
    for start, stop in chunks:
        gradients, details = streaming.compute_gradients(
            clips[:, start:stop], targets[:, start:stop], return_details=True
        )
        tick_losses.append(details["tick_losses"].numpy())
        count = details["contributions"].numpy()
        # Undo the per-chunk mean: per-stage sums add up across chunks.
        owner = [0, 0, 1, 1, 2, 2]
        weighted = [g.numpy() * count[owner[i]] for i, g in enumerate(gradients)]
        if summed is not None:
            weighted = [a + b for a, b in zip(summed, weighted, strict=True)]
        summed = weighted
        counts = counts + count
    np.testing.assert_allclose(np.concatenate(tick_losses), full_details["tick_losses"],
                               rtol=1e-6)
    np.testing.assert_array_equal(counts, full_details["contributions"])
    owner = [0, 0, 1, 1, 2, 2]
    for i, g in enumerate(full):
        np.testing.assert_allclose(summed[i] / counts[owner[i]], g, rtol=1e-5, atol=1e-7)


def test_stateful_fit_with_zero_learning_rate_matches_one_pass_and_reset_refills():
    rng = np.random.default_rng(6)
    clips, targets = make_batch(rng, 2, 8, 3, "mse", per_frame=True)
    one_pass = build_model(2, 3, "mse", pool=None)
    _, expected = one_pass.compute_gradients(clips, targets, return_details=True)

    streaming = build_model(2, 3, "mse", pool=None, stateful=True)
    streaming.build(clips.shape)
    streaming.set_weights(one_pass.get_weights())
    streaming.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    logged = []
    for start in range(0, 8, 2):
        logs = streaming.train_on_batch(clips[:, start:start + 2], targets[:, start:start + 2],
                                        return_dict=True)
        logged.append(logs["loss"])
    # train_on_batch resets metrics per call: each log is its chunk's mean valid tick loss.
    tick = expected["tick_losses"].numpy()
    chunk_means = [np.nanmean(tick[s:s + 2]) for s in range(0, 8, 2)]
    np.testing.assert_allclose(logged, chunk_means, rtol=1e-5)
    # Reset: the pipeline refills, so the first tick of the next chunk has no valid output.
    streaming.reset_buffers()
    _, details = streaming.compute_gradients(clips[:, :3], targets[:, :3], return_details=True)
    assert np.isnan(details["tick_losses"].numpy()[0])
    np.testing.assert_allclose(details["tick_losses"].numpy()[1:], tick[1:3], rtol=1e-6)
    np.testing.assert_array_equal(details["contributions"], [1, 2])


def test_stateful_batch_size_is_fixed():
    model = build_model(2, 3, "mse", pool=None, stateful=True)
    rng = np.random.default_rng(0)
    clips, targets = make_batch(rng, 2, 4, 3, "mse", per_frame=True)
    model.compute_gradients(clips, targets)
    with pytest.raises(ValueError, match="runs 2 streams per replica but got a batch of 3"):
        model.compute_gradients(np.concatenate([clips, clips[:1]]),
                                np.concatenate([targets, targets[:1]]))


def test_reset_buffers_on_stateless_model_is_an_error():
    with pytest.raises(ValueError, match="stateful models only"):
        build_model(2, 3, "mse", pool=None).reset_buffers()


# ---------------------------------------------------------------------- update_every


def test_update_every_one_with_one_stage_is_per_frame_sgd():
    """K=1, u=1: every tick applies its frame's gradient, i.e. sequential SGD over the frames."""
    rng = np.random.default_rng(8)
    clips, targets = make_batch(rng, 3, 5, 2, "mse", per_frame=False)
    model = build_model(1, 2, "mse", pool="mean", update_every=1)
    plain = keras.Sequential([keras.layers.Dense(2)])
    plain.build((None, clips.shape[-1]))
    model.build(clips.shape)
    plain.set_weights(model.get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(clips, targets)
    for t in range(5):
        plain.train_on_batch(clips[:, t], targets)
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert model.optimizer.iterations.numpy() == 5


@pytest.mark.parametrize("update_every,expected", [(None, 1), (1, 6), (2, 4), (3, 3), (7, 1)])
def test_update_every_counts_optimizer_steps(update_every, expected):
    """K=2, T=7: the first valid contribution is at tick 1 (the top stage)."""
    rng = np.random.default_rng(9)
    clips, targets = make_batch(rng, 2, 7, 2, "mse", per_frame=False)
    model = build_model(2, 2, "mse", pool="mean", update_every=update_every)
    model.train_on_batch(clips, targets)
    assert model.optimizer.iterations.numpy() == expected


def test_update_every_whole_clip_equals_one_update():
    rng = np.random.default_rng(10)
    clips, targets = make_batch(rng, 2, 7, 2, "mse", per_frame=False)
    once = build_model(3, 2, "mse", pool="mean")
    every = build_model(3, 2, "mse", pool="mean", update_every=7)
    per_tick = build_model(3, 2, "mse", pool="mean", update_every=1)
    for model in (once, every, per_tick):
        model.train_on_batch(clips, targets)
    for a, b in zip(once.get_weights(), every.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Per-tick updates change the weights the later ticks see: a different result.
    pairs = zip(once.get_weights(), per_tick.get_weights(), strict=True)
    differences = [np.abs(a - b).max() for a, b in pairs]
    assert max(differences) > 1e-4


# ---------------------------------------------------------------------- errors


def test_short_clip_error_in_compute_gradients_and_fit():
    model = build_model(3, 2, "mse", pool="mean")
    clips = np.zeros((2, 4, 5), "float32")
    targets = np.zeros((2, 2), "float32")
    for call in (lambda: model.compute_gradients(clips, targets),
                 lambda: model.fit(clips, targets, verbose=0)):
        with pytest.raises(ValueError, match=r"K=3 stages needs clips of at least 2K-1=5 frames"
                                             r".*T=4"):
            call()
    # Backprop has no such limit.
    model.compute_gradients(clips, targets, mode="backprop")


@pytest.mark.parametrize(
    "stages,error,match",
    [
        ([], ValueError, "`stages` is empty"),
        ([keras.layers.Dense(2), "dense"], TypeError, r"`stages\[1\]` is a str"),
        (keras.layers.Dense(2), TypeError, "must be a list of Keras layers"),
    ],
)
def test_bad_stages(stages, error, match):
    with pytest.raises(error, match=match):
        SidewaysModel(stages)


def test_shared_stage_is_rejected():
    layer = keras.layers.Dense(3)
    with pytest.raises(ValueError, match="appears twice"):
        SidewaysModel([layer, layer])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "pipeline"}, "`mode` must be one of"),
        ({"pool": "max"}, "`pool` must be 'mean' or None"),
        ({"update_every": 0}, "`update_every` must be at least 1"),
        ({"stage_devices": ["/CPU:0"]}, "names 1 devices for 2 stages"),
        ({"stage_devices": ["/CPU:0", "/GPU:7"]}, "'/GPU:7' is not a device of this process"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SidewaysModel(dense_stages(2, 2), **kwargs)


def test_per_frame_targets_with_wrong_length():
    model = build_model(2, 2, "mse", pool=None)
    with pytest.raises(ValueError, match="targets cover 4 frames but the clips have T=5"):
        model.compute_gradients(np.zeros((2, 5, 5), "float32"), np.zeros((2, 4, 2), "float32"))


def test_target_rank_must_fit_pool():
    per_clip = build_model(2, 2, "mse", pool="mean")
    with pytest.raises(ValueError, match="For per-frame targets .* use pool=None"):
        per_clip.compute_gradients(np.zeros((2, 5, 5), "float32"),
                                   np.zeros((2, 5, 2), "float32"))
    per_frame = build_model(2, 2, "mse", pool=None)
    with pytest.raises(ValueError, match="For one target per clip use pool='mean'"):
        per_frame.compute_gradients(np.zeros((2, 5, 5), "float32"), np.zeros((2,), "float32"))


def test_non_float_frames():
    model = build_model(2, 2, "mse", pool="mean")
    with pytest.raises(TypeError, match="floating point, got dtype uint8"):
        model.compute_gradients(np.zeros((2, 5, 5), "uint8"), np.zeros((2, 2), "float32"))


def test_activity_regularizer_is_refused_in_sideways_mode():
    stages = [keras.layers.Dense(3, activity_regularizer="l2"), keras.layers.Dense(2)]
    model = SidewaysModel(stages)
    model.compile(optimizer="sgd", loss="mse")
    clips, targets = np.ones((2, 4, 3), "float32"), np.zeros((2, 2), "float32")
    with pytest.raises(NotImplementedError, match="adds a loss during its call"):
        model.compute_gradients(clips, targets)
    # The baseline supports it, like any Keras model.
    gradients = model.compute_gradients(clips, targets, mode="backprop")
    assert all(np.all(np.isfinite(g)) for g in gradients)


def test_uncompiled_model():
    model = SidewaysModel(dense_stages(2, 2))
    with pytest.raises(ValueError, match="Compile the model with a `loss`"):
        model.compute_gradients(np.zeros((2, 5, 5), "float32"), np.zeros((2, 2), "float32"))


def test_unknown_clip_length_is_checked_at_run_time():
    model = build_model(3, 2, "mse", pool="mean")
    traced = tf.function(
        model.compute_gradients,
        input_signature=[tf.TensorSpec([2, None, 5]), tf.TensorSpec([2, 2])],
    )
    traced(tf.zeros([2, 5, 5]), tf.zeros([2, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2K-1=5 frames"):
        traced(tf.zeros([2, 4, 5]), tf.zeros([2, 2]))


def test_the_default_chunk_on_one_device_is_modeled_from_the_stage_sizes():
    """Small stage calls get 8-tick chunks, large ones 4 (`policy.modeled_tick_chunk`); an
    unbuilt model, a placed one and an explicit ``tick_chunk`` are not modeled."""
    from keras_sideways import models

    assert modeled_tick_chunk(None) == DEFAULT_TICK_CHUNK
    assert modeled_tick_chunk([36864, 32768, 8192]) == 4  # the temporal CNN's stage inputs
    assert modeled_tick_chunk([12288, 8192]) == 8  # the isotropic CNN's
    assert modeled_tick_chunk([3, 3]) == 8  # never above MAX_MODELED_TICK_CHUNK
    expected = {"temporal": 4, "isotropic": 8}
    for name, net in [("temporal", models.temporal_cnn_classifier(4)),
                      ("isotropic", models.isotropic_cnn_classifier(4, num_stages=2, width=32))]:
        model = net.build_model()
        assert model.tick_plan(64).chunk == DEFAULT_TICK_CHUNK  # not built: sizes unknown
        model.build((None, 8, 64, 64, 3))
        assert model.state_layout.input_elements()[0] == 64 * 64 * 3 * net.temporal_windows[0]
        assert model.tick_plan(64).chunk == expected[name]
        assert model.tick_plan(6).chunk == min(expected[name], 6)
    placed = models.isotropic_cnn_classifier(4, num_stages=2, width=32).build_model(
        stage_devices=["/CPU:0", "/CPU:0"], tick_chunk=None)
    placed.build((None, 8, 64, 64, 3))
    assert placed.tick_plan(64).chunk == DEFAULT_TICK_CHUNK
    explicit = models.isotropic_cnn_classifier(4, num_stages=2, width=32).build_model(
        tick_chunk=16)
    explicit.build((None, 8, 64, 64, 3))
    assert explicit.tick_plan(64).chunk == 16


def test_stages_with_batch_normalization_run_one_tick_per_call():
    """Batch statistics must not mix ticks: the default chunk falls back to one tick."""
    stages = [keras.Sequential([keras.layers.Dense(4), keras.layers.BatchNormalization()]),
              keras.layers.Dense(2)]
    model = SidewaysModel(stages)
    assert model.tick_plan(16).chunk == 1
    assert SidewaysModel(dense_stages(2, 2)).tick_plan(16).chunk == DEFAULT_TICK_CHUNK
    # With update_every the chunk is the largest divisor of it not above the chunk asked for.
    assert SidewaysModel(dense_stages(2, 2), update_every=6).tick_plan(16).chunk == 3
    assert SidewaysModel(dense_stages(2, 2), tick_chunk=8, update_every=6).tick_plan(16).chunk == 6
    assert SidewaysModel(dense_stages(2, 2), tick_chunk=4, update_every=6).tick_plan(16).chunk == 3
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 5, 3), "float32"), np.zeros((4, 2), "float32"), verbose=0)


@pytest.mark.parametrize("tick_chunk", [1, None])
def test_training_metrics_see_only_outputs_that_belong_to_frames(tick_chunk):
    """K=3, T=5: the filling ticks 0 and 1 have no frame; metrics cover frames 0, 1, 2."""
    rng = np.random.default_rng(12)
    clips, _ = make_batch(rng, 6, 5, 3, "mse", per_frame=True)
    model = build_model(3, 3, "sparse_crossentropy", pool=None, tick_chunk=tick_chunk)
    model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    outputs = model.predict(clips, verbose=0)  # per frame (B, T, 3), exact
    # Targets: the prediction for frames 0-2 and for half of frames 3-4, wrong elsewhere; the
    # frames 3-4 (no output in this clip) must not count, nor must the filling ticks.
    predicted = outputs.argmax(-1)
    targets = (predicted + 1) % 3
    targets[:, :3] = predicted[:, :3]
    targets[:3, 3:] = predicted[:3, 3:]
    logs = model.train_on_batch(clips, targets, return_dict=True)
    assert logs["accuracy"] == pytest.approx(1.0)
    assert np.mean(predicted == targets) == pytest.approx(0.8)


def test_stage_devices_default_to_the_skewed_schedule():
    """Depth parallelism needs the stages of a loop iteration independent of each other: the
    skewed schedule, in chunks of DEFAULT_TICK_CHUNK ticks (the chunked one: one tick per call)."""
    placed = SidewaysModel(dense_stages(2, 2), stage_devices=["/CPU:0", "/CPU:1"])
    assert placed.tick_plan(16)[::4] == (DEFAULT_TICK_CHUNK, "skewed")
    chosen = SidewaysModel(dense_stages(2, 2), stage_devices=["/CPU:0", "/CPU:1"], tick_chunk=2)
    assert chosen.tick_plan(16)[::4] == (2, "skewed")
    chosen.tick_loop = TickLoop(schedule="chunked")
    assert chosen.tick_plan(16).chunk == 2
    chosen.tick_chunk = None
    assert chosen.tick_plan(16)[::4] == (1, "chunked")
