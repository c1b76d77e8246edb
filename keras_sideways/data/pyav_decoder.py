"""PyAV decoding: probe a file once at listing time, then decode only the frames a clip needs.

PyAV wheels bundle FFmpeg, so this decoder works on a fresh machine from PyPI alone and reads
whatever FFmpeg reads (mp4, avi, mkv, mov, webm, gif, mpeg-ts, ... with their codecs).

Frame indexing: **frame i is the i-th frame a full sequential decode of the file produces** (its
i-th frame in display order), and a file's frame count is the number of frames that decode.
Containers do not always say so: an index entry may have no data (AVI drop frames), a last
packet may yield no picture, and timestamps may be in decode order (B-frame streams muxed with
pts = dts, DivX "packed" B-frames in AVI), so that sorting them does not give display order.

Two steps live here:

- :func:`probe_video` (run once per file when the dataset is built, cached): checks the file
  can be read, has a video stream and decodable frames, and builds the file's *frame index*:
  the timestamp the decoder attaches to frame i, and the keyframes to seek to. For most files the
  container's timestamps give it (demuxing only); they are checked against the decoder's output
  at the start, the middle and the end of the file (a few dozen frames each), and where they do
  not agree the index is learnt by decoding the file once.
- :func:`decode_clip` (run per clip): seeks to the last keyframe at or before the clip's first
  frame, decodes forward, identifies each decoded frame by the index (never by counting from
  the seek, never by sorting timestamps), converts (and resizes, in FFmpeg's swscale) only the
  frames the clip uses, and stops as soon as the last one is reached.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from keras_sideways.data import index_cache
from keras_sideways.data.errors import VideoInputError

# swscale bilinear: the same filter family as tf.image.resize's default, so the folder and
# TFRecord paths give close results when both resize.
_INTERPOLATION = "BILINEAR"
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
        object.__setattr__(self, "lookup", _Lookup.of(self.frame_pts, self.seek_points))


@dataclass(frozen=True)
class _Lookup:
    """A frame index as dicts: decoder timestamp -> frame, keyframe pts -> seek point."""

    frame_of: dict[int, int]
    keyframe_of: dict[int, tuple[int, int, int]]

    @staticmethod
    def of(frame_pts: Sequence[int] | None, seek_points: Sequence[tuple[int, int, int]]) -> _Lookup:
        return _Lookup(
            {p: i for i, p in enumerate(frame_pts or ())}, {p[1]: p for p in seek_points}
        )


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


@dataclass(frozen=True)
class _Packet:
    pts: int | None
    dts: int | None
    is_keyframe: bool


def _frame_slots(stream: av.video.VideoStream, packets: list[_Packet]) -> int:
    """Frame slots the packets' timestamps span in a constant-rate container (AVI), else 0.

    AVI has no timestamps, only a chunk per frame interval; an index entry without data (a
    dropped or repeated frame) takes a slot but is no frame. The header counts slots.
    """
    stamps = [p.dts if p.dts is not None else p.pts for p in packets]
    stamps = [s for s in stamps if s is not None]
    rate, time_base = stream.average_rate, stream.time_base
    if not stamps or not rate or not time_base:
        return 0
    return int(round((max(stamps) - min(stamps)) * time_base * rate)) + 1


def _demux_table(path: str) -> list[_Packet]:
    """Demux every packet (no decoding): the video packets, in decode order.

    Raises:
        VideoInputError: when the packets end well before the header says the file does.
    """
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        packets: list[_Packet] = []
        end = 0.0  # seconds: where the last packet of any stream ends
        try:
            # All streams, not only video: an audio track that outlasts the video must not make
            # a complete file look truncated.
            for packet in container.demux():
                # Demuxers emit a final empty packet to flush the decoder: not a frame.
                if packet.size == 0:
                    continue
                if packet.stream.index == stream.index:
                    packets.append(_Packet(packet.pts, packet.dts, bool(packet.is_keyframe)))
                if packet.pts is not None and packet.time_base is not None:
                    stop = packet.pts + (packet.duration or 0)
                    end = max(end, float(stop * packet.time_base))
        except av.FFmpegError as e:
            raise VideoInputError(path, f"corrupt: error while reading packets ({e})") from None
        declared_frames = stream.frames or 0
        slots = _frame_slots(stream, packets)
        declared_seconds = _header_duration(container)
    finally:
        container.close()
    if not packets:
        raise VideoInputError(path, "video stream has no frames")
    if declared_frames and max(len(packets), slots) < declared_frames:
        raise VideoInputError(
            path,
            f"truncated or corrupt: the header lists {declared_frames} frames, "
            f"only {len(packets)} are present",
        )
    if declared_seconds and declared_seconds - end > max(0.5, 0.02 * declared_seconds):
        raise VideoInputError(
            path,
            f"truncated or corrupt: the header says {declared_seconds:.2f} s, "
            f"the data ends at {end:.2f} s",
        )
    return packets


def _seek_points(
    frame_pts: Sequence[int] | None, packets: Sequence[_Packet]
) -> tuple[tuple[int, int, int], ...]:
    """``(frame index, pts, dts)`` of every keyframe packet whose picture the index knows.

    A packet carries the timestamp of the picture it starts, so a keyframe packet's timestamp
    names the keyframe's frame in the index, whatever order the timestamps come in.
    """
    if frame_pts is None:
        return ()
    index_of = {p: i for i, p in enumerate(frame_pts)}
    points = {
        (index_of[p.pts], p.pts, p.pts if p.dts is None else p.dts)
        for p in packets
        if p.is_keyframe and p.pts in index_of
    }
    return tuple(sorted(points))


class _OffIndex(Exception):
    """What decodes after a seek does not fit the frame index."""


def _frames_after_seek(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    point: tuple[int, int, int],
    seek_by: str,
    lookup: _Lookup,
    counter: dict,
    needed_from: int | None = None,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Seek to the keyframe ``point`` and yield ``(frame index, frame)`` in frame order from it.

    The demuxer may land on an earlier packet (skipped undecoded up to a known keyframe at or
    before ``point``); decoding starts there. Frames are named by the index, never counted.
    With ``needed_from``, pictures before that frame that nothing refers to (most B-frames)
    are not decoded at all: a packet's timestamp names the picture it holds, and the decoder
    skips only non-reference pictures, so the frames that are decoded come out the same.

    Raises:
        _OffIndex: landed past ``point``, a frame the index does not know, frames out of order.
    """
    start, stamp, decode_stamp = point
    container.seek(
        stamp if seek_by == "pts" else decode_stamp, stream=stream, backward=True, any_frame=False
    )
    landed = None
    previous = -1
    codec = stream.codec_context
    skipping = False
    codec.skip_frame = "DEFAULT"
    for packet in container.demux(stream):
        if needed_from is not None:
            picture = lookup.frame_of.get(packet.pts)
            skip = picture is not None and picture < needed_from
            if skip != skipping:
                codec.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
        if landed is None:
            if not packet.size:
                continue
            known = lookup.keyframe_of.get(packet.pts) if packet.is_keyframe else None
            if known is None:
                if packet.dts is not None and packet.dts > decode_stamp:
                    raise _OffIndex("landed past the keyframe")
                continue  # before the keyframe: skipped, not decoded
            if known[0] > start:
                raise _OffIndex("landed on a later keyframe")
            landed = known[0]
        for frame in packet.decode():
            counter["decoded_frames"] = counter.get("decoded_frames", 0) + 1
            i = lookup.frame_of.get(frame.pts)
            if i is None:
                raise _OffIndex(f"a frame stamped {frame.pts} is not in the index")
            if i < landed:  # an open GOP's leading frames: they belong before the keyframe
                continue
            if i <= previous:
                raise _OffIndex("frames out of order")
            previous = i
            yield i, frame


