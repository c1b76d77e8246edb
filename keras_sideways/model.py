"""`SidewaysModel`: Sideways training of a stack of stages through plain `model.fit`."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_sideways import schedule
from keras_sideways.distribute import MultiWorkerFitMixin

MODES = ("sideways", "backprop")
DEFAULT_TICK_CHUNK = 4
POOLS = ("mean", None)


class _StreamBuffers:
    """Per-replica pipeline state of a stateful model.

    Deliberately a plain Python object: Keras and TensorFlow do not track what it holds, so the
    buffers are neither weights (`.keras`, checkpoints, SavedModel) nor trainable state. A reloaded
    or restored stateful model therefore starts new streams.
    """

    def __init__(self, num_stages: int, output_dtypes: Sequence[str],
                 history_dtypes: dict[str, str]):
        def variable(dtype: Any, name: str) -> tf.Variable:
            # Shape None: the batch size is only known at the first step. ON_READ keeps one
            # copy per replica under a tf.distribute strategy (each replica runs its own streams).
            return tf.Variable(
                # A callable: the first trace of `fit` may create these inside a tf.function.
                lambda: tf.zeros([0], dtype=dtype),
                shape=tf.TensorShape(None),
                trainable=False,
                name=name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        self.tick = tf.Variable(
            lambda: tf.constant(0, tf.int32),
            trainable=False,
            name="sideways_tick",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        pairs = range(num_stages - 1)
        self.activations = [variable(output_dtypes[k], f"activation_{k}") for k in pairs]
        self.cotangents = [variable(output_dtypes[k], f"cotangent_{k}") for k in pairs]
        # Targets and sample weights of the frames in flight travel with their activations; kept
        # as float32 because the target dtype is only known at the first step.
        self.targets = [variable("float32", f"target_{k}") for k in pairs]
        self.weights = [variable("float32", f"weight_{k}") for k in pairs]
        # The older part of each temporal window (stages with a window longer than 1).
        self.histories = {
            key: variable(dtype, f"history_{key}") for key, dtype in history_dtypes.items()
        }

    def state(self) -> dict[str, Any]:
        """The variables, in the structure of the pipeline state."""
        return {
            "tick": self.tick,
            "activations": self.activations,
            "cotangents": self.cotangents,
            "histories": self.histories,
            "targets": self.targets,
            "weights": self.weights,
        }


@keras.saving.register_keras_serializable(package="keras_sideways")
class SidewaysModel(MultiWorkerFitMixin, keras.Model):
    """A video model trained frame by frame with Sideways (or exact backprop as a baseline).

    The network is a list of K stages. With ``mode="sideways"`` one `train_step` runs the clip
    tick by tick: at every tick every stage computes on the newest activation it holds, the top
    stage's loss gives an exact cotangent, and every lower stage pulls back the cotangent that the
    stage above produced one tick earlier (a "pseudo-gradient", DESIGN.md §2). The per-stage sums
    are divided by the number of valid contributions and applied once per step with the compiled
    optimizer. ``mode="backprop"`` is the baseline: the exact gradient of the mean per-frame loss,
    with the T frames batched through the same stages.

    Evaluation, prediction and ``call`` are always the exact synchronous forward over all frames.

    Args:
        stages: list of Keras layers, each mapping one tensor to one tensor. Frames may be vectors
            ``(B, T, D)`` or images ``(B, T, H, W, C)``.
        mode: ``"sideways"`` (default) or ``"backprop"``.
        pool: ``"mean"`` (targets per clip ``(B, …)``; ``call`` returns the mean over frames of
            the per-frame outputs) or ``None`` (targets per frame ``(B, T, …)``; ``call`` returns
            per-frame outputs ``(B, T, …)``). Training always uses the per-frame loss.
        stateful: keep the pipeline buffers (activations, cotangents, the targets of frames in
            flight) across steps, so that consecutive batches continue the same B streams; the
            batch size is then fixed. ``reset_buffers()`` starts new streams. Buffers are never
            saved: a reloaded model starts new streams. A chunk in which no stage has a valid
            contribution yet (the pipeline still filling) applies no update on one replica;
            under a multi-replica strategy it applies a zero gradient (see `_apply_if_any`).
        update_every: ``None`` (default): one optimizer update per ``train_step`` from the
            per-stage means over the whole clip. An integer u: the means accumulated so far are
            applied after every u-th tick of the step and after its last tick (u=1 is the paper's
            per-tick update); an update point at which no stage has a valid contribution is
            skipped. ``optimizer.iterations`` counts applied updates, so one step of T ticks adds
            at most ``ceil(T / u)``. Sideways mode only, and not under a multi-replica
            strategy (the updates sit inside the tick loop).
        stage_devices: optional list of K device strings (e.g. ``["/GPU:0", "/GPU:1"]``): each
            stage's variables and per-tick computation are placed on its device.
        temporal_windows: optional list of K window lengths ``w_k >= 1`` (default all 1). A
            stage with ``w_k > 1`` reads the last ``w_k`` outputs of the stage below (stage 0:
            the last ``w_k`` frames) stacked on a time axis, ``(B, w_k, …)``, oldest first: a
            causal temporal kernel. Before a stream has ``w_k`` elements the window repeats its
            oldest one (edge padding), in the pipeline and in the exact forward alike. The
            pullback's cotangents for the window positions are summed into the one cotangent
            buffer of the stage below. Each stage still adds one tick of latency, so the tick
            schedule (validity, fill, target alignment) is unchanged.
        tick_chunk: how many consecutive ticks each stage computes in one batched call
            (``None``: 4; 1 with ``stage_devices``, so that the stages of a tick run at once
            on their devices; 1 when a stage holds BatchNormalization, whose batch statistics
            would otherwise mix ticks). The updates are the same for any value (the weights are
            fixed between updates, so a stage's C ticks are independent given the carried
            buffers); larger chunks trade memory (it grows with C, never with T) for speed on
            one device. 1 is the literal per-tick pipeline. Two chunks are in flight at once
            unless the loop changes state (see `_loop_parallelism`), and a stateless step's
            first chunk skips the empty pipeline's filling ticks, which add nothing (see
            `_fill_first_chunk`).
        **kwargs: passed to `keras.Model` (e.g. ``name``).
    """

    def __init__(
        self,
        stages: Sequence[keras.layers.Layer],
        mode: str = "sideways",
        pool: str | None = "mean",
        stateful: bool = False,
        update_every: int | None = None,
        stage_devices: Sequence[str] | None = None,
        temporal_windows: Sequence[int] | None = None,
        tick_chunk: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(stages, keras.layers.Layer) or not isinstance(stages, Sequence):
            raise TypeError(
                "`stages` must be a list of Keras layers, got "
                f"{type(stages).__name__}. Wrap a single network as `[layer]`."
            )
        if len(stages) == 0:
            raise ValueError("`stages` is empty: a SidewaysModel needs at least one stage.")
        for index, stage in enumerate(stages):
            if not isinstance(stage, keras.layers.Layer):
                raise TypeError(
                    f"`stages[{index}]` is a {type(stage).__name__}, not a Keras layer. Every "
                    "stage must be a `keras.layers.Layer` (a layer, a Sequential, a Model)."
                )
        if len({id(stage) for stage in stages}) != len(stages):
            raise ValueError(
                "The same layer appears twice in `stages`; stages cannot share weights."
            )
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        if pool not in POOLS:
            raise ValueError(f"`pool` must be 'mean' or None, got {pool!r}.")
        if update_every is not None:
            if isinstance(update_every, bool) or not isinstance(update_every, int):
                raise TypeError(
                    f"`update_every` must be a positive int or None, got {update_every!r}."
                )
            if update_every < 1:
                raise ValueError(f"`update_every` must be at least 1, got {update_every}.")
        self.stages = list(stages)
        self.mode = mode
        self.pool = pool
        self.stateful = bool(stateful)
        self.update_every = update_every
        self.stage_devices = _check_stage_devices(stage_devices, len(self.stages))
        self.temporal_windows = _check_temporal_windows(temporal_windows, len(self.stages))
        if tick_chunk is not None and (
            isinstance(tick_chunk, bool) or not isinstance(tick_chunk, int) or tick_chunk < 1
        ):
            raise ValueError(f"`tick_chunk` must be a positive int or None, got {tick_chunk!r}.")
        self.tick_chunk = tick_chunk
        self._stage_output_shapes: list[tuple[int | None, ...]] = []
        self._stage_output_dtypes: list[str] = []
        self._buffers: _StreamBuffers | None = None

        self._stream_batch_size: int | None = None

    # ------------------------------------------------------------------ structure

    @property
    def num_stages(self) -> int:
        """K, the number of stages."""
        return len(self.stages)

    def _device(self, stage: int) -> contextlib.AbstractContextManager:
        if self.stage_devices is None:
            return contextlib.nullcontext()
        return tf.device(self.stage_devices[stage])

    def build(self, input_shape: Sequence[int | None]) -> None:
        input_shape = tuple(input_shape)
        if len(input_shape) < 3:
            raise ValueError(
                "SidewaysModel expects clips shaped (batch, frames, …features), e.g. "
                f"(B, T, D) or (B, T, H, W, C); got input shape {input_shape}."
            )
        spec = keras.KerasTensor((None,) + input_shape[2:], dtype=keras.config.floatx())
        shapes, dtypes, history_dtypes = [], [], {}
        for k, stage in enumerate(self.stages):
            window = self.temporal_windows[k]
            if window > 1:
                history_dtypes[str(k)] = spec.dtype
                spec = keras.KerasTensor((None, window) + tuple(spec.shape[1:]), spec.dtype)
            with self._device(k):
                spec = stage(spec)
            if not isinstance(spec, keras.KerasTensor):
                raise ValueError(
                    f"Stage {k} ({stage.name}) returned {type(spec).__name__}; every stage must "
                    "map one tensor to one tensor."
                )
            shapes.append(tuple(spec.shape))
            dtypes.append(spec.dtype)
        self._stage_output_shapes = shapes
        self._stage_output_dtypes = dtypes
        self._frame_shape = tuple(input_shape[2:])
        if self.stateful and self._buffers is None:
            self._buffers = _StreamBuffers(self.num_stages, dtypes, history_dtypes)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "stages": [keras.saving.serialize_keras_object(s) for s in self.stages],
                "mode": self.mode,
                "pool": self.pool,
                "stateful": self.stateful,
                "update_every": self.update_every,
                "stage_devices": self.stage_devices,
                "temporal_windows": self.temporal_windows,
                "tick_chunk": self.tick_chunk,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> SidewaysModel:
        config = dict(config)
        if config.get("stage_devices") is not None:
            try:
                _check_stage_devices(config["stage_devices"], len(config["stages"]))
            except ValueError as error:
                # A model trained with a GPU per stage must still load where it is served
                # (often a CPU-only machine): keep the weights, drop the placement, say so.
                warnings.warn(
                    f"Loading without stage placement: {error} The stages run on the default "
                    "device; pass `stage_devices` to a new model to place them.",
                    stacklevel=2,
                )
                config["stage_devices"] = None
        # A serialized stage carries its build config, so deserializing it creates its
        # variables: do it on the stage's device, or a reloaded model loses its placement.
        devices = config.get("stage_devices") or [None] * len(config["stages"])
        stages = []
        for stage, device in zip(config["stages"], devices, strict=True):
            with tf.device(device) if device else contextlib.nullcontext():
                stages.append(
                    keras.saving.deserialize_keras_object(stage, custom_objects=custom_objects)
                )
        config["stages"] = stages
        return cls(**config)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        super().compile(*args, **kwargs)
        if self.stage_devices is not None and self.optimizer is not None:
            _place_slots_with_variables(self.optimizer)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # Keras skips compiling a model whose `compile` is overridden when loading it; this is
        # Keras' own `compile_from_config`, right for ours (our `compile` only adds placement).
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------------ exact forward

    def call(self, clips: Any, training: bool | None = None) -> tf.Tensor:
        """The exact synchronous forward: every frame through every stage, frames batched."""
        outputs = self._sequence_forward(tf.convert_to_tensor(clips), training=training)
        if self.pool == "mean":
            return tf.reduce_mean(outputs, axis=1)
        return outputs

    def _sequence_forward(self, clips: tf.Tensor, training: bool | None) -> tf.Tensor:
        """(B, T, …) -> per-frame top outputs (B, T, …), all frames batched through each stage.

        A stage with a temporal window reads, for frame s, the stage below's outputs for frames
        s-w+1 … s, clamped at frame 0: the same edge padding as the pipeline's stream start.
        """
        sequence = tf.convert_to_tensor(clips)
        for k, stage in enumerate(self.stages):
            window = self.temporal_windows[k]
            inputs = _causal_windows(sequence, window) if window > 1 else sequence
            with self._device(k):
                outputs = stage(_merge_time(inputs), training=training)
            sequence = _split_time(outputs, sequence)
        return sequence

    # ------------------------------------------------------------------ training

    def compute_gradients(
        self,
        clips: Any,
        targets: Any,
        mode: str | None = None,
        sample_weight: Any = None,
        return_details: bool = False,
    ) -> Any:
        """The step's update direction, not applied, aligned with `trainable_variables`.

        For ``"sideways"``: the per-stage means of the pseudo-gradients of DESIGN.md §2 (plus the
        gradient of the regularisation losses, once). For ``"backprop"``: the exact gradient of
        the mean per-frame loss over all T frames. Works eagerly and inside `tf.function`. In
        stateful mode the clip is consumed as the next chunk of the streams: the buffers advance.

        With ``return_details=True`` returns ``(gradients, details)``, where details holds
        ``"loss"`` (mean of the valid tick losses plus regularisation), ``"tick_losses"`` (one
        per tick, NaN while the top output belongs to no frame) and ``"contributions"`` (valid
        cotangents per stage; T for every stage in backprop mode).
        """
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES} or None, got {mode!r}.")
        clips, targets, sample_weight = self._prepare_batch(clips, targets, sample_weight, mode)
        if mode == "backprop":
            result = self._backprop_pass(clips, targets, sample_weight, loss_scale=1.0)
        else:
            result = self._sideways_pass(clips, targets, sample_weight, loss_scale=1.0)
        if return_details:
            details = {key: result[key] for key in ("loss", "tick_losses", "contributions")}
            return result["gradients"], details
        return result["gradients"]

    def train_step(self, data: Any) -> dict[str, Any]:
        clips, targets, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        clips, targets, sample_weight = self._prepare_batch(
            clips, targets, sample_weight, self.mode
        )
        if self.update_every is not None and self.mode == "sideways" and _num_replicas() > 1:
            raise NotImplementedError(
                f"update_every={self.update_every} applies optimizer updates inside the tick "
                "loop, which a multi-replica tf.distribute strategy cannot synchronise "
                f"({_num_replicas():.0f} replicas here: a merge_call inside control flow). Use "
                "update_every=None (one update per step) under the strategy."
            )
        loss_scale = self.optimizer.scale_loss(tf.constant(1.0))
        if self.mode == "backprop":
            result = self._backprop_pass(
                clips, targets, sample_weight, loss_scale=loss_scale, update_metrics=True
            )
        else:
            result = self._sideways_pass(
                clips,
                targets,
                sample_weight,
                loss_scale=loss_scale,
                update_metrics=True,
                apply_within=self.update_every is not None,
            )
        if self.mode == "backprop" or self.update_every is None:
            self._apply_if_any(
                result["gradients"],
                result["contributions"],
                may_be_empty=self.stateful and self.mode == "sideways",
            )
        # Weighted by batch size like Keras' own step; a stateful chunk that is still filling the
        # pipeline has no valid top output and reports nothing.
        has_loss = tf.math.is_finite(result["loss"])
        self._loss_tracker.update_state(
            tf.where(has_loss, result["loss"], 0.0),
            sample_weight=tf.cast(tf.shape(clips)[0], "float32") * tf.cast(has_loss, "float32"),
        )
        return self.get_metrics_result()

    # ------------------------------------------------------------------ streaming inference

    def stream_init(self, batch_size: Any) -> dict[str, tf.Tensor]:
        """The state of an empty streaming pipeline for ``batch_size`` streams.

        Keys: ``tick`` (int32 scalar), ``activation_<k>`` (stage k's last output, k < K-1) and
        ``history_<k>`` (the older part of a windowed stage's window). Feed it to `stream_step`.
        """
        self._require_built("stream_init")
        frame_target = tf.zeros([batch_size])
        state = self._fresh_state(batch_size, frame_target, frame_target)
        return self._stream_keys(state)

    def stream_step(self, frame: Any, state: dict[str, Any]) -> dict[str, tf.Tensor]:
        """One tick of the pipelined forward (inference): every stage advances by one frame.

        Returns ``output`` (the top stage's output at this tick), ``valid`` (true once the
        pipeline is full: the output then belongs to frame ``tick - (K-1)``) and the next state
        under the keys `stream_init` returns. Outputs equal the per-frame outputs of `predict`,
        delayed by K-1 ticks.
        """
        self._require_built("stream_step")
        frame = tf.convert_to_tensor(frame)
        # The keys follow from the stages and windows; no state needs building to know them.
        expected = {"tick"} | {f"activation_{k}" for k in range(self.num_stages - 1)}
        expected |= {f"history_{k}" for k, w in enumerate(self.temporal_windows) if w > 1}
        if set(state) != expected:
            raise ValueError(
                f"stream_step state has keys {sorted(state)}, expected {sorted(expected)} (the "
                "keys stream_init returns)."
            )
        pipeline = {
            "tick": tf.cast(state["tick"], tf.int32),
            "activations": [state[f"activation_{k}"] for k in range(self.num_stages - 1)],
            "histories": {
                key[len("history_"):]: value
                for key, value in state.items()
                if key.startswith("history_")
            },
        }
        inputs, histories = self._stage_inputs(frame, pipeline)
        outputs = []
        for k, stage in enumerate(self.stages):
            with self._device(k):
                outputs.append(stage(inputs[k], training=False))
        result = self._stream_keys(
            {"tick": pipeline["tick"] + 1, "activations": outputs[:-1], "histories": histories}
        )
        result["output"] = outputs[-1]
        result["valid"] = schedule.output_valid(self.num_stages, pipeline["tick"])
        return result

    def _stream_keys(self, state: dict[str, Any]) -> dict[str, tf.Tensor]:
        flat = {"tick": state["tick"]}
        for k, activation in enumerate(state["activations"]):
            flat[f"activation_{k}"] = activation
        for key, history in state["histories"].items():
            flat[f"history_{key}"] = history
        return flat

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"{what} needs a built model: call the model on a batch of clips, or "
                "`model.build((None, T) + frame_shape)`, first."
            )

    def export(self, filepath: Any, format: str = "tf_saved_model", verbose: Any = None,
               **kwargs: Any) -> None:
        """Write a SavedModel with ``serving_default``, ``stream_init`` and ``stream_step``.

        See `keras_sideways.export.export_saved_model`; other formats are not supported.
        """
        if format != "tf_saved_model":
            raise ValueError(
                f"SidewaysModel.export supports format='tf_saved_model' only, got {format!r}."
            )
        from keras_sideways.export import export_saved_model

        export_saved_model(self, filepath, verbose=verbose, **kwargs)

    def reset_buffers(self) -> None:
        """Start new streams: the pipeline of a stateful model refills from the next batch."""
        if not self.stateful:
            raise ValueError(
                "reset_buffers() applies to stateful models only; this model was built with "
                "stateful=False, whose buffers start empty at every train_step."
            )
        if self._buffers is not None:
            self._buffers.tick.assign(0)

    # ------------------------------------------------------------------ internals

    def _prepare_batch(
        self, clips: Any, targets: Any, sample_weight: Any, mode: str
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """Validate a training batch and build everything the step needs, outside any loop."""
        if clips is None or targets is None:
            raise ValueError("Training a SidewaysModel needs (clips, targets); targets are None.")
        clips = tf.convert_to_tensor(clips)
        targets = tf.convert_to_tensor(targets)
        if not clips.dtype.is_floating:
            raise TypeError(
                f"Clips must be floating point, got dtype {clips.dtype.name}. Convert frames "
                "first, e.g. `tf.cast(clips, 'float32') / 255.0`."
            )
        if clips.shape.rank is None or clips.shape.rank < 3:
            raise ValueError(
                "Clips must be shaped (batch, frames, …features); got shape "
                f"{clips.shape}."
            )
        if sample_weight is not None:
            sample_weight = tf.convert_to_tensor(sample_weight, dtype=tf.float32)
        if getattr(self, "_compile_loss", None) is None:
            raise ValueError("Compile the model with a `loss` before training it.")
        if not self.built:
            self.build(clips.shape)
        self._check_targets(clips, targets, sample_weight)
        if not self._compile_built():
            # Keras defers building the compiled loss, metrics and optimizer to the first trace
            # of the train function; they must exist before the tick loop (no variable may be
            # created inside a while loop), so build them here, as `fit` does under a strategy.
            self._symbolic_build(data_batch=(clips, targets, sample_weight))
        num_frames = clips.shape[1]
        if mode == "sideways" and not self.stateful:
            if num_frames is not None:
                schedule.check_clip_length(self.num_stages, num_frames)
            else:
                needed = schedule.min_clip_length(self.num_stages)
                tf.debugging.assert_greater_equal(
                    tf.shape(clips)[1],
                    needed,
                    message=(
                        f"Sideways training with K={self.num_stages} stages needs clips of at "
                        f"least 2K-1={needed} frames in stateless mode (use longer clips, fewer "
                        "stages or stateful=True); clip length T"
                    ),
                )
        if self.stateful and mode == "sideways":
            batch_size = clips.shape[0]
            if batch_size is None:
                raise ValueError(
                    "A stateful SidewaysModel needs a fixed batch size, but the batch size is "
                    "unknown here. Batch the dataset with `drop_remainder=True`."
                )
            if self._stream_batch_size is None:
                self._stream_batch_size = int(batch_size)
            elif self._stream_batch_size != batch_size:
                raise ValueError(
                    f"This stateful SidewaysModel runs {self._stream_batch_size} streams per "
                    f"replica but got a batch of {batch_size} clips. Keep the batch size fixed "
                    "(e.g. `drop_remainder=True`), or build a new model for another batch size."
                )
        return clips, targets, sample_weight

    def _compile_built(self) -> bool:
        parts = (self._compile_loss, self._compile_metrics)
        built = all(part is None or part.built for part in parts)
        return built and (self.optimizer is None or self.optimizer.built)

    def _check_targets(self, clips: tf.Tensor, targets: tf.Tensor, sample_weight: Any) -> None:
        output_rank = len(self._stage_output_shapes[-1])
        rank = targets.shape.rank
        num_frames = clips.shape[1]
        if self.pool == "mean":
            if rank > output_rank:
                raise ValueError(
                    f"With pool='mean' targets are per clip, of rank at most {output_rank} "
                    f"(per-frame outputs are {self._stage_output_shapes[-1]}), but targets have "
                    f"shape {targets.shape}. For per-frame targets (B, T, …) use pool=None."
                )
        else:
            if rank < 2 or rank > output_rank + 1:
                raise ValueError(
                    "With pool=None targets are per frame, shaped (B, T, …) with rank 2 to "
                    f"{output_rank + 1}, but targets have shape {targets.shape}. For one target "
                    "per clip use pool='mean'."
                )
            if targets.shape[1] is not None and num_frames is not None:
                if targets.shape[1] != num_frames:
                    raise ValueError(
                        f"Per-frame targets cover {targets.shape[1]} frames but the clips have "
                        f"T={num_frames}; targets must be shaped (B, T, …) with the clip's T."
                    )
        if targets.shape[0] is not None and clips.shape[0] is not None:
            if targets.shape[0] != clips.shape[0]:
                raise ValueError(
                    f"Got {clips.shape[0]} clips but {targets.shape[0]} targets in the batch."
                )
        if sample_weight is not None and sample_weight.shape.rank not in (1, 2):
            raise ValueError(
                "sample_weight must be per clip (B,) or, with pool=None, per frame (B, T); got "
                f"shape {sample_weight.shape}."
            )

    def _stage_variable_positions(self, variables: Sequence[Any]) -> list[list[int]]:
        """For every stage, the positions of its trainable variables in ``variables``."""
        position = {id(v): i for i, v in enumerate(variables)}
        positions, owner = [], {}
        for k, stage in enumerate(self.stages):
            positions.append([])
            for v in stage.trainable_variables:
                i = position[id(v)]
                if owner.setdefault(i, k) != k:
                    raise ValueError(
                        f"Variable {v.path} belongs to stages {owner[i]} and {k}; stages cannot "
                        "share weights (each stage's update is a mean over its own contributions)."
                    )
                positions[k].append(i)
        return positions

    def _frame_loss(self, targets: Any, outputs: tf.Tensor, sample_weight: Any) -> tf.Tensor:
        # The compiled loss (`CompileLoss`) is what Keras' own `compute_loss` uses; it already
        # scales by 1/num_replicas under a tf.distribute strategy, so replica gradients sum to the
        # global mean. `compute_loss` itself would add `model.losses` on every tick.
        return tf.cast(self._compile_loss(targets, outputs, sample_weight), tf.float32)

    def _tick_losses(self, targets: tf.Tensor, outputs: tf.Tensor, weights: Any) -> tf.Tensor:
        """The compiled loss of each tick's batch, (B, C, …) -> (C,), in one vectorised call.

        Each tick's value is exactly what the compiled loss gives for that tick's batch alone,
        whatever its reduction: the per-tick call is vectorised over ticks (`tf.vectorized_map`)
        rather than repeated, since C separate loss calls (and their gradients) measured as a
        quarter of a chunk's time here. Without user weights the loss gets none: implicit ones
        of shape (B,) would not broadcast against per-pixel losses (B, H, W).
        """

        def ticks_first(tensor: tf.Tensor) -> tf.Tensor:
            return tf.transpose(tensor, [1, 0, *range(2, tensor.shape.rank)])

        if weights is None:
            return tf.vectorized_map(
                lambda pair: self._frame_loss(pair[0], pair[1], None),
                (ticks_first(targets), ticks_first(outputs)),
            )
        return tf.vectorized_map(
            lambda triple: self._frame_loss(*triple),
            (ticks_first(targets), ticks_first(outputs), ticks_first(weights)),
        )

    def _additional_loss(self) -> tf.Tensor:
        """`model.losses` (regularisers, and in backprop mode `add_loss`) summed, float32."""
        losses = [self._aggregate_additional_loss(loss) for loss in self.losses]
        return tf.cast(tf.add_n(losses), tf.float32) if losses else tf.constant(0.0)

    def _regularization(self, variables: Sequence[Any], scale: Any) -> tuple[Any, list[Any]]:
        """Weight-regularisation loss (for the logs) and its gradient, computed once."""
        with tf.GradientTape() as tape:
            total = self._additional_loss()
            scaled = total * scale
        gradients = _gradient(tape, scaled, list(variables))
        return total * _num_replicas(), gradients

    def _check_no_call_losses(self) -> None:
        for layer in self._flatten_layers(include_self=False):
            if layer._get_own_losses():
                self._clear_losses()
                raise NotImplementedError(
                    f"Layer {layer.name!r} adds a loss during its call (activity regularisation "
                    "or add_loss). Sideways mode supports weight regularisers only; remove it or "
                    "use mode='backprop'."
                )

    def _backprop_pass(
        self,
        clips: tf.Tensor,
        targets: tf.Tensor,
        sample_weight: Any,
        *,
        loss_scale: Any,
        update_metrics: bool = False,
    ) -> dict[str, Any]:
        """Exact gradient of the mean per-frame loss, frames batched (B·T) through the stages."""
        variables = list(self.trainable_variables)
        num_frames = tf.shape(clips)[1]
        if self.pool == "mean":
            frame_targets = _merge_time(_repeat_time(targets, num_frames))
        else:
            frame_targets = _merge_time(targets)
        frame_weights = None
        if sample_weight is not None:
            if sample_weight.shape.rank == 1:
                sample_weight = _repeat_time(sample_weight, num_frames)
            frame_weights = _merge_time(sample_weight)
        with tf.GradientTape() as tape:
            outputs = _merge_time(self._sequence_forward(clips, training=True))
            loss = self._frame_loss(frame_targets, outputs, frame_weights)
            total = loss + self._additional_loss()
            scaled = total * loss_scale
        gradients = _gradient(tape, scaled, variables)
        if update_metrics and self._compile_metrics is not None:
            self._compile_metrics.update_state(frame_targets, outputs, frame_weights)
        frames = tf.cast(num_frames, tf.float32)
        return {
            "gradients": gradients,
            "loss": total * _num_replicas(),
            "tick_losses": tf.fill([num_frames], tf.constant(math.nan)),
            "contributions": tf.fill([self.num_stages], frames),
        }

    def _fresh_state(
        self, batch: Any, frame_target: tf.Tensor, frame_weight: tf.Tensor
    ) -> dict[str, Any]:
        """The state of an empty pipeline: zero buffers at tick 0."""
        pairs = range(self.num_stages - 1)

        def zeros(shape: Sequence[Any], dtype: Any) -> tf.Tensor:
            return tf.zeros(tf.concat([[batch], list(shape)], axis=0), dtype=dtype)

        histories = {}
        for k, window in enumerate(self.temporal_windows):
            if window > 1:
                if k == 0:
                    element, dtype = self._frame_shape, keras.config.floatx()
                else:
                    element = self._stage_output_shapes[k - 1][1:]
                    dtype = self._stage_output_dtypes[k - 1]
                histories[str(k)] = zeros((window - 1,) + tuple(element), dtype)
        return {
            "tick": tf.constant(0, tf.int32),
            "activations": [
                zeros(self._stage_output_shapes[k][1:], self._stage_output_dtypes[k])
                for k in pairs
            ],
            "cotangents": [
                zeros(self._stage_output_shapes[k][1:], self._stage_output_dtypes[k])
                for k in pairs
            ],
            "histories": histories,
            "targets": [tf.zeros_like(frame_target) for _ in pairs],
            "weights": [tf.zeros_like(frame_weight) for _ in pairs],
        }

    def _initial_state(
        self, batch: Any, frame_target: tf.Tensor, frame_weight: tf.Tensor
    ) -> dict[str, Any]:
        """The pipeline state at the start of a step: empty, or the stored streams."""
        fresh = self._fresh_state(batch, frame_target, frame_weight)
        if not self.stateful:
            return fresh
        stored_variables = self._buffers.state()
        tick = stored_variables["tick"].read_value()

        def stored() -> dict[str, Any]:
            def read(variable: tf.Variable, like: tf.Tensor) -> tf.Tensor:
                value = tf.cast(variable.read_value(), like.dtype)
                return tf.ensure_shape(value, like.shape)

            return tf.nest.map_structure(read, stored_variables, fresh)

        # After a reset (tick 0) the stored buffers are stale or empty: start from zeros.
        state = tf.cond(tf.equal(tick, 0), lambda: fresh, stored)
        state["tick"] = tick
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        tf.nest.map_structure(
            lambda variable, value: variable.assign(tf.cast(value, variable.dtype)),
            self._buffers.state(),
            state,
        )

    def _stage_inputs(
        self, frame: tf.Tensor, state: dict[str, Any]
    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        """What every stage reads at this tick, and the window histories for the next tick.

        Stage k's newest element is the frame (k = 0) or the activation stage k-1 produced one
        tick ago; a windowed stage reads it after its history, edge-padded at the stream start
        exactly as in training (`_chunk_windows`, with a chunk of one tick).
        """
        inputs, histories = [], {}
        for k, window in enumerate(self.temporal_windows):
            newest = frame if k == 0 else state["activations"][k - 1]
            if window == 1:
                inputs.append(newest)
                continue
            windows, histories[str(k)] = _chunk_windows(
                state["histories"][str(k)], newest[:, None], window,
                first=schedule.first_valid_input_tick(k) - state["tick"],
            )
            inputs.append(windows[:, 0])
        return inputs, histories

    def _stage_means(self, accumulators: list, counts: tf.Tensor,
                     positions: list[list[int]]) -> list:
        """Each stage's sums divided by its own number of valid contributions."""
        means = list(accumulators)
        divisors = tf.maximum(counts, 1.0)
        for k, stage_positions in enumerate(positions):
            for p in stage_positions:
                means[p] = accumulators[p] / tf.cast(divisors[k], accumulators[p].dtype)
        return means

    def _apply_if_any(self, gradients: list, counts: tf.Tensor, may_be_empty: bool) -> None:
        """Apply an update, skipping it when no stage had a valid contribution.

        Only a stateful chunk still filling the pipeline, or an `update_every` point before the
        first valid cotangent, can be empty; a stateless clip always has contributions (its
        length was checked), so it applies without a conditional.
        """
        variables = list(self.trainable_variables)

        def apply() -> tf.Tensor:
            self.optimizer.apply(gradients, variables)
            return tf.constant(True)

        if may_be_empty and _num_replicas() == 1:
            tf.cond(tf.reduce_any(counts > 0), apply, lambda: tf.constant(False))
        else:
            # Under a multi-replica strategy the optimizer's cross-replica sync (merge_call)
            # cannot sit inside a conditional, so an empty stateful chunk applies zeros there.
            apply()

    def _loop_parallelism(self, apply_within: bool) -> int:
        """Tick-loop iterations in flight at once.

        The next chunk's forward needs only the current chunk's forward outputs (the carried
        activations), not its pullbacks, so with two in flight it overlaps the current chunk's
        pullbacks: measured 10-15% more frames/s here, for at most one more chunk of memory
        (still flat in T). More in flight would make memory grow with T. The iterations must run in
        order where the loop changes state a later iteration reads: updates inside the loop
        (`update_every`), and layers with non-trainable state (BatchNormalization statistics,
        dropout seed generators).
        """
        if apply_within or self._stages_hold_state():
            return 1
        return 2

    def _stages_hold_state(self) -> bool:
        """Whether a stage call changes state a later call reads (BatchNormalization
        statistics, dropout seed generators): its calls may be neither reordered nor skipped."""
        return any(stage.non_trainable_variables for stage in self.stages)

    def _fill_first_chunk(self, clips: tf.Tensor) -> bool:
        """Whether the first chunk skips the pipeline's filling ticks (see `run_chunk`).

        Only where the step surely starts an empty pipeline and the skipped calls change
        nothing else: stateless, a clip length known at tracing (the first chunk then surely
        fits), and stages without non-trainable state (a skipped call would not update
        BatchNormalization statistics or advance a dropout seed).
        """
        return (not self.stateful and clips.shape[1] is not None
                and not self._stages_hold_state())

    def _chunk_size(self, num_frames: int | None) -> int:
        """Ticks computed together per loop iteration (see ``tick_chunk``)."""
        if self.tick_chunk is not None:
            chunk = self.tick_chunk
        elif self.stage_devices is not None:
            # Depth parallelism: one tick per call keeps every tick's K stage computations
            # independent, so that the stages run at once on their devices.
            chunk = 1
        elif any(
            isinstance(layer, keras.layers.BatchNormalization)
            for stage in self.stages
            for layer in stage._flatten_layers()
        ):
            # Batch statistics would mix the frames of different ticks: keep one tick per call.
            chunk = 1
        else:
            chunk = DEFAULT_TICK_CHUNK
        if num_frames is not None:
            chunk = min(chunk, num_frames)
        if self.update_every is not None:
            # Weights change every u ticks, so a chunk must not straddle an update.
            chunk = max(d for d in range(1, min(chunk, self.update_every) + 1)
                        if self.update_every % d == 0)
        return chunk

    def _sideways_pass(
        self,
        clips: tf.Tensor,
        targets: tf.Tensor,
        sample_weight: Any,
        *,
        loss_scale: Any,
        update_metrics: bool = False,
        apply_within: bool = False,
    ) -> dict[str, Any]:
        """Run the clip tick by tick (DESIGN.md §2), C ticks per `tf.while_loop` iteration.

        Within a step the weights are fixed (between updates), so the ticks of one chunk can be
        computed stage by stage instead of tick by tick, with every stage's C ticks batched:
        bottom-up, stage k's inputs for ticks t0…t0+C-1 are the activation carried from tick
        t0-1 followed by stage k-1's outputs at ticks t0…t0+C-2; top-down, its cotangents are
        the one carried from tick t0-1 followed by stage k+1's input cotangents at ticks
        t0…t0+C-2. That is exactly the per-tick recurrence (each stage meets each frame once,
        at the same tick, with the same cotangent), with larger batches per call; memory grows
        with C, not with T. C = 1 is the literal per-tick pipeline. The loop body is traced
        once, plus once for a first chunk that skips an empty pipeline's filling ticks
        (`_fill_first_chunk`) and once for a shorter last chunk of T mod C ticks (a one-tick
        loop when T is unknown at tracing), so the graph does not grow with T.
        """
        num_stages = self.num_stages
        variables = list(self.trainable_variables)
        positions = self._stage_variable_positions(variables)
        # Static where known: loop variables keep the batch dimension across iterations.
        batch = clips.shape[0] if clips.shape[0] is not None else tf.shape(clips)[0]
        num_frames = tf.shape(clips)[1]
        chunk = self._chunk_size(clips.shape[1])

        def target_of(i: Any) -> tf.Tensor:
            return targets if self.pool == "mean" else tf.gather(targets, i, axis=1)

        def weight_of(i: Any) -> tf.Tensor:
            if sample_weight is None:
                return tf.ones([batch], tf.float32)
            if sample_weight.shape.rank == 1:
                return sample_weight
            return tf.gather(sample_weight, i, axis=1)

        def chunk_of(tensor: Any, per_clip: Any, i: Any, size: int) -> tf.Tensor:
            """Frames (or their targets, weights) of ticks i … i+size-1, as (B, size, …)."""
            if per_clip is not None:
                return _repeat_time(per_clip, size)
            return tf.gather(tensor, i + tf.range(size), axis=1)

        state0 = self._initial_state(batch, target_of(0), weight_of(0))
        accumulators0 = [tf.zeros(v.shape, v.dtype) for v in variables]
        counts0 = tf.zeros([num_stages], tf.float32)
        replicas = _num_replicas()

        def apply_means(accumulators: list, counts: tf.Tensor) -> tuple[list, tf.Tensor]:
            _, regularization = self._regularization(variables, loss_scale)
            means = self._stage_means(accumulators, counts, positions)
            gradients = [m + r for m, r in zip(means, regularization, strict=True)]
            self._apply_if_any(gradients, counts, may_be_empty=True)
            return [tf.zeros_like(a) for a in accumulators], tf.zeros_like(counts)

        carry_targets = self.stateful or self.pool != "mean"
        # Stage 0's windows are gathered from the clip itself, after the stream's history in
        # stateful mode (one copy of the clip per step instead of a gather and a concatenation
        # per chunk); a stateless clip starts from edge padding, so its history is not needed.
        window0 = self.temporal_windows[0]
        stage0_elements, stage0_offset = clips, -(window0 - 1)
        if window0 > 1 and self.stateful:
            stage0_elements = tf.concat([state0["histories"]["0"], clips], axis=1)
            stage0_offset = 0
        stage0_first = schedule.first_valid_input_tick(0) - state0["tick"] + stage0_offset

        def run_chunk(size: int, fill: bool = False) -> Any:
            # Per stage: the chunk's first tick it computes, and its first taped tick (from
            # which it pulls back). A filling chunk (`fill`) starts an empty stateless pipeline
            # at tick 0, where stage k has no input before tick k and no valid cotangent before
            # tick 2K-2-k (schedule): what it would compute there adds exactly nothing, so it
            # is skipped. Any other chunk computes every tick, all taped.
            starts = [(0, 0)] * num_stages
            if fill:
                starts = []
                for k in range(num_stages):
                    begin = min(schedule.first_valid_input_tick(k), size)
                    valid_from = schedule.first_valid_cotangent_tick(num_stages, k)
                    starts.append((begin, min(max(begin, valid_from), size)))

            def body(i, state, accumulators, counts, loss_sum, loss_count, tick_losses, order):
                ticks = state["tick"] + tf.range(size)
                # Targets and weights travel with their frames: the top output at tick t
                # belongs to frame t-(K-1), so the last K-1 of them are carried over. A
                # stateless clip's per-clip target is every tick's target, and without
                # sample weights there are none to carry: those skip the per-tick bookkeeping.
                keep = num_stages - 1
                if carry_targets:
                    new_targets = chunk_of(
                        targets, targets if self.pool == "mean" else None, i, size)
                    all_targets = tf.concat(
                        [tf.stack(state["targets"][::-1], 1), new_targets], 1
                    ) if keep else new_targets
                    next_targets = [all_targets[:, -1 - j] for j in range(keep)]
                else:
                    all_targets, next_targets = _repeat_time(targets, size), state["targets"]
                if sample_weight is None:
                    all_weights = None
                    # Frames of an unweighted step stay unweighted in a continued stream.
                    next_weights = [tf.ones_like(w) for w in state["weights"]] if (
                        self.stateful) else state["weights"]
                else:
                    new_weights = chunk_of(
                        sample_weight, sample_weight if sample_weight.shape.rank == 1 else None,
                        i, size,
                    )
                    all_weights = tf.concat(
                        [tf.stack(state["weights"][::-1], 1), new_weights], 1
                    ) if keep else new_weights
                    next_weights = [all_weights[:, -1 - j] for j in range(keep)]
                top_valid = schedule.output_valid(num_stages, ticks)

                # Bottom-up forward, one batched call per stage.
                tapes, stage_inputs, outputs, activations, histories = [], [], [], [], {}
                flat_outputs = []  # as recorded on each stage's tape, the pullback's target
                taped_outputs = []  # the outputs of the taped ticks, `outputs`' last ones
                for k, stage in enumerate(self.stages):
                    window = self.temporal_windows[k]
                    begin, taped_from = starts[k]
                    if k > 0:
                        activations.append(state["activations"][k - 1] if outputs[k - 1] is None
                                           else outputs[k - 1][:, -1])
                    if begin >= size:
                        # The filling chunk does not reach this stage: it keeps its empty state.
                        if window > 1:
                            histories[str(k)] = state["histories"][str(k)]
                        for collected in (tapes, stage_inputs, flat_outputs, taped_outputs,
                                          outputs):
                            collected.append(None)
                        continue
                    if k == 0 and window > 1:
                        # Straight from the clip (after the stream's history): one gather.
                        inputs = tf.gather(stage0_elements, _window_positions(
                            i + stage0_offset, size, window, stage0_first), axis=1)
                        histories["0"] = state["histories"]["0"]  # taken after the loop
                    elif k == 0:
                        inputs = tf.gather(clips, i + tf.range(size), axis=1)
                    elif fill:
                        # Stage k-1's outputs at ticks begin-1 … size-2, all in this chunk.
                        inputs = outputs[k - 1][:, :-1]
                        if window > 1:
                            inputs = tf.gather(inputs, _window_positions(
                                1 - window, size - begin, window, 1 - window), axis=1)
                            # The last tick's window, but its oldest: the next chunk's history.
                            histories[str(k)] = inputs[:, -1, 1:]
                    elif window > 1:
                        # History, carried element, then this chunk's outputs (the last is
                        # not read): one concatenation, one gather.
                        elements = tf.concat([
                            state["histories"][str(k)], state["activations"][k - 1][:, None],
                            outputs[k - 1],
                        ], axis=1)
                        first = schedule.first_valid_input_tick(k) - state["tick"]
                        inputs = tf.gather(
                            elements, _window_positions(0, size, window, first), axis=1)
                        histories[str(k)] = elements[:, size:size + window - 1]
                    else:
                        inputs = _carried_then(state["activations"][k - 1], outputs[k - 1])
                    early = None
                    if taped_from > begin:
                        # Ticks before the stage's first valid cotangent: forward only.
                        untaped = inputs[:, :taped_from - begin]
                        with self._device(k):
                            early = _split_time(
                                stage(_merge_time(untaped), training=True), untaped)
                        inputs = inputs[:, taped_from - begin:]
                    if taped_from >= size:
                        for collected in (tapes, stage_inputs, flat_outputs, taped_outputs):
                            collected.append(None)
                        outputs.append(early)
                        continue
                    flat = _merge_time(inputs)
                    with self._device(k), tf.GradientTape() as tape:
                        tape.watch(flat)
                        flat_output = stage(flat, training=True)
                        output = _split_time(flat_output, inputs)
                        if k == num_stages - 1:
                            self._check_no_call_losses()
                            frame_losses = self._tick_losses(
                                all_targets[:, taped_from:size], output,
                                None if all_weights is None
                                else all_weights[:, taped_from:size],
                            )
                            objective = tf.where(top_valid[taped_from:], frame_losses, 0.0)
                            objective = tf.reduce_sum(objective) * loss_scale
                    tapes.append(tape)
                    stage_inputs.append(flat)
                    flat_outputs.append(flat_output)
                    taped_outputs.append(output)
                    outputs.append(output if early is None else tf.concat([early, output], 1))
                top = taped_outputs[-1]
                top_from = starts[-1][1]  # the first tick of `top`

                # Top-down pullbacks: the top's exact cotangent, then one tick old ones below.
                gradients = [None] * len(variables)
                cotangents = [None] * (num_stages - 1)
                below = None
                for k in reversed(range(num_stages)):
                    if k < num_stages - 1:
                        # Stage k+1's input cotangent at the chunk's last tick (none yet in a
                        # filling chunk that did not reach stage k+1: the zero it holds).
                        cotangents[k] = state["cotangents"][k] if below is None else below[:, -1]
                    if tapes[k] is None:
                        # Filling chunk: no valid cotangent reaches this stage, nor below it.
                        below = None
                        continue
                    sources = [stage_inputs[k]] if k > 0 else []
                    sources += [variables[p] for p in positions[k]]
                    with self._device(k):
                        if k == num_stages - 1:
                            result = _gradient(tapes[k], objective, sources)
                        else:
                            # In a filling chunk stage k+1's cotangents start one tick before
                            # stage k's taped ticks: nothing is carried in.
                            cotangent = below[:, :-1] if fill else _carried_then(
                                state["cotangents"][k], below)
                            result = _gradient(
                                tapes[k], flat_outputs[k], sources,
                                output_gradients=_merge_time(cotangent),
                            )
                    if k > 0:
                        below = _split_time(result[0], taped_outputs[k])
                        if self.temporal_windows[k] > 1:
                            # One cotangent per window position, summed into the one buffer
                            # of the stage below (Sideways keeps no older activations).
                            below = tf.reduce_sum(below, axis=2)
                        result = result[1:]
                    for p, g in zip(positions[k], result, strict=True):
                        gradients[p] = g
                # Sum each gradient where it was made: no parameter-sized transfer per tick.
                accumulators = list(accumulators)
                for k in range(num_stages):
                    if tapes[k] is None:
                        continue
                    with self._device(k):
                        for p in positions[k]:
                            accumulators[p] = accumulators[p] + gradients[p]
                # Invalid cotangents are exactly zero (zero buffers, masked top loss, linear
                # pullbacks), so they add nothing; the counts follow the schedule.
                counts = counts + tf.stack([
                    tf.reduce_sum(tf.cast(schedule.cotangent_valid(num_stages, k, ticks),
                                          tf.float32))
                    for k in range(num_stages)
                ])
                if top is None:
                    # A filling chunk that does not reach the top: no output, no loss yet.
                    tick_losses = tick_losses.scatter(
                        i + tf.range(size), tf.fill([size], math.nan))
                else:
                    reported = frame_losses * replicas
                    valid_top = top_valid[top_from:]
                    loss_sum += tf.reduce_sum(tf.where(valid_top, reported, 0.0))
                    loss_count += tf.reduce_sum(tf.cast(valid_top, tf.float32))
                    values = tf.where(valid_top, reported, math.nan)
                    if top_from:
                        values = tf.concat([tf.fill([top_from], math.nan), values], 0)
                    tick_losses = tick_losses.scatter(i + tf.range(size), values)
                if top is not None and update_metrics and self._compile_metrics is not None:
                    # Only the ticks whose output belongs to a frame: a zero weight would not
                    # do, since Keras' unweighted `metrics` ignore sample weights.
                    valid_ticks = tf.where(valid_top)[:, 0]

                    def valid(tensor: tf.Tensor) -> tf.Tensor:
                        return _merge_time(
                            tf.gather(tensor[:, top_from:size], valid_ticks, axis=1))

                    # Metric updates read-modify-write their variables: chained through
                    # `order`, they keep the tick order with two loop iterations in flight.
                    with tf.control_dependencies([order]):
                        self._compile_metrics.update_state(
                            valid(all_targets), _merge_time(tf.gather(top, valid_ticks, axis=1)),
                            None if all_weights is None else valid(all_weights),
                        )
                    updated = [v.value for v in self._compile_metrics.variables]
                    with tf.control_dependencies(updated):
                        order = tf.identity(order)
                if apply_within:
                    done = i + size
                    due = tf.logical_or(
                        tf.equal(done % self.update_every, 0), tf.equal(done, num_frames)
                    )
                    accumulators, counts = tf.cond(
                        due,
                        lambda: apply_means(accumulators, counts),
                        lambda: (accumulators, counts),
                    )
                state = {
                    "tick": state["tick"] + size,
                    "activations": activations,
                    "cotangents": cotangents,
                    "histories": histories,
                    "targets": next_targets,
                    "weights": next_weights,
                }
                return (i + size, state, accumulators, counts, loss_sum, loss_count,
                        tick_losses, order)

            return body

        loop_vars = (
            tf.constant(0),
            state0,
            accumulators0,
            counts0,
            tf.constant(0.0),
            tf.constant(0.0),
            tf.TensorArray(tf.float32, size=num_frames),
            tf.constant(0.0),
        )
        if self._fill_first_chunk(clips):
            loop_vars = run_chunk(chunk, fill=True)(*loop_vars)
        loop_vars = tf.while_loop(
            lambda i, *_: i + chunk <= num_frames, run_chunk(chunk), loop_vars,
            parallel_iterations=self._loop_parallelism(apply_within),
        )
        remainder = None if clips.shape[1] is None else clips.shape[1] % chunk
        if remainder:
            # A known clip length ends in one shorter chunk, not in single ticks.
            loop_vars = run_chunk(remainder)(*loop_vars)
        elif remainder is None and chunk > 1:
            loop_vars = tf.while_loop(
                lambda i, *_: i < num_frames, run_chunk(1), loop_vars,
                parallel_iterations=self._loop_parallelism(apply_within),
            )
        _, state, accumulators, counts, loss_sum, loss_count, tick_losses, _ = loop_vars
        if self.stateful:
            if window0 > 1:
                state["histories"]["0"] = stage0_elements[:, -(window0 - 1):]
            self._save_state(state)
        regularization_value, regularization = self._regularization(variables, loss_scale)
        if apply_within:
            gradients = [tf.zeros_like(a) for a in accumulators]
        else:
            means = self._stage_means(accumulators, counts, positions)
            gradients = [m + r for m, r in zip(means, regularization, strict=True)]
        mean_loss = tf.where(
            loss_count > 0, loss_sum / tf.maximum(loss_count, 1.0), tf.constant(math.nan)
        )
        return {
            "gradients": gradients,
            "loss": mean_loss + regularization_value,
            "tick_losses": tick_losses.stack(),
            "contributions": counts,
        }


# ---------------------------------------------------------------------- tensor helpers


def _gradient(tape: tf.GradientTape, target: tf.Tensor, sources: Sequence[Any],
              output_gradients: Any = None) -> list[Any]:
    """`tape.gradient` with zeros for unconnected sources (Keras variables' dtype is a string,
    which `UnconnectedGradients.ZERO` cannot use)."""
    gradients = tape.gradient(target, list(sources), output_gradients=output_gradients)
    return [
        tf.zeros(s.shape, s.dtype) if g is None else g
        for g, s in zip(gradients, sources, strict=True)
    ]


def _num_replicas() -> float:
    return float(tf.distribute.get_strategy().num_replicas_in_sync)


def _merge_time(x: tf.Tensor) -> tf.Tensor:
    """(B, T, …) -> (B·T, …), keeping the static feature shape."""
    tail = x.shape[2:]
    if tail.is_fully_defined():
        return tf.reshape(x, [-1] + tail.as_list())
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))


