"""The synthetic motion data set: real files, deterministic, fast, and solvable only by motion."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from keras_sideways.data import (
    DEFAULT_ACTIONS,
    SYNTHETIC_ACTIONS,
    decode_clip,
    probe_video,
    video_dataset_from_directory,
    write_synthetic_actions,
)


def _decode_all(paths, num_frames):
    return np.stack([decode_clip(p, range(num_frames)) for p in paths]).astype(np.float32) / 255


def _gray(videos):
    return videos @ np.array([0.299, 0.587, 0.114], np.float32)


def _circular_centre(weight, axis_len, axis):
    """Centre of mass on a wrap-around axis (the synthetic frames are a torus)."""
    angle = 2 * np.pi * np.arange(axis_len) / axis_len
    shape = [1, 1, 1]
    shape[axis] = axis_len
    s = (weight * np.sin(angle).reshape(shape)).sum((1, 2))
    c = (weight * np.cos(angle).reshape(shape)).sum((1, 2))
    return np.mod(np.arctan2(s, c), 2 * np.pi) * axis_len / (2 * np.pi)


def _shifts(g):
    """Integer translation between consecutive frames on the torus, by phase correlation.

    ``g``: gray videos ``(N, T, H, W)``; returns ``(N, T - 1, 2)`` as ``(dy, dx)``.
    """
    f = np.fft.fft2(g)
    cross = f[:, 1:] * np.conj(f[:, :-1])
    peak = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    n, t, h, w = peak.shape
    flat = peak.reshape(n, t, -1).argmax(-1)
    dy, dx = np.unravel_index(flat, (h, w))
    return np.stack([(dy + h // 2) % h - h // 2, (dx + w // 2) % w - w // 2], axis=-1)


def _motion_features(videos):
    """Per video: mean translation per frame (phase correlation), and the sign of rotation and
    of growth about the moving shape (temporal difference times the rotational / radial
    gradient, whose sign does not depend on the shape/background contrast)."""
    g = _gray(videos)
    h, w = g.shape[2:]
    translation = _shifts(g).mean(1)[:, ::-1]  # (dx, dy) in pixels per frame
    # Rotation and growth are about the shape's own centre, and shapes wrap around the frame
    # edges: find where things change (circular mean) and roll that point to the frame centre.
    weight = np.abs(g[:, 1:] - g[:, :-1]).sum(1)
    cy, cx = _circular_centre(weight, h, 1), _circular_centre(weight, w, 2)
    g = np.stack([
        np.roll(v, (int(round(h / 2 - y)), int(round(w / 2 - x))), axis=(1, 2))
        for v, y, x in zip(g, cy, cx, strict=True)
    ])  # fmt: skip
    it = g[:, 1:] - g[:, :-1]
    iy, ix = np.gradient((g[:, 1:] + g[:, :-1]) / 2, axis=(2, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - h / 2, xx - w / 2
    rot = ((-dy * ix + dx * iy) * it).sum((1, 2, 3))
    rad = ((dx * ix + dy * iy) * it).sum((1, 2, 3))
    norm = np.abs(rot) + np.abs(rad) + 1e-9
    return np.column_stack([translation, rot / norm, rad / norm])


def _nearest_centroid_accuracy(x_train, y_train, x_test, y_test, num_classes):
    """Classify by the nearest class mean: a simple, transparent probe."""
    centroids = np.stack([x_train[y_train == k].mean(0) for k in range(num_classes)])
    dist = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float(np.mean(dist.argmin(1) == y_test))


def _linear_accuracy(x_train, y_train, x_test, y_test, num_classes, ridge=1.0):
    """One-vs-rest ridge regression: a plain, honest linear probe."""

    def design(x):
        return np.hstack([x, np.ones((len(x), 1), np.float32)])

    a = design(x_train)
    targets = np.eye(num_classes)[y_train]
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ targets)
    return float(np.mean((design(x_test) @ weights).argmax(1) == y_test))


@pytest.fixture(scope="module")
def all_actions(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    start = time.perf_counter()
    paths = write_synthetic_actions(
        str(root), classes=SYNTHETIC_ACTIONS, videos_per_class=30, num_frames=12, seed=0
    )
    return str(root), paths, time.perf_counter() - start


def test_layout_and_real_h264_files(all_actions):
    root, paths, _ = all_actions
    assert len(paths) == 8 * 30
    assert sorted(os.listdir(root)) == sorted(SYNTHETIC_ACTIONS)
    info = probe_video(paths[0])
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert (info.num_frames, info.width, info.height) == (12, 64, 64)
    ds = video_dataset_from_directory(root, num_frames=8, image_size=(64, 64), seed=0)
    assert ds.class_names == sorted(SYNTHETIC_ACTIONS)


def test_fast(all_actions):
    _, paths, seconds = all_actions
    # 240 short videos; about 100 videos of 32 frames take ~2.5 s on one core.
    assert seconds < 60, f"{len(paths)} videos took {seconds:.1f} s"


def test_deterministic_per_seed(tmp_path):
    kw = dict(classes=["left", "grow"], videos_per_class=2, num_frames=6)
    a = write_synthetic_actions(str(tmp_path / "a"), seed=3, **kw)
    b = write_synthetic_actions(str(tmp_path / "b"), seed=3, **kw)
    c = write_synthetic_actions(str(tmp_path / "c"), seed=4, **kw)
    assert [os.path.relpath(p, tmp_path / "a") for p in a] == [
        os.path.relpath(p, tmp_path / "b") for p in b
    ]
    for p, q in zip(a, b, strict=True):
        assert open(p, "rb").read() == open(q, "rb").read()  # byte-identical files
    assert np.array_equal(_decode_all(a, 6), _decode_all(b, 6))
    assert not np.array_equal(_decode_all(a, 6), _decode_all(c, 6))
    # A video depends on (seed, class, index) only, not on which other classes are written.
    d = write_synthetic_actions(str(tmp_path / "d"), seed=3, classes=["grow"],
                                videos_per_class=2, num_frames=6)  # fmt: skip
    assert np.array_equal(_decode_all(a[2:], 6), _decode_all(d, 6))


def test_defaults_and_bad_arguments(tmp_path):
    assert DEFAULT_ACTIONS == ("left", "right", "up", "down")
    paths = write_synthetic_actions(str(tmp_path / "d"), videos_per_class=1, num_frames=4)
    assert [os.path.basename(os.path.dirname(p)) for p in paths] == list(DEFAULT_ACTIONS)
    with pytest.raises(ValueError, match="classes"):
        write_synthetic_actions(str(tmp_path / "x"), classes=["left", "jump"])
    with pytest.raises(ValueError, match="even"):
        write_synthetic_actions(str(tmp_path / "x"), image_size=(63, 64))


def test_single_frames_at_chance_motion_separates_classes(all_actions):
    """A linear probe on single frames is near chance; simple motion features separate the
    classes almost perfectly."""
    _, paths, _ = all_actions
    labels = np.repeat(np.arange(8), 30)
    videos = _decode_all(paths, 12)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(paths))
    train, test = order[:160], order[160:]

    # Single frames: a random frame per video, downsampled to 16x16x3 pixels.
    frames = videos[np.arange(len(videos)), rng.integers(0, 12, len(videos))]
    pixels = frames.reshape(-1, 16, 4, 16, 4, 3).mean((2, 4)).reshape(len(frames), -1)
    single = _linear_accuracy(pixels[train], labels[train], pixels[test], labels[test], 8, 10.0)

    motion = _motion_features(videos)
    moving = _nearest_centroid_accuracy(motion[train], labels[train], motion[test], labels[test], 8)
    # Chance is 1/8 = 0.125; 80 test videos give a standard error of about 0.04.
    assert single < 0.3, f"single frames should be near chance, got {single:.2f}"
    print(f"linear probe accuracy: single frames {single:.2f}, motion features {moving:.2f}")
    assert moving > 0.85, f"motion features should separate the classes, got {moving:.2f}"
