"""Opening a video file with PyAV and reading its packets (demuxing only, no decoding).

The first step of the listing-time probe (:mod:`keras_sideways.data.frame_index`): a file is
checked to be a readable regular file before FFmpeg sees it, opened, its first video stream
taken, and its video packets' timestamps read into a table. Truncated files are reported here,
where the packets end before the header says the file does. Clip decoding
(:mod:`keras_sideways.data.pyav_decoder`) opens files the same way.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import av

from keras_sideways.data.errors import VideoInputError


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


def open_container(path: str) -> av.container.InputContainer:
    """Open ``path`` for reading; FFmpeg's refusal becomes a :class:`VideoInputError` naming it."""
    try:
        return av.open(path, mode="r")
    except av.FFmpegError as e:
        raise VideoInputError(path, f"not a video FFmpeg can read ({e})") from None


def first_video_stream(container: av.container.InputContainer, path: str) -> av.video.VideoStream:
    """The container's first video stream; a file without one is reported with what it holds."""
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
class Packet:
    """One video packet's timestamps, as demuxed (``None`` where the container gives none)."""

    pts: int | None
    dts: int | None
    is_keyframe: bool


def _frame_slots(stream: av.video.VideoStream, packets: list[Packet]) -> int:
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


def demux_video_packets(path: str) -> list[Packet]:
    """Demux every packet (no decoding): the video packets, in decode order.

    Raises:
        VideoInputError: when the packets end well before the header says the file does.
    """
    container = open_container(path)
    try:
        stream = first_video_stream(container, path)
        packets: list[Packet] = []
        end = 0.0  # seconds: where the last packet of any stream ends
        try:
            # All streams, not only video: an audio track that outlasts the video must not make
            # a complete file look truncated.
            for packet in container.demux():
                # Demuxers emit a final empty packet to flush the decoder: not a frame.
                if packet.size == 0:
                    continue
                if packet.stream.index == stream.index:
                    packets.append(Packet(packet.pts, packet.dts, bool(packet.is_keyframe)))
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
