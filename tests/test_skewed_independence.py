"""In the skewed loop, the K stages of one iteration do not wait for each other (DESIGN §2a).

Checked on the traced graph, as `test_tick_independence` does for one tick per call: inside the
skewed loop's body, each stage's forward and pullback are a conditional (named after the stage)
whose inputs are loop variables only, never another stage's result of the same iteration. The
conditionals do hold the stage's computation (its matmuls are in their branches), and what
follows them in the body (the tick losses) is seen to depend on them: the check sees
dependencies where they exist.
"""

from __future__ import annotations

import re

import keras
import pytest
import tensorflow as tf

from keras_sideways import SidewaysModel
from keras_sideways.model import TickLoop
from tests.test_tick_independence import depends_on

NUM_STAGES = 3


def traced_graph(chunk: int):
    stages = [keras.layers.Dense(4, activation="tanh", name=f"stage{k}_dense")
              for k in range(NUM_STAGES)]
    model = SidewaysModel(stages, tick_chunk=chunk)
    model.tick_loop = TickLoop(schedule="skewed")
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
