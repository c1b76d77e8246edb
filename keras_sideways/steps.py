"""The model's side of one training step: `keras_sideways.pipeline` wired to a compiled model.

`run_pass` computes a step's gradients and details in either mode; `SidewaysModel.train_step`
and `compute_gradients` call it, then apply (`apply_if_any`) or return. `evaluation_step` is
`test_step`'s. What the model
contributes to the recurrence (its compiled loss, metrics, in-loop optimizer updates, the stateful
buffers) is plugged in here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_sideways.pipeline import exact, loop, skewed
from keras_sideways.pipeline import gradients as bookkeeping
from keras_sideways.pipeline import losses as step_losses
from keras_sideways.pipeline.tensors import merge_time, num_replicas

# `TickLoop.schedule` -> the function that runs a Sideways step's ticks (`loop.run_step`'s
# signature). A second schedule adds its runner here.
SCHEDULE_RUNNERS = {"chunked": loop.run_step, "skewed": skewed.run_skewed_step}


def metrics_update(model: Any, update_metrics: bool, ticks: bool) -> Any:
    """The metric update hook (None: metrics untouched); ``ticks``: inputs are (B, n, …)."""
    if not update_metrics or model._compile_metrics is None:
        return None

    def update(targets: Any, outputs: tf.Tensor, weights: Any) -> list:
        if ticks:
            targets, outputs = merge_time(targets), merge_time(outputs)
            weights = None if weights is None else merge_time(weights)
        model._compile_metrics.update_state(targets, outputs, weights)
        return [v.value for v in model._compile_metrics.variables]

    return update


def run_pass(model: Any, mode: str, clips: tf.Tensor, targets: tf.Tensor, sample_weight: Any, *,
             loss_scale: Any, update_metrics: bool = False,
             apply_within: bool = False) -> dict[str, Any]:
    """One step's ``gradients``, ``loss``, ``tick_losses`` and ``contributions`` in ``mode``."""
    if mode == "backprop":
        return exact.backprop_gradients(
            lambda c: model.sequence_forward(c, training=True), model._frame_loss,
            model._additional_loss, list(model.trainable_variables), clips, targets,
            sample_weight, per_clip=model.pool == "mean", num_stages=model.num_stages,
            loss_scale=loss_scale, update_metrics=metrics_update(model, update_metrics, False))
    return sideways_pass(model, clips, targets, sample_weight, loss_scale, update_metrics,
                         apply_within)


def sideways_pass(model: Any, clips: tf.Tensor, targets: tf.Tensor, sample_weight: Any,
                  loss_scale: Any, update_metrics: bool, apply_within: bool) -> dict[str, Any]:
    """The Sideways step (`pipeline.loop.run_step`) with the model's loss, metrics and optimizer
    as hooks, from and to the stateless or stateful pipeline state."""
    variables = list(model.trainable_variables)
    positions = bookkeeping.stage_variable_positions(model.stages, variables)

    def regularization() -> tuple[Any, list]:
        return step_losses.regularization(model._additional_loss, variables, loss_scale)

    def regularized(accumulators: list, counts: tf.Tensor, added: list) -> list:
        means = bookkeeping.to_model_order(
            bookkeeping.stage_means(accumulators, counts), positions, variables)
        return [m + r for m, r in zip(means, added, strict=True)]

    def apply_means(accumulators: list, counts: tf.Tensor) -> tuple[list, tf.Tensor]:
        apply_if_any(model, regularized(accumulators, counts, regularization()[1]), counts,
                     may_be_empty=True)
        return tf.nest.map_structure(tf.zeros_like, accumulators), tf.zeros_like(counts)

    hooks = loop.StepHooks(
        tick_losses=lambda *batch: step_losses.tick_losses(model._frame_loss, *batch),
        update_metrics=metrics_update(model, update_metrics, True),
        apply_means=apply_means if apply_within else None,
        before_top=lambda: check_no_call_losses(model), loss_scale=loss_scale,
        replicas=num_replicas())
    per_clip = model.pool == "mean"
    frames = loop.Frames(clips, targets, sample_weight, per_clip,
                         carry_targets=model.stateful or not per_clip)
    # The plan's schedule, not the requested one: the policy may fall back (and says so).
    plan = model.tick_plan(clips.shape[1], apply_within)
    state, totals = SCHEDULE_RUNNERS[plan.schedule](
        model.stages, model.temporal_windows, model._device,
        bookkeeping.per_stage(variables, positions), initial_state(model, frames), frames,
        plan, hooks, stateful=model.stateful, update_every=model.update_every)
    if model.stateful:
        model._buffers.save(state)
    regularization_value, added = regularization()
    if apply_within:
        gradients = [tf.zeros(v.shape, v.dtype) for v in variables]
    else:
        gradients = regularized(totals.accumulators, totals.counts, added)
    mean_loss = tf.where(totals.loss_count > 0,
                         totals.loss_sum / tf.maximum(totals.loss_count, 1.0),
                         tf.constant(float("nan")))
    return {"gradients": gradients, "loss": mean_loss + regularization_value,
            "tick_losses": totals.tick_losses.stack(), "contributions": totals.counts}


