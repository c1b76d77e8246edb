"""The tensorflow-io probe reports the real reasons on the machine running the tests.

Nothing is mocked: the expectations are derived from what is actually installed here, so the
same test is right on a machine without tensorflow-io (the default install), with it installed
next to a newer TensorFlow, and with or without system FFmpeg 4.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os

import pytest
import tensorflow as tf

from keras_sideways.data import (
    TfioUnavailableError,
    tfio_decoder_status,
    video_dataset_from_directory,
)


def _loadable(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
        return True
    except OSError:
        return False


def _tf_minor() -> str:
    return ".".join(tf.__version__.split(".")[:2])


def test_probe_states_the_real_reasons_here():
    status = tfio_decoder_status()
    assert status.tensorflow_version == tf.__version__
    installed = importlib.util.find_spec("tensorflow_io") is not None
    if not installed:
        assert not status.available
        assert status.tfio_version is None
        assert any("tensorflow_io is not installed" in r for r in status.reasons)
        assert f"TensorFlow {tf.__version__}" in status.message
    else:
        assert status.tfio_version == importlib.metadata.version("tensorflow-io")
        if status.tfio_built_for and status.tfio_built_for != _tf_minor():
            assert not status.available
            assert any(
                f"built for TensorFlow {status.tfio_built_for}" in r and tf.__version__ in r
                for r in status.reasons
            )
    if not (_loadable("libavformat.so.58") and _loadable("libswscale.so.5")) and not (
        _loadable("libavformat.so.57")
    ):
        assert not status.available
        assert any("libavformat.so.58" in r for r in status.reasons)
    if not status.available:
        assert 'decoder="pyav"' in status.message
        assert "python -m keras_sideways.data.ffmpeg4 DIR" in status.message  # the recipe
        for reason in status.reasons:
            assert reason in status.message
    else:
        # What tensorflow-io's FFmpeg ops really bound to: FFmpeg 4 files mapped in this process.
        assert status.ffmpeg_found in status.ffmpeg_libraries
        assert ".so.58" in os.path.basename(status.ffmpeg_found)
        assert all(os.path.isfile(path) for path in status.ffmpeg_libraries)
        assert any("libswscale" in path for path in status.ffmpeg_libraries)


def test_tfio_decoder_raises_why_or_works(three_class_dir):
    status = tfio_decoder_status()
    if status.available:
        ds = video_dataset_from_directory(three_class_dir, decoder="tfio", num_frames=2)
        assert ds.decoder == "tfio"
        return
    with pytest.raises(TfioUnavailableError) as info:
        video_dataset_from_directory(three_class_dir, decoder="tfio")
    assert str(info.value) == status.message
    assert 'decoder="pyav"' in str(info.value)


def test_auto_falls_back_to_pyav_and_logs_why(three_class_dir, caplog):
    status = tfio_decoder_status()
    with caplog.at_level(logging.INFO, logger="keras_sideways.data"):
        ds = video_dataset_from_directory(three_class_dir, decoder="auto", num_frames=2)
    messages = [r.getMessage() for r in caplog.records]
    if status.available:
        assert ds.decoder == "tfio"
    else:
        assert ds.decoder == "pyav"
        assert any("using PyAV" in m and status.reasons[0] in m for m in messages)


def test_unknown_decoder_is_rejected(three_class_dir):
    with pytest.raises(ValueError, match="decoder must be one of"):
        video_dataset_from_directory(three_class_dir, decoder="opencv")
