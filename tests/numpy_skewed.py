"""The skewed chunk schedule (`keras_sideways.schedule`, DESIGN.md §2a) executed in NumPy.

`tests/numpy_reference.py` runs the Sideways recurrence tick by tick; this module runs the same
per-tick quantities in the skewed order: loop iteration i, stage k runs the forward of chunk
i-k and the pullback of chunk i-(2K-2-k), each over the chunk's C ticks. It exists to prove
that order exact before (and independently of) any TensorFlow code, and it enforces the property
that makes the order useful: inside an iteration a stage reads only what the *previous*
iteration left (the chunk below's outputs, the chunk above's input cotangents, its own carried
values and stash), never what a neighbour computes in the same iteration. Each iteration's
results are written to fresh dictionaries and only swapped in when the iteration ends.

A step may continue a stream (`PipelineState`): it starts from the per-tick pipeline's state
and, after draining, leaves exactly that state after its last tick, so a clip split into steps
gives the same sums and counts as one pass over it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from keras_sideways import schedule
from tests.numpy_reference import LOSSES, DenseStage


@dataclass
class PipelineState:
    """What the per-tick pipeline carries from one tick to the next (DESIGN.md §2).

    ``below[k]``: stage k-1's output at the last tick (stage k's next newest element; k ≥ 1).
    ``above[k]``: stage k+1's input cotangent at the last tick (stage k's next cotangent).
    ``histories[k]``: the last w_k - 1 elements stage k has read (windowed stages).
    ``targets``: targets of the frames still in flight, by frame index.
    ``None`` marks "nothing here yet" (the naive validity of the reference).
    """

    num_stages: int
    tick: int = 0
    below: dict = field(default_factory=dict)
    above: dict = field(default_factory=dict)
    histories: dict = field(default_factory=dict)
    targets: dict = field(default_factory=dict)


def _window(stage: int, newest: np.ndarray | None, windows: list[int], histories: dict):
    """Stage ``stage``'s input for one tick (edge-padded window), updating its history."""
    if newest is None or windows[stage] == 1:
        return newest
    history = histories.get(stage)
    if history is None:
        history = [newest] * (windows[stage] - 1)
    window = history + [newest]
    histories[stage] = window[1:]
    return np.concatenate(window, axis=1)


def skewed_step(stages: list[DenseStage], clips: np.ndarray, targets: np.ndarray, loss: str,
                per_frame_targets: bool, chunk: int, windows: list[int] | None = None,
                state: PipelineState | None = None):
    """One step in the skewed order. Returns (sums, counts, tick losses, state after the step).

    ``sums[k]`` are stage k's summed (d kernel, d bias), ``counts[k]`` its valid contributions,
    one tick loss per tick (None while the top output belongs to no frame).
    """
    loss_fn = LOSSES[loss]
    num_stages = len(stages)
    top = num_stages - 1
    windows = windows or [1] * num_stages
    state = state or PipelineState(num_stages)
    start = state.tick
    num_frames = clips.shape[1]
    chunks = schedule.num_chunks(num_frames, chunk)
    in_flight = dict(state.targets)
    for t in range(num_frames):
        in_flight[start + t] = targets[:, t] if per_frame_targets else targets

    def ticks(c: int) -> range:
        return range(start + c * chunk, start + min((c + 1) * chunk, num_frames))

    # Each stage's own carried values: only stage k reads or writes entry k.
    below = dict(state.below)  # stage k-1's output at the tick before k's next forward chunk
    above = dict(state.above)  # stage k+1's cotangent at the tick before k's next pullback
    histories = {k: v for k, v in state.histories.items()}
    stash: list[deque] = [deque() for _ in range(num_stages)]  # (inputs of a chunk's ticks)
    sums = [[np.zeros_like(s.kernel), np.zeros_like(s.bias)] for s in stages]
    counts = [0] * num_stages
    tick_losses: dict[int, float | None] = {}
    # What iteration i-1 left for iteration i: outputs going up, input cotangents going down.
    up: dict[int, list] = {}
    down: dict[int, list] = {}
    for iteration in range(schedule.skewed_iterations(num_stages, chunks)):
        next_up: dict[int, list] = {}
        next_down: dict[int, list] = {}
        for k in range(num_stages):
            if schedule.skewed_forward_active(k, iteration, chunks):
                c = schedule.skewed_forward_chunk(k, iteration)
                if k == 0:
                    newest = [clips[:, t - start] for t in ticks(c)]
                else:
                    # Stage k-1 ran this chunk's forward in the previous iteration.
                    chunk_below = up[k - 1]
                    newest = [below.get(k)] + chunk_below[:-1]
                    below[k] = chunk_below[-1]
                inputs = [_window(k, n, windows, histories) for n in newest]
                outputs = [None if x is None else stages[k].forward(x) for x in inputs]
                stash[k].append((c, inputs, outputs))
                next_up[k] = outputs
            if schedule.skewed_pullback_active(num_stages, k, iteration, chunks):
                c = schedule.skewed_pullback_chunk(num_stages, k, iteration)
                stashed, inputs, outputs = stash[k].popleft()
                assert stashed == c, (k, stashed, c)
                assert len(stash[k]) <= schedule.skewed_lag(num_stages, k)
                if k == top:
                    cotangents = []
                    for t, output in zip(ticks(c), outputs, strict=True):
                        frame = schedule.output_frame(num_stages, t)
                        target = in_flight.get(frame)
                        if output is None or target is None:
                            cotangents.append(None)
                            tick_losses[t] = None
                            continue
                        tick_losses[t], cotangent = loss_fn(output, target)
                        cotangents.append(cotangent)
                else:
                    # Stage k+1 ran this chunk's pullback in the previous iteration.
                    chunk_above = down[k + 1]
                    cotangents = [above.get(k)] + chunk_above[:-1]
                    above[k] = chunk_above[-1]
                produced = []
                for x, cotangent in zip(inputs, cotangents, strict=True):
                    if cotangent is None:
                        produced.append(None)
                        continue
                    d_kernel, d_bias, d_input = stages[k].pullback(x, cotangent)
                    sums[k][0] += d_kernel
                    sums[k][1] += d_bias
                    counts[k] += 1
                    if windows[k] > 1:
                        d_input = d_input.reshape(d_input.shape[0], windows[k], -1).sum(axis=1)
                    produced.append(d_input)
                if k > 0:
                    next_down[k] = produced
        # The iteration ends: only now do its results become readable.
        up, down = next_up, next_down
    assert all(not s for s in stash), "the drain left chunks without their pullback"
    end = start + num_frames
    final = PipelineState(
        num_stages,
        tick=end,
        below=below,
        above=above,
        histories=histories,
        targets={s: v for s, v in in_flight.items() if s > schedule.output_frame(num_stages,
                                                                                 end - 1)},
    )
    return sums, counts, [tick_losses[t] for t in range(start, end)], final
