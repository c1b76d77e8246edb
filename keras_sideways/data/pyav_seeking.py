"""Seeking by the frame index: start decoding at a keyframe and name every frame that follows.

A file's frame index (:mod:`keras_sideways.data.frame_index`) maps the timestamp the decoder
attaches to each picture to its frame number, and lists the keyframes a decode can start from.
:func:`frames_after_seek` is the one place that seeks: the probe uses it to check a container's
timestamps against decoding, clip decoding (:mod:`keras_sideways.data.pyav_decoder`) to reach a
clip. Frames are named by the index, never counted from the seek nor ordered by sorting
timestamps; whatever does not fit the index raises :class:`OffIndex`, so the caller can start
from an earlier keyframe or from the beginning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av

from keras_sideways.data.pyav_container import Packet


@dataclass(frozen=True)
class FrameLookup:
    """A frame index as dicts: decoder timestamp -> frame, keyframe pts -> seek point."""

    frame_of: dict[int, int]
    keyframe_of: dict[int, tuple[int, int, int]]

    @staticmethod
    def of(
        frame_pts: Sequence[int] | None, seek_points: Sequence[tuple[int, int, int]]
    ) -> FrameLookup:
        """The lookups for a file's ``frame_pts`` and ``seek_points`` (see ``VideoInfo``)."""
        return FrameLookup(
            {p: i for i, p in enumerate(frame_pts or ())}, {p[1]: p for p in seek_points}
        )


def keyframe_seek_points(
    frame_pts: Sequence[int] | None, packets: Sequence[Packet]
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


class OffIndex(Exception):
    """What decodes after a seek does not fit the frame index."""


def frames_after_seek(
    container: av.container.InputContainer,
    stream: av.video.VideoStream,
    point: tuple[int, int, int],
    seek_by: str,
    lookup: FrameLookup,
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
        OffIndex: landed past ``point``, a frame the index does not know, frames out of order.
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
                    raise OffIndex("landed past the keyframe")
                continue  # before the keyframe: skipped, not decoded
            if known[0] > start:
                raise OffIndex("landed on a later keyframe")
            landed = known[0]
        for frame in packet.decode():
            counter["decoded_frames"] = counter.get("decoded_frames", 0) + 1
            i = lookup.frame_of.get(frame.pts)
            if i is None:
                raise OffIndex(f"a frame stamped {frame.pts} is not in the index")
            if i < landed:  # an open GOP's leading frames: they belong before the keyframe
                continue
            if i <= previous:
                raise OffIndex("frames out of order")
            previous = i
            yield i, frame
