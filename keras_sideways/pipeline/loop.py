"""The chunked tick loop of one Sideways step: the recurrence driven over a clip.

`run_step` drives `recurrence.chunk_forward`/`chunk_pullback` over the clip in a
`tf.while_loop`, C ticks per iteration (`plan.LoopPlan`), and keeps the step's bookkeeping: the
targets' delay line, per-stage sums and counts (`gradients`), the tick losses. What the model
adds (its compiled loss, metrics, in-loop optimizer updates) comes in as `StepHooks`, so nothing
here knows a model. A second schedule is a sibling of `run_step` with the same inputs and
outputs (registered in `keras_sideways.steps.SCHEDULE_RUNNERS`); it can reuse `delay_line`
(targets travelling with their frames), `StepTotals` and `add_chunk` (sums, counts, tick losses,
metrics in tick order) as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from keras_sideways import schedule
from keras_sideways.pipeline import gradients as bookkeeping
from keras_sideways.pipeline.plan import LoopPlan, chunk_plan
from keras_sideways.pipeline.recurrence import Device, chunk_forward, chunk_pullback
from keras_sideways.pipeline.state import PipelineState
from keras_sideways.pipeline.tensors import gather_ticks, repeat_ticks
from keras_sideways.pipeline.windows import gather_windows


class StepHooks(NamedTuple):
    """What the model contributes to a step.

    ``tick_losses(targets, outputs, weights)``: the compiled loss per tick, (n, B, …) -> (n,).
    ``update_metrics(targets, outputs, weights)`` or None: update the metrics from ticks
    (n, B, …), returning the metric variables' new values (to order the next update after).
    ``apply_means(accumulators, counts)`` or None: apply the means so far (``update_every``),
    returning zeroed accumulators and counts. ``before_top()``: a check run before the top loss.
    """

    tick_losses: Callable[..., tf.Tensor]
    update_metrics: Callable[..., None] | None
    apply_means: Callable[..., tuple] | None
    before_top: Callable[[], None]
    loss_scale: Any
    replicas: float


class Frames(NamedTuple):
    """A step's clips and what travels with their frames; ``per_clip``: targets (B, …)."""

    clips: tf.Tensor
    targets: tf.Tensor
    weights: tf.Tensor | None
    per_clip: bool
    carry_targets: bool


def delay_line(frames: Frames, state: PipelineState, i: Any, size: int,
                stateful: bool) -> tuple:
    """Targets and weights of the chunk's ticks (n, B, …), and those to carry (the last K-1).

    The top output at tick t belongs to frame t-(K-1), so targets and weights travel with their
    frames. A stateless clip's per-clip target is every tick's target, and without sample
    weights there are none to carry: those skip the per-tick bookkeeping.
    """
    keep = len(state.targets)

    def travel(new: tf.Tensor, carried: list) -> tuple[tf.Tensor, list]:
        both = tf.concat([tf.stack(carried[::-1]), new], 0) if keep else new
        return both, [both[-1 - j] for j in range(keep)]

    def chunk_of(tensor: tf.Tensor, per_clip: bool) -> tf.Tensor:
        if per_clip:
            return repeat_ticks(tensor, size)
        return gather_ticks(tensor, i + tf.range(size), batch_major=True)

    if frames.carry_targets:
        targets, next_targets = travel(chunk_of(frames.targets, frames.per_clip), state.targets)
    else:
        targets, next_targets = repeat_ticks(frames.targets, size), state.targets
    if frames.weights is None:
        # Frames of an unweighted step stay unweighted in a continued stream.
        weights = None
        next_weights = [tf.ones_like(w) for w in state.weights] if stateful else state.weights
    else:
        weights, next_weights = travel(
            chunk_of(frames.weights, frames.weights.shape.rank == 1), state.weights)
    return targets, next_targets, weights, next_weights


class StepTotals(NamedTuple):
    """What a step accumulates over its chunks (per-stage sums aligned with the stages'
    variables, valid counts, the tick losses' sum, count and values, the metrics' order)."""

    accumulators: list
    counts: tf.Tensor
    loss_sum: tf.Tensor
    loss_count: tf.Tensor
    tick_losses: tf.TensorArray
    order: tf.Tensor  # chains metric updates in tick order with two iterations in flight


