"""PyAV decoding: decode only the frames a clip needs, named by the file's frame index.

PyAV wheels bundle FFmpeg, so this decoder works on a fresh machine from PyPI alone and reads
whatever FFmpeg reads (mp4, avi, mkv, mov, webm, gif, mpeg-ts, ... with their codecs).

Two steps, the first in :mod:`keras_sideways.data.frame_index` (re-exported here):

- :func:`probe_video` (run once per file when the dataset is built, cached): checks the file
  and builds its *frame index* (:class:`VideoInfo`): frame i is the i-th frame a full
  sequential decode produces, identified by the timestamp the decoder attaches to it.
- :func:`decode_clip` (run per clip): seeks to the last keyframe at or before the clip's first
  frame, decodes forward, identifies each decoded frame by the index (never by counting from
  the seek, never by sorting timestamps), converts (and resizes, in FFmpeg's swscale) only the
  frames the clip uses, and stops as soon as the last one is reached.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from keras_sideways.data.errors import VideoInputError
from keras_sideways.data.frame_index import VideoInfo, probe_video
from keras_sideways.data.pyav_container import check_readable, first_video_stream, open_container
from keras_sideways.data.pyav_seeking import OffIndex, frames_after_seek

__all__ = ["VideoInfo", "check_readable", "decode_clip", "iter_frames", "probe_video"]

# swscale bilinear: the same filter family as tf.image.resize's default, so the folder and
# TFRecord paths give close results when both resize.
_INTERPOLATION = "BILINEAR"
# Each decoding thread's swscale context (see _to_rgb).
_THREAD_STATE = threading.local()


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """One frame as RGB uint8 ``(H, W, 3)``, resized to ``size`` (height, width) when given."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    # One swscale context per thread, kept across frames, clips and files (FFmpeg rebuilds it
    # only when sizes or formats change): ``frame.to_ndarray(width=...)`` builds one per frame,
    # which costs about three times the scaling itself.
    reformatter = getattr(_THREAD_STATE, "reformatter", None)
    if reformatter is None:
        reformatter = _THREAD_STATE.reformatter = VideoReformatter()
    height, width = size
    rgb = reformatter.reformat(
        frame, width=width, height=height, format="rgb24", interpolation=_INTERPOLATION
    )
    return rgb.to_ndarray()


