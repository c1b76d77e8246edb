"""The frame index of a video file, learnt once at listing time by :func:`probe_video`.

Frame indexing: **frame i is the i-th frame a full sequential decode of the file produces** (its
i-th frame in display order), and a file's frame count is the number of frames that decode.
Containers do not always say so: an index entry may have no data (AVI drop frames), a last
packet may yield no picture, and timestamps may be in decode order (B-frame streams muxed with
pts = dts, DivX "packed" B-frames in AVI), so that sorting them does not give display order.

:func:`probe_video` (run once per file when the dataset is built, cached) checks the file can
be read, has a video stream and decodable frames, and builds its index (:class:`VideoInfo`):
the timestamp the decoder attaches to frame i, and the keyframes to seek to. For most files the
container's timestamps give it (demuxing only, :mod:`~keras_sideways.data.pyav_container`);
they are checked against the decoder's output at the start, the middle and the end of the file
(a few dozen frames each), and where they do not agree the index is learnt by decoding the file
once. Indexes are kept per process here and on disk (:mod:`~keras_sideways.data.index_cache`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import av

from keras_sideways.data import index_cache
from keras_sideways.data.errors import VideoInputError
from keras_sideways.data.pyav_container import (
    Packet,
    check_readable,
    demux_video_packets,
    first_video_stream,
    open_container,
)
from keras_sideways.data.pyav_seeking import (
    FrameLookup,
    OffIndex,
    frames_after_seek,
    keyframe_seek_points,
)

# Frames decoded from the start of a file at probe time, to check its timestamps against the
# decoder's output order; a file this short is simply decoded whole.
_HEAD_FRAMES = 48
# Frames decoded after the middle keyframe at probe time (the last keyframe is decoded to the end).
_CHECK_FRAMES = 32
# Index of every file probed in this process, keyed by (real path, size, mtime): a second
# dataset over the same files (training and validation subsets) does not probe them again.
_INDEX_CACHE: dict[tuple[str, int, int], VideoInfo] = {}
_INDEX_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class VideoInfo:
    """What the listing-time probe learnt about one video file: its frame index.

    Attributes:
        path: the file.
        num_frames: frames that decode (what a full sequential decode produces).
        width: coded width of the first frame.
        height: coded height of the first frame.
        codec: FFmpeg codec name (``"h264"``, ``"mpeg4"``, ...).
        pix_fmt: FFmpeg pixel format of the first frame (``"yuv420p"``, ``"gray"``, ...).
        frame_pts: the timestamp the decoder gives frame ``i``, for every frame in display order
            (the presentation timestamps for most files; decode-order stamps for files muxed
            that way), or ``None`` when frames carry no unique timestamp (then clips are decoded
            from the start, counting frames).
        seek_points: ``(frame index, pts, dts)`` of the keyframe packets a clip can start
            decoding from, in frame order.
        seek_by: which of the keyframe's timestamps the demuxer seeks by (``"pts"``, or
            ``"dts"`` for MPEG-TS); found at probe time.
        index_source: ``"timestamps"`` (the container's timestamps, checked against decoding)
            or ``"decoded"`` (learnt by decoding the whole file once: short files, and files
            whose timestamps are not in display order).
    """

    path: str
    num_frames: int
    width: int
    height: int
    codec: str
    pix_fmt: str
    frame_pts: tuple[int, ...] | None
    seek_points: tuple[tuple[int, int, int], ...] = ()
    index_source: str = "timestamps"
    seek_by: str = "pts"

    def __post_init__(self) -> None:
        # Lookup tables for decode_clip, built once per file rather than once per clip.
        object.__setattr__(self, "lookup", FrameLookup.of(self.frame_pts, self.seek_points))


def _unique_or_none(stamps: Sequence[int | None]) -> tuple[int, ...] | None:
    """The stamps as a tuple when every one is set and none repeats, else ``None``."""
    if any(s is None for s in stamps) or len(set(stamps)) != len(stamps):
        return None
    return tuple(stamps)  # type: ignore[arg-type]


def _checked_container_index(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    table: tuple[int, ...],
    packets: Sequence[Packet],
) -> tuple[tuple[int, ...], str] | None:
    """The sorted container timestamps, checked against decoding after a middle keyframe and
    from the last keyframe to the end, and the seek mode that works; ``None`` on disagreement.

    A trailing packet that yields no picture (seen in camera files) shows up as timestamps
    missing at the very end: those are dropped, so that the count is what decodes.
    """
    points = keyframe_seek_points(table, packets)
    if not points:
        return None
    lookup = FrameLookup.of(table, points)
    seek_by = "pts"
    for point in sorted({points[len(points) // 2], points[-1]}):
        last = point == points[-1]
        got: list[int] = []
        for mode in dict.fromkeys((seek_by, "dts")):
            try:
                got = []
                for _, frame in frames_after_seek(container, stream, point, mode, lookup, {}):
                    got.append(frame.pts)
                    if not last and len(got) >= _CHECK_FRAMES:
                        break
                seek_by = mode
                break
            except OffIndex:
                got = []
        expected = table[point[0] :]
        if not got or tuple(got) != expected[: len(got)]:
            return None
        if last:
            return table[: point[0]] + tuple(got), seek_by
        if len(got) < min(_CHECK_FRAMES, len(expected)):
            return None
    return None  # not reached: the last check returns


def _build_index(path: str, packets: list[Packet]) -> VideoInfo:
    """Decode the start of the file (and, where needed, all of it) to build its frame index."""
    with open_container(path) as container:
        stream = first_video_stream(container, path)
        # One file at a time here: let FFmpeg decode with all cores.
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = 0
        frames = container.decode(stream)
        head: list[int | None] = []
        first = None
        try:
            for frame in frames:
                if first is None:
                    first = frame
                head.append(frame.pts)
                if len(head) >= _HEAD_FRAMES:
                    break
        except av.FFmpegError as e:
            if first is None:
                raise VideoInputError(path, f"corrupt: first frame does not decode ({e})") from None
            raise VideoInputError(path, f"corrupt: decoding failed ({e})") from None
        if first is None:
            raise VideoInputError(path, "corrupt: no frame decodes")
        at_end = len(head) < _HEAD_FRAMES
        table = _unique_or_none([p.pts for p in packets])
        frame_pts: tuple[int, ...] | None = None
        source, seek_by = "decoded", "pts"
        try:
            if at_end:
                frame_pts = _unique_or_none(head)
            elif table is not None and tuple(head) == tuple(sorted(table))[: len(head)]:
                checked = _checked_container_index(container, stream, tuple(sorted(table)), packets)
                if checked is not None:
                    (frame_pts, seek_by), source = checked, "timestamps"
            if frame_pts is None and not at_end:
                # Timestamps not in display order: learn the index by decoding once (no colour
                # conversion). Reopened, since the checks above may have moved the demuxer.
                source = "decoded"
                stamps = _decode_all_stamps(path)
                frame_pts = _unique_or_none(stamps)
                num_frames = len(stamps)
            else:
                num_frames = len(frame_pts) if frame_pts is not None else len(head)
        except av.FFmpegError as e:
            raise VideoInputError(path, f"corrupt: decoding failed ({e})") from None
    return VideoInfo(
        path=path,
        num_frames=num_frames,
        width=first.width,
        height=first.height,
        codec=stream.codec_context.name,
        pix_fmt=first.format.name,
        frame_pts=frame_pts,
        seek_points=keyframe_seek_points(frame_pts, packets),
        index_source=source,
        seek_by=seek_by if source == "timestamps" else _packet_seek_mode(packets),
    )


def _packet_seek_mode(packets: Sequence[Packet]) -> str:
    """For an index learnt by decoding: seek by dts where packets have one (a keyframe's dts is
    at or before its pts, so the demuxer cannot land past it)."""
    return "dts" if all(p.dts is not None for p in packets if p.is_keyframe) else "pts"


def _decode_all_stamps(path: str) -> list[int | None]:
    """The timestamp of every decoded frame, in output (display) order."""
    with open_container(path) as container:
        stream = first_video_stream(container, path)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = 0
        return [frame.pts for frame in container.decode(stream)]


def probe_video(path: str) -> VideoInfo:
    """Probe one file: readable, has a video stream, frames decode; build its frame index.

    Cached by (real path, size, modification time): in this process, and on disk
    (:mod:`keras_sideways.data.index_cache`), so a file is indexed once, not on every run.

    Raises:
        VideoInputError: naming the file and the reason (and the numbers, for truncation).
    """
    path = os.fspath(path)
    check_readable(path)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _INDEX_CACHE_LOCK:
        cached = _INDEX_CACHE.get(key)
    if cached is not None:
        return cached if cached.path == path else replace(cached, path=path)
    stored = index_cache.load(key)
    info = _from_stored(path, stored) if stored is not None else None
    if info is None:
        info = _build_index(path, demux_video_packets(path))
        index_cache.store(key, info)
    with _INDEX_CACHE_LOCK:
        _INDEX_CACHE[key] = info
    return info


def _from_stored(path: str, fields: dict) -> VideoInfo | None:
    """A :class:`VideoInfo` from its cached fields, or ``None`` if they do not fit."""
    try:
        frame_pts = fields["frame_pts"]
        return VideoInfo(
            path=path,
            num_frames=int(fields["num_frames"]),
            width=int(fields["width"]),
            height=int(fields["height"]),
            codec=str(fields["codec"]),
            pix_fmt=str(fields["pix_fmt"]),
            frame_pts=None if frame_pts is None else tuple(int(p) for p in frame_pts),
            seek_points=tuple(tuple(int(x) for x in p) for p in fields["seek_points"]),
            index_source=str(fields["index_source"]),
            seek_by=str(fields["seek_by"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
