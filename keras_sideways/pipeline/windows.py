"""Temporal windows: the one place that gathers what a stage reads at each tick.

A stage with window ``w > 1`` reads the last ``w`` elements of the stream below it (stage 0: the
frames; stage k: stage k-1's outputs), oldest first, edge-padded with the stream's first real
element before it has ``w`` of them. `gather_windows` is the gathering itself; training chunks
(filling or not, stateless or stateful), streaming ticks and the exact forward all call it, with
different element sequences. `stage_inputs` builds that sequence for a stage k > 0 from the
carried activation, the history and the stage below's outputs in the chunk. A chunk's inputs
are ticks-first (`tensors`); clips and the exact forward's sequences are batch-major.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from keras_sideways.pipeline.tensors import carried_then, gather_ticks, swap_time_and_batch


def window_positions(start: Any, size: Any, window: int, first: Any) -> tf.Tensor:
    """Gather indices (size, window) of consecutive ticks' windows in a sequence of elements.

    Tick c's window is elements ``start + c`` … ``start + c + w - 1``, newest last. Positions
    before ``first + w - 1``, where the stage's first real element sits, are clamped to it:
    edge padding, as at a stream start.
    """
    ticks = start + tf.range(size)[:, None]
    positions = ticks + tf.range(window)[None, :]
    return tf.minimum(tf.maximum(positions, first + window - 1), ticks + (window - 1))


def gather_windows(elements: tf.Tensor, start: Any, size: Any, window: int, first: Any, *,
                   ticks_first: bool = False, batch_major_source: bool = True) -> tf.Tensor:
    """What a stage reads at ``size`` consecutive ticks, from a sequence of elements.

    Window 1: elements ``start`` … ``start + size - 1``; window w > 1: the windows of
    `window_positions`, oldest first. Batch-major by default, (B, N, …) -> (B, size, [w,] …), as
    the exact forward reads a clip; ``ticks_first``: (size, B, [w,] …), a chunk's inputs, from
    a batch-major clip or (not ``batch_major_source``) a ticks-first sequence (N, B, …).
    """
    if not ticks_first:
        if window == 1:
            if isinstance(start, int) and start == 0 and elements.shape[1] == size:
                return elements
            return tf.gather(elements, start + tf.range(size), axis=1)
        return tf.gather(elements, window_positions(start, size, window, first), axis=1)
    if window == 1:
        if not batch_major_source:
            # A slice of the leading axis: a view, no copy.
            return elements[start:start + size]
        return gather_ticks(elements, start + tf.range(size), batch_major=True)
    return gather_ticks(elements, window_positions(start, size, window, first),
                        batch_major=batch_major_source)


def stage_inputs(
    window: int,
    carried: tf.Tensor | None,
    history: tf.Tensor | None,
    below: tf.Tensor | None,
    size: int,
    first: Any,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Stage k's inputs for a chunk of ``size`` ticks, and the history to carry on.

    ``carried`` (B, …) is the element of the tick before the chunk (the activation of stage k-1
    carried over, or the newest frame when streaming); ``None`` in a filling chunk, where the
    stage's inputs all come from ``below`` (n+1, B, …), stage k-1's outputs of this chunk whose
    last one is not read. ``history`` (B, w-1, …), as the pipeline state holds it, is the w-1
    elements before ``carried``; ``first`` is the chunk-relative tick of the stage's first real
    element (edge padding). Returns inputs (size, B, [w,] …) and the next history (None for
    window 1).
    """
    if carried is None:  # filling chunk: everything from this chunk's outputs below
        inputs = gather_windows(below[:-1], 1 - window, size, window, 1 - window,
                                ticks_first=True, batch_major_source=False)
        # The last tick's window, but its oldest: the next chunk's history.
        return inputs, (inputs[-1, :, 1:] if window > 1 else None)
    if window == 1:
        return carried_then(carried, below), None
    # History, carried element, then this chunk's outputs (the last is not read): one
    # concatenation, one gather. A one-tick chunk needs nothing from below.
    history = swap_time_and_batch(history)
    parts = [history, carried[None]] + ([] if below is None or size == 1 else [below])
    elements = tf.concat(parts, axis=0)
    inputs = gather_windows(elements, 0, size, window, first, ticks_first=True,
                            batch_major_source=False)
    following = elements[size:size + window - 1]
    return inputs, swap_time_and_batch(following)
