"""The Sideways tick schedule: which frame each stage holds, and when its cotangent is valid.

This module is the single source of truth for the pipeline's timing (DESIGN.md §2). It is pure
Python on purpose: the TensorFlow training step derives its validity masks from these functions
(they are written with plain arithmetic and comparisons, so they accept Python ints as well as
integer tensors), and the documentation's tick grid is printed from the same functions.

Conventions, for K stages ``f_0 … f_{K-1}`` and ticks ``t = 0, 1, …`` counted since the pipeline
was last empty (the start of a ``train_step`` in stateless mode, the last ``reset_buffers()`` in
stateful mode):

- At tick t, stage k computes on the activation of frame ``t - k`` (stage 0 reads frame t itself).
- The top stage's output at tick t therefore belongs to frame ``s = t - (K-1)``; its loss gives an
  exact cotangent.
- The cotangent that stage k < K-1 uses at tick t was produced one tick earlier by stage k+1, and
  descends from the loss of frame ``t - (K-1) - (K-1-k)``: a mismatch of ``2(K-1-k)`` frames with
  the activation it meets.
- Stage k's cotangent is valid from tick ``2K-2-k``; a stateless clip of T frames gives stage k
  ``T - (2K-2-k)`` contributions, so stage 0 needs ``T >= 2K-1``.
"""

from __future__ import annotations

from typing import Any


def _check_stage(num_stages: int, stage: int) -> None:
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages}.")
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage must be in [0, {num_stages - 1}], got {stage}.")


def activation_frame(stage: int, tick: Any) -> Any:
    """The frame whose activation stage ``stage`` computes on at ``tick`` (may be negative)."""
    return tick - stage


def output_frame(num_stages: int, tick: Any) -> Any:
    """The frame that the top stage's output at ``tick`` belongs to (negative while filling)."""
    return tick - (num_stages - 1)


def cotangent_frame(num_stages: int, stage: int, tick: Any) -> Any:
    """The frame whose loss the cotangent used by ``stage`` at ``tick`` descends from."""
    _check_stage(num_stages, stage)
    return tick - (num_stages - 1) - (num_stages - 1 - stage)


def frame_mismatch(num_stages: int, stage: int) -> int:
    """How many frames newer the activation is than the cotangent it meets at ``stage``."""
    _check_stage(num_stages, stage)
    return 2 * (num_stages - 1 - stage)


def first_valid_input_tick(stage: int) -> int:
    """First tick at which ``stage`` holds a real (not yet-to-fill) input."""
    return stage


def first_valid_output_tick(num_stages: int) -> int:
    """First tick at which the top stage's output belongs to a real frame (frame 0)."""
    return num_stages - 1


def first_valid_cotangent_tick(num_stages: int, stage: int) -> int:
    """First tick at which ``stage`` has a valid cotangent, i.e. contributes to its update."""
    _check_stage(num_stages, stage)
    return 2 * num_stages - 2 - stage


def input_valid(stage: int, tick: Any) -> Any:
    """Whether ``stage`` holds a real input at ``tick`` (bool, or a bool tensor)."""
    return tick >= first_valid_input_tick(stage)


def output_valid(num_stages: int, tick: Any) -> Any:
    """Whether the top output at ``tick`` belongs to a real frame (bool, or a bool tensor)."""
    return tick >= first_valid_output_tick(num_stages)


def cotangent_valid(num_stages: int, stage: int, tick: Any) -> Any:
    """Whether ``stage`` contributes to its update at ``tick`` (bool, or a bool tensor)."""
    return tick >= first_valid_cotangent_tick(num_stages, stage)


def min_clip_length(num_stages: int) -> int:
    """Shortest stateless clip in which every stage receives at least one cotangent: 2K-1."""
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages}.")
    return 2 * num_stages - 1


def contributions(num_stages: int, stage: int, num_frames: int, start_tick: int = 0) -> int:
    """How many valid cotangents ``stage`` receives over ticks ``start_tick … start_tick+T-1``.

    With ``start_tick=0`` this is the stateless count ``max(0, T - (2K-2-k))``; a stateful chunk
    that continues a stream passes the number of ticks already run since the last reset.
    """
    first = max(first_valid_cotangent_tick(num_stages, stage), start_tick)
    return max(0, start_tick + num_frames - first)


def short_clip_message(num_stages: int) -> str:
    """The start of the error for a too-short stateless clip whose length is known only when it
    runs (the graph assertion appends T)."""
    return (
        f"Sideways training with K={num_stages} stages needs clips of at least "
        f"2K-1={min_clip_length(num_stages)} frames in stateless mode (use longer clips, fewer "
        "stages or stateful=True); clip length T"
    )


