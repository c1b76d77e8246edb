"""`SidewaysModel`: Sideways training of a stack of stages through plain `model.fit`.

Keras glue only: the recurrence, its state, windows, plans and bookkeeping live in
`keras_sideways.pipeline` (see docs/algorithm.md, "Where things live"); argument checks in
`keras_sideways.arguments`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_sideways import arguments, schedule, steps
from keras_sideways.checkpoint import CrashSafeSavingMixin
from keras_sideways.clip_metrics import ClipMetricsMixin
from keras_sideways.distribute import MultiWorkerFitMixin
from keras_sideways.fitting import FitMixin
from keras_sideways.pipeline import exact, placement
from keras_sideways.pipeline.plan import LoopPlan
from keras_sideways.pipeline.policy import DEFAULT_TICK_CHUNK, TickLoop
from keras_sideways.pipeline.recurrence import stream_tick
from keras_sideways.pipeline.state import StateLayout, StreamBuffers
from keras_sideways.pipeline.tensors import num_replicas

MODES, POOLS = arguments.MODES, arguments.POOLS
__all__ = ["DEFAULT_TICK_CHUNK", "MODES", "POOLS", "SidewaysModel", "TickLoop"]


@keras.saving.register_keras_serializable(package="keras_sideways")
class SidewaysModel(CrashSafeSavingMixin, FitMixin, ClipMetricsMixin, MultiWorkerFitMixin,
                    keras.Model):
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
            batch size is then fixed, from the first batch until ``reset_buffers()``, which
            starts new streams (of any batch size); `fit` refuses to shuffle arrays. Buffers
            are never saved: a reloaded model starts new streams. A chunk with no valid
            contribution yet (the pipeline filling) applies no update and logs no loss.
        update_every: ``None`` (default): one optimizer update per ``train_step`` from the
            per-stage means over the whole clip. An integer u: the means accumulated so far are
            applied after every u-th tick of the step and after its last tick (u=1 is the paper's
            per-tick update); an update point at which no stage has a valid contribution is
            skipped. ``optimizer.iterations`` counts applied updates, so one step of T ticks adds
            at most ``ceil(T / u)``. Sideways mode only, and not under a multi-replica
            strategy (the updates sit inside the tick loop).
        stage_devices: optional list of K device strings (e.g. ``["/GPU:0", "/GPU:1"]``): each
            stage's variables and computation are placed on its device, and the step runs the
            skewed chunk schedule, whose stages run at once (see `TickLoop`, docs/scaling.md).
        temporal_windows: optional list of K window lengths ``w_k >= 1`` (default all 1). A
            stage with ``w_k > 1`` reads the last ``w_k`` outputs of the stage below (stage 0:
            the last ``w_k`` frames) stacked on a time axis, ``(B, w_k, …)``, oldest first: a
            causal temporal kernel. Before a stream has ``w_k`` elements the window repeats its
            oldest one (edge padding), in the pipeline and in the exact forward alike. The
            pullback's cotangents for the window positions are summed into the one cotangent
            buffer of the stage below. Each stage still adds one tick of latency, so the tick
            schedule (validity, fill, target alignment) is unchanged.
        tick_chunk: how many consecutive ticks each stage computes in one batched call
            (``None``: 4 or, on one device, 8 for small stage calls, modeled from per-call
            overhead, `pipeline.policy.modeled_tick_chunk`; 1 when a stage holds
            BatchNormalization, whose batch statistics would otherwise mix ticks). The updates
            are the same for any value (the weights are fixed between updates, so a stage's C
            ticks are independent given the carried buffers); larger chunks trade memory (it
            grows with C, never with T) for speed on one device. 1 is the literal per-tick
            pipeline. `tick_plan` says what a step does (chunks in flight, skipped filling).
        **kwargs: passed to `keras.Model` (e.g. ``name``).

    Attributes:
        tick_loop: the `keras_sideways.pipeline.policy.TickLoop` the tick loop follows (not
            saved): replace it to change how the loop runs, never what it computes, e.g.
            ``model.tick_loop = TickLoop(parallel_iterations=1)``.
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
        stages = arguments.check_stages(stages)
        arguments.check_options(mode, pool, update_every, tick_chunk)
        self.stages = stages
        self.mode = mode
        self.pool = pool
        self.stateful = arguments.check_stateful(stateful)
        self.update_every = update_every
        self.stage_devices = placement.check_stage_devices(stage_devices, len(stages))
        self.temporal_windows = arguments.check_temporal_windows(temporal_windows, len(stages))
        self.tick_chunk = tick_chunk
        self.tick_loop = TickLoop()
        # Plain objects, untracked: a tracked helper would put the buffers into the weights.
        self._layout: StateLayout | None = None
        self._buffers: StreamBuffers | None = None
        self._stream_batch_size: int | None = None

    # ------------------------------------------------------------------ structure

    @property
    def num_stages(self) -> int:
        """K, the number of stages."""
        return len(self.stages)

    @property
    def state_layout(self) -> StateLayout:
        """Shapes and dtypes of the pipeline state (a built model)."""
        self._require_built("state_layout")
        return self._layout

    def _device(self, stage: int) -> Any:
        return placement.stage_device(self.stage_devices, stage)

    def build(self, input_shape: Sequence[int | None]) -> None:
        input_shape = tuple(input_shape)
        arguments.check_input_shape(input_shape)
        spec = keras.KerasTensor((None,) + input_shape[2:], dtype=keras.config.floatx())
        shapes, dtypes = [], []
        for k, stage in enumerate(self.stages):
            window = self.temporal_windows[k]
            if window > 1:
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
        self._layout = StateLayout(tuple(self.temporal_windows), tuple(input_shape[2:]),
                                   keras.config.floatx(), tuple(shapes), tuple(dtypes))
        if self.stateful and self._buffers is None:
            self._buffers = StreamBuffers(self._layout)
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
        devices = placement.loadable_devices(config.get("stage_devices"), len(config["stages"]))
        config["stage_devices"] = devices
        # A serialized stage carries its build config, so deserializing it creates its
        # variables: do it on the stage's device, or a reloaded model loses its placement.
        stages = []
        for k, stage in enumerate(config["stages"]):
            with placement.stage_device(devices, k):
                stages.append(
                    keras.saving.deserialize_keras_object(stage, custom_objects=custom_objects)
                )
        config["stages"] = stages
        return cls(**config)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        super().compile(*args, **kwargs)
        if self.stage_devices is not None and self.optimizer is not None:
            placement.place_slots_with_variables(self.optimizer)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        # Keras skips compiling a model whose `compile` is overridden when loading it; this is
        # Keras' own `compile_from_config`, right for ours (our `compile` only adds placement).
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # ------------------------------------------------------------------ exact forward

    def call(self, clips: Any, training: bool | None = None) -> tf.Tensor:
        """The exact synchronous forward: every frame through every stage, frames batched."""
        outputs = self.sequence_forward(clips, training=training)
        if self.pool == "mean":
            return tf.reduce_mean(outputs, axis=1)
        return outputs

    def sequence_forward(self, clips: Any, training: bool | None = None) -> tf.Tensor:
        """Per-frame top outputs (B, T, …) of the exact forward (`call` before pooling)."""
        return exact.sequence_forward(self.stages, self.temporal_windows, self._device,
                                      tf.convert_to_tensor(clips), training)

    # ------------------------------------------------------------------ training

    def tick_plan(self, num_frames: int | None, apply_within: bool = False) -> LoopPlan:
        """How a Sideways step over ``num_frames`` ticks runs (None: T unknown at tracing)."""
        return self.tick_loop.plan(
            self.stages, num_frames, tick_chunk=self.tick_chunk,
            placed=self.stage_devices is not None, stateful=self.stateful,
            update_every=self.update_every, apply_within=apply_within,
            input_elements=None if self._layout is None else self._layout.input_elements())

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
        arguments.check_mode(mode, " or None")
        clips, targets, sample_weight = self._prepare_batch(clips, targets, sample_weight, mode)
        result = steps.run_pass(self, mode, clips, targets, sample_weight, loss_scale=1.0)
        if return_details:
            details = {key: result[key] for key in ("loss", "tick_losses", "contributions")}
            return result["gradients"], details
        return result["gradients"]

    def train_step(self, data: Any) -> dict[str, Any]:
        clips, targets, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        clips, targets, sample_weight = self._prepare_batch(
            clips, targets, sample_weight, self.mode
        )
        arguments.check_update_every_replicas(self.update_every, self.mode, num_replicas())
        apply_within = self.mode == "sideways" and self.update_every is not None
        result = steps.run_pass(self, self.mode, clips, targets, sample_weight,
                                loss_scale=self.optimizer.scale_loss(tf.constant(1.0)),
                                update_metrics=True, apply_within=apply_within)
        loss = result["loss"]
        if not apply_within:
            finite = steps.all_finite(result["gradients"])
            steps.apply_if_any(self, result["gradients"], result["contributions"],
                               may_be_empty=self.stateful and self.mode == "sideways",
                               finite=finite)
            loss = steps.loss_to_log(self, loss, finite)
        # Weighted by batch size like Keras' own step. Validity, not the value, decides what is
        # logged: a stateful chunk still filling the pipeline has no top output that belongs to a
        # frame and reports nothing; a NaN or infinite loss is logged as it is.
        has_loss = result["contributions"][-1] > 0
        self._loss_tracker.update_state(
            tf.where(has_loss, loss, 0.0),
            sample_weight=tf.cast(tf.shape(clips)[0], "float32") * tf.cast(has_loss, "float32"),
        )
        return self.get_metrics_result()

    def test_step(self, data: Any) -> dict[str, Any]:
        """The training objective on the exact forward, so that ``val_loss`` compares with
        ``loss`` (see `keras_sideways.steps.evaluation_step`)."""
        clips, targets, sample_weight = self._check_batch(
            *keras.utils.unpack_x_y_sample_weight(data))
        return steps.evaluation_step(self, clips, targets, sample_weight)

    # ------------------------------------------------------------------ streaming inference

    def stream_init(self, batch_size: Any) -> dict[str, tf.Tensor]:
        """The state of an empty streaming pipeline for ``batch_size`` streams.

        Keys: ``tick`` (int32 scalar), ``activation_<k>`` (stage k's last output, k < K-1) and
        ``history_<k>`` (the older part of a windowed stage's window). Feed it to `stream_step`.
        """
        layout = self.state_layout
        frame_target = tf.zeros([batch_size])
        return layout.to_stream(layout.fresh(batch_size, frame_target, frame_target))

    def stream_step(self, frame: Any, state: dict[str, Any]) -> dict[str, tf.Tensor]:
        """One tick of the pipelined forward (inference): every stage advances by one frame.

        Returns ``output`` (the top stage's output at this tick), ``valid`` (true once the
        pipeline is full: the output then belongs to frame ``tick - (K-1)``) and the next state
        under the keys `stream_init` returns. Outputs equal the per-frame outputs of `predict`,
        delayed by K-1 ticks.
        """
        layout = self.state_layout
        pipeline = layout.from_stream(state)
        output, following = stream_tick(self.stages, self.temporal_windows, self._device,
                                        pipeline, tf.convert_to_tensor(frame))
        result = layout.to_stream(following)
        result["output"] = output
        result["valid"] = schedule.output_valid(self.num_stages, pipeline.tick)
        return result

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"{what} needs a built model: call the model on a batch of clips, or "
                "`model.build((None, T) + frame_shape)`, first."
            )

    def export(self, filepath: Any, format: str = "tf_saved_model", verbose: Any = None,
               input_signature: Any = None, **kwargs: Any) -> None:
        """A SavedModel with ``serving_default``, ``stream_init`` and ``stream_step``; Keras'
        ``input_signature`` sets the served clips (`keras_sideways.export.export_saved_model`)."""
        from keras_sideways.export import export_saved_model

        export_saved_model(self, filepath, format, verbose, input_signature, **kwargs)

    def reset_buffers(self) -> None:
        """Start new streams: the pipeline of a stateful model refills from the next batch,
        which may have another batch size (as for a new or reloaded model)."""
        if not self.stateful:
            raise ValueError(
                "reset_buffers() applies to stateful models only; this model was built with "
                "stateful=False, whose buffers start empty at every train_step."
            )
        if self._buffers is not None:
            self._buffers.reset()
        if self._stream_batch_size is not None:
            self._stream_batch_size = None
            # Traced for the old size; a retrace for another would relax the batch to unknown.
            self.train_function = None

    # ------------------------------------------------------------------ internals

    def _prepare_batch(
        self, clips: Any, targets: Any, sample_weight: Any, mode: str
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """Validate a training batch and build everything the step needs, outside any loop."""
        clips, targets, sample_weight = self._check_batch(clips, targets, sample_weight)
        if mode == "sideways" and not self.stateful:
            arguments.check_clip_length(self.num_stages, clips)
        if self.stateful and mode == "sideways":
            self._stream_batch_size, clips = arguments.check_stream_batch(
                self._stream_batch_size, clips)
        return clips, targets, sample_weight

    def _check_batch(self, clips: Any, targets: Any,
                     sample_weight: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """Validate a batch, build the model and the compiled loss and metrics: what training
        and evaluation both need."""
        clips, targets, sample_weight = arguments.convert_batch(clips, targets, sample_weight)
        if getattr(self, "_compile_loss", None) is None:
            raise ValueError("Compile the model with a `loss` before training or evaluating it.")
        if not self.built:
            self.build(clips.shape)
        arguments.check_targets(self.pool, self._layout.output_shapes[-1], clips, targets,
                                sample_weight)
        if not self._compile_built():
            # Keras defers building the compiled loss, metrics and optimizer to the first trace
            # of the train function; they must exist before the tick loop (no variable may be
            # created inside a while loop), so build them here, as `fit` does under a strategy.
            self._symbolic_build(data_batch=(
                clips, targets, arguments.weights_for_build(self.pool, sample_weight)))
        return clips, targets, sample_weight

    def _compile_built(self) -> bool:
        parts = (self._compile_loss, self._compile_metrics)
        built = all(part is None or part.built for part in parts)
        return built and (self.optimizer is None or self.optimizer.built)

    def _frame_loss(self, targets: Any, outputs: tf.Tensor, sample_weight: Any) -> tf.Tensor:
        # The compiled loss (`CompileLoss`) is what Keras' own `compute_loss` uses; it already
        # scales by 1/num_replicas under a tf.distribute strategy, so replica gradients sum to the
        # global mean. `compute_loss` itself would add `model.losses` on every tick.
        return tf.cast(self._compile_loss(targets, outputs, sample_weight), tf.float32)

    def _additional_loss(self) -> tf.Tensor:
        """`model.losses` (regularisers, and in backprop mode `add_loss`) summed, float32."""
        losses = [self._aggregate_additional_loss(loss) for loss in self.losses]
        return tf.cast(tf.add_n(losses), tf.float32) if losses else tf.constant(0.0)
