"""The pipeline state: one layout for stateless steps, stateful buffers and streaming.

`PipelineState` is what the tick loop carries from one tick (or chunk) to the next. A stateless
step starts from `StateLayout.fresh` and drops the state at its end; a stateful model starts from
its `StreamBuffers` and writes the state back (`read_buffers`, `save_buffers`); streaming
inference receives and returns it as the flat dict of `StateLayout.to_stream` (only the forward
fields: ``tick``, ``activation_<k>``, ``history_<k>``). The paths differ only in where the state
comes from and goes to.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import tensorflow as tf


class PipelineState(NamedTuple):
    """The buffers of DESIGN.md §2 at a tick boundary (a `tf.nest` structure).

    Fields, for k = 0..K-2 unless said: ``tick`` (int32 scalar: ticks run so far in the stream),
    ``activations[k]`` (stage k's last output), ``cotangents[k]`` (the cotangent for stage k's
    output that stage k+1 produced at the last tick), ``histories`` (``{str(k): (B, w_k-1, …)}``,
    the older part of a windowed stage's window), ``targets[k]`` and ``weights[k]`` (the target
    and sample weight of the frame whose activation stage k holds; float32).
    """

    tick: Any
    activations: list
    cotangents: list
    histories: dict
    targets: list
    weights: list


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Shapes and dtypes of the pipeline state, from a built model's stages.

    ``output_shapes[k]``/``output_dtypes[k]``: stage k's output per frame (batch first, None);
    ``frame_shape``: one frame without batch; ``windows``: the temporal window lengths.
    """

    windows: tuple[int, ...]
    frame_shape: tuple[int | None, ...]
    frame_dtype: str
    output_shapes: tuple[tuple[int | None, ...], ...]
    output_dtypes: tuple[str, ...]

    @property
    def num_stages(self) -> int:
        return len(self.windows)

    def history_dtypes(self) -> dict[str, str]:
        """``{str(k): dtype}`` of the windowed stages' histories."""
        return {str(k): self.element(k)[1] for k, w in enumerate(self.windows) if w > 1}

    def element(self, stage: int) -> tuple[tuple[int | None, ...], str]:
        """Shape (without batch) and dtype of one element of stage ``stage``'s input stream."""
        if stage == 0:
            return self.frame_shape, self.frame_dtype
        return tuple(self.output_shapes[stage - 1][1:]), self.output_dtypes[stage - 1]

    def input_elements(self) -> list[int] | None:
        """Each stage's input elements per example and tick, its window included (the
        modeled chunk size's measure); None where a shape is not fully known."""
        sizes = []
        for k, window in enumerate(self.windows):
            shape = self.element(k)[0]
            if any(size is None for size in shape):
                return None
            sizes.append(window * math.prod(shape))
        return sizes

    def fresh(self, batch: Any, frame_target: tf.Tensor,
              frame_weight: tf.Tensor) -> PipelineState:
        """The state of an empty pipeline: zero buffers at tick 0."""
        pairs = range(self.num_stages - 1)

        def zeros(shape: Sequence[Any], dtype: Any) -> tf.Tensor:
            return tf.zeros(tf.concat([[batch], list(shape)], axis=0), dtype=dtype)

        histories = {}
        for k, window in enumerate(self.windows):
            if window > 1:
                shape, dtype = self.element(k)
                histories[str(k)] = zeros((window - 1,) + tuple(shape), dtype)
        outputs = [(self.output_shapes[k][1:], self.output_dtypes[k]) for k in pairs]
        return PipelineState(
            tick=tf.constant(0, tf.int32),
            activations=[zeros(*spec) for spec in outputs],
            cotangents=[zeros(*spec) for spec in outputs],
            histories=histories,
            targets=[tf.zeros_like(frame_target) for _ in pairs],
            weights=[tf.zeros_like(frame_weight) for _ in pairs],
        )

    def stream_keys(self) -> set[str]:
        """The keys of the streaming state dict (`to_stream`)."""
        keys = {"tick"} | {f"activation_{k}" for k in range(self.num_stages - 1)}
        return keys | {f"history_{key}" for key in self.history_dtypes()}

    def to_stream(self, state: PipelineState) -> dict[str, tf.Tensor]:
        """The forward part of the state as the flat dict of the streaming signatures."""
        flat = {"tick": state.tick}
        for k, activation in enumerate(state.activations):
            flat[f"activation_{k}"] = activation
        for key, history in state.histories.items():
            flat[f"history_{key}"] = history
        return flat

    def from_stream(self, flat: dict[str, Any]) -> PipelineState:
        """Inverse of `to_stream`; the training-only fields are empty."""
        if set(flat) != self.stream_keys():
            raise ValueError(
                f"stream_step state has keys {sorted(flat)}, expected "
                f"{sorted(self.stream_keys())} (the keys stream_init returns)."
            )
        return PipelineState(
            tick=tf.cast(flat["tick"], tf.int32),
            activations=[flat[f"activation_{k}"] for k in range(self.num_stages - 1)],
            cotangents=[],
            histories={key: flat[f"history_{key}"] for key in self.history_dtypes()},
            targets=[],
            weights=[],
        )