def _split_time(x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """(B·T, …) -> (B, T, …) with B and T taken from ``like``."""
    if like.shape[1] is not None and x.shape[1:].is_fully_defined():
        # One reshape with a constant shape: fewer ops in the tick loop's body.
        result = tf.reshape(x, [-1, like.shape[1], *x.shape[1:]])
    else:
        shape = tf.concat([tf.shape(like)[:2], tf.shape(x)[1:]], axis=0)
        result = tf.reshape(x, shape)
    result.set_shape(like.shape[:2].concatenate(x.shape[1:]))
    return result


def _repeat_time(x: tf.Tensor, num_frames: Any) -> tf.Tensor:
    """Repeat a per-clip tensor (B, …) along a new time axis: (B, num_frames, …)."""
    # Tile rather than tf.repeat: two ops instead of a dozen, in the tick loop's body.
    rest = [1] * (x.shape.rank - 1)
    if isinstance(num_frames, int):
        return tf.tile(x[:, None], [1, num_frames, *rest])
    return tf.tile(x[:, None], tf.stack([1, num_frames, *rest]))


def _causal_windows(sequence: tf.Tensor, window: int) -> tf.Tensor:
    """(B, T, …) -> (B, T, window, …): for frame s the elements s-window+1 … s, clamped at 0."""
    num_frames = tf.shape(sequence)[1]
    offsets = tf.range(window) - (window - 1)
    indices = tf.maximum(tf.range(num_frames)[:, None] + offsets[None, :], 0)
    return tf.gather(sequence, indices, axis=1)


def _carried_then(carried: tf.Tensor, following: tf.Tensor) -> tf.Tensor:
    """(B, C, …): the element carried from the previous tick, then ``following`` but its last.

    With C = 1 this is the carried element alone, without reading ``following``: no data
    dependency then ties a stage to its neighbour within the tick, so the K stages of a tick
    can run at once (on their own devices, with ``stage_devices``).
    """
    if following.shape[1] == 1:
        return carried[:, None]
    return tf.concat([carried[:, None], following[:, :-1]], axis=1)


def _chunk_windows(
    history: tf.Tensor, newest: tf.Tensor, window: int, first: Any
) -> tuple[tf.Tensor, tf.Tensor]:
    """Windows for C consecutive ticks, and the history to carry to the next chunk.

    ``history`` (B, w-1, …) holds the elements of the w-1 ticks before the chunk, ``newest``
    (B, C, …) one element per tick of the chunk; ``first`` is the chunk-relative tick of the
    stage's first real element. Elements older than it are edge-padded with it, as at a stream
    start. Returns windows (B, C, w, …), oldest first, and the last w-1 elements.
    """
    size = newest.shape[1]
    elements = tf.concat([history, newest], axis=1)
    windows = tf.gather(elements, _window_positions(0, size, window, first), axis=1)
    return windows, elements[:, size:]


def _window_positions(start: Any, size: int, window: int, first: Any) -> tf.Tensor:
    """Gather indices (size, window) of consecutive ticks' windows in a sequence of elements.

    Tick c's window is elements ``start + c`` … ``start + c + w - 1``, newest last. Positions
    before ``first + w - 1``, where the stage's first real element sits, are clamped to it:
    edge padding, as at a stream start (``first`` as in `_chunk_windows` when ``start`` is 0).
    """
    ticks = start + tf.range(size)[:, None]
    positions = ticks + tf.range(window)[None, :]
    return tf.minimum(tf.maximum(positions, first + window - 1), ticks + (window - 1))


def _check_temporal_windows(windows: Sequence[int] | None, num_stages: int) -> list[int]:
    if windows is None:
        return [1] * num_stages
    if isinstance(windows, int) or not isinstance(windows, Sequence):
        raise TypeError(
            f"`temporal_windows` must be a list of {num_stages} ints (one per stage), got "
            f"{windows!r}."
        )
    windows = list(windows)
    if len(windows) != num_stages:
        raise ValueError(
            f"`temporal_windows` gives {len(windows)} window lengths for {num_stages} stages; "
            "give exactly one per stage (1 for no window)."
        )
    for k, window in enumerate(windows):
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"`temporal_windows[{k}]` must be an int >= 1, got {window!r}."
            )
    return windows