def check_clip_length(num_stages: int, num_frames: int) -> None:
    """Raise a ValueError that explains the remedies when a stateless clip is too short."""
    needed = min_clip_length(num_stages)
    if num_frames < needed:
        raise ValueError(
            f"Sideways training with K={num_stages} stages needs clips of at least 2K-1="
            f"{needed} frames in stateless mode, but the clip has T={num_frames} frames: stage 0 "
            f"would receive no gradient (its first valid cotangent arrives at tick "
            f"{first_valid_cotangent_tick(num_stages, 0)}). Use longer clips (num_frames >= "
            f"{needed}), fewer stages (at most {(num_frames + 1) // 2} for T={num_frames}), or "
            "stateful=True so the pipeline carries over between consecutive chunks."
        )


def grid(num_stages: int, num_frames: int, start_tick: int = 0) -> list[list[str]]:
    """The K × T tick grid as cells, top stage first.

    Each cell reads ``"a<frame>/g<frame>"``: the frame the stage's activation belongs to, and the
    frame its cotangent descends from; ``.`` marks a part that is not valid yet. The top stage's
    cotangent is exact (its own frame's loss).
    """
    rows = []
    for stage in reversed(range(num_stages)):
        row = []
        for tick in range(start_tick, start_tick + num_frames):
            activation = (
                str(activation_frame(stage, tick)) if input_valid(stage, tick) else "."
            )
            gradient = (
                str(cotangent_frame(num_stages, stage, tick))
                if cotangent_valid(num_stages, stage, tick)
                else "."
            )
            row.append(f"a{activation}/g{gradient}")
        rows.append(row)
    return rows


def _stage_table(columns: list[str], cells: list[list[str]], notes: list[str]) -> list[str]:
    """Header, rule and one row per stage (top stage first, as ``cells``), each row followed
    by its note: the layout both printed grids share."""
    num_stages = len(cells)
    width = max(len(text) for text in columns + [cell for row in cells for cell in row])
    label_width = len(f"stage {num_stages - 1}")
    lines = [
        " " * label_width + " | " + " ".join(column.rjust(width) for column in columns),
        "-" * label_width + "-+-" + "-" * ((width + 1) * len(columns) - 1),
    ]
    for stage, row, note in zip(reversed(range(num_stages)), cells, notes, strict=True):
        lines.append(f"stage {stage}".ljust(label_width) + " | "
                     + " ".join(cell.rjust(width) for cell in row) + f"   {note}")
    return lines


