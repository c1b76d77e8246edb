"""Chunk plans: which ticks of a chunk each stage computes and pulls back from.

The one place the filling logic lives. A *filling* chunk starts an empty stateless pipeline at
tick 0, where stage k has no input before tick ``k`` and no valid cotangent before tick
``2K-2-k`` (`keras_sideways.schedule`): what it would compute there adds exactly nothing, so it
is skipped. Any other chunk computes every tick, all taped. A skewed schedule (stage k on chunk
i-k) would derive its own plans from the same schedule functions here.
"""

from __future__ import annotations

from typing import NamedTuple

from keras_sideways import schedule


class StagePlan(NamedTuple):
    """Stage k in a chunk of ``size`` ticks: it computes ticks ``begin`` … ``size-1``, taping
    (for its pullback) from ``taped_from``. ``begin == size``: the chunk does not reach it."""

    begin: int
    taped_from: int
    size: int

    @property
    def reached(self) -> bool:
        return self.begin < self.size

    @property
    def taped(self) -> bool:
        return self.taped_from < self.size

    @property
    def untaped(self) -> int:
        """Ticks computed forward only (before the first valid cotangent)."""
        return self.taped_from - self.begin


def chunk_plan(num_stages: int, size: int, fill: bool = False) -> list[StagePlan]:
    """Per-stage plans of one chunk of ``size`` ticks; ``fill``: the empty pipeline's first."""
    if not fill:
        return [StagePlan(0, 0, size)] * num_stages
    plans = []
    for k in range(num_stages):
        begin = min(schedule.first_valid_input_tick(k), size)
        valid_from = schedule.first_valid_cotangent_tick(num_stages, k)
        plans.append(StagePlan(begin, min(max(begin, valid_from), size), size))
    return plans


class LoopPlan(NamedTuple):
    """How one step's ticks are cut into loop iterations.

    ``chunk``: ticks per iteration; ``fill_first``: the first chunk is a filling chunk, run
    before the loop; ``remainder``: a last, shorter chunk of T mod C ticks when T is known
    (``None`` when T is unknown at tracing: a one-tick loop finishes the clip);
    ``parallel_iterations``: loop iterations in flight; ``schedule``: ``"chunked"`` (every
    iteration runs the K stages over the same chunk) or ``"skewed"`` (stage k on chunk i-k, see
    `pipeline.skewed`); ``unrolled``: the skewed step is one graph node per stage and chunk
    instead of a `tf.while_loop` (T known, few chunks), so no forward runs twice.
    """

    chunk: int
    fill_first: bool
    remainder: int | None
    parallel_iterations: int
    schedule: str = "chunked"
    unrolled: bool = False
