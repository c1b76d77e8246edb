"""The Sideways recurrence over one chunk of ticks, as plain functions of the stages.

Nothing here knows a model, an optimizer or metrics. A chunk of C ticks is computed stage by
stage, every stage's C ticks batched (DESIGN.md §2a): bottom-up, stage k's inputs are the
activation carried from the tick before the chunk followed by stage k-1's outputs of the chunk
(`windows.stage_inputs`); top-down, its cotangents are the one carried followed by stage k+1's
input cotangents of the chunk. A chunk's tensors are ticks-first, (C, B, …) (`tensors`). The
seams a schedule composes:

- `stage_forward`: stage k's forward over its (gathered) inputs of a chunk, taped where its
  pullback will need it; the top stage also evaluates its loss on the tape.
- `stage_pullback`: given the cotangents of its outputs (or the top's loss), the parameter
  gradients and the cotangent for the stage below.
- `chunk_forward` / `chunk_pullback`: the chunked schedule, all stages on the same ticks.
- `stream_tick`: one tick of the inference forward (a one-tick chunk, untaped).

A skewed schedule calls `stage_forward` and `stage_pullback` on different chunks per stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from keras_sideways import schedule
from keras_sideways.pipeline.plan import StagePlan
from keras_sideways.pipeline.state import PipelineState
from keras_sideways.pipeline.tensors import (
    carried_then,
    gradient,
    last_tick,
    merge_time,
    split_time,
)
from keras_sideways.pipeline.windows import stage_inputs

Device = Callable[[int], contextlib.AbstractContextManager]
# The top stage's loss: taped outputs (n, B, …) -> (scalar to pull back, per-tick losses (n,)).
TopLoss = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


class StageForward(NamedTuple):
    """What stage k's forward over a chunk leaves: its outputs and what its pullback needs.

    ``outputs`` (n, B, …): every computed tick (None where the chunk does not reach the stage);
    ``taped_outputs``: the taped ticks, ``outputs``' last ones (None: nothing taped);
    ``tape``, ``flat_inputs``, ``flat_outputs``: the recorded call; ``objective``,
    ``tick_losses``: the top stage's loss (else None).
    """

    outputs: Any = None
    taped_outputs: Any = None
    tape: Any = None
    flat_inputs: Any = None
    flat_outputs: Any = None
    objective: Any = None
    tick_losses: Any = None


def stage_forward(stage: Any, inputs: tf.Tensor, plan: StagePlan,
                  device: contextlib.AbstractContextManager,
                  top_loss: TopLoss | None = None) -> StageForward:
    """Stage forward over its inputs (size-begin, B, [w,] …) of a chunk; taped from
    ``plan.taped_from``, with the top's loss evaluated on the tape."""
    early = None
    # One `with device`: a tf.device context entered twice fails ('_GeneratorContextManager'
    # object has no attribute 'args'), as a filling chunk's untaped then taped ticks did.
    with device:
        if plan.untaped:
            # Ticks before the stage's first valid cotangent: forward only.
            untaped = inputs[:plan.untaped]
            early = split_time(stage(merge_time(untaped), training=True), untaped)
            inputs = inputs[plan.untaped:]
        if not plan.taped:
            return StageForward(outputs=early)
        flat = merge_time(inputs)
        objective = tick_losses = None
        with tf.GradientTape() as tape:
            tape.watch(flat)
            flat_output = stage(flat, training=True)
            output = split_time(flat_output, inputs)
            if top_loss is not None:
                objective, tick_losses = top_loss(output)
        outputs = output if early is None else tf.concat([early, output], 0)
    return StageForward(outputs, output, tape, flat, flat_output, objective, tick_losses)


def stage_pullback(forward: StageForward, variables: Sequence[Any], cotangent: Any,
                   device: contextlib.AbstractContextManager, *, input_cotangent: bool,
                   window: int) -> tuple[list[Any], tf.Tensor | None]:
    """Pull ``cotangent`` (n, B, …) back through a taped `stage_forward` (None: the top, whose
    objective is pulled back). Returns the gradients of ``variables`` and, if
    ``input_cotangent``, the cotangent for the stage below (n, B, …), its window summed."""
    sources = ([forward.flat_inputs] if input_cotangent else []) + list(variables)
    with device:
        if cotangent is None:
            result = gradient(forward.tape, forward.objective, sources)
        else:
            result = gradient(forward.tape, forward.flat_outputs, sources,
                              output_gradients=merge_time(cotangent))
        if not input_cotangent:
            return result, None
        below = split_time(result[0], forward.taped_outputs)
        if window > 1:
            # One cotangent per window position, summed into the one cotangent buffer of the
            # stage below (Sideways keeps no older activations).
            below = tf.reduce_sum(below, axis=2)
    return result[1:], below


