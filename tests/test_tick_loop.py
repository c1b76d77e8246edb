"""The tick loop's speed and memory measures keep its results: vectorised tick losses, two
iterations in flight only where that is safe, one shorter last chunk for a known clip length,
and a state that carries ticks, not whole chunks."""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from keras_sideways.pipeline import losses
from keras_sideways.pipeline.policy import TickLoop
from keras_sideways.pipeline.tensors import last_tick
from tests.test_exactness import build_model, dense_stages, make_batch, max_relative_difference
from tests.test_tick_independence import ancestors

LOSSES = {
    "sparse_crossentropy_logits": (
        lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True), "labels"),
    "mse_per_pixel": (lambda: keras.losses.MeanSquaredError(), "pixels"),
    "huber_sum": (lambda: keras.losses.Huber(reduction="sum"), "vectors"),
    "crossentropy_mean_with_sample_weight": (
        lambda: keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"), "one_hot"),
}


def targets_and_outputs(kind: str, rng: np.random.Generator, batch: int, ticks: int):
    if kind == "pixels":
        return (rng.uniform(size=(batch, ticks, 4, 4, 3)).astype("float32"),
                rng.uniform(size=(batch, ticks, 4, 4, 3)).astype("float32"))
    outputs = rng.normal(size=(batch, ticks, 5)).astype("float32")
    if kind == "labels":
        return rng.integers(0, 5, size=(batch, ticks)), outputs
    if kind == "one_hot":
        return np.eye(5, dtype="float32")[rng.integers(0, 5, size=(batch, ticks))], outputs
    return rng.normal(size=(batch, ticks, 5)).astype("float32"), outputs


# Per-frame weights do not broadcast against per-pixel losses (plain Keras rejects (B,)
# weights with (B, H, W) losses too): the per-pixel loss is checked unweighted.
@pytest.mark.parametrize("name,weighted", [
    (name, weighted) for name in sorted(LOSSES) for weighted in (False, True)
    if not (weighted and LOSSES[name][1] == "pixels")
])
def test_vectorised_tick_losses_equal_one_loss_call_per_tick(name, weighted):
    """Each tick's value is what the loss gives that tick's batch alone, whatever its
    reduction."""
    make_loss, kind = LOSSES[name]
    rng = np.random.default_rng(len(name))
    loss = make_loss()

    def frame_loss(targets, outputs, weights):
        return loss(targets, outputs, sample_weight=weights)

    targets, outputs = targets_and_outputs(kind, rng, batch=3, ticks=4)
    weights = rng.uniform(0.1, 2.0, size=(3, 4)).astype("float32") if weighted else None
    def ticks_first(array):  # the tick loop's chunk layout, (n, B, …)
        return tf.constant(np.moveaxis(array, 1, 0))

    vectorised = losses.tick_losses(
        frame_loss, ticks_first(targets), ticks_first(outputs),
        None if weights is None else ticks_first(weights),
    ).numpy()
    one_by_one = [
        float(frame_loss(tf.constant(targets[:, j]), tf.constant(outputs[:, j]),
                         None if weights is None else tf.constant(weights[:, j])))
        for j in range(4)
    ]
    np.testing.assert_allclose(vectorised, one_by_one, rtol=1e-6)
    assert len(set(np.round(one_by_one, 6))) == 4  # the ticks really differ


def traced_step(model: SidewaysModel, num_frames: int | None) -> tf.Graph:
    """The graph of a traced `train_step` on clips of 3 features and targets of 4."""
    model.fit(np.zeros((2, 8, 3), "float32"), np.zeros((2, 4), "float32"), verbose=0)
    traced = tf.function(lambda clips, targets: model.train_step((clips, targets)))
    return traced.get_concrete_function(
        tf.TensorSpec([2, num_frames, 3]), tf.TensorSpec([2, 4])
    ).graph


def while_loops(model: SidewaysModel, num_frames: int | None = 8) -> list:
    """The tick loops of a traced `train_step` (with `update_every`, the updates are inside)."""
    graph = traced_step(model, num_frames)
    return [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]


