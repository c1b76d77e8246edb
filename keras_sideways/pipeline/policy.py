"""The tick-loop policy: chunk size, iterations in flight, the filling first chunk.

`TickLoop` is the one place these choices are made, from the model's options and its stages;
`SidewaysModel.tick_plan(T)` asks it and returns the resulting `LoopPlan`. It is a documented
hook: ``model.tick_loop = TickLoop(parallel_iterations=1)`` changes how the loop runs (never what
it computes) without touching private methods; benchmarks and tests use it. A second schedule
(e.g. the skewed, depth-parallel one) is added as another value of ``schedule`` here.

Two questions about stages are asked, and they differ on purpose:
- `stage_holds_state`: a call changes state a later call reads (BatchNormalization moving
  statistics, dropout seed generators): such calls may be neither reordered (one iteration in
  flight) nor skipped (no filling chunk).
- `stage_mixes_batch`: a call's result for one example depends on the others in its batch
  (BatchNormalization in training): batching C ticks would mix their statistics, so C = 1.
Dropout holds state but does not mix the batch, so it keeps 4-tick chunks.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import keras

from keras_sideways.pipeline.plan import LoopPlan
from keras_sideways.schedule import num_chunks, skewed_fill_and_drain

DEFAULT_TICK_CHUNK = 4
# The modeled chunk on one device (`modeled_tick_chunk`): chunks grow from DEFAULT_TICK_CHUNK, up
# to this, until a stage call carries CALL_ELEMENTS input elements per example. Measured on 2
# cores, Sideways/backprop frames/s at C=4 and 8 (T=64 or 32, B=8): isotropic CNN (stage inputs
# 10k elements a frame) 0.94-1.00 and 1.01-1.06; temporal CNN (26k) 1.30 and 1.25; small stages
# (2.2k) 0.45-0.55 and 0.61-0.71 (they reach backprop only at C=32, where they hold as much
# memory as backprop: past 8 the chunk's memory outweighs what it buys, docs/scaling.md).
MAX_MODELED_TICK_CHUNK = 8
CALL_ELEMENTS = 65536
SCHEDULES = ("chunked", "skewed")
# An unrolled skewed step traces every stage once per chunk: past this many iterations the
# graph, and the first step's tracing, would grow too far with T (measured, temporal CNN K=3:
# first step 6.4 s unrolled against 3.1 s looped at 12 iterations, 26 s against 3.1 s at 48),
# and the `tf.while_loop` form runs.
MAX_UNROLLED_ITERATIONS = 32


def stage_holds_state(stage: keras.layers.Layer) -> bool:
    """Whether a call of ``stage`` changes state a later call reads (see the module)."""
    return bool(stage.non_trainable_variables)


def stage_mixes_batch(stage: keras.layers.Layer) -> bool:
    """Whether ``stage`` couples the examples of a batch (BatchNormalization)."""
    return any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in stage._flatten_layers())


@dataclasses.dataclass(frozen=True)
class TickLoop:
    """How the Sideways tick loop runs. ``None`` fields are decided from the model.

    Args:
        schedule: ``"chunked"``: every loop iteration runs the K stages over the same C ticks,
            one stage after another. ``"skewed"``: in iteration i stage k runs the forward of
            chunk i-k and the pullback of chunk i-(2K-2-k) (`pipeline.skewed`), so the K stages
            of an iteration are independent and run at once on their devices (see ``unroll``
            for what its loop form repeats). ``None`` (default): skewed with ``stage_devices``,
            chunked on one device, where it measured as fast or faster for two of the three
            reference models (docs/scaling.md). Where the skewed order cannot be exact
            (`update_every`, stages holding state, a stateful step of unknown length) the
            chunked loop runs instead, with a warning when skewed was asked for or placed.
        parallel_iterations: loop iterations in flight (default 2, 1 where the loop changes
            state a later iteration reads). With 1, each chunk's forward, the filling first
            and the shorter last included, waits for the chunk before it: one chunk's tapes at
            a time (the chunked schedule).
        fill_first_chunk: whether a stateless step's first chunk skips the empty pipeline's
            filling ticks (default: where that changes nothing else). ``True`` is still refused
            where it would be wrong (stateful, unknown T, stages holding state).
        unroll: whether a skewed step is unrolled into one graph node per stage and chunk
            (each chunk's forward taped once, its tape kept until its pullback) instead of a
            `tf.while_loop` whose stages below the top run each chunk's forward a second time.
            Default: unrolled where T is known at tracing and the step takes at most
            `MAX_UNROLLED_ITERATIONS` iterations. ``True`` still needs a known T.
    """

    schedule: str | None = None
    parallel_iterations: int | None = None
    fill_first_chunk: bool | None = None
    unroll: bool | None = None

    def __post_init__(self) -> None:
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"TickLoop `schedule` must be one of {SCHEDULES}, got "
                             f"{self.schedule!r}.")

    def plan(self, stages: Sequence[keras.layers.Layer], num_frames: int | None, *,
             tick_chunk: int | None, placed: bool, stateful: bool,
             update_every: int | None, apply_within: bool = False,
             input_elements: Sequence[int] | None = None) -> LoopPlan:
        """The `LoopPlan` of a step over ``num_frames`` ticks (None: unknown at tracing);
        ``apply_within``: the step applies `update_every` updates inside the loop;
        ``input_elements``: each stage's input elements per example and tick (windows
        included), for the modeled chunk size (None: not known, `DEFAULT_TICK_CHUNK`)."""
        wanted = self.schedule or ("skewed" if placed else "chunked")
        if wanted == "skewed":
            reason = _why_not_skewed(stages, num_frames, stateful=stateful,
                                     update_every=update_every)
            if reason is None:
                return self._skewed_plan(stages, num_frames, tick_chunk, stateful)
            warnings.warn(f"The skewed (depth-parallel) tick schedule cannot be exact here: "
                          f"{reason}. Running the chunked schedule instead, whose stages run "
                          "one after another within a chunk.", stacklevel=3)
        chunk = chunk_size(stages, num_frames, tick_chunk=tick_chunk, placed=placed,
                           update_every=update_every, input_elements=input_elements)
        holds_state = any(stage_holds_state(stage) for stage in stages)
        # Only where the step surely starts an empty pipeline (stateless), the first chunk surely
        # fits (T known) and the skipped calls change nothing else.
        fill = not stateful and num_frames is not None and not holds_state
        if self.fill_first_chunk is not None:
            fill = fill and self.fill_first_chunk
        # The next chunk's forward needs only this chunk's forward outputs, so with two in
        # flight it overlaps this chunk's pullbacks: measured 10-15% more frames/s, for one more
        # chunk of memory (still flat in T; more in flight would grow with T). Iterations must
        # run in order where the loop changes state a later one reads: updates inside the loop
        # (`update_every`) and stages holding state.
        in_flight = 1 if apply_within or holds_state else 2
        if self.parallel_iterations is not None:
            in_flight = self.parallel_iterations
        remainder = None if num_frames is None else num_frames % chunk
        return LoopPlan(chunk, fill, remainder, in_flight)

    def _skewed_plan(self, stages: Sequence[keras.layers.Layer], num_frames: int | None,
                     tick_chunk: int | None, stateful: bool) -> LoopPlan:
        # Chunks of DEFAULT_TICK_CHUNK ticks even on devices: the stages of an iteration are
        # independent whatever C is, and larger calls cost less per frame than one tick each.
        chunk = tick_chunk or DEFAULT_TICK_CHUNK
        if num_frames is not None:
            chunk = min(chunk, num_frames)
            if stateful:
                # A stateful step ends on a chunk boundary, so that it can drain exactly.
                chunk = max(d for d in range(1, chunk + 1) if num_frames % d == 0)
        in_flight = 2 if self.parallel_iterations is None else self.parallel_iterations
        unrolled = False
        if num_frames is not None:
            iterations = num_chunks(num_frames, chunk) + skewed_fill_and_drain(len(stages))
            unrolled = iterations <= MAX_UNROLLED_ITERATIONS if self.unroll is None else self.unroll
        return LoopPlan(chunk, False, None, in_flight, schedule="skewed", unrolled=unrolled)


def _why_not_skewed(stages: Sequence[keras.layers.Layer], num_frames: int | None, *,
                    stateful: bool, update_every: int | None) -> str | None:
    """Why the skewed order would not compute the per-tick updates (None: it would)."""
    if update_every is not None:
        return (f"update_every={update_every} changes the weights inside the step, between a "
                "chunk's forward and its pullback")
    holding = [stage.name for stage in stages if stage_holds_state(stage)]
    if holding:
        return (f"stages {holding} hold state that a call changes (BatchNormalization "
                "statistics, dropout seeds), whose calls the skewed order reorders (and its loop "
                "form repeats)")
    if stateful and num_frames is None:
        return "a stateful step needs a clip length known at tracing, to end on a chunk boundary"
    return None


def modeled_tick_chunk(input_elements: Sequence[int] | None) -> int:
    """The chunked schedule's C on one device, modeled from the stages' sizes.

    A stage call costs a fixed overhead (TensorFlow's executor, oneDNN's per-call setup) plus
    its work, and backprop makes one call per stage for all B·T frames: small calls lose to it.
    So C doubles from `DEFAULT_TICK_CHUNK` while a call would carry fewer than `CALL_ELEMENTS`
    input elements per example (the stages' mean), up to `MAX_MODELED_TICK_CHUNK`, since
    memory grows with C (never with T).
    """
    if not input_elements:
        return DEFAULT_TICK_CHUNK
    mean = sum(input_elements) / len(input_elements)
    chunk = DEFAULT_TICK_CHUNK
    while chunk < MAX_MODELED_TICK_CHUNK and chunk * mean < CALL_ELEMENTS:
        chunk *= 2
    return chunk


def chunk_size(stages: Sequence[keras.layers.Layer], num_frames: int | None, *,
               tick_chunk: int | None, placed: bool, update_every: int | None,
               input_elements: Sequence[int] | None = None) -> int:
    """Ticks computed together per loop iteration (see `SidewaysModel`'s ``tick_chunk``)."""
    if tick_chunk is not None:
        chunk = tick_chunk
    elif placed:
        # Depth parallelism: one tick per call keeps every tick's K stage computations
        # independent, so that the stages run at once on their devices.
        chunk = 1
    elif any(stage_mixes_batch(stage) for stage in stages):
        chunk = 1
    else:
        chunk = modeled_tick_chunk(input_elements)
    if num_frames is not None:
        chunk = min(chunk, num_frames)
    if update_every is not None:
        # Weights change every u ticks, so a chunk must not straddle an update.
        chunk = max(d for d in range(1, min(chunk, update_every) + 1) if update_every % d == 0)
    return chunk
