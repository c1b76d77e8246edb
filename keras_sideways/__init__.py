"""keras-sideways: Sideways depth-parallel training of video models for Keras 3."""

from keras_sideways import schedule
from keras_sideways.model import SidewaysModel

__all__ = ["SidewaysModel", "schedule"]
__version__ = "0.1.0"