def compiled(model: SidewaysModel) -> SidewaysModel:
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_two_iterations_in_flight_only_where_nothing_in_the_loop_changes_state():
    def parallelism(model: SidewaysModel) -> list[int]:
        return [op.get_attr("parallel_iterations") for op in while_loops(compiled(model))]

    assert parallelism(SidewaysModel(dense_stages(3, 4))) == [2]
    # Updates inside the loop: a later iteration must read the updated weights.
    assert parallelism(SidewaysModel(dense_stages(3, 4), update_every=2)) == [1]
    # Layers whose call changes their own variables: dropout's seed, batch statistics.
    for stateful_layer in (keras.layers.Dropout(0.2), keras.layers.BatchNormalization()):
        stages = dense_stages(3, 4)
        stages[1] = keras.Sequential([stages[1], stateful_layer])
        assert parallelism(SidewaysModel(stages)) == [1]
    # The documented hook: a model told to run one iteration at a time does so.
    model = SidewaysModel(dense_stages(3, 4))
    model.tick_loop = TickLoop(parallel_iterations=1)
    assert parallelism(model) == [1]


def test_a_known_clip_length_ends_in_one_shorter_chunk():
    """T = 7 with chunks of 3: two chunks and one of 1 tick, no second loop; an unknown T keeps
    a one-tick loop for the rest. Both give the per-tick pipeline's update."""
    assert len(while_loops(compiled(SidewaysModel(dense_stages(3, 4), tick_chunk=3)), 7)) == 1
    assert len(while_loops(compiled(SidewaysModel(dense_stages(3, 4), tick_chunk=3)), None)) == 2
    rng = np.random.default_rng(3)
    clips = tf.constant(rng.normal(size=(2, 7, 3)).astype("float32"))
    targets = tf.constant(rng.normal(size=(2, 4)).astype("float32"))
    reference = compiled(SidewaysModel(dense_stages(3, 4), tick_chunk=1))
    expected = reference.compute_gradients(clips, targets)
    for num_frames in (7, None):
        model = compiled(SidewaysModel(dense_stages(3, 4), tick_chunk=3))
        traced = tf.function(
            lambda c, t, m=model: m.compute_gradients(c, t),
            input_signature=[tf.TensorSpec([2, num_frames, 3]), tf.TensorSpec([2, 4])],
        )
        difference = max_relative_difference(traced(clips, targets), expected)
        assert difference < 1e-5, (num_frames, difference)


def test_the_filling_chunk_is_taken_only_where_the_pipeline_surely_starts_empty():
    known = tf.zeros([2, 9, 3])
    unknown = tf.keras.Input((None, 3), batch_size=2)  # a symbolic clip of unknown length
    assert SidewaysModel(dense_stages(3, 4)).tick_plan(known.shape[1]).fill_first
    assert not SidewaysModel(dense_stages(3, 4)).tick_plan(unknown.shape[1]).fill_first
    assert not SidewaysModel(dense_stages(3, 4), stateful=True).tick_plan(known.shape[1]).fill_first
    batch_norm = [keras.Sequential([keras.layers.Dense(4), keras.layers.BatchNormalization()]),
                  keras.layers.Dense(4)]
    model = SidewaysModel(batch_norm)
    model.build((2, 9, 3))
    assert not model.tick_plan(known.shape[1]).fill_first


@pytest.mark.parametrize("update_every,tick_chunk", [(None, 4), (None, 1), (2, None), (3, 3)])
def test_the_filling_chunk_changes_no_update(update_every, tick_chunk):
    """A stateless step skips the empty pipeline's filling ticks; a stateful stream's first step
    starts from the same empty pipeline but computes every tick: same weights after the step."""
    rng = np.random.default_rng(11)
    clips, targets = make_batch(rng, 2, 9, 2, "mse", per_frame=True)
    options = {"update_every": update_every, "tick_chunk": tick_chunk}
    skipping = build_model(3, 2, "mse", pool=None, **options)
    every_tick = build_model(3, 2, "mse", pool=None, stateful=True, **options)
    for model in (skipping, every_tick):
        model.build(clips.shape)
    every_tick.set_weights(skipping.get_weights())
    assert skipping.tick_plan(clips.shape[1]).fill_first
    assert not every_tick.tick_plan(clips.shape[1]).fill_first
    for model in (skipping, every_tick):
        model.train_on_batch(clips, targets)
    for skipped, computed in zip(skipping.get_weights(), every_tick.get_weights(), strict=True):
        np.testing.assert_allclose(skipped, computed, rtol=1e-5, atol=1e-6)