def _variable(dtype: Any, name: str, initial: Any = None) -> tf.Variable:
    # Shape None: the batch size is only known at the first step. ON_READ keeps one copy per
    # replica under a tf.distribute strategy (each replica runs its own streams).
    return tf.Variable(
        # A callable: the first trace of `fit` may create these inside a tf.function.
        initial or (lambda: tf.zeros([0], dtype=dtype)),
        shape=tf.TensorShape(None) if initial is None else None,
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class StreamBuffers:
    """Per-replica pipeline state of a stateful model, as variables in `PipelineState` layout.

    Deliberately a plain Python object: Keras and TensorFlow do not track what it holds, so the
    buffers are neither weights (`.keras`, checkpoints, SavedModel) nor trainable state. A
    reloaded or restored stateful model therefore starts new streams.
    """

    def __init__(self, layout: StateLayout):
        pairs = range(layout.num_stages - 1)
        dtypes = layout.output_dtypes
        self.state = PipelineState(
            tick=_variable(tf.int32, "sideways_tick", lambda: tf.constant(0, tf.int32)),
            activations=[_variable(dtypes[k], f"activation_{k}") for k in pairs],
            cotangents=[_variable(dtypes[k], f"cotangent_{k}") for k in pairs],
            histories={key: _variable(dtype, f"history_{key}")
                       for key, dtype in layout.history_dtypes().items()},
            # Targets and sample weights of the frames in flight travel with their
            # activations; float32 because the target dtype is only known at the first step.
            targets=[_variable("float32", f"target_{k}") for k in pairs],
            weights=[_variable("float32", f"weight_{k}") for k in pairs],
        )

    def reset(self) -> None:
        """Start new streams: the next step starts from an empty pipeline."""
        self.state.tick.assign(0)

    def read(self, fresh: PipelineState) -> PipelineState:
        """The stored streams, or ``fresh`` after a reset (tick 0: stale or empty buffers)."""
        tick = self.state.tick.read_value()

        def stored() -> PipelineState:
            def read(variable: tf.Variable, like: tf.Tensor) -> tf.Tensor:
                value = tf.cast(variable.read_value(), like.dtype)
                return tf.ensure_shape(value, like.shape)

            return tf.nest.map_structure(read, self.state, fresh)

        state = tf.cond(tf.equal(tick, 0), lambda: fresh, stored)
        return state._replace(tick=tick)

    def save(self, state: PipelineState) -> None:
        """Store the state at the end of a step, for the next one."""
        tf.nest.map_structure(
            lambda variable, value: variable.assign(tf.cast(value, variable.dtype)),
            self.state,
            state,
        )