def chunk_forward(stages: Sequence[Any], windows: Sequence[int], device: Device,
                  state: PipelineState, plans: Sequence[StagePlan], first_inputs: tf.Tensor,
                  top_loss: TopLoss, fill: bool) -> tuple[list[StageForward], list, dict]:
    """Bottom-up forward of every stage over one chunk (``first_inputs``: stage 0's).

    Returns the stages' `StageForward`s, the activations and the histories (stages k > 0; stage
    0's is the caller's, who gathered its windows) to carry to the next chunk.
    """
    forwards, activations, histories = [], [], {}
    for k, stage in enumerate(stages):
        plan, window = plans[k], windows[k]
        if k > 0:
            below = forwards[k - 1].outputs
            activations.append(state.activations[k - 1] if below is None
                               else last_tick(below, device(k - 1)))
        if not plan.reached:
            # The filling chunk does not reach this stage: it keeps its empty state.
            if window > 1:
                histories[str(k)] = state.histories[str(k)]
            forwards.append(StageForward())
            continue
        if k == 0:
            inputs = first_inputs
        else:
            first = schedule.first_valid_input_tick(k) - state.tick
            with device(k):  # the chunk below crosses to stage k's device once
                inputs, history = stage_inputs(
                    window, None if fill else state.activations[k - 1],
                    state.histories.get(str(k)), below, plan.size - plan.begin, first)
            if window > 1:
                histories[str(k)] = history
        top = top_loss if k == len(stages) - 1 else None
        forwards.append(stage_forward(stage, inputs, plan, device(k), top))
    return forwards, activations, histories


def chunk_pullback(forwards: Sequence[StageForward], stage_variables: Sequence[Sequence[Any]],
                   state: PipelineState, windows: Sequence[int], device: Device,
                   fill: bool) -> tuple[list[list[Any] | None], list]:
    """Top-down pullbacks of one chunk: the top's exact cotangent, one tick old ones below.

    Returns per stage its parameter gradients (None where nothing was taped) and the
    cotangents to carry (stage k+1's input cotangent at the chunk's last tick).
    """
    num_stages = len(forwards)
    gradients: list[list[Any] | None] = [None] * num_stages
    cotangents = [None] * (num_stages - 1)
    below = None
    for k in reversed(range(num_stages)):
        if k < num_stages - 1:
            # None yet in a filling chunk that did not reach stage k+1: the zero it holds.
            cotangents[k] = (state.cotangents[k] if below is None
                             else last_tick(below, device(k + 1)))
        if forwards[k].tape is None:
            # Filling chunk: no valid cotangent reaches this stage, nor below it.
            below = None
            continue
        cotangent = None
        if k < num_stages - 1:
            # In a filling chunk stage k+1's cotangents start one tick before stage k's taped
            # ticks: nothing is carried in.
            with device(k):
                cotangent = below[:-1] if fill else carried_then(state.cotangents[k], below)
        gradients[k], below = stage_pullback(
            forwards[k], stage_variables[k], cotangent, device(k),
            input_cotangent=k > 0, window=windows[k])
    return gradients, cotangents


def stream_tick(stages: Sequence[Any], windows: Sequence[int], device: Device,
                state: PipelineState, frame: tf.Tensor) -> tuple[tf.Tensor, PipelineState]:
    """One tick of the pipelined inference forward: every stage advances by one frame.

    Returns the top stage's output and the next state (forward fields only). Each stage reads
    what `stage_inputs` gathers for a one-tick chunk, so windows are edge-padded at the stream
    start exactly as in training.
    """
    outputs, histories = [], {}
    for k, stage in enumerate(stages):
        carried = frame if k == 0 else state.activations[k - 1]
        first = schedule.first_valid_input_tick(k) - state.tick
        inputs, history = stage_inputs(windows[k], carried, state.histories.get(str(k)), None,
                                       1, first)
        if history is not None:
            histories[str(k)] = history
        with device(k):
            outputs.append(stage(inputs[0], training=False))
    next_state = state._replace(tick=state.tick + 1, activations=outputs[:-1],
                                histories=histories)
    return outputs[-1], next_state
