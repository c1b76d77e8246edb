"""With one tick per call, the K stages of a tick do not wait for each other (DESIGN §2).

Checked on the traced graph: inside the tick loop's body, nothing that stage k computes depends
on what stage k-1 or k+1 computes in the same iteration; they only share the carried buffers.
With larger chunks a stage does read its neighbour's outputs of the same chunk (the dependency
the chunked schedule is built on), which shows the check can see a dependency.
"""

from __future__ import annotations

import re

import keras
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel


def loop_body(tick_chunk: int):
    """The FunctionDef of the main tick loop's body, for a 3-stage dense model."""
    stages = [keras.layers.Dense(4, activation="tanh", name=f"stage{k}_dense") for k in range(3)]
    model = SidewaysModel(stages, tick_chunk=tick_chunk)
    model.compile(optimizer="sgd", loss="mse")
    traced = tf.function(lambda clips, targets: model.compute_gradients(clips, targets))
    graph = traced.get_concrete_function(
        tf.TensorSpec([2, 8, 3]), tf.TensorSpec([2, 4])
    ).graph.as_graph_def()
    bodies = [f for f in graph.library.function if re.match(r"while_body_\d+$", f.signature.name)]
    assert len(bodies) == 1
    return bodies[0]


def ancestors(nodes, names) -> set[str]:
    """Every node that ``names`` depend on among ``nodes`` (NodeDefs), data or control."""
    inputs = {n.name: [i.lstrip("^").split(":")[0] for i in n.input] for n in nodes}
    seen, frontier = set(), list(names)
    while frontier:
        for parent in inputs.get(frontier.pop(), []):
            if parent not in seen:
                seen.add(parent)
                frontier.append(parent)
    return seen


def depends_on(body, node_pattern: str, ancestor_pattern: str) -> bool:
    start = [n.name for n in body.node_def if re.search(node_pattern, n.name)]
    assert start, node_pattern
    return any(re.search(ancestor_pattern, name) for name in ancestors(body.node_def, start))


@pytest.mark.parametrize("stage,neighbour", [(1, 0), (2, 1), (0, 1)])
def test_one_tick_per_call_keeps_the_stages_of_a_tick_independent(stage, neighbour):
    body = loop_body(1)
    # Forward: stage k's matmul reads the carried activation, not stage k-1's fresh output.
    forward = rf"^while/stage{stage}_dense_\d+/MatMul$"
    assert not depends_on(body, forward, rf"stage{neighbour}_dense_\d+/MatMul")
    # Pullback: stage k's gradients use the cotangent carried from the last tick, not the one
    # stage k+1 is producing now (nor anything else stage k-1 or k+1 computes this tick).
    pullback = rf"^gradient_tape/while/stage{stage}_dense_\d+/MatMul/MatMul"
    assert not depends_on(body, pullback, rf"stage{neighbour}_dense_\d+/MatMul")


def test_chunked_ticks_read_the_neighbours_outputs():
    body = loop_body(4)
    assert depends_on(body, r"^while/stage1_dense_\d+/MatMul$", r"stage0_dense_\d+/MatMul$")
    assert depends_on(body, r"^gradient_tape/while/stage0_dense_\d+/MatMul/MatMul",
                      r"gradient_tape/while/stage1_dense_\d+/MatMul")
