"""In the skewed loop, the K stages of one iteration do not wait for each other (DESIGN §2a).

Checked on the traced graph, as `test_tick_independence` does for one tick per call: inside the
skewed loop's body, each stage's forward and pullback are a conditional (named after the stage)
whose inputs are loop variables only, never another stage's result of the same iteration. The
conditionals do hold the stage's computation (its matmuls are in their branches), and what
follows them in the body (the tick losses) is seen to depend on them: the check sees
dependencies where they exist. The unrolled form is checked the same way on its name scopes
(``iteration{i}/stage{k}_forward`` …).
"""

from __future__ import annotations

import re

import keras
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from keras_sideways.model import TickLoop
from tests.test_tick_independence import ancestors, depends_on

NUM_STAGES = 3


def traced_graph(chunk: int, unroll: bool = False):
    stages = [keras.layers.Dense(4, activation="tanh", name=f"stage{k}_dense")
              for k in range(NUM_STAGES)]
    model = SidewaysModel(stages, tick_chunk=chunk)
    model.tick_loop = TickLoop(schedule="skewed", unroll=unroll)
    model.compile(optimizer="sgd", loss="mse")
    traced = tf.function(lambda clips, targets: model.compute_gradients(clips, targets))
    return traced.get_concrete_function(
        tf.TensorSpec([2, 9, 3]), tf.TensorSpec([2, 4])).graph.as_graph_def()


def loop_body(graph):
    bodies = [f for f in graph.library.function if re.match(r"while_body_\d+$", f.signature.name)]
    assert len(bodies) == 1
    return bodies[0]


def parts(body) -> dict[str, str]:
    """Stage part (``stage1_forward``, …) -> its conditional's node name in the body."""
    found = {}
    for node in body.node_def:
        match = re.match(r"^while/(stage\d+_(forward|pullback|top))$", node.name)
        if match and node.op in ("If", "StatelessIf"):
            found[match.group(1)] = node.name
    return found


@pytest.mark.parametrize("chunk", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_stages_of_one_skewed_iteration_are_independent(chunk):
    graph = traced_graph(chunk)
    body = loop_body(graph)
    found = parts(body)
    assert sorted(found) == ["stage0_forward", "stage0_pullback", "stage1_forward",
                             "stage1_pullback", "stage2_top"]
    for name, node in found.items():
        stage = name.split("_")[0]
        others = [n for other, n in found.items() if other.split("_")[0] != stage]
        for other in others:
            # Neither the conditional nor the outputs read from it (``…/Identity``).
            assert not depends_on(body, rf"^{node}$", rf"^{other}(/|$)"), (name, other)
    # The conditionals hold the stages' work: each branch computes its own stage's matmul.
    branches = {f.signature.name: f for f in graph.library.function}
    for name, node_name in found.items():
        node = next(n for n in body.node_def if n.name == node_name)
        then = branches[node.attr["then_branch"].func.name]
        stage = name.split("_")[0]
        assert any(re.search(rf"{stage}_dense.*MatMul", n.name) for n in then.node_def) or any(
            f.signature.name in {n.op for n in then.node_def}
            for f in graph.library.function
            if any(re.search(rf"{stage}_dense.*MatMul", m.name) for m in f.node_def)), name
    # And the check sees a dependency where there is one: the tick losses come from the top.
    assert depends_on(body, r"TensorScatterUpdate", r"^while/stage2_top(/|$)")


def unrolled_parts(graph, iteration: int) -> dict[int, set[str]]:
    """Stage k -> the nodes of its work in ``iteration`` of the unrolled skewed step: its name
    scopes there, and the gradient ops of the pullback it runs there (TensorFlow names those
    after the forward they pull back, taped 2(K-1-k) iterations earlier)."""
    parts: dict[int, set[str]] = {}
    for node in graph.node:
        for k in range(NUM_STAGES):
            lag = 2 * (NUM_STAGES - 1 - k)
            if (re.match(rf"^iteration{iteration}/stage{k}_(forward|pullback|top)/", node.name)
                    or re.match(rf"^gradient_tape/iteration{iteration - lag}/stage{k}_"
                                r"(forward|top)/", node.name)):
                parts.setdefault(k, set()).add(node.name)
    return parts


def test_stages_of_one_unrolled_iteration_are_independent():
    """9 frames in chunks of 3, K=3: iterations 0-6; in iteration 2 all three stages work."""
    graph = traced_graph(3, unroll=True)
    assert not any(re.match(r"while_body_\d+$", f.signature.name) for f in graph.library.function)
    for iteration in range(3 + 2 * NUM_STAGES - 2):
        parts = unrolled_parts(graph, iteration)
        for k, names in parts.items():
            assert any(re.search(rf"stage{k}_dense.*MatMul", n) for n in names), (iteration, k)
            before = ancestors(graph.node, names)
            for other, other_names in parts.items():
                if other != k:
                    assert not before & other_names, (iteration, k, other)
    middle = unrolled_parts(graph, 2)
    assert sorted(middle) == [0, 1, 2]
    # The check sees dependencies where they are: iteration 3's stage 1 forward reads the
    # outputs stage 0 computed in iteration 2, and stage 1's pullback there (chunk 0) reads the
    # cotangents the top computed in iteration 2.
    later = ancestors(graph.node, unrolled_parts(graph, 3)[1])
    assert later & middle[0] and later & middle[2]
