"""Clip-level metrics: scores of the pooled clip outputs (what `predict` returns), per clip.

`SidewaysModel` trains and evaluates per frame (``loss``/``val_loss`` and ``metrics`` score every
frame's output against its target), while a video classifier is usually judged per clip, on the
mean of its frame outputs. ``compile(clip_metrics=[...])`` adds those clip scores to `evaluate`
(and so to `fit`'s validation logs) under a ``clip_`` prefix: ``clip_accuracy``,
``val_clip_accuracy``. `ClipMetricsMixin` adds the argument to a model's `compile`; the model's
`test_step` updates them (`keras_sideways.steps.evaluation_step`).
"""

from __future__ import annotations

from typing import Any

# Keras' own container for compiled metrics: it resolves "accuracy" and friends from the target
# and output shapes exactly as `compile(metrics=...)` does.
from keras.src.trainers.compile_utils import CompileMetrics
from keras.src.utils import tracking

PREFIX = "clip_"


class ClipMetrics(CompileMetrics):
    """`compile(metrics=...)`'s container for clip-level metrics, reporting ``clip_<name>``.

    Updated only by `SidewaysModel.test_step` (evaluation runs the exact forward, which has every
    clip's pooled output); training has no pooled output, so training logs do not carry these.
    Kept out of `model.metrics`: their inner metrics' names would shadow the per-frame ones.

    Args:
        metrics: as `compile`'s ``metrics`` (names, functions or `keras.metrics.Metric`s).
    """

    def __init__(self, metrics: Any, name: str = "clip_metrics"):
        super().__init__(metrics, None, name=name)

    def result(self) -> dict[str, Any]:
        if not self.built:
            return {}  # not evaluated yet: nothing to report
        return {PREFIX + key: value for key, value in super().result().items()}


class ClipMetricsMixin:
    """Mix into a `keras.Model` subclass (before `keras.Model`) for ``compile(clip_metrics=...)``.

    ``clip_metrics`` (a list as for ``metrics``; models with ``pool="mean"``) score the pooled
    clip outputs that `predict` returns against the per-clip targets, in `evaluate` only.
    """

    _clip_metrics: ClipMetrics | None = None

    # As in Keras' `compile`: compiled metrics are neither tracked (a model being loaded is
    # built and could not add them) nor saved.
    @tracking.no_automatic_dependency_tracking
    def compile(self, *args: Any, clip_metrics: Any = None, **kwargs: Any) -> None:
        super().compile(*args, **kwargs)
        self._clip_metrics = compiled_clip_metrics(self, clip_metrics)

    def reset_metrics(self) -> None:
        super().reset_metrics()
        if self._clip_metrics is not None:
            self._clip_metrics.reset_state()


def compiled_clip_metrics(model: Any, clip_metrics: Any) -> ClipMetrics | None:
    """The container for ``compile(clip_metrics=...)``, recorded in the model's compile config
    (so that a reloaded model reports them too); None when there are none."""
    if not clip_metrics:
        return None
    if model.pool != "mean":
        raise ValueError(
            "`clip_metrics` score the pooled clip outputs of pool='mean'; this model has "
            "pool=None, whose outputs are per frame: use `metrics`."
        )
    model._compile_config.config["clip_metrics"] = clip_metrics
    return ClipMetrics(clip_metrics)
