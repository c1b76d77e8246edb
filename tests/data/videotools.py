"""Helpers for the video input tests (imported as ``videotools``; a unique name, so it cannot
clash with another ``conftest`` module): real files encoded with PyAV, frames that name themselves.

Every test video is made here with PyAV's bundled FFmpeg encoders (no ffmpeg CLI needed).
"Index frames" carry their own frame number as a 12-bit pattern of large black/white blocks
(robust to lossy codecs, chroma subsampling and resizing), plus two flat colour patches (red,
blue) to check colours after decoding.
"""

from __future__ import annotations

import os
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
            img = frames[i] if frames is not None else index_frame(i, height, width)
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
