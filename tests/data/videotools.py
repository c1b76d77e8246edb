"""Helpers for the video input tests (imported as ``videotools``; a unique name, so it cannot
clash with another ``conftest`` module): real files encoded with PyAV, frames that name themselves.

Every test video is made here with PyAV's bundled FFmpeg encoders (no ffmpeg CLI needed).
"Index frames" carry their own frame number as a 12-bit pattern of large black/white blocks
(robust to lossy codecs, chroma subsampling and resizing), plus two flat colour patches (red,
blue) to check colours after decoding.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np

BITS_ROWS, BITS_COLS = 3, 4  # 12 bits: frame numbers up to 4095
RED = (220, 30, 30)
BLUE = (30, 30, 220)


def index_frame(i: int, height: int = 64, width: int = 64) -> np.ndarray:
    """An RGB frame showing number ``i``: top 3/4 a 3x4 grid of bits, bottom 1/4 red | blue."""
    frame = np.zeros((height, width, 3), np.uint8)
    bits_h = height * 3 // 4
    for b in range(BITS_ROWS * BITS_COLS):
        r, c = divmod(b, BITS_COLS)
        y0, y1 = r * bits_h // BITS_ROWS, (r + 1) * bits_h // BITS_ROWS
        x0, x1 = c * width // BITS_COLS, (c + 1) * width // BITS_COLS
        frame[y0:y1, x0:x1] = 235 if (i >> b) & 1 else 20
    frame[bits_h:, : width // 2] = RED
    frame[bits_h:, width // 2 :] = BLUE
    return frame


def read_index(frame: np.ndarray) -> int:
    """Frame number shown by an (decoded, possibly resized) :func:`index_frame`."""
    f = np.asarray(frame, np.float32)
    if f.max() <= 1.0:
        f = f * 255.0
    height, width = f.shape[:2]
    bits_h = height * 3 / 4
    value = 0
    for b in range(BITS_ROWS * BITS_COLS):
        r, c = divmod(b, BITS_COLS)
        y = int((r + 0.5) * bits_h / BITS_ROWS)
        x = int((c + 0.5) * width / BITS_COLS)
        if f[y - 1 : y + 2, x - 1 : x + 2].mean() > 127:
            value |= 1 << b
    return value


def patch_colours(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB (0-255) of the middle of the red and the blue patch."""
    f = np.asarray(frame, np.float32)
    if f.max() <= 1.0:
        f = f * 255.0
    height, width = f.shape[:2]
    y0, y1 = int(height * 0.8), int(height * 0.95)
    red = f[y0:y1, int(width * 0.1) : int(width * 0.4)].reshape(-1, 3).mean(0)
    blue = f[y0:y1, int(width * 0.6) : int(width * 0.9)].reshape(-1, 3).mean(0)
    return red, blue


def write_video(
    path: str | os.PathLike,
    num_frames: int = 30,
    *,
    size: tuple[int, int] = (64, 64),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fps: int = 25,
    gop: int | None = 10,
    b_frames: int | None = None,
    options: dict[str, str] | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    frames: np.ndarray | None = None,
    audio: bool = False,
    make_frame: FrameMaker = index_frame,
) -> str:
    """Encode index frames (or ``frames``) to ``path``; the container follows the extension.

    ``pts`` with ``time_base`` writes explicit timestamps (variable frame rate).
    """
    path = os.fspath(path)
    height, width = size
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        opts = dict(options or {})
        if codec == "libx264":
            opts.setdefault("preset", "veryfast")
            opts.setdefault("crf", "18")
        if opts:
            stream.options = opts
        astream = container.add_stream("aac", rate=16000) if audio else None
        for i in range(num_frames):
            img = frames[i] if frames is not None else make_frame(i, height, width)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            _write_tone(container, astream, seconds=num_frames / fps)
    return path


def _write_tone(container: av.container.OutputContainer, stream, seconds: float) -> None:
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = rate
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: str | os.PathLike, seconds: float = 1.0) -> str:
    """An AAC-only file (no video stream)."""
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        _write_tone(container, stream, seconds)
    return path


