"""The decode step of the folder pipeline: which decoder runs, and its decode functions.

:func:`resolve_decoder` turns the ``decoder`` argument (and the ``KERAS_SIDEWAYS_DECODER``
environment variable) into ``"pyav"`` or ``"tfio"``; :func:`make_decode_steps` gives that
decoder's functions for one subset: per clip, per batch of clips (PyAV only) and per whole
video (for ``cache=True``). tensorflow-io's own are in :mod:`keras_sideways.data.tfio_decoder`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_sideways.data.frame_index import VideoInfo
from keras_sideways.data.pyav_decoder import decode_clip
from keras_sideways.data.tfio_decoder import (
    TfioUnavailableError,
    make_tfio_decoders,
    tfio_decoder_status,
)

logger = logging.getLogger("keras_sideways.data")

DECODERS = ("auto", "pyav", "tfio")
DECODER_VARIABLE = "KERAS_SIDEWAYS_DECODER"


def resolve_decoder(decoder: str) -> str:
    """Map ``"auto"``/``"pyav"``/``"tfio"`` to the decoder that will run, or raise why not.

    ``"auto"`` follows the ``KERAS_SIDEWAYS_DECODER`` environment variable when it is set
    (``"pyav"`` or ``"tfio"``: one decoder for a whole run without changing code; CI's tfio job
    forces tfio this way), and otherwise picks tensorflow-io when its probe passes and PyAV when
    not. It logs (INFO on the ``keras_sideways.data`` logger) which one it chose and why.

    Raises:
        TfioUnavailableError: for ``"tfio"`` (asked for, or set by the variable) when
            tensorflow-io cannot decode video here; the message lists every reason.
        ValueError: for an unknown decoder name, or variable value.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    forced = os.environ.get(DECODER_VARIABLE, "").strip()
    if decoder == "auto" and forced:
        if forced not in ("pyav", "tfio"):
            raise ValueError(f'{DECODER_VARIABLE} must be "pyav" or "tfio", got {forced!r}')
        logger.info('decoder="auto": using %s (%s=%s)', forced, DECODER_VARIABLE, forced)
        decoder = forced
    if decoder == "pyav":
        return "pyav"
    status = tfio_decoder_status()
    if decoder == "tfio":
        if not status.available:
            raise TfioUnavailableError(status.message)
        return "tfio"
    if status.available:
        logger.info(
            'decoder="auto": using tensorflow-io %s (FFmpeg %s)',
            status.tfio_version,
            ", ".join(status.ffmpeg_libraries),
        )
        return "tfio"
    logger.info(
        'decoder="auto": using PyAV (tensorflow-io unavailable: %s)', "; ".join(status.reasons)
    )
    return "pyav"


def make_pyav_decode_fn(
    infos: dict[str, VideoInfo],
    image_size: tuple[int, int],
    num_frames: int,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The decode step for PyAV: ``(path, indices) -> uint8 (num_frames, H, W, 3)``.

    Runs :func:`decode_clip` through ``tf.numpy_function`` (it takes NumPy values directly:
    less work per clip than ``tf.py_function``'s eager tensors, measured in
    ``benchmarks/decoders.py``). A failure raises (never ends iteration quietly): TensorFlow
    re-raises it from the iterator with the file's name in the message.
    """

    def decode(path: bytes, indices: np.ndarray) -> np.ndarray:
        p = path.decode()
        return decode_clip(p, indices, image_size, info=infos.get(p))

    def fn(path: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        frames = tf.numpy_function(decode, [path, indices], Tout=tf.uint8)
        frames.set_shape((num_frames, image_size[0], image_size[1], 3))
        return frames

    return fn


# Decoding threads by worker count, shared by every dataset of the process rather than one pool
# per dataset.
_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def make_pyav_batch_decode_fn(
    infos: dict[str, VideoInfo],
    image_size: tuple[int, int],
    num_frames: int,
    workers: int,
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """The decode step for a batch: ``(paths (B,), indices (B, T)) -> uint8 (B, T, H, W, 3)``.

    tf.data runs Python ops one at a time (measured in ``benchmarks/decoders.py``: a second
    parallel ``tf.numpy_function`` call gains nothing), so the clips of a batch are decoded in
    one call, by ``workers`` threads (PyAV releases the GIL while decoding). Results keep the
    batch's order.
    """
    workers = max(1, workers if workers > 0 else os.cpu_count() or 1)
    if workers not in _POOLS:
        _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="keras_sideways_decode"
        )
    pool = _POOLS[workers]

    def decode(paths: np.ndarray, indices: np.ndarray) -> np.ndarray:
        def one(k: int) -> np.ndarray:
            p = paths[k].decode()
            return decode_clip(p, indices[k], image_size, info=infos.get(p))

        if workers == 1 or len(paths) == 1:
            return np.stack([one(k) for k in range(len(paths))])
        return np.stack(list(pool.map(one, range(len(paths)))))

    def fn(paths: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        frames = tf.numpy_function(decode, [paths, indices], Tout=tf.uint8)
        frames.set_shape((None, num_frames, image_size[0], image_size[1], 3))
        return frames

    return fn


def make_pyav_video_fn(
    infos: dict[str, VideoInfo], image_size: tuple[int, int]
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Decode a whole video with PyAV: ``(path, num_frames) -> uint8 (num_frames, H, W, 3)``."""

    def decode(path: tf.Tensor, video_frames: tf.Tensor) -> np.ndarray:
        p = path.numpy().decode()
        indices = np.arange(int(video_frames.numpy()), dtype=np.int64)
        return decode_clip(p, indices, image_size, info=infos.get(p))

    def fn(path: tf.Tensor, video_frames: tf.Tensor) -> tf.Tensor:
        frames = tf.py_function(decode, [path, video_frames], Tout=tf.uint8)
        frames.set_shape((None, image_size[0], image_size[1], 3))
        return frames

    return fn


class DecodeSteps(NamedTuple):
    """One subset's decode functions; ``batch`` and ``video`` are ``None`` where not used."""

    clip: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    batch: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None
    video: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None


def make_decode_steps(
    decoder: str,
    infos: dict[str, VideoInfo],
    image_size: tuple[int, int],
    num_frames: int,
    num_parallel_calls: int,
    cache: bool,
) -> DecodeSteps:
    """The decode functions of ``decoder`` (``"pyav"`` or ``"tfio"``, as resolved) for files
    probed into ``infos``: per clip always, per batch for PyAV, per whole video with ``cache``."""
    if decoder == "tfio":
        clip_fn, video_fn = make_tfio_decoders(image_size, num_frames)
        return DecodeSteps(clip_fn, None, video_fn if cache else None)
    return DecodeSteps(
        make_pyav_decode_fn(infos, image_size, num_frames),
        make_pyav_batch_decode_fn(infos, image_size, num_frames, num_parallel_calls),
        make_pyav_video_fn(infos, image_size) if cache else None,
    )