def run_step(stages: Sequence[Any], windows: Sequence[int], device: Device,
             stage_variables: list[list[Any]], state0: PipelineState, frames: Frames,
             plan: LoopPlan, hooks: StepHooks, *, stateful: bool,
             update_every: int | None) -> tuple[PipelineState, Any]:
    """Run the clip tick by tick, C ticks per `tf.while_loop` iteration (DESIGN.md §2).

    The loop body is traced once, plus once for a filling first chunk and once for a shorter
    last chunk of T mod C ticks (a one-tick loop when T is unknown at tracing), so the graph
    does not grow with T. Returns the final state and the `StepTotals`.
    """
    num_stages = len(stages)
    clips = frames.clips
    num_frames = tf.shape(clips)[1]
    # Stage 0's windows are gathered from the clip itself, after the stream's history in
    # stateful mode (one copy of the clip per step instead of a gather and a concatenation per
    # chunk); a stateless clip starts from edge padding, so its history is not needed.
    window0 = windows[0]
    elements0, offset0 = clips, -(window0 - 1)
    if window0 > 1 and stateful:
        elements0, offset0 = tf.concat([state0.histories["0"], clips], axis=1), 0
    first0 = schedule.first_valid_input_tick(0) - state0.tick + offset0

    def run_chunk(size: int, fill: bool = False) -> Callable:
        return chunk_body(stages, windows, device, stage_variables, frames, hooks, size, fill,
                           first_inputs=lambda i: gather_windows(
                               elements0, i + offset0, size, window0, first0,
                               ticks_first=True),
                           stateful=stateful, update_every=update_every,
                           one_in_flight=plan.parallel_iterations == 1)

    totals = StepTotals(
        [[tf.zeros(v.shape, v.dtype) for v in variables] for variables in stage_variables],
        tf.zeros([num_stages], tf.float32), tf.constant(0.0), tf.constant(0.0),
        tf.TensorArray(tf.float32, size=num_frames), tf.constant(0.0))
    loop_vars = (tf.constant(0), state0, totals)
    chunk = plan.chunk
    if plan.fill_first:
        loop_vars = run_chunk(chunk, fill=True)(*loop_vars)
    loop_vars = tf.while_loop(lambda i, *_: i + chunk <= num_frames, run_chunk(chunk),
                              loop_vars, parallel_iterations=plan.parallel_iterations)
    if plan.remainder:
        # A known clip length ends in one shorter chunk, not in single ticks.
        loop_vars = run_chunk(plan.remainder)(*loop_vars)
    elif plan.remainder is None and chunk > 1:
        loop_vars = tf.while_loop(lambda i, *_: i < num_frames, run_chunk(1), loop_vars,
                                  parallel_iterations=plan.parallel_iterations)
    _, state, totals = loop_vars
    if stateful and window0 > 1:
        state.histories["0"] = elements0[:, -(window0 - 1):]
    return state, totals


