"""Balanced stage splitting: exact partition, and split stages that compute the same network."""

from __future__ import annotations

import itertools
import random

import keras
import numpy as np
import pytest

from keras_sideways import SidewaysModel
from keras_sideways.partition import (
    balanced_partition,
    measure_costs,
    modeled_speedup,
    split_sequential,
    stage_costs,
)


def brute_force(costs, k):
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), k - 1):
        value = max(stage_costs(costs, list(cuts)))
        best = value if best is None else min(best, value)
    return best


def test_balanced_partition_is_optimal():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        costs = [rng.uniform(0, 10) for _ in range(n)]
        k = rng.randint(1, n)
        cuts = balanced_partition(costs, k)
        assert len(cuts) == k - 1 and cuts == sorted(set(cuts))
        assert all(0 < c < n for c in cuts)
        assert max(stage_costs(costs, cuts)) == pytest.approx(brute_force(costs, k))


def test_known_split_and_speedup():
    costs = [1, 1, 1, 1, 2, 2]
    cuts = balanced_partition(costs, 2)
    assert stage_costs(costs, cuts) == [4, 4]
    assert modeled_speedup(stage_costs(costs, cuts)) == 2.0
    assert modeled_speedup([1.0, 3.0]) == pytest.approx(4 / 3)


@pytest.mark.parametrize("costs,k", [([1, 2], 3), ([1], 0), ([1, -1], 1)])
def test_bad_partition_requests(costs, k):
    with pytest.raises(ValueError):
        balanced_partition(costs, k)


def test_split_sequential_computes_the_same_network():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])
    frames = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype("float32")
    expected = model(frames)
    calls = measure_costs(model.layers, (16, 16, 3), batch_size=4, repeats=3)
    assert len(calls) == 5 and all(c > 0 for c in calls)
    # Within a stage the fixed cost of a call is taken off, floored at zero.
    costs = measure_costs(model.layers, (16, 16, 3), batch_size=4, repeats=3, within_stage=True)
    assert len(costs) == 5 and all(c >= 0 for c in costs)
    stages = split_sequential(model, 3, (16, 16, 3), costs=costs)
    assert len(stages) == 3
    assert [layer for stage in stages for layer in stage.layers] == model.layers
    x = frames
    for stage in stages:
        x = stage(x)
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    # And they train as Sideways stages.
    sideways = SidewaysModel(stages)
    sideways.compile(optimizer="sgd",
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clips = np.repeat(frames[:, None], 5, axis=1)
    sideways.fit(clips, np.array([0, 1, 2, 0]), verbose=0)


def test_split_sequential_needs_a_sequential():
    with pytest.raises(TypeError, match="needs a keras.Sequential"):
        split_sequential(keras.layers.Dense(2), 2, (3,))
