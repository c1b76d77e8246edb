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


def format_grid(num_stages: int, num_frames: int, start_tick: int = 0) -> str:
    """A printable K × T grid (stages top to bottom, ticks left to right) with a legend."""
    cells = grid(num_stages, num_frames, start_tick)
    ticks = list(range(start_tick, start_tick + num_frames))
    width = max(max(len(cell) for row in cells for cell in row), len(str(ticks[-1])) + 1)
    label_width = len(f"stage {num_stages - 1}")
    lines = [
        " " * label_width + " | " + " ".join(f"t{tick}".rjust(width) for tick in ticks),
        "-" * label_width + "-+-" + "-" * ((width + 1) * len(ticks) - 1),
    ]
    for stage, row in zip(reversed(range(num_stages)), cells, strict=True):
        count = contributions(num_stages, stage, num_frames, start_tick)
        lines.append(
            f"stage {stage}".ljust(label_width)
            + " | "
            + " ".join(cell.rjust(width) for cell in row)
            + f"   n={count}"
        )
    lines.append(
        "aX: activation of frame X; gY: cotangent from frame Y's loss; '.': not valid yet; "
        "n: contributions to the stage's mean update."
    )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a convenience for the docs
    import argparse

    parser = argparse.ArgumentParser(description="Print the Sideways tick grid.")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    print(format_grid(args.stages, args.frames))
