"""The skewed chunk loop: depth parallelism with batched calls (DESIGN.md §2a).

A sibling of `loop.run_step` with the same inputs and results. In loop iteration i, stage k
runs the forward of chunk i-k and the pullback of chunk i-(2K-2-k) (`schedule.skewed_*`), each
over the chunk's C ticks, with the same `recurrence.stage_forward`/`stage_pullback` the chunked
loop uses. Every stage reads only loop variables, i.e. what the previous iteration left: the
chunk below's outputs (``up``), the chunk above's input cotangents (``down``), its own carried
activation, cotangent and window history, and its stash. So the K stages of an iteration have
no data dependency on each other and run at once on their devices (or inter-op threads).

What it costs: a chunk's pullback at stage k < K-1 comes 2(K-1-k) iterations after its
forward. Unrolled (`LoopPlan.unrolled`: T known, few chunks), Python iterations build one graph:
the forward's tape lives until its pullback, and a stage gathers its next chunk only after its
last pullback (bounding what is in flight). In the `tf.while_loop` form the tape is gone by
then: the stage stashes the chunk's inputs (stage 0 regathers them from the clip) and runs its
forward again, taped; the top pulls back the chunk it has just run. Fill and drain add 2K-2
iterations in which idle stages compute nothing (a `tf.cond`, unrolled a Python test).

Exactness: every per-tick quantity is computed from the same inputs as in the per-tick
recurrence, so the updates are the same (pinned against the NumPy reference). A stateless clip
whose length is not a multiple of C starts with a partial chunk: the pipeline is taken to start
``pad`` ticks before frame 0, and those ticks, like every tick of an empty pipeline before its
first valid input and cotangent, add exactly nothing (`schedule` validity). A stateful step
drains before it ends, so no pullback waits for the next step's weights and the state it leaves
is the per-tick pipeline's state after its last tick; it needs T to be a multiple of C
(`policy` picks such a C).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from keras_sideways import schedule
from keras_sideways.pipeline.loop import Frames, StepHooks, StepTotals, update_metrics_in_order
from keras_sideways.pipeline.plan import LoopPlan, StagePlan
from keras_sideways.pipeline.recurrence import Device, stage_forward, stage_pullback
from keras_sideways.pipeline.state import PipelineState
from keras_sideways.pipeline.tensors import carried_then, gather_ticks, last_tick, repeat_ticks
from keras_sideways.pipeline.windows import stage_inputs, window_positions


class _Skew(NamedTuple):
    """The loop variables of the skewed loop, besides the iteration and the totals.

    ``up[k]`` (k < K-1): stage k's outputs of the chunk it ran forward in the last iteration.
    ``down[k]`` (k < K-1): stage k+1's input cotangents of the chunk it pulled back last.
    ``state``: the per-stage carries, in `PipelineState` layout (``activations[k]``: stage k's
    output at the tick before stage k+1's next forward chunk; ``cotangents[k]``: stage k+1's
    input cotangent at the tick before stage k's next pullback chunk; ``histories``).
    ``stash[k]``: the inputs of the 2(K-1-k) chunks stage k ran forward last, oldest first
    (empty for stage 0, which regathers from the clip, and for the top).
    ``tick_losses``: one per tick of the padded step.
    """

    up: list
    down: list
    state: PipelineState
    stash: list
    tick_losses: tf.Tensor


def run_skewed_step(stages: Sequence[Any], windows: Sequence[int], device: Device,
                    stage_variables: list[list[Any]], state0: PipelineState, frames: Frames,
                    plan: LoopPlan, hooks: StepHooks, *, stateful: bool,
                    update_every: int | None) -> tuple[PipelineState, Any]:
    """Run the clip in the skewed order: N + 2K-2 iterations for N chunks, unrolled or looped.

    Same arguments and results as `loop.run_step`; ``update_every`` must be None (the policy
    falls back to the chunked loop otherwise: in-loop updates would change the weights between
    a chunk's forward and its pullback).
    """
    if update_every is not None or hooks.apply_means is not None:
        raise ValueError("The skewed loop applies one update per step; update_every needs the "
                         "chunked loop.")
    step = _SkewedStep(stages, windows, device, stage_variables, state0, frames, plan, hooks,
                       stateful)
    skew, totals = step.initial()
    iterations = step.chunks + schedule.skewed_fill_and_drain(len(stages))
    if plan.unrolled:
        # One graph node per stage and chunk: TensorFlow's executor runs each as soon as its
        # inputs are ready, and a forward's tape survives until its pullback.
        for i in range(iterations):
            with tf.name_scope(f"iteration{i}"):
                _, skew, totals = step.body(i, skew, totals)
        if step.forwards:
            raise AssertionError(f"forwards never pulled back: {sorted(step.forwards)}")
    else:
        _, skew, totals = tf.while_loop(lambda i, *_: i < iterations, step.body,
                                        (tf.constant(0), skew, totals),
                                        parallel_iterations=plan.parallel_iterations)
    return step.final_state(skew), step.final_totals(skew, totals)


class _SkewedStep:
    """One step's constants (the clip, its padding, the hooks) and the loop body's parts."""

    def __init__(self, stages: Sequence[Any], windows: Sequence[int], device: Device,
                 stage_variables: list[list[Any]], state0: PipelineState, frames: Frames,
                 plan: LoopPlan, hooks: StepHooks, stateful: bool):
        self.stages, self.windows, self.device = stages, windows, device
        self.stage_variables, self.state0, self.frames, self.hooks = (
            stage_variables, state0, frames, hooks)
        self.stateful, self.chunk, self.unrolled = stateful, plan.chunk, plan.unrolled
        self.num_stages = len(stages)
        # Unrolled, T is static and so are the chunk indices: fill and drain are known at
        # tracing, and stage k's taped forward of chunk c waits here for its pullback.
        self.num_frames = frames.clips.shape[1] if plan.unrolled else tf.shape(frames.clips)[1]
        self.forwards: dict[tuple[int, int], Any] = {}
        # A stateful step ends on a chunk boundary (the policy chose C dividing T); a stateless
        # one starts `pad` ticks early instead, in ticks that add nothing.
        self.pad = 0 if stateful else (-self.num_frames) % self.chunk
        self.chunks = (self.num_frames + self.pad) // self.chunk
        self.start = state0.tick - self.pad  # chunk 0's first tick
        window0 = windows[0]
        self.elements0, self.offset0 = frames.clips, -(window0 - 1)
        if window0 > 1 and stateful:
            self.elements0, self.offset0 = tf.concat([state0.histories["0"], frames.clips], 1), 0
        self.first0 = schedule.first_valid_input_tick(0) - state0.tick + self.offset0
        self.carried_targets = tf.stack(state0.targets[::-1]) if state0.targets else None
        self.carried_weights = tf.stack(state0.weights[::-1]) if state0.weights else None
        self.untaped = StagePlan(0, self.chunk, self.chunk)
        self.taped = StagePlan(0, 0, self.chunk)

    # -------------------------------------------------------------- what a stage reads

    def ticks(self, c: Any) -> tf.Tensor:
        return self.start + c * self.chunk + tf.range(self.chunk)

    def active(self, c: Any) -> Any:
        """Whether chunk ``c`` is one of the step's (not a fill or drain slot); a Python bool
        when unrolled."""
        if isinstance(c, int) and isinstance(self.chunks, int):
            return 0 <= c < self.chunks
        return tf.logical_and(c >= 0, c < self.chunks)

    def stage0_inputs(self, c: Any) -> tf.Tensor:
        # Padded ticks (before frame 0) read frame 0: their results are never valid.
        begin = c * self.chunk - self.pad
        if self.windows[0] == 1:
            return gather_ticks(self.frames.clips, tf.maximum(begin + tf.range(self.chunk), 0),
                                batch_major=True)
        positions = window_positions(begin + self.offset0, self.chunk, self.windows[0],
                                     self.first0)
        return gather_ticks(self.elements0, tf.maximum(positions, 0), batch_major=True)

    def inputs_of(self, k: int, c: Any, skew: _Skew) -> tuple[Any, Any, Any]:
        """Stage k's inputs of chunk c, and its carried activation and history after it (the
        chunk below is the one in ``up``, from the last iteration)."""
        if k == 0:
            return self.stage0_inputs(c), None, None
        first = schedule.first_valid_input_tick(k) - (self.start + c * self.chunk)
        with self.device(k):  # the chunk below crosses to stage k's device once
            inputs, history = stage_inputs(
                self.windows[k], skew.state.activations[k - 1], skew.state.histories.get(str(k)),
                skew.up[k - 1], self.chunk, first)
        return inputs, last_tick(skew.up[k - 1], self.device(k - 1)), history

    def of_frames(self, values: Any, per_clip: bool, carried: Any,
                  index: tf.Tensor) -> tf.Tensor:
        """Targets (or weights) of clip frames ``index``, (n, B, …); a negative index is a frame
        still in flight from the last step (``carried``, oldest first), or none (invalid)."""
        if per_clip:
            from_clip = repeat_ticks(values, index.shape[0])
        else:
            from_clip = gather_ticks(values, tf.clip_by_value(index, 0, self.num_frames - 1),
                                     batch_major=True)
        if carried is None or not self.stateful:
            return from_clip
        from_carried = tf.gather(tf.cast(carried, from_clip.dtype), tf.clip_by_value(
            index + self.num_stages - 1, 0, self.num_stages - 2))
        shape = [-1] + [1] * (from_clip.shape.rank - 1)
        return tf.where(tf.reshape(index >= 0, shape), from_clip, from_carried)

    def top_frames(self, ticks: tf.Tensor) -> tuple[tf.Tensor, Any]:
        """Targets and weights of the frames the top's outputs at ``ticks`` belong to."""
        frames = self.frames
        index = schedule.output_frame(self.num_stages, ticks) - self.state0.tick
        if frames.carry_targets:
            targets = self.of_frames(frames.targets, frames.per_clip, self.carried_targets,
                                     index)
        else:
            targets = repeat_ticks(frames.targets, self.chunk)
        weights = None
        if frames.weights is not None:
            weights = self.of_frames(frames.weights, frames.weights.shape.rank == 1,
                                     self.carried_weights, index)
        return targets, weights

    # -------------------------------------------------------------- one iteration

    def body(self, i: Any, skew: _Skew, totals: StepTotals) -> tuple:
        new = {"up": list(skew.up), "down": list(skew.down), "stash": list(skew.stash),
               "activations": list(skew.state.activations),
               "cotangents": list(skew.state.cotangents),
               "histories": dict(skew.state.histories),
               "accumulators": list(totals.accumulators), "counts": []}
        for k in range(self.num_stages - 1):
            self.lower_forward(k, i, skew, new)
            self.lower_pullback(k, i, skew, new)
        skew_losses, totals = self.top(i, skew, totals, new)
        state = skew.state._replace(activations=new["activations"],
                                    cotangents=new["cotangents"], histories=new["histories"])
        totals = totals._replace(accumulators=new["accumulators"],
                                 counts=totals.counts + tf.stack(new["counts"]))
        return i + 1, _Skew(new["up"], new["down"], state, new["stash"], skew_losses), totals

    def lower_forward(self, k: int, i: Any, skew: _Skew, new: dict) -> None:
        """Stage k < K-1: forward of chunk i-k; outputs up, its tape kept (unrolled) or its
        inputs to the stash."""
        c = schedule.skewed_forward_chunk(k, i)

        def forward() -> tuple:
            if not self.unrolled:
                inputs, carried, history = self.inputs_of(k, c, skew)
                outputs = stage_forward(self.stages[k], inputs, self.untaped, self.device(k))
                return outputs.outputs, inputs, carried, history
            # Taped once; the pullback 2(K-1-k) iterations later uses this tape. Gathering the
            # inputs only after this stage's last pullback bounds the chunks in flight to the
            # stash's (memory O(K·C)): the executor would otherwise gather every chunk of the
            # clip and run all of stage 0's forwards first.
            with tf.control_dependencies(new["accumulators"][k]):
                inputs, carried, history = self.inputs_of(k, c, skew)
            self.forwards[k, c] = stage_forward(self.stages[k], inputs, self.taped,
                                                self.device(k))
            return self.forwards[k, c].outputs, inputs, carried, history

        keep = (skew.up[k], skew.stash[k][-1] if skew.stash[k] else None,
                skew.state.activations[k - 1] if k else None,
                skew.state.histories.get(str(k)) if k else None)
        outputs, inputs, carried, history = _when(self.active(c), forward, keep,
                                                  f"stage{k}_forward")
        new["up"][k] = outputs
        if k:
            new["activations"][k - 1] = carried
            if self.windows[k] > 1:
                new["histories"][str(k)] = history
            if not self.unrolled:
                new["stash"][k] = skew.stash[k][1:] + [inputs]

    def lower_pullback(self, k: int, i: Any, skew: _Skew, new: dict) -> None:
        """Stage k < K-1: pullback of chunk i-(2K-2-k), on its forward's tape (unrolled) or
        on a forward of its stashed inputs, taped again."""
        d = schedule.skewed_pullback_chunk(self.num_stages, k, i)
        sums = skew_sums = new["accumulators"][k]

        def pullback() -> tuple:
            with self.device(k):
                cotangent = carried_then(skew.state.cotangents[k], skew.down[k])
            if self.unrolled:
                forward = self.forwards.pop((k, d))
            else:
                inputs = self.stage0_inputs(d) if k == 0 else skew.stash[k][0]
                forward = stage_forward(self.stages[k], inputs, self.taped, self.device(k))
            gradients, below = stage_pullback(
                forward, self.stage_variables[k], cotangent, self.device(k),
                input_cotangent=k > 0, window=self.windows[k])
            with self.device(k):
                added = [s + g for s, g in zip(skew_sums, gradients, strict=True)]
            return added, below, last_tick(skew.down[k], self.device(k + 1))

        keep = (sums, skew.down[k - 1] if k else None, skew.state.cotangents[k])
        sums, below, carried = _when(self.active(d), pullback, keep, f"stage{k}_pullback")
        new["accumulators"][k], new["cotangents"][k] = sums, carried
        if k:
            new["down"][k - 1] = below
        new["counts"].append(_valid_count(self.num_stages, k, self.ticks(d), self.active(d)))

    def top(self, i: Any, skew: _Skew, totals: StepTotals, new: dict) -> tuple[Any, StepTotals]:
        """The top: forward, loss and pullback of chunk i-(K-1) on one tape, and the step's
        loss, tick losses and metrics."""
        k = self.num_stages - 1
        c = schedule.skewed_forward_chunk(k, i)
        ticks = self.ticks(c)
        on = self.active(c)
        valid = tf.logical_and(schedule.output_valid(self.num_stages, ticks), on)
        targets, weights = self.top_frames(ticks)
        hooks, sums = self.hooks, new["accumulators"][k]

        def top_loss(outputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            hooks.before_top()
            losses = hooks.tick_losses(targets, outputs, weights)
            return tf.reduce_sum(tf.where(valid, losses, 0.0)) * hooks.loss_scale, losses

        def step() -> tuple:
            inputs, carried, history = self.inputs_of(k, c, skew)
            forward = stage_forward(self.stages[k], inputs, self.taped, self.device(k),
                                    top_loss)
            gradients, below = stage_pullback(forward, self.stage_variables[k], None,
                                              self.device(k), input_cotangent=k > 0,
                                              window=self.windows[k])
            with self.device(k):
                added = [s + g for s, g in zip(sums, gradients, strict=True)]
            order = totals.order
            if hooks.update_metrics is not None:
                order = update_metrics_in_order(hooks.update_metrics, order, forward.taped_outputs,
                                        valid, 0, self.chunk, targets, weights)
            return added, below, forward.tick_losses, order, carried, history

        keep = (sums, skew.down[k - 1] if k else None, tf.zeros([self.chunk]), totals.order,
                skew.state.activations[k - 1] if k else None,
                skew.state.histories.get(str(k)) if k else None)
        sums, below, losses, order, carried, history = _when(on, step, keep, f"stage{k}_top")
        new["accumulators"][k] = sums
        if k:
            new["down"][k - 1], new["activations"][k - 1] = below, carried
            if self.windows[k] > 1:
                new["histories"][str(k)] = history
        new["counts"].append(_valid_count(self.num_stages, k, ticks, on))
        reported = losses * hooks.replicas
        positions = (tf.clip_by_value(c, 0, self.chunks - 1) * self.chunk
                     + tf.range(self.chunk))[:, None]
        tick_losses = tf.tensor_scatter_nd_update(
            skew.tick_losses, positions,
            tf.where(on, tf.where(valid, reported, float("nan")),
                     tf.gather_nd(skew.tick_losses, positions)))
        totals = totals._replace(
            loss_sum=totals.loss_sum + tf.reduce_sum(tf.where(valid, reported, 0.0)),
            loss_count=totals.loss_count + tf.reduce_sum(tf.cast(valid, tf.float32)),
            order=order)
        return tick_losses, totals

    # -------------------------------------------------------------- before and after

    def initial(self) -> tuple[_Skew, StepTotals]:
        """Loop variables before iteration 0: zero chunks of the right shapes, the carries."""
        state0 = self.state0
        up = [repeat_ticks(tf.zeros_like(a), self.chunk) for a in state0.activations]
        down = [tf.identity(u) for u in up]
        stash: list[list] = [[] for _ in self.stages]
        dummy = _Skew(up, down, state0, stash, tf.zeros([0]))
        for k in range(1, 1 if self.unrolled else self.num_stages - 1):
            # Shapes of stage k's chunk inputs (windows gathered): traced, run once on zeros.
            inputs = tf.zeros_like(self.inputs_of(k, tf.constant(0), dummy)[0])
            stash[k] = [inputs] * schedule.skewed_lag(self.num_stages, k)
        tick_losses = tf.fill([self.chunks * self.chunk], float("nan"))
        totals = StepTotals(
            [[tf.zeros(v.shape, v.dtype) for v in variables]
             for variables in self.stage_variables],
            # The tick losses travel in `_Skew`, a TensorArray only at the end.
            tf.zeros([self.num_stages], tf.float32), tf.constant(0.0), tf.constant(0.0),
            tf.constant(0.0), tf.constant(0.0))
        return _Skew(up, down, state0, stash, tick_losses), totals

    def final_totals(self, skew: _Skew, totals: StepTotals) -> StepTotals:
        values = skew.tick_losses[self.pad:]
        return totals._replace(tick_losses=tf.TensorArray(
            tf.float32, size=self.num_frames, element_shape=[]).unstack(values))

    def final_state(self, skew: _Skew) -> PipelineState:
        """The per-tick pipeline's state after the step's last tick (what a stream carries)."""
        state0, frames, keep = self.state0, self.frames, self.num_stages - 1
        last = self.num_frames - 1 - tf.range(keep)  # frames whose activations are held
        next_targets, next_weights = state0.targets, state0.weights
        if frames.carry_targets and keep:
            held = self.of_frames(frames.targets, frames.per_clip, self.carried_targets, last)
            next_targets = [tf.cast(held[j], state0.targets[j].dtype) for j in range(keep)]
        if frames.weights is not None and keep:
            held = self.of_frames(frames.weights, frames.weights.shape.rank == 1,
                                  self.carried_weights, last)
            next_weights = [held[j] for j in range(keep)]
        elif self.stateful:
            # Frames of an unweighted step stay unweighted in a continued stream.
            next_weights = [tf.ones_like(w) for w in state0.weights]
        histories = dict(skew.state.histories)
        window0 = self.windows[0]
        if self.stateful and window0 > 1:
            histories["0"] = self.elements0[:, -(window0 - 1):]
        return PipelineState(state0.tick + self.num_frames, skew.state.activations,
                             skew.state.cotangents, histories, next_targets, next_weights)


def _when(condition: tf.Tensor, compute: Any, keep: tuple, name: str) -> tuple:
    """``compute()`` if ``condition`` else ``keep`` (its None entries stay None): a stage whose
    chunk is not one of the step's (fill and drain) computes nothing. ``name`` names the
    conditional (or, unrolled, with a Python bool, the name scope), so that a graph shows which
    stage's work it holds."""
    present = [j for j, value in enumerate(keep) if value is not None]
    if isinstance(condition, bool):
        if not condition:
            return keep
        with tf.name_scope(name):
            values = compute()
        return tuple(values[j] if keep[j] is not None else None for j in range(len(keep)))

    def computed() -> list:
        values = compute()
        return [values[j] for j in present]

    chosen = tf.cond(condition, computed, lambda: [keep[j] for j in present], name=name)
    chosen = chosen if isinstance(chosen, (list, tuple)) else [chosen]
    by_position = dict(zip(present, chosen, strict=True))
    return tuple(by_position.get(j) for j in range(len(keep)))


def _valid_count(num_stages: int, stage: int, ticks: tf.Tensor, on: tf.Tensor) -> tf.Tensor:
    valid = tf.logical_and(schedule.cotangent_valid(num_stages, stage, ticks), on)
    return tf.reduce_sum(tf.cast(valid, tf.float32))