def make_class_folders(
    root: str | os.PathLike, counts: dict[str, int], num_frames: int = 20, **kwargs
) -> dict[str, list[str]]:
    """``root/<class>/v<i>.mp4`` index videos; returns paths per class."""
    out: dict[str, list[str]] = {}
    for name, n in counts.items():
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        out[name] = [
            write_video(os.path.join(folder, f"v{i:02d}.mp4"), num_frames, **kwargs)
            for i in range(n)
        ]
    return out


# ---------------------------------------------------------------- files as found in the wild
# Each reproduces a container/codec oddity of real footage (issue 16), with PyAV only.


FrameMaker = Callable[[int, int, int], np.ndarray]  # (index, height, width) -> RGB uint8


def _encoded_packets(
    container: av.container.OutputContainer,
    codec: str,
    num_frames: int,
    size: tuple[int, int],
    gop: int,
    b_frames: int,
    make_frame: FrameMaker,
    fps: int = 25,
    preset: str = "veryfast",
) -> tuple[av.video.VideoStream, list[av.Packet]]:
    """A video stream added to ``container`` and its encoded packets, not yet muxed."""
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
    stream.codec_context.gop_size = gop
    stream.codec_context.max_b_frames = b_frames
    if codec == "libx264":
        stream.options = {"preset": preset, "crf": "18", "x264-params": f"keyint={gop}"}
    packets = []
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(make_frame(i, *size), format="rgb24")
        packets += stream.encode(frame)
    return stream, packets + stream.encode()


def write_pts_equals_dts_mp4(
    path: str | os.PathLike,
    num_frames: int = 60,
    *,
    size: tuple[int, int] = (64, 64),
    gop: int = 12,
    b_frames: int = 3,
    make_frame: FrameMaker = index_frame,
) -> str:
    """H.264 with B-frames muxed with every packet's pts set to its dts (no ``ctts`` box).

    As some camera and phone files are: the container's timestamps are in decode order, so
    sorting them does not give display order; the decoder still outputs display order.
    """
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        _, packets = _encoded_packets(
            container, "libx264", num_frames, size, gop, b_frames, make_frame, preset="medium"
        )
        shift = -packets[0].dts  # x264 starts dts below 0; start at 0 like the camera files
        for packet in packets:
            packet.dts += shift
            packet.pts = packet.dts
            container.mux(packet)
    return path


