"""A synthetic action data set whose classes are defined only by motion.

Each video shows one flat shape on a flat background. What varies at random per video (from the
same distributions for every class): the shape (square, triangle, bar, L), its colour, the
background colour, its position, orientation and size. What the class decides: how it moves.

Single frames carry no class information, by construction:

- translations wrap around the frame edges (the frame is a torus), so the shape's position is
  uniform in every frame of every class;
- the orientation is uniform for every class (rotating classes start at a uniform angle);
- sizes: growing / shrinking clips run between the same random pair of sizes, in opposite
  directions; every other clip holds one size drawn from that same range, so the size seen in a
  single frame has the same distribution in every class.

Videos are real encoded files: H.264 (libx264, bundled in PyAV's wheels) in mp4, yuv420p.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import av
import numpy as np

SYNTHETIC_ACTIONS: tuple[str, ...] = (
    "left",
    "right",
    "up",
    "down",
    "clockwise",
    "anticlockwise",
    "grow",
    "shrink",
)
"""Every class :func:`write_synthetic_actions` can draw."""

DEFAULT_ACTIONS: tuple[str, ...] = ("left", "right", "up", "down")
"""The classes used when ``classes=None``: translations, the easiest to learn from motion."""

# Shapes as unions of convex polygons (unit scale, centred near the origin), so that each piece
# rasterises with half-plane tests.
_SHAPES: dict[str, list[np.ndarray]] = {
    "square": [np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])],
    "triangle": [
        np.array(
            [
                [math.cos(a), math.sin(a)]
                for a in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
            ]
        )
    ],
    "bar": [np.array([[-1.2, -0.4], [1.2, -0.4], [1.2, 0.4], [-1.2, 0.4]])],
    "ell": [
        np.array([[-0.9, -0.9], [-0.3, -0.9], [-0.3, 0.9], [-0.9, 0.9]]),
        np.array([[-0.3, 0.3], [0.9, 0.3], [0.9, 0.9], [-0.3, 0.9]]),
    ],
}

_SUPERSAMPLE = 2  # 2x2 samples per pixel: anti-aliased edges, so sub-pixel motion is visible


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground colours, random but at least 0.25 apart in luma.

    The contrast keeps the shape visible after yuv420p chroma subsampling and H.264.
    """
    while True:
        bg, fg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if abs(_luma(bg) - _luma(fg)) >= 0.25:
            return bg, fg


def _rasterise(pieces: list[np.ndarray], height: int, width: int, wrap: bool) -> np.ndarray:
    """Coverage in [0, 1] of a union of convex polygons (pixel coordinates), HxW."""
    s = _SUPERSAMPLE
    mask = np.zeros((height * s, width * s), dtype=bool)
    offsets = [(dx, dy) for dx in (-width, 0, width) for dy in (-height, 0, height)]
    if not wrap:
        offsets = [(0, 0)]
    for piece in pieces:
        # Orientation-independent inside test: all edge cross products share one sign.
        x, y = piece[:, 0], piece[:, 1]
        area = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        sign = 1.0 if area > 0 else -1.0
        for dx, dy in offsets:
            poly = piece + np.array([dx, dy])
            x0, y0 = np.floor(poly.min(axis=0) * s).astype(int)
            x1, y1 = np.ceil(poly.max(axis=0) * s).astype(int)
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(x1, width * s), min(y1, height * s)
            if x0 >= x1 or y0 >= y1:
                continue  # this copy of the shape is off-frame
            xs = (np.arange(x0, x1) + 0.5) / s
            ys = (np.arange(y0, y1) + 0.5) / s
            gx, gy = np.meshgrid(xs, ys)
            inside = np.ones(gx.shape, dtype=bool)
            for j in range(len(poly)):
                ax, ay = poly[j]
                bx, by = poly[(j + 1) % len(poly)]
                inside &= sign * ((bx - ax) * (gy - ay) - (by - ay) * (gx - ax)) >= 0
            mask[y0:y1, x0:x1] |= inside
    return mask.reshape(height, s, width, s).mean(axis=(1, 3))


