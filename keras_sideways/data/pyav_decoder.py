"""PyAV decoding: probe a file once at listing time, then decode only the frames a clip needs.

PyAV wheels bundle FFmpeg, so this decoder works on a fresh machine from PyPI alone and reads
whatever FFmpeg reads (mp4, avi, mkv, mov, webm, gif, mpeg-ts, ... with their codecs).

Two steps live here:

- :func:`probe_video` (run once per file when the dataset is built): checks the file can be
  read, has a video stream and a decodable first frame, and collects the presentation
  timestamps of every video packet by *demuxing* (no decoding). That gives an exact frame count
  and a frame-index -> timestamp table, also for variable-frame-rate files.
- :func:`decode_clip` (run per clip): seeks to the keyframe before the clip's first frame,
  decodes forward, converts (and resizes, in FFmpeg's swscale) only the frames the clip uses,
  and stops as soon as the last one is reached.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np

from keras_sideways.data.errors import VideoInputError

# swscale bilinear: the same filter family as tf.image.resize's default, so the folder and
# TFRecord paths give close results when both resize.
_INTERPOLATION = "BILINEAR"


@dataclass(frozen=True)
class VideoInfo:
    """What the listing-time probe learnt about one video file.

    Attributes:
        path: the file.
        num_frames: frames in the video stream (counted from demuxed packets).
        width: coded width of the first frame.
        height: coded height of the first frame.
        codec: FFmpeg codec name (``"h264"``, ``"mpeg4"``, ...).
        pix_fmt: FFmpeg pixel format of the first frame (``"yuv420p"``, ``"gray"``, ...).
        frame_pts: presentation timestamps in frame order, or ``None`` when the container does
            not give a usable one per packet (then decoding counts frames from the start).
    """

    path: str
    num_frames: int
    width: int
    height: int
    codec: str
    pix_fmt: str
    frame_pts: tuple[int, ...] | None


def check_readable(path: str) -> None:
    """Raise :class:`VideoInputError` when ``path`` is not a readable, non-empty regular file.

    Checked before FFmpeg ever sees the path: opening a FIFO would block forever, and FFmpeg's
    own messages for a directory or a dangling link are vague.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise VideoInputError(
                path, f"unreadable: broken symbolic link (points to {os.readlink(path)!r})"
            ) from None
        raise VideoInputError(path, "unreadable: no such file") from None
    except OSError as e:
        raise VideoInputError(path, f"unreadable: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise VideoInputError(path, "unreadable: is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise VideoInputError(path, f"unreadable: {kind}, not a video file")
    if st.st_size == 0:
        raise VideoInputError(path, "zero-byte file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise VideoInputError(path, f"unreadable: {e.strerror or e}") from None


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, mode="r")
    except av.FFmpegError as e:
        raise VideoInputError(path, f"not a video FFmpeg can read ({e})") from None


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoInputError(
            path, f"no video stream (streams found: {', '.join(kinds)}; audio-only file?)"
        )
    return container.streams.video[0]


def _header_duration(container: av.container.InputContainer) -> float | None:
    """Duration in seconds as written in the file's header, where the format records one.

    Only Matroska/WebM is trusted here: its muxer writes the real duration into the header
    when it finishes, so data ending well before it means the file was cut. Other formats
    either fail to open when cut (mp4/mov/avi keep an index at the end, and list a frame count
    that is checked separately) or have no header duration (FFmpeg estimates one from the data
    it reads, which would agree with a truncated file anyway).
    """
    if "matroska" not in container.format.name or not container.duration:
        return None
    start = (container.start_time or 0) / av.time_base
    return container.duration / av.time_base + start


def probe_video(path: str) -> VideoInfo:
    """Probe one file: readable, has a video stream, first frame decodes; count its frames.

    Raises:
        VideoInputError: naming the file and the reason.
    """
    path = os.fspath(path)
    check_readable(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        pts: list[int | None] = []
        end = 0.0  # seconds: where the last packet of any stream ends
        try:
            # All streams, not only video: an audio track that outlasts the video must not make
            # a complete file look truncated.
            for packet in container.demux():
                # Demuxers emit a final empty packet to flush the decoder: not a frame.
                if packet.size == 0:
                    continue
                if packet.stream.index == stream.index:
                    pts.append(packet.pts)
                if packet.pts is not None and packet.time_base is not None:
                    stop = packet.pts + (packet.duration or 0)
                    end = max(end, float(stop * packet.time_base))
        except av.FFmpegError as e:
            raise VideoInputError(path, f"corrupt: error while reading packets ({e})") from None
        codec = stream.codec_context.name
        declared_frames = stream.frames or 0
        declared_seconds = _header_duration(container)
    finally:
        container.close()
    if not pts:
        raise VideoInputError(path, "video stream has no frames")
    if declared_frames and len(pts) < declared_frames:
        raise VideoInputError(
            path,
            f"truncated or corrupt: the header lists {declared_frames} frames, "
            f"only {len(pts)} are present",
        )
    if declared_seconds and declared_seconds - end > max(0.5, 0.02 * declared_seconds):
        raise VideoInputError(
            path,
            f"truncated or corrupt: the header says {declared_seconds:.2f} s, "
            f"the data ends at {end:.2f} s",
        )
    # Reopen rather than seek back to 0: not every demuxer can seek.
    first = None
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.FFmpegError as e:
            raise VideoInputError(path, f"corrupt: first frame does not decode ({e})") from None
    if first is None:
        raise VideoInputError(path, "corrupt: no frame decodes")
    frame_pts: tuple[int, ...] | None
    if any(p is None for p in pts) or len(set(pts)) != len(pts):
        frame_pts = None  # no one-to-one index -> timestamp map: decode sequentially
    else:
        frame_pts = tuple(sorted(pts))  # type: ignore[arg-type]
    return VideoInfo(
        path=path,
        num_frames=len(pts),
        width=first.width,
        height=first.height,
        codec=codec,
        pix_fmt=first.format.name,
        frame_pts=frame_pts,
    )


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    height, width = size
    return frame.to_ndarray(
        format="rgb24", width=width, height=height, interpolation=_INTERPOLATION
    )


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
        indices: frame indices in presentation order, e.g. from
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
        VideoInputError: naming the file, when it cannot be decoded or holds fewer frames than
            the probe counted (e.g. it changed on disk after the dataset was built).
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
    counter = {"decoded_frames": 0}
    try:
        frames = None
        if info.frame_pts is not None and wanted[-1] < len(info.frame_pts):
            counter["method"] = "seek"
            frames = _decode_by_pts(path, wanted, info.frame_pts, image_size, threads, counter)
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


def _decode_by_pts(
    path: str,
    wanted: list[int],
    frame_pts: tuple[int, ...],
    image_size: tuple[int, int] | None,
    threads: int,
    counter: dict,
) -> dict[int, np.ndarray] | None:
    """Seek to the keyframe before the first wanted frame, decode forward, stop at the last.

    Returns ``None`` when the timestamps decoded do not line up with the probe's table (seek
    overshoot, decoder-assigned timestamps); the caller then decodes from the start.
    """
    by_pts = {frame_pts[i]: i for i in wanted}
    first_pts, last_pts = frame_pts[wanted[0]], frame_pts[wanted[-1]]
    out: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_count = threads
        if wanted[0] > 0:
            # backward=True lands on the keyframe at or before the target, the only place
            # decoding can start without missing references.
            container.seek(first_pts, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            counter["decoded_frames"] += 1
            if frame.pts is None:
                return None
            if not out and frame.pts > first_pts:
                return None  # the seek went past the clip's first frame
            index = by_pts.get(frame.pts)
            if index is not None:
                out[index] = _to_rgb(frame, image_size)
            if frame.pts >= last_pts:
                break
    if len(out) != len(wanted):
        return None
    return out


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
    with _open(path) as container:
        stream = _video_stream(container, path)
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
        with _open(path) as container:
            stream = _video_stream(container, path)
            stream.codec_context.thread_count = threads
            for frame in container.decode(stream):
                if size is None:
                    size = (frame.height, frame.width)
                yield _to_rgb(frame, size)
    except av.FFmpegError as e:
        raise VideoInputError(path, f"decoding failed ({e})") from None