def decode_clip(
    path: str,
    indices: Sequence[int] | np.ndarray,
    image_size: tuple[int, int] | None = None,
    *,
    info: VideoInfo | None = None,
    threads: int = 1,
    stats: dict | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` (frame numbers, repeats allowed) as RGB uint8.

    Args:
        path: the video file.
        indices: frame indices in display order, e.g. from
            :func:`keras_sideways.data.sampling.clip_indices`.
        image_size: ``(height, width)`` to resize every frame to (swscale bilinear), or
            ``None`` for the size of the first decoded frame.
        info: the file's :func:`probe_video` result; probed here when not given.
        threads: FFmpeg decoder threads for this file. 1 by default because the dataset already
            decodes several files in parallel, one per core.
        stats: if a dict is given, it receives ``"method"`` (``"seek"`` or ``"sequential"``)
            and ``"decoded_frames"`` (frames the decoder produced for this clip).

    Returns:
        ``uint8`` array ``(len(indices), H, W, 3)``.

    Raises:
        VideoInputError: naming the file, when it cannot be decoded, when an index is past its
            frame count, or when it holds fewer frames than the probe counted (e.g. it changed
            on disk after the dataset was built).
    """
    path = os.fspath(path)
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        raise ValueError("indices must not be empty")
    if wanted[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
    if info is None:
        info = probe_video(path)
    check_readable(path)
    if wanted[-1] >= info.num_frames:
        raise VideoInputError(
            path, f"frame {wanted[-1]} was asked for, but the file has {info.num_frames} frame(s)"
        )
    counter = {"decoded_frames": 0}
    try:
        frames = None
        with open_container(path) as container:
            stream = first_video_stream(container, path)
            stream.codec_context.thread_count = threads
            for point, seek_by in _seek_attempts(info, wanted[0]):
                counter["method"] = "seek"
                frames = _collect(
                    frames_after_seek(
                        container, stream, point, seek_by, info.lookup, counter, wanted[0]
                    ),
                    wanted,
                    image_size,
                )
                if frames is not None:
                    break
        if frames is None:
            counter["method"] = "sequential"
            frames = _decode_sequential(path, wanted, image_size, threads, counter)
        if stats is not None:
            stats.update(counter)
    except av.FFmpegError as e:
        raise VideoInputError(path, f"decoding failed ({e})") from None
    if image_size is None:
        # A stream may change resolution mid-way; pin every frame to the first one's size.
        first = frames[wanted[0]]
        size = first.shape[:2]
        for i, f in frames.items():
            if f.shape[:2] != size:
                raise VideoInputError(
                    path,
                    f"frame {i} is {f.shape[1]}x{f.shape[0]}, frame {wanted[0]} is "
                    f"{size[1]}x{size[0]}; pass image_size to resize",
                )
    return np.stack([frames[int(i)] for i in indices])


def _seek_attempts(info: VideoInfo, first: int) -> list[tuple[tuple[int, int, int], str]]:
    """Where to start decoding for a clip from frame ``first``: the keyframe at or before it
    (seeking the way the probe found to work, then the other way), then the one before."""
    points = [p for p in info.seek_points if p[0] <= first][-2:]
    other = "dts" if info.seek_by == "pts" else "pts"
    attempts = [(points[-1], info.seek_by), (points[-1], other)] if points else []
    return attempts + [(p, info.seek_by) for p in points[:-1]]


def _collect(
    frames: Iterator[tuple[int, av.VideoFrame]],
    wanted: list[int],
    image_size: tuple[int, int] | None,
) -> dict[int, np.ndarray] | None:
    """The wanted frames as RGB, stopping at the last one; ``None`` if the index is off."""
    want = set(wanted)
    out: dict[int, np.ndarray] = {}
    try:
        for i, frame in frames:
            if i in want:
                out[i] = _to_rgb(frame, image_size)
                if len(out) == len(want):
                    return out
            if i > wanted[-1]:
                return None
    except OffIndex:
        return None
    return None


def _decode_sequential(
    path: str,
    wanted: list[int],
    image_size: tuple[int, int] | None,
    threads: int,
    counter: dict,
) -> dict[int, np.ndarray]:
    """Decode from the start, counting frames; stop after the last wanted frame."""
    want = set(wanted)
    last = wanted[-1]
    out: dict[int, np.ndarray] = {}
    count = 0
    with open_container(path) as container:
        stream = first_video_stream(container, path)
        stream.codec_context.thread_count = threads
        for count, frame in enumerate(container.decode(stream), start=1):
            counter["decoded_frames"] += 1
            index = count - 1
            if index in want:
                out[index] = _to_rgb(frame, image_size)
            if index >= last:
                break
    if len(out) != len(wanted):
        raise VideoInputError(
            path,
            f"stream ended after {count} frame(s) but frame {last} was needed "
            "(file truncated or changed since the dataset was built?)",
        )
    return out


def iter_frames(
    path: str, image_size: tuple[int, int] | None = None, *, threads: int = 0
) -> Iterator[np.ndarray]:
    """Every frame of ``path`` in presentation order, RGB uint8 ``(H, W, 3)``.

    Args:
        path: the video file.
        image_size: ``(height, width)`` to resize to; ``None`` keeps the first frame's size
            (later frames of a stream that changes resolution are resized to it).
        threads: FFmpeg decoder threads (0: FFmpeg picks).

    Raises:
        VideoInputError: naming the file when it cannot be decoded.
    """
    path = os.fspath(path)
    check_readable(path)
    size = image_size
    try:
        with open_container(path) as container:
            stream = first_video_stream(container, path)
            stream.codec_context.thread_count = threads
            for frame in container.decode(stream):
                if size is None:
                    size = (frame.height, frame.width)
                yield _to_rgb(frame, size)
    except av.FFmpegError as e:
        raise VideoInputError(path, f"decoding failed ({e})") from None