def test_a_carried_tick_does_not_keep_its_chunk_alive():
    chunk = tf.random.uniform([8, 1 << 18])  # 8 MiB
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    view, copy = chunk[-1], last_tick(chunk, contextlib.nullcontext())
    np.testing.assert_array_equal(copy, view)
    del chunk
    # The view still holds the 8 MiB buffer; after it goes, only the 1 MiB copy is left.
    assert before - tf.config.experimental.get_memory_info("CPU:0")["current"] < 2**20
    del view
    assert before - tf.config.experimental.get_memory_info("CPU:0")["current"] >= 6 * 2**20


def body_output_producers(model: SidewaysModel, num_frames: int) -> list[str]:
    """The op that makes each value a traced tick loop's body hands to the next iteration
    (through identities, and into the taken branch of a conditional stage)."""
    graph = traced_step(model, num_frames)
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}

    def producer(function: Any, output: int) -> str:
        nodes = {node.name: node for node in function.node_def}
        source = function.ret[function.signature.output_arg[output].name]
        while True:
            name, *rest = source.split(":")
            node = nodes.get(name)
            if node is None:
                return "argument"
            if node.op == "Identity":
                source = node.input[0]
            elif node.op in ("If", "StatelessIf"):
                index = int(rest[-1]) if rest else 0
                return producer(library[node.attr["then_branch"].func.name], index)
            else:
                return node.op

    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert loops, "no tick loop traced"
    bodies = [library[loop.get_attr("body").name] for loop in loops]
    return [producer(body, k) for body in bodies for k in range(len(body.signature.output_arg))]


@pytest.mark.parametrize("schedule", ["chunked", "skewed"])
def test_the_loop_state_carries_ticks_not_views_of_chunks(schedule):
    # A carried `chunk[-1]` (a StridedSlice of the leading axis, a view) kept every stage's
    # chunk of outputs and cotangents alive into the next iteration: small stages, C=8, one
    # iteration at a time, peaked at 7.75-7.9 MiB a step at T=64-128 against 5.1 at T=16;
    # with copies of the carried ticks, 5.0-6.0 (docs/scaling.md).
    model = compiled(SidewaysModel(dense_stages(4, 4), tick_chunk=4))
    model.tick_loop = TickLoop(schedule=schedule, unroll=False)
    producers = body_output_producers(model, 16)
    assert producers.count("GatherV2") >= 6, producers  # 3 activations, 3 cotangents
    assert "StridedSlice" not in producers, producers


@pytest.mark.parametrize("in_flight", [1, 2])
def test_one_iteration_in_flight_starts_each_chunk_after_the_previous_pullback(in_flight):
    # The loop orders its own iterations, not the chunks traced outside it: with one iteration
    # in flight the loop's first forward ran during the filling chunk's pullback, two chunks'
    # tapes at once (isotropic CNN, C=8: 34-36 MiB a step against 21-24 with the order kept,
    # docs/scaling.md). Each chunk's forward now waits for the previous chunk's gradient sums;
    # with two in flight it must not, or the overlap that pays for them is gone.
    model = compiled(SidewaysModel(dense_stages(3, 4), tick_chunk=4))
    model.tick_loop = TickLoop(parallel_iterations=in_flight)
    plan = model.tick_plan(10)
    assert plan.fill_first and plan.remainder == 2
    graph = traced_step(model, 10)  # a filling chunk, one looped, a last one of 2 ticks
    loop = next(op for op in graph.get_operations() if op.type in ("While", "StatelessWhile"))
    graph_def = graph.as_graph_def()
    body = next(f for f in graph_def.library.function
                if f.signature.name == loop.get_attr("body").name)
    # The loop's first iteration gets the filling chunk's sums as arguments.
    sums = {body.signature.input_arg[i].name for i, value in enumerate(loop.inputs)
            if value.shape == model.stages[0].kernel.shape}
    assert sums

    def forwards(nodes: Any) -> list[str]:
        return [n.name for n in nodes if n.op == "MatMul" and "gradient_tape" not in n.name]

    looped = forwards(body.node_def)
    last = [name for name in forwards(graph_def.node)
            if loop.name in ancestors(graph_def.node, [name])]
    assert len(looped) == 3 and len(last) == 3, (looped, last)
    for name in looped:
        assert bool(sums & ancestors(body.node_def, [name])) == (in_flight == 1), name
    waiting = {n.name for n in graph_def.node if "^" + loop.name in n.input}
    for name in last:  # the loop's outputs reach the last chunk as data either way: its sums
        waits = bool(waiting & ancestors(graph_def.node, [name]))
        assert waits == (in_flight == 1), name
