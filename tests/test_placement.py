"""Depth parallel: `stage_devices` over the two logical CPUs of the test session (see conftest).

Devices are given out of order (stage 0 on CPU:1) so that nothing passes by landing on the
default device. Wrong lengths and unknown devices are covered in tests/test_model.py.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from keras_sideways.model import TickLoop
from tests.helpers import assert_weights_equal, check_layer_or_model
from tests.test_exactness import dense_stages, make_batch

DEVICES = ["/CPU:1", "/CPU:0", "/CPU:1"]


def named_stages(seed: int = 0) -> list[keras.layers.Layer]:
    """Three dense stages named ``stage0…2``, so that their ops can be found in a graph."""
    stages = dense_stages(3, 3, seed=seed)
    for k, stage in enumerate(stages):
        stage.name = f"stage{k}"
    return stages


def make_model(devices: list[str] | None, mode: str = "sideways", seed: int = 0) -> SidewaysModel:
    keras.utils.set_random_seed(seed)
    model = SidewaysModel(named_stages(seed), mode=mode, stage_devices=devices)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), loss="mse",
                  metrics=["mae"])
    return model


def device_index(device: str) -> tuple[str, int]:
    spec = tf.DeviceSpec.from_string(device)
    return spec.device_type.upper(), spec.device_index or 0


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return make_batch(np.random.default_rng(seed), 4, 6, 3, "mse", per_frame=False)


def test_variables_of_stage_k_live_on_device_k():
    clips, _ = batch()
    model = make_model(DEVICES)
    model.build(clips.shape)
    for stage, device in zip(model.stages, DEVICES, strict=True):
        assert stage.weights
        for variable in stage.weights:
            assert device_index(variable.value.device) == device_index(device), variable.path


@pytest.mark.parametrize("mode", ["sideways", "backprop"])
def test_compute_gradients_equal_one_device(mode):
    clips, targets = batch(1)
    placed, single = make_model(DEVICES, mode), make_model(None, mode)
    for model in (placed, single):
        model.build(clips.shape)
    assert_weights_equal(placed.get_weights(), single.get_weights(), rtol=0, atol=0)
    assert_weights_equal(placed.compute_gradients(clips, targets),
                         single.compute_gradients(clips, targets), rtol=1e-6, atol=1e-7)


def test_fit_and_predict_equal_one_device():
    clips, targets = make_batch(np.random.default_rng(2), 16, 6, 3, "mse", per_frame=False)
    results = []
    for devices in (DEVICES, None):
        model = make_model(devices)
        history = model.fit(clips, targets, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results.append((model, history.history))
    (placed, placed_logs), (single, single_logs) = results
    assert_weights_equal(placed.get_weights(), single.get_weights())
    np.testing.assert_allclose(placed_logs["loss"], single_logs["loss"], rtol=1e-6)
    np.testing.assert_allclose(placed.predict(clips, verbose=0), single.predict(clips, verbose=0),
                               rtol=1e-6, atol=1e-7)


def test_chunked_schedule_with_a_filling_chunk_equals_one_device():
    # C=4 over T=6: the filling chunk runs a stage's first ticks untaped and the rest taped,
    # both under the stage's device. Traced, the chunked schedule (the fallback wherever the
    # skewed one cannot be exact) entered that device context twice and failed
    # ("'_GeneratorContextManager' object has no attribute 'args'").
    clips, targets = batch(3)
    gradients = []
    for devices in (DEVICES, None):
        keras.utils.set_random_seed(0)
        model = SidewaysModel(named_stages(), stage_devices=devices, tick_chunk=4)
        model.tick_loop = TickLoop(schedule="chunked")
        model.compile(optimizer="sgd", loss="mse")
        model.build(clips.shape)
        assert model.tick_plan(clips.shape[1]).fill_first
        gradients.append(tf.function(model.compute_gradients)(clips, targets))
    assert_weights_equal(*gradients, rtol=1e-6, atol=1e-7)


# The skewed schedule's conditional around a stage's forward, pullback or top (absent in the
# chunked one).
SKEWED_PART = r"(stage\d+_(forward|pullback|top)/)?"


# The skewed schedule unrolled (the default where T is known), its `tf.while_loop` form, and
# the chunked one.
SCHEDULES = {"skewed": TickLoop(schedule="skewed"),
             "skewed_looped": TickLoop(schedule="skewed", unroll=False),
             "chunked": TickLoop(schedule="chunked")}
# Where the loop's ops live: the body of a `tf.while_loop`, or one name scope per iteration.
LOOP = r"(while|iteration\d+)/"


def placed_model(schedule: str) -> SidewaysModel:
    model = make_model(DEVICES)
    model.tick_loop = SCHEDULES[schedule]
    return model


def _tick_graph_nodes(model: SidewaysModel, clips: np.ndarray, targets: np.ndarray) -> list:
    """NodeDefs of every function in the traced training computation (the tick loop's body)."""
    function = tf.function(lambda x, y: model.compute_gradients(x, y))
    graph = function.get_concrete_function(tf.constant(clips), tf.constant(targets)).graph
    graph_def = graph.as_graph_def()
    # The loop's body, and the conditionals inside it (the skewed schedule's stage parts); or,
    # unrolled, the iterations' name scopes in the step's own graph.
    return [node for fn in graph_def.library.function
            if fn.signature.name.startswith(("while_body", "while_stage"))
            for node in fn.node_def] + [
        node for node in graph_def.node if re.match(r"(gradient_tape/)?iteration\d+/", node.name)]


def _stage_ops(nodes: list, k: int, backward: bool) -> list:
    prefix = r"gradient_tape/" + LOOP if backward else LOOP
    pattern = re.compile(prefix + SKEWED_PART + rf"stage{k}(_\d+)?/")
    compute = {"MatMul", "BiasAdd", "Tanh", "TanhGrad", "BiasAddGrad"}
    return [n for n in nodes if pattern.match(n.name) and n.op in compute]


def assert_stage_ops_on_their_devices(backward: bool, num_frames: int, schedule: str) -> None:
    clips, targets = batch(num_frames)
    model = placed_model(schedule)
    model.build(clips.shape)
    nodes = _tick_graph_nodes(model, clips, targets)
    what = "pullback" if backward else "forward"
    for k, device in enumerate(DEVICES):
        ops = _stage_ops(nodes, k, backward=backward)
        assert ops, f"no {what} ops of stage {k} found in the tick loop"
        for node in ops:
            assert node.device and device_index(node.device) == device_index(device), (
                node.name, node.device)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_each_stage_computes_on_its_device_every_tick(schedule):
    assert_stage_ops_on_their_devices(backward=False, num_frames=3, schedule=schedule)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_each_stage_pulls_back_on_its_device_every_tick(schedule):
    """Gradient ops do not inherit their forward op's device: each pullback must be placed."""
    assert_stage_ops_on_their_devices(backward=True, num_frames=4, schedule=schedule)


# Placement gaps found while writing these tests, now closed in model.py.
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_each_stage_accumulates_its_gradients_on_its_device(schedule):
    clips, targets = batch(8)
    model = placed_model(schedule)
    model.build(clips.shape)
    nodes = _tick_graph_nodes(model, clips, targets)
    for k, device in enumerate(DEVICES):
        # The accumulating adds: an AddV2 fed directly by one of stage k's parameter gradients.
        source = re.compile(rf"gradient_tape/{LOOP}{SKEWED_PART}stage{k}(_\d+)?/"
                            "(MatMul|BiasAdd)/")
        adds = [n for n in nodes if n.op == "AddV2" and "gradient_tape" not in n.name
                and any(source.match(name) for name in n.input)]
        # Kernel and bias, in the loop's body or in each unrolled iteration with a pullback.
        assert adds and len(adds) % 2 == 0, [n.name for n in adds]
        if schedule != "skewed":
            assert len(adds) == 2, [n.name for n in adds]
        for node in adds:
            assert node.device and device_index(node.device) == device_index(device), (
                node.name, node.device)


def test_optimizer_slots_live_with_their_variables():
    clips, targets = batch(5)
    model = make_model(DEVICES)
    model.fit(clips, targets, epochs=1, verbose=0)
    by_path = {v.path: v for v in model.trainable_variables}
    slots = [v for v in model.optimizer.variables if v.path.endswith("_momentum")]
    assert len(slots) == len(by_path)
    for variable in model.trainable_variables:
        slot_name = variable.path.replace("/", "_") + "_momentum"
        slot = next(s for s in slots if s.path.endswith(slot_name))
        assert device_index(slot.value.device) == device_index(variable.value.device), slot.path


def test_stage_devices_survive_config_and_keras_round_trip(tmp_path):
    model = make_model(DEVICES)
    assert model.get_config()["stage_devices"] == DEVICES
    assert SidewaysModel.from_config(model.get_config()).stage_devices == DEVICES
    clips, targets = batch(6)

    def make() -> SidewaysModel:
        keras.utils.set_random_seed(6)
        return SidewaysModel(named_stages(6), stage_devices=DEVICES)

    loaded = check_layer_or_model(make, clips, targets, tmp_path=tmp_path)
    assert loaded.stage_devices == DEVICES


def test_reloaded_model_keeps_its_placement(tmp_path):
    clips, targets = batch(7)
    model = make_model(DEVICES)
    model.fit(clips, targets, epochs=1, verbose=0)
    model.save(tmp_path / "placed.keras")
    loaded = keras.models.load_model(tmp_path / "placed.keras")
    for stage, device in zip(loaded.stages, DEVICES, strict=True):
        for variable in stage.weights:
            assert device_index(variable.value.device) == device_index(device), variable.path


def test_config_with_devices_missing_here_loads_without_placement():
    """A model placed on GPUs for training still loads on a CPU-only serving machine."""
    config = make_model(DEVICES).get_config()
    config["stage_devices"] = ["/GPU:0", "/GPU:1", "/GPU:2"]
    with pytest.warns(UserWarning, match="Loading without stage placement.*'/GPU:0'"):
        model = SidewaysModel.from_config(config)
    assert model.stage_devices is None
    clips, targets = batch(5)
    assert model.predict(clips, verbose=0).shape[0] == clips.shape[0]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_chunks_cross_to_a_stage_on_its_device(schedule):
    # A stage's inputs (the carried tick, then the chunk below) and its cotangents (the carried
    # one, then the chunk above's) are concatenated on the stage's own device: left to the
    # placer, the concatenation could move a chunk through the default device.
    clips, targets = batch(6)
    keras.utils.set_random_seed(0)
    model = SidewaysModel(named_stages(), stage_devices=DEVICES, tick_chunk=2)
    model.tick_loop = SCHEDULES[schedule]
    model.compile(optimizer="sgd", loss="mse")
    model.build(clips.shape)
    concatenations = [n for n in _tick_graph_nodes(model, clips, targets) if n.op == "ConcatV2"]
    assert concatenations, "no concatenation found in the tick loop"
    for node in concatenations:
        assert node.device, node.name