def _not_coded_vop(time_increment: int, bits: int) -> bytes:
    """An MPEG-4 Part 2 "N-VOP" (vop_coded = 0): the placeholder chunk of packed B-frames."""
    fields = "01" + "0" + "1" + format(time_increment % (1 << bits), f"0{bits}b") + "1" + "0"
    fields += "0" + "1" * ((8 - (len(fields) + 1) % 8) % 8)  # MPEG-4 stuffing to a byte
    return b"\x00\x00\x01\xb6" + int(fields, 2).to_bytes(len(fields) // 8, "big")


def write_packed_bframes_avi(
    path: str | os.PathLike,
    num_frames: int = 40,
    *,
    size: tuple[int, int] = (64, 64),
    gop: int = 12,
    fps: int = 25,
    make_frame: FrameMaker = index_frame,
) -> str:
    """MPEG-4 ASP in AVI with DivX-style *packed* B-frames, as DivX 5 / Xvid wrote them.

    AVI has no reordering: each anchor (I/P) frame is stored in one chunk together with the
    B-frame that follows it in decode order, and a not-coded VOP fills the next chunk. The
    user-data string ``DivX503b1393p`` (``p``: packed) tells FFmpeg. The chunks' timestamps
    then do not follow display order.
    """
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        stream, packets = _encoded_packets(
            container, "mpeg4", num_frames, size, gop, 1, make_frame, fps=fps
        )
        time_base = packets[0].time_base
        bits = max(1, (fps - 1).bit_length())  # vop_time_increment width for resolution = fps
        chunks: list[tuple[bytes, bool]] = []
        i = 0
        while i < len(packets):
            anchor, j = packets[i], i + 1
            b_frames = []
            while j < len(packets) and packets[j].pts < anchor.pts:
                b_frames.append(bytes(packets[j]))
                j += 1
            data = bytes(anchor)
            if i == 0:  # FFmpeg's own user data, "Lavc<version>", becomes DivX's
                start = data.index(b"\x00\x00\x01\xb2") + 4
                end = data.index(b"\x00\x00\x01", start)
                data = data[:start] + b"DivX503b1393p" + data[end:]
            chunks.append((data + b"".join(b_frames), bool(anchor.is_keyframe)))
            chunks += [(_not_coded_vop(len(chunks) + k, bits), False) for k in range(len(b_frames))]
            i = j
        for k, (data, keyframe) in enumerate(chunks):
            packet = av.Packet(data)
            packet.stream = stream
            packet.time_base = time_base
            packet.pts = packet.dts = k
            packet.is_keyframe = keyframe
            container.mux(packet)
    return path


def write_avi_with_empty_chunks(
    path: str | os.PathLike,
    num_frames: int = 20,
    *,
    slots_per_frame: int = 7,
    codec: str = "cinepak",
    size: tuple[int, int] = (64, 64),
    make_frame: FrameMaker = index_frame,
) -> str:
    """An AVI whose index lists ``slots_per_frame`` entries per real frame, all but one empty.

    AVI is constant-rate: FFmpeg's muxer (like capture tools) fills timestamp gaps with
    zero-size chunks, and the header's frame count counts them. Cinepak by default, as in the
    old QuickTime/AVI sample clips.
    """
    pix_fmt = "rgb24" if codec == "cinepak" else "yuv420p"
    pts = [i * slots_per_frame for i in range(num_frames)]
    return write_video(path, num_frames, size=size, codec=codec, pix_fmt=pix_fmt, pts=pts,
                       time_base=Fraction(1, 25), gop=12, make_frame=make_frame)  # fmt: skip


def write_trailing_empty_packet_mp4(
    path: str | os.PathLike,
    num_frames: int = 30,
    *,
    size: tuple[int, int] = (64, 64),
    gop: int = 10,
    b_frames: int = 2,
    make_frame: FrameMaker = index_frame,
) -> str:
    """H.264 mp4 whose last sample holds only an end-of-sequence NAL: one packet, no frame.

    The container lists ``num_frames + 1`` samples; ``num_frames`` frames decode.
    """
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        stream, packets = _encoded_packets(
            container, "libx264", num_frames, size, gop, b_frames, make_frame
        )
        for packet in packets:
            container.mux(packet)
        tick = packets[1].duration or (packets[1].pts - packets[0].pts) or 1
        extra = av.Packet(b"\x00\x00\x00\x01\x0a")  # Annex B end-of-sequence NAL unit
        extra.stream = stream
        extra.time_base = packets[0].time_base
        extra.pts = max(p.pts for p in packets) + tick
        extra.dts = max(p.dts for p in packets) + tick
        container.mux(extra)
    return path


def textured_index_frames(seed: int = 0, amplitude: int = 30) -> FrameMaker:
    """Index frames over a panning smooth random texture: real decoding work, still readable.

    The texture (+-``amplitude``) moves every frame, so inter frames carry motion and residual
    as camera footage does; the frame number's black/white blocks stay far apart in brightness.
    """
    rng = np.random.default_rng(seed)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def make(i: int, height: int, width: int) -> np.ndarray:
        if (height, width) not in cache:
            coarse = rng.uniform(-amplitude, amplitude, (height // 8 + 2, width // 8 + 2, 3))
            texture = np.kron(coarse, np.ones((8, 8, 1)))
            for axis in (0, 1):  # box-filter the blocky noise along each axis
                texture = sum(np.roll(texture, k, axis=axis) for k in range(-4, 5)) / 9
            cache[(height, width)] = texture[:height, :width]
        moving = np.roll(cache[(height, width)], (i, 2 * i), axis=(0, 1))
        frame = index_frame(i, height, width).astype(np.float32) + moving
        return np.clip(frame, 0, 255).astype(np.uint8)

    return make
