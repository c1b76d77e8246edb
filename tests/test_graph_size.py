"""The traced training step does not grow with the clip length (no per-tick unrolling)."""

from __future__ import annotations

import pytest
import tensorflow as tf

from tests.test_exactness import FEATURES, build_model


def graph_size(model, num_frames: int, mode: str) -> int:
    """Nodes in the traced step, counting the bodies of loops and conditionals too."""
    traced = tf.function(lambda c, t: model.compute_gradients(c, t, mode=mode))
    concrete = traced.get_concrete_function(
        tf.TensorSpec([4, num_frames, FEATURES]), tf.TensorSpec([4, num_frames, 3])
    )
    graph_def = concrete.graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


@pytest.mark.parametrize("mode", ["sideways", "backprop"])
def test_graph_size_is_independent_of_clip_length(mode):
    model = build_model(3, 3, "mse", pool=None)
    short, long = graph_size(model, 16, mode), graph_size(model, 64, mode)
    assert short == long, (short, long)
    # And the count is a real one: one more stage makes the graph bigger.
    deeper = build_model(4, 3, "mse", pool=None)
    assert graph_size(deeper, 16, mode) > short