def _unique_or_none(stamps: Sequence[int | None]) -> tuple[int, ...] | None:
    if any(s is None for s in stamps) or len(set(stamps)) != len(stamps):
        return None
    return tuple(stamps)  # type: ignore[arg-type]


def _checked_container_index(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    table: tuple[int, ...],
    packets: Sequence[_Packet],
) -> tuple[tuple[int, ...], str] | None:
    """The sorted container timestamps, checked against decoding after a middle keyframe and
    from the last keyframe to the end, and the seek mode that works; ``None`` on disagreement.

    A trailing packet that yields no picture (seen in camera files) shows up as timestamps
    missing at the very end: those are dropped, so that the count is what decodes.
    """
    points = _seek_points(table, packets)
    if not points:
        return None
    lookup = _Lookup.of(table, points)
    seek_by = "pts"
    for point in sorted({points[len(points) // 2], points[-1]}):
        last = point == points[-1]
        got: list[int] = []
        for mode in dict.fromkeys((seek_by, "dts")):
            try:
                got = []
                for _, frame in _frames_after_seek(container, stream, point, mode, lookup, {}):
                    got.append(frame.pts)
                    if not last and len(got) >= _CHECK_FRAMES:
                        break
                seek_by = mode
                break
            except _OffIndex:
                got = []
        expected = table[point[0] :]
        if not got or tuple(got) != expected[: len(got)]:
            return None
        if last:
            return table[: point[0]] + tuple(got), seek_by
        if len(got) < min(_CHECK_FRAMES, len(expected)):
            return None
    return None  # not reached: the last check returns


def _build_index(path: str, packets: list[_Packet]) -> VideoInfo:
    """Decode the start of the file (and, where needed, all of it) to build its frame index."""
    with _open(path) as container:
        stream = _video_stream(container, path)
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
        seek_points=_seek_points(frame_pts, packets),
        index_source=source,
        seek_by=seek_by if source == "timestamps" else _packet_seek_mode(packets),
    )


def _packet_seek_mode(packets: Sequence[_Packet]) -> str:
    """For an index learnt by decoding: seek by dts where packets have one (a keyframe's dts is
    at or before its pts, so the demuxer cannot land past it)."""
    return "dts" if all(p.dts is not None for p in packets if p.is_keyframe) else "pts"


def _decode_all_stamps(path: str) -> list[int | None]:
    """The timestamp of every decoded frame, in output (display) order."""
    with _open(path) as container:
        stream = _video_stream(container, path)
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
        info = _build_index(path, _demux_table(path))
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


_THREAD_STATE = threading.local()


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
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
        with _open(path) as container:
            stream = _video_stream(container, path)
            stream.codec_context.thread_count = threads
            for point, seek_by in _seek_attempts(info, wanted[0]):
                counter["method"] = "seek"
                frames = _collect(
                    _frames_after_seek(
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
    except _OffIndex:
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
