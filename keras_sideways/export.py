"""SavedModel export: clip serving plus explicit-state streaming signatures.

The SavedModel needs nothing from this library to load: plain `tf.saved_model.load`, TF Serving
and `saved_model_cli` see three signatures.

- ``serving_default(clips)`` -> ``{"output": …}``: what `predict` returns (pooled per clip with
  ``pool="mean"``, per frame with ``pool=None``).
- ``stream_init(batch_size)`` -> the state tensors of an empty pipeline.
- ``stream_step(frame, <state>)`` -> ``{"output", "valid", <next state>}``: one tick of the
  pipelined forward; the state keys are those ``stream_init`` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import tensorflow as tf


def export_saved_model(model: Any, filepath: str | Path, format: str = "tf_saved_model",
                       verbose: Any = None, input_signature: Any = None, **kwargs: Any) -> None:
    """Export a built `SidewaysModel` to ``filepath`` (a SavedModel directory).

    ``input_signature``: as Keras' `export`, the clips `serving_default` takes (a
    `tf.TensorSpec`, `keras.InputSpec`, `keras.KerasTensor` or tensor, or a list of one),
    shaped ``(batch, frames) + frame_shape``; default: any batch, any T, the model's frames.
    ``format`` is ``"tf_saved_model"`` only; Keras' other keyword arguments apply to other
    formats or backends and are refused by name.
    """
    if format != "tf_saved_model":
        raise ValueError(
            f"SidewaysModel.export supports format='tf_saved_model' only, got {format!r}."
        )
    if kwargs:
        raise TypeError(
            f"SidewaysModel.export got unsupported keyword arguments {sorted(kwargs)}: it "
            "takes filepath, format='tf_saved_model', verbose and input_signature (Keras' "
            "`is_static` and `jax2tf_kwargs` are for the JAX backend, the others for other "
            "formats)."
        )
    if not model.built:
        raise ValueError(
            "Export needs a built model: call it on a batch of clips (or fit it) first."
        )
    clips_spec = _clips_spec(model, input_signature)
    frame_shape = tuple(clips_spec.shape[2:])
    dtype = clips_spec.dtype
    state_spec = {
        key: tf.TensorSpec([None] * 0 if key == "tick" else [None] + list(value.shape[1:]),
                           value.dtype, name=key)
        for key, value in model.stream_init(1).items()
    }

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(clips: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"output": model(clips, training=False)}

    def stream_init(batch_size: tf.Tensor) -> dict[str, tf.Tensor]:
        return model.stream_init(batch_size)

    def stream_step(frame: tf.Tensor, **state: tf.Tensor) -> dict[str, tf.Tensor]:
        return model.stream_step(frame, state)

    archive.add_endpoint(
        "serving_default", serve,
        input_signature=[clips_spec],
    )
    archive.add_endpoint(
        "stream_init", stream_init,
        input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")],
    )
    # Keyword state inputs, so that the signature's input names are the state keys.
    step = tf.function(stream_step)
    step.get_concrete_function(tf.TensorSpec((None,) + frame_shape, dtype, name="frame"),
                               **state_spec)
    archive.add_endpoint("stream_step", step)
    archive.write_out(str(filepath), verbose=bool(verbose))


def _clips_spec(model: Any, input_signature: Any) -> tf.TensorSpec:
    """The `serving_default` clips spec: ``input_signature`` checked against the model."""
    frame_shape = tuple(model.state_layout.frame_shape)
    if input_signature is None:
        return tf.TensorSpec((None, None) + frame_shape, keras.config.floatx(), name="clips")
    spec = input_signature
    if isinstance(spec, (list, tuple)) and len(spec) == 1:
        spec = spec[0]
    if not hasattr(spec, "shape") or not hasattr(spec, "dtype"):
        raise TypeError(
            "`input_signature` must be one spec of the clips (a tf.TensorSpec, keras.InputSpec, "
            f"keras.KerasTensor or tensor, or a list of one), got {input_signature!r}."
        )
    shape = tf.TensorShape(spec.shape)
    expected = tf.TensorShape((None, None) + frame_shape)
    if not shape.is_compatible_with(expected):
        raise ValueError(
            f"`input_signature` has shape {shape}, but this model takes clips shaped (batch, "
            f"frames) + {frame_shape}."
        )
    dtype = tf.as_dtype(spec.dtype or keras.config.floatx())  # a keras.InputSpec may omit it
    if not dtype.is_floating:
        raise ValueError(f"`input_signature` must have a floating dtype, got {dtype.name}.")
    return tf.TensorSpec(shape, dtype, name="clips")