def render_action(
    action: str,
    rng: np.random.Generator,
    num_frames: int,
    image_size: tuple[int, int],
) -> np.ndarray:
    """Render one video of ``action`` as uint8 ``(num_frames, H, W, 3)``."""
    if action not in SYNTHETIC_ACTIONS:
        raise ValueError(f"unknown action {action!r}; choose from {SYNTHETIC_ACTIONS}")
    height, width = image_size
    side = min(height, width)
    shape = _SHAPES[sorted(_SHAPES)[rng.integers(len(_SHAPES))]]
    bg, fg = _colours(rng)
    centre = rng.uniform(0, 1, 2) * np.array([width, height])
    angle0 = rng.uniform(0, 2 * math.pi)
    # Size range shared by all classes (radius in pixels); see the module docstring.
    small, large = side * rng.uniform(0.10, 0.14), side * rng.uniform(0.20, 0.26)
    speed = side * rng.uniform(1.2, 2.4) / 64.0  # pixels per frame, ~1.2-2.4 at 64x64
    spin = math.radians(rng.uniform(7.0, 12.0))  # radians per frame
    fixed_size = small + (large - small) * rng.uniform(0, 1)

    t = np.arange(num_frames, dtype=np.float64)
    # Centre the motion in time, so that the middle frame has the drawn position and the
    # marginals over frames stay symmetric between opposite directions.
    tc = t - (num_frames - 1) / 2
    direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        pos, ang, size = centre.copy(), angle0, fixed_size
        if action in direction:
            pos += speed * tc[i] * np.array(direction[action])
        elif action == "clockwise":  # image y points down: a growing angle turns clockwise
            ang += spin * tc[i]
        elif action == "anticlockwise":
            ang -= spin * tc[i]
        elif action in ("grow", "shrink"):
            frac = t[i] / max(num_frames - 1, 1)
            if action == "shrink":
                frac = 1 - frac
            size = small + (large - small) * frac
        pos = np.mod(pos, [width, height])
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        pieces = [pos + size * (p @ rot.T) for p in shape]
        alpha = _rasterise(pieces, height, width, wrap=True)[..., None]
        frames[i] = np.round((bg * (1 - alpha) + fg * alpha) * 255).astype(np.uint8)
    return frames


def encode_video(
    path: str,
    frames: np.ndarray,
    *,
    fps: int = 25,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> None:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` to ``path`` with PyAV, as yuv420p.

    Args:
        path: output file; the container follows the extension.
        frames: RGB frames; height and width must be even (yuv420p halves the chroma planes).
        fps: frame rate.
        codec: FFmpeg encoder name.
        options: encoder options (for libx264 defaults to a fast, high-quality, run-to-run
            deterministic setting).
    """
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    if options is None and codec == "libx264":
        # mbtree off: with it, x264 was seen to write different bitstreams for the same input
        # from run to run once TensorFlow is loaded in the process (its float rate-control
        # pass is the only part that varied), and these files must be identical per seed.
        options = {"preset": "veryfast", "crf": "18", "x264-params": "mbtree=0"}
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One encoder thread: for small frames more threads only add overhead.
        stream.codec_context.thread_count = 1
        if options:
            stream.options = options
        for frame in frames:
            # Explicit single-threaded conversion to yuv420p: nothing left to chance.
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                format="yuv420p", threads=1
            )
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)


def write_synthetic_actions(
    directory: str,
    *,
    classes: Sequence[str] | None = None,
    videos_per_class: int = 25,
    num_frames: int = 32,
    image_size: tuple[int, int] = (64, 64),
    fps: int = 25,
    seed: int = 0,
) -> list[str]:
    """Write the synthetic motion data set as mp4 files in one folder per class.

    Layout: ``directory/<class>/<class>_<i>.mp4``, readable by
    :func:`~keras_sideways.data.video_dataset_from_directory`. Video ``i`` of a class depends
    only on ``(seed, class, i)``, so the same call writes the same pixels every time.

    Args:
        directory: output root (created if missing).
        classes: names from :data:`SYNTHETIC_ACTIONS`; default
            :data:`DEFAULT_ACTIONS` (left, right, up, down).
        videos_per_class: videos per class.
        num_frames: frames per video.
        image_size: ``(height, width)``, both even.
        fps: frame rate written in the files.
        seed: random seed.

    Returns:
        The written paths, sorted by class then index.
    """
    classes = tuple(DEFAULT_ACTIONS if classes is None else classes)
    unknown = [c for c in classes if c not in SYNTHETIC_ACTIONS]
    if unknown or len(set(classes)) != len(classes) or not classes:
        raise ValueError(
            f"classes must be distinct names from {SYNTHETIC_ACTIONS}, got {list(classes)}"
        )
    height, width = (int(v) for v in image_size)
    if height % 2 or width % 2 or height < 8 or width < 8:
        raise ValueError(f"image_size must be even and >= 8, got {image_size}")
    paths = []
    for class_name in classes:
        folder = os.path.join(directory, class_name)
        os.makedirs(folder, exist_ok=True)
        class_id = SYNTHETIC_ACTIONS.index(class_name)  # stable even if `classes` is reordered
        for i in range(videos_per_class):
            rng = np.random.default_rng([seed, class_id, i])
            frames = render_action(class_name, rng, num_frames, (height, width))
            path = os.path.join(folder, f"{class_name}_{i:04d}.mp4")
            encode_video(path, frames, fps=fps)
            paths.append(path)
    return paths
