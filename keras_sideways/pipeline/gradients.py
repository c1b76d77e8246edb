"""Per-stage gradient bookkeeping: sums where they are made, valid counts, per-stage means.

Accumulators are kept per stage (a list of lists aligned with each stage's trainable variables);
`to_model_order` maps them onto ``model.trainable_variables`` at the end of a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from keras_sideways import schedule


def stage_variable_positions(stages: Sequence[Any], variables: Sequence[Any]) -> list[list[int]]:
    """For every stage, the positions of its trainable variables in ``variables``."""
    position = {id(v): i for i, v in enumerate(variables)}
    positions, owner = [], {}
    for k, stage in enumerate(stages):
        positions.append([])
        for v in stage.trainable_variables:
            i = position[id(v)]
            if owner.setdefault(i, k) != k:
                raise ValueError(
                    f"Variable {v.path} belongs to stages {owner[i]} and {k}; stages cannot "
                    "share weights (each stage's update is a mean over its own contributions)."
                )
            positions[k].append(i)
    return positions


def accumulate(accumulators: list[list[Any]], stage_gradients: Sequence[Any],
               device: Any) -> list[list[Any]]:
    """Add a chunk's per-stage gradients (None: the stage took no part) to the sums."""
    result = []
    for k, (sums, gradients) in enumerate(zip(accumulators, stage_gradients, strict=True)):
        if gradients is None:
            result.append(list(sums))
            continue
        # Sum each gradient where it was made: no parameter-sized transfer per tick.
        with device(k):
            result.append([s + g for s, g in zip(sums, gradients, strict=True)])
    return result


def chunk_counts(num_stages: int, ticks: tf.Tensor) -> tf.Tensor:
    """Valid contributions per stage over ``ticks`` (schedule.cotangent_valid).

    Invalid cotangents are exactly zero (zero buffers, masked top loss, linear pullbacks), so
    they add nothing to the sums; only the counts need the schedule.
    """
    return tf.stack([
        tf.reduce_sum(tf.cast(schedule.cotangent_valid(num_stages, k, ticks), tf.float32))
        for k in range(num_stages)
    ])


def stage_means(accumulators: list[list[Any]], counts: tf.Tensor) -> list[list[Any]]:
    """Each stage's sums divided by its own number of valid contributions."""
    divisors = tf.maximum(counts, 1.0)
    return [[a / tf.cast(divisors[k], a.dtype) for a in sums]
            for k, sums in enumerate(accumulators)]


def to_model_order(per_stage: list[list[Any]], positions: list[list[int]],
                   variables: Sequence[Any]) -> list[Any]:
    """Per-stage lists -> one list aligned with ``variables`` (zeros where no stage owns one)."""
    result = [tf.zeros(v.shape, v.dtype) for v in variables]
    for stage_positions, values in zip(positions, per_stage, strict=True):
        for p, value in zip(stage_positions, values, strict=True):
            result[p] = value
    return result


def per_stage(values: Sequence[Any], positions: list[list[int]]) -> list[list[Any]]:
    """Inverse of `to_model_order`: the values of each stage's variables."""
    return [[values[p] for p in stage_positions] for stage_positions in positions]