def chunk_body(stages: Sequence[Any], windows: Sequence[int], device: Device,
                stage_variables: list[list[Any]], frames: Frames, hooks: StepHooks, size: int,
                fill: bool, *, first_inputs: Callable, stateful: bool,
                update_every: int | None, one_in_flight: bool = False) -> Callable:
    """The loop body for chunks of ``size`` ticks (``fill``: the empty pipeline's first);
    ``one_in_flight``: a chunk starts after the previous chunk's pullback."""
    num_stages = len(stages)
    plans = chunk_plan(num_stages, size, fill)
    top_from = plans[-1].taped_from  # the first tick the top's loss covers
    num_frames = tf.shape(frames.clips)[1]

    def body(i: Any, state: PipelineState, totals: StepTotals) -> tuple:
        ticks = state.tick + tf.range(size)
        targets, next_targets, weights, next_weights = delay_line(
            frames, state, i, size, stateful)
        top_valid = schedule.output_valid(num_stages, ticks)

        def top_loss(outputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            hooks.before_top()
            losses = hooks.tick_losses(
                targets[top_from:size], outputs,
                None if weights is None else weights[top_from:size])
            objective = tf.where(top_valid[top_from:], losses, 0.0)
            return tf.reduce_sum(objective) * hooks.loss_scale, losses

        # With one iteration in flight the loop orders its own iterations, but not the chunks
        # traced outside it (the filling first, the shorter last): left alone, the loop's first
        # forward ran during the filling chunk's pullback, two chunks' tapes at once (isotropic
        # CNN, C=8: 34-36 MiB a step against 21 MiB). The previous pullback's sums order them.
        previous = [s for sums in totals.accumulators for s in sums] if one_in_flight else []
        with tf.control_dependencies(previous):
            forwards, activations, histories = chunk_forward(
                stages, windows, device, state, plans, first_inputs(i), top_loss, fill)
        if windows[0] > 1:
            histories["0"] = state.histories["0"]  # taken after the loop
        stage_gradients, cotangents = chunk_pullback(
            forwards, stage_variables, state, windows, device, fill)
        totals = add_chunk(totals, i, size, ticks, stage_gradients, forwards[-1],
                            top_valid[top_from:], top_from, targets, weights, hooks,
                            device, num_stages)
        if hooks.apply_means is not None:
            done = i + size
            due = tf.logical_or(tf.equal(done % update_every, 0), tf.equal(done, num_frames))
            accumulators, counts = tf.cond(
                due, lambda: hooks.apply_means(totals.accumulators, totals.counts),
                lambda: (totals.accumulators, totals.counts))
            totals = totals._replace(accumulators=accumulators, counts=counts)
        state = PipelineState(state.tick + size, activations, cotangents, histories,
                              next_targets, next_weights)
        return i + size, state, totals

    return body


def add_chunk(totals: StepTotals, i: Any, size: int, ticks: tf.Tensor, stage_gradients: list,
               top: Any, valid_top: tf.Tensor, top_from: int, targets: tf.Tensor,
               weights: Any, hooks: StepHooks, device: Device, num_stages: int) -> StepTotals:
    """Add one chunk's gradients, counts, tick losses and metrics to the step's totals."""
    accumulators = bookkeeping.accumulate(totals.accumulators, stage_gradients, device)
    counts = totals.counts + bookkeeping.chunk_counts(num_stages, ticks)
    loss_sum, loss_count, tick_losses = totals.loss_sum, totals.loss_count, totals.tick_losses
    order = totals.order
    if top.taped_outputs is None:
        # A filling chunk that does not reach the top: no output, no loss yet.
        tick_losses = tick_losses.scatter(i + tf.range(size), tf.fill([size], math.nan))
        return StepTotals(accumulators, counts, loss_sum, loss_count, tick_losses, order)
    reported = top.tick_losses * hooks.replicas
    loss_sum += tf.reduce_sum(tf.where(valid_top, reported, 0.0))
    loss_count += tf.reduce_sum(tf.cast(valid_top, tf.float32))
    values = tf.where(valid_top, reported, math.nan)
    if top_from:
        values = tf.concat([tf.fill([top_from], math.nan), values], 0)
    tick_losses = tick_losses.scatter(i + tf.range(size), values)
    if hooks.update_metrics is not None:
        order = update_metrics_in_order(hooks.update_metrics, order, top.taped_outputs, valid_top,
                                top_from, size, targets, weights)
    return StepTotals(accumulators, counts, loss_sum, loss_count, tick_losses, order)


def update_metrics_in_order(update: Callable, order: tf.Tensor, top: tf.Tensor,
                            valid_top: tf.Tensor, top_from: int, size: int, targets: tf.Tensor,
                            weights: Any) -> tf.Tensor:
    """Metrics of the ticks whose output belongs to a frame (a zero weight would not do, since
    Keras' unweighted `metrics` ignore sample weights)."""
    valid_ticks = tf.where(valid_top)[:, 0]

    def valid(tensor: tf.Tensor) -> tf.Tensor:
        return tf.gather(tensor[top_from:size], valid_ticks)

    # Metric updates read-modify-write their variables: chained through `order`, they keep the
    # tick order with two loop iterations in flight.
    with tf.control_dependencies([order]):
        updated = update(valid(targets), tf.gather(top, valid_ticks),
                         None if weights is None else valid(weights))
    with tf.control_dependencies(updated):
        return tf.identity(order)