def _check_stage_devices(devices: Sequence[str] | None, num_stages: int) -> list[str] | None:
    if devices is None:
        return None
    if isinstance(devices, str) or not isinstance(devices, Sequence):
        raise TypeError(f"`stage_devices` must be a list of device strings, got {devices!r}.")
    devices = list(devices)
    if len(devices) != num_stages:
        raise ValueError(
            f"`stage_devices` names {len(devices)} devices for {num_stages} stages; give exactly "
            "one device per stage."
        )
    available = tf.config.list_logical_devices()
    known = {(d.device_type, tf.DeviceSpec.from_string(d.name).device_index) for d in available}
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except (ValueError, TypeError) as error:
            raise ValueError(f"`stage_devices` entry {device!r} is not a device string.") from error
        index = 0 if spec.device_index is None else spec.device_index
        if spec.device_type is None or (spec.device_type.upper(), index) not in known:
            names = ", ".join(d.name for d in available)
            raise ValueError(
                f"`stage_devices` entry {device!r} is not a device of this process; available: "
                f"{names}."
            )
    return devices


def _place_slots_with_variables(optimizer: keras.optimizers.Optimizer) -> None:
    """Create every optimizer slot on its variable's device, whoever builds the optimizer.

    Keras' TF optimizer colocates slots through the strategy's `colocate_vars_with`, a no-op for
    eager creation, so without this all slots of a depth-parallel model land on one device.
    """
    original = optimizer.add_variable_from_reference

    def placed(reference: Any, *args: Any, **kwargs: Any) -> Any:
        with tf.device(getattr(reference, "value", reference).device):
            return original(reference, *args, **kwargs)

    optimizer.add_variable_from_reference = placed
