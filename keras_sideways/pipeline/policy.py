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
from collections.abc import Sequence

import keras

from keras_sideways.pipeline.plan import LoopPlan

DEFAULT_TICK_CHUNK = 4
SCHEDULES = ("chunked",)


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
        schedule: ``"chunked"``: every loop iteration runs the K stages over the same C ticks.
        parallel_iterations: loop iterations in flight (default 2, 1 where the loop changes
            state a later iteration reads).
        fill_first_chunk: whether a stateless step's first chunk skips the empty pipeline's
            filling ticks (default: where that changes nothing else). ``True`` is still refused
            where it would be wrong (stateful, unknown T, stages holding state).
    """

    schedule: str = "chunked"
    parallel_iterations: int | None = None
    fill_first_chunk: bool | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TickLoop `schedule` must be one of {SCHEDULES}, got "
                             f"{self.schedule!r}.")

    def plan(self, stages: Sequence[keras.layers.Layer], num_frames: int | None, *,
             tick_chunk: int | None, placed: bool, stateful: bool,
             update_every: int | None, apply_within: bool = False) -> LoopPlan:
        """The `LoopPlan` of a step over ``num_frames`` ticks (None: unknown at tracing);
        ``apply_within``: the step applies `update_every` updates inside the loop."""
        chunk = chunk_size(stages, num_frames, tick_chunk=tick_chunk, placed=placed,
                           update_every=update_every)
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


def chunk_size(stages: Sequence[keras.layers.Layer], num_frames: int | None, *,
               tick_chunk: int | None, placed: bool, update_every: int | None) -> int:
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
        chunk = DEFAULT_TICK_CHUNK
    if num_frames is not None:
        chunk = min(chunk, num_frames)
    if update_every is not None:
        # Weights change every u ticks, so a chunk must not straddle an update.
        chunk = max(d for d in range(1, min(chunk, update_every) + 1) if update_every % d == 0)
    return chunk