def evaluation_step(model: Any, clips: tf.Tensor, targets: tf.Tensor,
                    sample_weight: Any) -> dict[str, Any]:
    """`SidewaysModel.test_step`: the training objective on the exact forward.

    The mean per-frame loss over all T frames (what ``mode="backprop"`` trains on) plus
    ``model.losses``, and ``metrics`` on the same per-frame outputs, as in training; the model's
    ``clip_metrics`` on the pooled outputs. Returns the logs. Backprop with a zero learning
    rate so logs ``loss == val_loss`` on the same data, and a Sideways model's ``val_loss`` is
    that number (its training ``loss`` covers the frames that reached the top: T-K+1 of them in
    a stateless clip).
    """
    outputs = model.sequence_forward(clips, training=False)
    frame_targets, frame_weights = exact.per_frame(
        targets, sample_weight, tf.shape(clips)[1], per_clip=model.pool == "mean")
    frame_outputs = merge_time(outputs)
    loss = model._frame_loss(frame_targets, frame_outputs, frame_weights)
    model._loss_tracker.update_state((loss + model._additional_loss()) * num_replicas(),
                                     sample_weight=tf.shape(clips)[0])
    if model._compile_metrics is not None:
        model._compile_metrics.update_state(frame_targets, frame_outputs, frame_weights)
    logs = model.get_metrics_result()
    if model._clip_metrics is not None:
        clip_weights = sample_weight
        if sample_weight is not None and sample_weight.shape.rank == 2:
            clip_weights = tf.reduce_mean(sample_weight, axis=1)  # per-frame weights
        model._clip_metrics.update_state(targets, tf.reduce_mean(outputs, axis=1), clip_weights)
        # Not in `model.metrics` (their names would shadow the per-frame ones): added here.
        logs.update(model._clip_metrics.result())
    return logs


def initial_state(model: Any, frames: loop.Frames) -> Any:
    """The pipeline state a step starts from: empty, or a stateful model's stored streams."""
    clips, targets, sample_weight = frames.clips, frames.targets, frames.weights
    # Static where known: loop variables keep the batch dimension across iterations.
    batch = clips.shape[0] if clips.shape[0] is not None else tf.shape(clips)[0]
    first_target = targets if frames.per_clip else targets[:, 0]
    first_weight = tf.ones([batch], tf.float32) if sample_weight is None else (
        sample_weight if sample_weight.shape.rank == 1 else sample_weight[:, 0])
    state = model.state_layout.fresh(batch, first_target, first_weight)
    return model._buffers.read(state) if model.stateful else state


def apply_if_any(model: Any, gradients: list, counts: tf.Tensor, may_be_empty: bool,
                 finite: Any = None) -> None:
    """Apply an update, skipping it when no stage had a valid contribution or it is not finite.

    Only a stateful chunk still filling the pipeline, or an `update_every` point before the
    first valid cotangent, can be empty. A non-finite update (NaN or infinite, from bad data or
    divergence) is skipped: weights, optimizer slots and `optimizer.iterations` stay as they
    were, as Keras' `LossScaleOptimizer` does with an overflowing step (that optimizer is left
    to decide for itself, since it also lowers its scale). ``finite``: `all_finite` of the
    gradients, if already known. Under a multi-replica strategy every replica skips when any
    replica vetoes (the all-reduced update would not be finite either).
    """
    variables = list(model.trainable_variables)
    checks = [tf.reduce_any(counts > 0)] if may_be_empty else []
    if not scales_loss(model.optimizer):
        checks.append(all_finite(gradients) if finite is None else finite)
    if not checks:
        model.optimizer.apply(gradients, variables)
        return
    should_apply = tf.reduce_all(tf.stack(checks))

    def apply() -> tf.Operation:
        model.optimizer.apply(gradients, variables)
        return tf.no_op()

    context = tf.distribute.get_replica_context()
    if num_replicas() == 1 or context is None:
        tf.cond(should_apply, apply, tf.no_op)
        return
    vetoes = context.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(should_apply), tf.float32))
    # The optimizer's cross-replica sync (merge_call) cannot sit inside a conditional in a
    # replica context: branch in the cross-replica context, as `LossScaleOptimizer` does.

    def branch(strategy: tf.distribute.Strategy, gradients: list, vetoes: Any) -> None:
        def apply_everywhere() -> tf.Operation:
            strategy.extended.call_for_each_replica(
                lambda g: model.optimizer.apply(g, variables), args=(gradients,))
            return tf.no_op()

        # Every replica holds the same all-reduced count: take the first local one.
        vetoed = strategy.experimental_local_results(vetoes)[0] > 0
        tf.cond(vetoed, tf.no_op, apply_everywhere)

    context.merge_call(branch, args=(gradients, vetoes))


def all_finite(gradients: list) -> tf.Tensor:
    """Whether every gradient is finite (no NaN, no infinity): a scalar bool."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])


def scales_loss(optimizer: Any) -> bool:
    """Whether ``optimizer`` is Keras' `LossScaleOptimizer`, which skips non-finite steps itself."""
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def loss_to_log(model: Any, loss: tf.Tensor, finite: tf.Tensor) -> tf.Tensor:
    """The step's loss, NaN where its update was skipped as not finite.

    Even where the frame that made the update non-finite never reached the loss (a NaN in a
    stateless clip's last K-1 frames): the run shows it, and `TerminateOnNaN` stops it. A
    loss-scaling optimizer skips overflowing steps as a matter of course: its loss stays.
    """
    if scales_loss(model.optimizer):
        return loss
    return tf.where(finite, loss, tf.constant(float("nan"), loss.dtype))


def check_no_call_losses(model: Any) -> None:
    """Sideways mode supports weight regularisers only: a loss added during a call is an error."""
    for layer in model._flatten_layers(include_self=False):
        if layer._get_own_losses():
            model._clear_losses()
            raise NotImplementedError(
                f"Layer {layer.name!r} adds a loss during its call (activity regularisation "
                "or add_loss). Sideways mode supports weight regularisers only; remove it or "
                "use mode='backprop'."
            )