def format_grid(num_stages: int, num_frames: int, start_tick: int = 0) -> str:
    """A printable K × T grid (stages top to bottom, ticks left to right) with a legend."""
    ticks = range(start_tick, start_tick + num_frames)
    notes = [f"n={contributions(num_stages, stage, num_frames, start_tick)}"
             for stage in reversed(range(num_stages))]
    lines = _stage_table([f"t{tick}" for tick in ticks], grid(num_stages, num_frames, start_tick),
                         notes)
    lines.append(
        "aX: activation of frame X; gY: cotangent from frame Y's loss; '.': not valid yet; "
        "n: contributions to the stage's mean update."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------- skewed chunk schedule
#
# Depth parallelism with batched calls (DESIGN.md §2a). The ticks are grouped into chunks of C
# (chunk c holds ticks cC … cC+C-1 of the step). Within an update the weights are fixed, so the
# order in which the per-tick quantities are computed is free as long as each one is computed
# from the same inputs. Stage k's forward of chunk c reads stage k-1's outputs of chunk c (and
# the last one of chunk c-1); its pullback of chunk c reads stage k+1's input cotangents of
# chunk c (and the last one of chunk c-1) and its own inputs of chunk c. So in loop iteration i:
#
#     stage k runs the forward of chunk i-k and the pullback of chunk i-(2K-2-k),
#
# reading only what iteration i-1 left (the chunk below's outputs, the chunk above's input
# cotangents): the K stages of one iteration are independent and can run at once. Between its
# forward and its pullback a chunk waits 2(K-1-k) iterations at stage k, so stage k holds the
# inputs of 2(K-1-k)+1 chunks (memory O(K·C), flat in T); the top stage pulls back the chunk it
# has just run forward. A step of N chunks takes N + 2K-2 iterations: the last 2K-2 drain the
# pipeline (the lower stages finish the pullbacks of the last chunks). What crosses a stateful
# step boundary is therefore exactly the per-tick pipeline's state after the step's last tick
# (a_k, e_k, window histories, the targets in flight): a drained step is exact, because no
# chunk's pullback waits for the next step's weights.


def skewed_forward_chunk(stage: int, iteration: Any) -> Any:
    """The chunk whose forward stage ``stage`` runs in skewed iteration ``iteration``."""
    return iteration - stage


def skewed_pullback_chunk(num_stages: int, stage: int, iteration: Any) -> Any:
    """The chunk whose pullback stage ``stage`` runs in skewed iteration ``iteration``."""
    _check_stage(num_stages, stage)
    return iteration - (2 * num_stages - 2 - stage)


def skewed_lag(num_stages: int, stage: int) -> int:
    """Iterations between a chunk's forward and its pullback at ``stage``: 2(K-1-k)."""
    _check_stage(num_stages, stage)
    return 2 * (num_stages - 1 - stage)


def skewed_stash_size(num_stages: int, stage: int) -> int:
    """How many chunks' inputs ``stage`` holds in an iteration (2(K-1-k)+1, the top 1)."""
    return skewed_lag(num_stages, stage) + 1


def num_chunks(num_frames: int, chunk: int) -> int:
    """Chunks of ``chunk`` ticks that cover ``num_frames`` ticks (the last may be partial)."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 tick, got {chunk}.")
    if num_frames < 0:
        raise ValueError(f"num_frames must be non-negative, got {num_frames}.")
    return -(-num_frames // chunk)


def skewed_fill_and_drain(num_stages: int) -> int:
    """Iterations a skewed step adds to its N chunks to fill and drain the pipeline: 2K-2."""
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages}.")
    return 2 * num_stages - 2


def skewed_iterations(num_stages: int, chunks: int) -> int:
    """Loop iterations of a skewed step over ``chunks`` chunks, drain included: N + 2K-2."""
    return chunks + skewed_fill_and_drain(num_stages) if chunks else 0


def skewed_forward_active(stage: int, iteration: Any, chunks: Any) -> Any:
    """Whether ``stage`` runs a forward in ``iteration`` (its chunk is one of the step's)."""
    chunk = skewed_forward_chunk(stage, iteration)
    return (chunk >= 0) & (chunk < chunks)


def skewed_pullback_active(num_stages: int, stage: int, iteration: Any, chunks: Any) -> Any:
    """Whether ``stage`` runs a pullback in ``iteration`` (its chunk is one of the step's)."""
    chunk = skewed_pullback_chunk(num_stages, stage, iteration)
    return (chunk >= 0) & (chunk < chunks)


def skewed_plan(num_stages: int, num_frames: int, chunk: int) -> list[list[tuple[Any, Any]]]:
    """Per iteration, per stage (lowest first): (forward chunk, pullback chunk), None if idle."""
    chunks = num_chunks(num_frames, chunk)
    plan = []
    for iteration in range(skewed_iterations(num_stages, chunks)):
        plan.append([
            (
                skewed_forward_chunk(k, iteration)
                if skewed_forward_active(k, iteration, chunks) else None,
                skewed_pullback_chunk(num_stages, k, iteration)
                if skewed_pullback_active(num_stages, k, iteration, chunks) else None,
            )
            for k in range(num_stages)
        ])
    return plan


def skewed_busy_fraction(num_stages: int, num_frames: int, chunk: int) -> float:
    """Share of the K × iterations stage slots that do work (1 - the fill-and-drain bubble).

    A slot counts half for a forward and half for a pullback, so a stage that only runs
    forwards while the pipeline fills is half busy.
    """
    plan = skewed_plan(num_stages, num_frames, chunk)
    if not plan:
        return 0.0
    busy = sum((f is not None) + (p is not None) for row in plan for f, p in row)
    return busy / (2 * num_stages * len(plan))


def format_skewed_grid(num_stages: int, num_frames: int, chunk: int) -> str:
    """A printable grid of the skewed schedule: stages top to bottom, iterations left to right.

    Cell ``F<c>/P<d>``: the stage runs the forward of chunk c and the pullback of chunk d in
    that iteration (``.``: nothing).
    """
    plan = skewed_plan(num_stages, num_frames, chunk)
    chunks = num_chunks(num_frames, chunk)

    def part(letter: str, value: Any) -> str:
        return f"{letter}{'.' if value is None else value}"

    cells = [[part("F", row[k][0]) + "/" + part("P", row[k][1]) for row in plan]
             for k in reversed(range(num_stages))]
    notes = [f"stash={skewed_stash_size(num_stages, stage)}"
             for stage in reversed(range(num_stages))]
    lines = [
        f"Skewed chunk schedule: K={num_stages}, T={num_frames}, C={chunk}: {chunks} chunks, "
        f"{len(plan)} iterations ({len(plan) - chunks} to fill and drain), "
        f"{100 * skewed_busy_fraction(num_stages, num_frames, chunk):.0f}% of stage slots busy",
        *_stage_table([f"i{i}" for i in range(len(plan))], cells, notes),
    ]
    lines.append(
        "Fc/Pd: forward of chunk c, pullback of chunk d (chunk c = ticks cC … cC+C-1); '.': "
        "idle; stash: chunks of inputs the stage holds."
    )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a convenience for the docs
    import argparse

    parser = argparse.ArgumentParser(
        description="Print the Sideways tick grid (and, with --chunk, the skewed chunk schedule).")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=None,
                        help="also print the skewed chunk schedule for chunks of this many ticks")
    args = parser.parse_args()
    print(format_grid(args.stages, args.frames))
    if args.chunk is not None:
        print()
        print(format_skewed_grid(args.stages, args.frames, args.chunk))
