"""keras-sideways: Sideways depth-parallel training of video models for Keras 3."""

__version__ = "0.1.0"
