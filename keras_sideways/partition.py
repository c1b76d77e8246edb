"""Split a `keras.Sequential` into K stages of near-equal measured cost.

Sideways' depth parallelism runs one stage per device, so a tick costs the slowest stage: the
stages should cost the same. This module measures what each layer costs per tick (forward plus
pullback on a batch of frames) and cuts the layer list into K contiguous groups that minimise the
most expensive group (the classic linear-partition problem, solved exactly by dynamic
programming in `balanced_partition`, which is pure Python).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any


def balanced_partition(costs: Sequence[float], num_stages: int) -> list[int]:
    """Cut points that split ``costs`` into ``num_stages`` contiguous non-empty groups.

    Returns the K-1 indices where the groups 1..K-1 start; the largest group sum is minimal
    (ties go to the earliest cut). Pure Python, O(K · n²).
    """
    n = len(costs)
    if not 1 <= num_stages <= n:
        raise ValueError(
            f"Cannot split {n} layers into {num_stages} non-empty stages; need 1 <= K <= {n}."
        )
    if any(c < 0 for c in costs):
        raise ValueError(f"Layer costs must be non-negative, got {list(costs)}.")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    infinity = float("inf")
    # best[k][i]: the smallest possible maximum group cost splitting the first i layers into k.
    best = [[infinity] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for k in range(1, num_stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    cuts, i = [], n
    for k in range(num_stages, 0, -1):
        i = cut[k][i]
        cuts.append(i)
    return sorted(cuts)[1:]


def stage_costs(costs: Sequence[float], cuts: Sequence[int]) -> list[float]:
    """The summed cost of each group that ``cuts`` defines."""
    bounds = [0, *cuts, len(costs)]
    return [sum(costs[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def modeled_speedup(costs: Sequence[float]) -> float:
    """Sideways on one device per stage vs streaming backprop on those devices.

    A Sideways tick costs the slowest stage (all stages work at once); backprop streamed frame
    by frame runs every stage's forward and backward in turn, so a frame costs their sum.
    """
    return sum(costs) / max(costs)


def measure_costs(
    layers: Sequence[Any],
    frame_shape: Sequence[int],
    batch_size: int = 8,
    repeats: int = 20,
    *,
    within_stage: bool = False,
) -> list[float]:
    """Seconds per tick of each layer: forward and pullback on ``batch_size`` frames.

    Each layer runs on the output of the previous one; after one traced warm-up call each, the
    layers are timed round-robin ``repeats`` times and each one's median is returned. Pass
    stages to measure stages. The pullback computes the input's cotangent only where a layer
    below has weights.

    ``within_stage=True`` takes off every layer's figure the fixed cost of one call, measured
    the same way on an identity layer: the layers of a stage share the stage's one call, so
    the rest is what a layer adds to its stage. Summed, these track a stage's measured cost
    less one call; without it, cheap layers (rescaling, pooling, a small dense head) count a
    whole call each, which is most of what they measure on small frames. Figures are floored
    at zero. `split_sequential` balances on these.
    """
    import keras
    import tensorflow as tf

    def traced(layer: Any, x: tf.Tensor, input_cotangent: bool) -> tuple[Any, tf.Tensor]:
        if not layer.built:
            layer.build(x.shape)

        @tf.function
        def forward_and_pullback(inputs: tf.Tensor) -> tuple[tf.Tensor, list]:
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                outputs = layer(inputs, training=True)
            sources = [*([inputs] if input_cotangent else []), *layer.trainable_variables]
            gradients = tape.gradient(outputs, sources, output_gradients=tf.ones_like(outputs))
            return outputs, gradients

        outputs, _ = forward_and_pullback(x)  # traces; the outputs feed the next layer
        return (lambda: forward_and_pullback(x)), outputs

    x = tf.random.uniform((batch_size, *frame_shape))
    calls = [traced(keras.layers.Identity(), x, True)[0]] if within_stage else []
    # As in training, a pullback computes the input's cotangent only where a layer below has
    # weights to receive it: never for the first weighted layer (stage 0 has nothing below).
    weights_below = False
    for layer in layers:
        call, x = traced(layer, x, input_cotangent=weights_below)
        calls.append(call)
        weights_below = weights_below or bool(layer.trainable_variables)
    # Round-robin, so that the machine's drift during the measurement hits every layer alike.
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, times in zip(calls, samples, strict=True):
            begin = time.perf_counter()
            call()
            times.append(time.perf_counter() - begin)
    medians = [statistics.median(times) for times in samples]
    if not within_stage:
        return medians
    return [max(seconds - medians[0], 0.0) for seconds in medians[1:]]


def split_sequential(
    model: Any,
    num_stages: int,
    frame_shape: Sequence[int],
    batch_size: int = 8,
    costs: Sequence[float] | None = None,
) -> list[Any]:
    """Split a `keras.Sequential` into ``num_stages`` Sequential stages of near-equal cost.

    ``costs`` (seconds per layer) may be given; otherwise they are measured with
    `measure_costs(within_stage=True)` on ``frame_shape`` frames. The stages share the model's
    layers (and weights).
    """
    import keras

    if not isinstance(model, keras.Sequential):
        raise TypeError(f"split_sequential needs a keras.Sequential, got {type(model).__name__}.")
    layers = list(model.layers)
    if costs is None:
        costs = measure_costs(layers, frame_shape, batch_size, within_stage=True)
    if len(costs) != len(layers):
        raise ValueError(f"Got {len(costs)} costs for {len(layers)} layers.")
    bounds = [0, *balanced_partition(costs, num_stages), len(layers)]
    return [
        keras.Sequential(layers[a:b], name=f"stage_{k}")
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]
