"""PyAV probe and clip decoding on real files: codecs, containers, pixel formats, seeking."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from videotools import BLUE, RED, patch_colours, read_index, write_video

from keras_sideways.data import clip_indices, decode_clip, probe_video
from keras_sideways.data.pyav_decoder import iter_frames

# (file name, encoder settings): H.264 with and without B-frames, MPEG-4 Part 2, VP8, VP9,
# GIF, MPEG-2 in MPEG-TS, lossless FFV1, PNG-in-MOV, Motion JPEG; mp4/mkv/avi/mov/webm/gif/ts.
CODECS = [
    ("h264_bframes.mp4", {"b_frames": 3, "options": {"preset": "medium", "crf": "18"}}),
    ("h264.mkv", {}),
    ("h264_444.mp4", {"pix_fmt": "yuv444p"}),
    ("mpeg4.avi", {"codec": "mpeg4"}),
    ("mpeg4_bframes.mov", {"codec": "mpeg4", "b_frames": 2}),
    ("vp9.webm", {"codec": "libvpx-vp9"}),
    ("vp8.webm", {"codec": "libvpx"}),
    ("anim.gif", {"codec": "gif", "pix_fmt": "rgb8", "gop": None}),
    ("mpeg2.ts", {"codec": "mpeg2video", "b_frames": 2}),
    ("ffv1_444.mkv", {"codec": "ffv1", "pix_fmt": "yuv444p"}),
    ("png_rgb.mov", {"codec": "png", "pix_fmt": "rgb24"}),
    ("mjpeg_422.avi", {"codec": "mjpeg", "pix_fmt": "yuvj422p"}),
]


@pytest.mark.parametrize("name,settings", CODECS, ids=[c[0] for c in CODECS])
def test_codecs_and_containers_decode_known_frames_and_colours(tmp_path, name, settings):
    path = write_video(tmp_path / name, 30, **settings)
    info = probe_video(path)
    assert info.num_frames == 30
    assert (info.width, info.height) == (64, 64)
    indices = [0, 5, 17, 29, 17, 5]  # out of order, with repeats
    clip = decode_clip(path, indices, (48, 80), info=info)
    assert clip.shape == (6, 48, 80, 3) and clip.dtype == np.uint8
    assert [read_index(f) for f in clip] == indices
    for frame in clip:
        red, blue = patch_colours(frame)
        # Large flat patches, tolerance for chroma subsampling and lossy coding.
        np.testing.assert_allclose(red, RED, atol=20)
        np.testing.assert_allclose(blue, BLUE, atol=20)


def test_grayscale_video_decodes_to_rgb_with_equal_channels(tmp_path):
    path = write_video(tmp_path / "gray.mkv", 20, codec="ffv1", pix_fmt="gray")
    info = probe_video(path)
    assert info.pix_fmt == "gray"
    clip = decode_clip(path, [3, 11], None, info=info)
    assert clip.shape == (2, 64, 64, 3)
    assert [read_index(f) for f in clip] == [3, 11]
    assert np.array_equal(clip[..., 0], clip[..., 1]) and np.array_equal(clip[..., 1], clip[..., 2])
    red, blue = patch_colours(clip[0])
    luma = lambda rgb: 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # noqa: E731
    np.testing.assert_allclose(red, [luma(RED)] * 3, atol=3)  # gray keeps each colour's luma
    np.testing.assert_allclose(blue, [luma(BLUE)] * 3, atol=3)


def test_variable_frame_rate_is_sampled_by_frame_not_time(tmp_path):
    # Irregular gaps of 10-100 ms: frame k must still be the k-th frame shown.
    rng = np.random.default_rng(0)
    pts = np.cumsum(rng.integers(10, 100, 40)).tolist()
    path = write_video(tmp_path / "vfr.mkv", 40, pts=pts, time_base=Fraction(1, 1000), gop=8)
    info = probe_video(path)
    gaps = np.diff(info.frame_pts)
    assert gaps.min() != gaps.max(), "the file should really have a variable frame rate"
    indices = clip_indices(40, 8, 3, start=13)
    clip = decode_clip(path, indices, None, info=info)
    assert [read_index(f) for f in clip] == indices.tolist()


def test_seek_and_stop_early_decode_only_what_the_clip_needs(tmp_path):
    path = write_video(tmp_path / "long.mp4", 150, gop=10, b_frames=2, options={"preset": "fast"})
    info = probe_video(path)
    stats: dict = {}
    indices = clip_indices(150, 16, 1, start=97)
    clip = decode_clip(path, indices, None, info=info, stats=stats)
    assert [read_index(f) for f in clip] == indices.tolist()
    assert stats["method"] == "seek"
    # From the keyframe at or before frame 97 (at most 9 frames earlier) to frame 112.
    assert 16 <= stats["decoded_frames"] <= 16 + 9

    stats = {}
    clip = decode_clip(path, range(0, 16), None, info=info, stats=stats)
    assert [read_index(f) for f in clip] == list(range(16))
    assert stats["decoded_frames"] == 16  # stopped at the last frame needed, not at 150


def test_decode_beyond_the_end_names_the_file(tmp_path):
    path = write_video(tmp_path / "short.mp4", 10)
    with pytest.raises(ValueError, match="short.mp4.*file has 10 frame"):
        decode_clip(path, [4, 12], None)


def test_iter_frames_gives_every_frame_in_order(tmp_path):
    path = write_video(tmp_path / "all.avi", 25, codec="mpeg4", b_frames=2)
    frames = list(iter_frames(path, (32, 32)))
    assert len(frames) == 25 and frames[0].shape == (32, 32, 3)
    assert [read_index(f) for f in frames] == list(range(25))
