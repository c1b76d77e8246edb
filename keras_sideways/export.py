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


def export_saved_model(model: Any, filepath: str | Path, verbose: Any = None) -> None:
    """Export a built `SidewaysModel` to ``filepath`` (a SavedModel directory)."""
    if not model.built:
        raise ValueError(
            "Export needs a built model: call it on a batch of clips (or fit it) first."
        )
    frame_shape = tuple(model.state_layout.frame_shape)
    dtype = keras.config.floatx()
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
        input_signature=[tf.TensorSpec((None, None) + frame_shape, dtype, name="clips")],
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
