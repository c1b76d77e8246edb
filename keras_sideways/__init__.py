"""keras-sideways: Sideways depth-parallel training of video models for Keras 3.

`SidewaysModel` is imported lazily so that the pure-Python parts (`keras_sideways.schedule`)
load without TensorFlow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SidewaysModel"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "SidewaysModel":
        from keras_sideways.model import SidewaysModel

        return SidewaysModel
    raise AttributeError(f"module 'keras_sideways' has no attribute {name!r}")
