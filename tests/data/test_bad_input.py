"""Bad input: every case raises an error naming the file, or is skipped, counted and reported.

"Unreadable file": these tests run as root in CI, where ``chmod 000`` does not stop reads, so
unreadable entries are made three honest ways that stop root too: a dangling symbolic link, a
directory named like a video, and a FIFO (which must be rejected without being opened, since
opening one blocks). ``chmod 000`` is tested as well when not running as root.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from videotools import make_class_folders, read_index, write_audio_only, write_video

from keras_sideways.data import (
    BadVideoFilesError,
    VideoInputError,
    probe_video,
    video_dataset_from_directory,
)

KW = dict(batch_size=None, num_frames=3, image_size=(32, 32), shuffle=False)


def _truncated_mp4(path) -> str:
    full = write_video(str(path) + ".full.mp4", 30)
    data = open(full, "rb").read()
    os.remove(full)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # mp4 keeps its index (moov) at the end: cut off
    return str(path)


def _truncated_mkv(path) -> str:
    full = write_video(str(path) + ".full.mkv", 40)
    data = open(full, "rb").read()
    os.remove(full)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # Matroska opens, but ends before its declared length
    return str(path)


def _corrupt_header(path) -> str:
    full = write_video(str(path) + ".full.mp4", 20)
    data = bytearray(open(full, "rb").read())
    os.remove(full)
    data[:64] = np.random.default_rng(0).bytes(64)
    with open(path, "wb") as f:
        f.write(bytes(data))
    return str(path)


def _text(path) -> str:
    with open(path, "w") as f:
        f.write("this is a text file, not a video\n" * 20)
    return str(path)


def _zero(path) -> str:
    open(path, "wb").close()
    return str(path)


def _broken_link(path) -> str:
    os.symlink(str(path) + ".missing-target.mp4", path)
    return str(path)


def _directory(path) -> str:
    os.mkdir(path)
    return str(path)


def _fifo(path) -> str:
    os.mkfifo(path)
    return str(path)


# (maker, file name, expected words in the reason)
BAD_FILES = [
    (_truncated_mp4, "truncated.mp4", "not a video FFmpeg can read"),
    (_truncated_mkv, "truncated.mkv", "truncated or corrupt"),
    (_corrupt_header, "corrupt.mp4", "not a video FFmpeg can read"),
    (_zero, "empty.mp4", "zero-byte file"),
    (_text, "notes.avi", "not a video FFmpeg can read"),
    (write_audio_only, "audio.mp4", "no video stream"),
    (_broken_link, "dangling.mp4", "broken symbolic link"),
    (_directory, "folder.mp4", "is a directory"),
    (_fifo, "pipe.mkv", "FIFO"),
]


@pytest.mark.parametrize("maker,name,reason", BAD_FILES, ids=[b[1] for b in BAD_FILES])
def test_probe_names_file_and_reason(tmp_path, maker, name, reason):
    path = maker(tmp_path / name)
    with pytest.raises(VideoInputError, match=reason) as info:
        probe_video(path)
    assert info.value.path == path and str(info.value).startswith(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files; see module docstring")
def test_permission_denied_names_file(tmp_path):
    path = write_video(tmp_path / "locked.mp4", 5)
    os.chmod(path, 0)
    with pytest.raises(VideoInputError, match="locked.mp4: unreadable"):
        probe_video(path)


@pytest.fixture
def mixed_dir(tmp_path):
    """Class folders with good videos, one of every bad kind, hidden files and a non-video."""
    good = make_class_folders(tmp_path, {"good": 3, "more": 2}, num_frames=8)
    bad = [maker(tmp_path / "good" / name) for maker, name, _ in BAD_FILES]
    _text(tmp_path / "good" / "readme.txt")  # ignored by extension, like Keras
    _text(tmp_path / "good" / ".DS_Store")  # hidden: never listed
    _text(tmp_path / "more" / "._v00.mp4")  # AppleDouble metadata: hidden
    os.makedirs(tmp_path / "good" / ".ipynb_checkpoints")
    _text(tmp_path / "good" / ".ipynb_checkpoints" / "x.mp4")
    return str(tmp_path), good, bad


def test_raise_names_every_bad_file(mixed_dir):
    root, _, bad = mixed_dir
    with pytest.raises(BadVideoFilesError) as info:
        video_dataset_from_directory(root, on_error="raise")
    message = str(info.value)
    assert f"{len(bad)} unusable" in message
    for path in bad:
        assert path in message
    for _, name, reason in BAD_FILES:
        assert any(p.endswith(name) and reason in r for p, r in info.value.bad)
    assert "readme.txt" not in message and "DS_Store" not in message and "._v00" not in message


def test_skip_reports_count_and_names_and_loses_nothing_else(mixed_dir, caplog):
    root, good, bad = mixed_dir
    with caplog.at_level(logging.WARNING, logger="keras_sideways.data"):
        ds = video_dataset_from_directory(root, on_error="skip", **KW)
    assert sorted(p for p, _ in ds.skipped_files) == sorted(bad)
    assert sorted(ds.file_paths) == sorted(good["good"] + good["more"])
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Skipped {len(bad)} unusable" in warning
    for path in bad:
        assert path in warning
    elements = list(ds)
    assert len(elements) == 5
    assert [int(y) for _, y in elements] == [0, 0, 0, 1, 1]
    for clip, _ in elements:
        assert [read_index(f) for f in clip.numpy()] == [2, 3, 4]  # 8 frames: centre clip


def test_empty_class_folder(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "c": 2}, num_frames=4, size=(16, 16))
    os.makedirs(tmp_path / "b")
    _text(tmp_path / "b" / "not_a_video.txt")
    with pytest.raises(BadVideoFilesError, match=r"b: class folder 'b' has no video files"):
        video_dataset_from_directory(tmp_path)
    ds = video_dataset_from_directory(tmp_path, on_error="skip", **KW)
    assert ds.class_names == ["a", "b", "c"]  # label ids stay those of the folder names
    assert [int(y) for _, y in ds] == [0, 0, 2, 2]
    assert ds.skipped_files == [(str(tmp_path / "b"), "class folder 'b' has no video files")]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_folder_with_no_videos(tmp_path, on_error):
    os.makedirs(tmp_path / "a")
    _text(tmp_path / "a" / "notes.txt")
    with pytest.raises(ValueError, match=f"{tmp_path}: no video files found"):
        video_dataset_from_directory(tmp_path, on_error=on_error)
    with pytest.raises(ValueError, match="no class subfolders"):
        video_dataset_from_directory(tmp_path / "a", on_error=on_error)
    with pytest.raises(ValueError, match="not a directory"):
        video_dataset_from_directory(tmp_path / "missing", on_error=on_error)


def test_all_files_bad_in_skip_mode(tmp_path):
    os.makedirs(tmp_path / "a")
    _zero(tmp_path / "a" / "x.mp4")
    with pytest.raises(ValueError, match="no usable video files left"):
        video_dataset_from_directory(tmp_path, on_error="skip")


def test_grayscale_and_other_pixel_formats_in_one_dataset(tmp_path):
    folder = tmp_path / "px"
    folder.mkdir()
    write_video(folder / "a_gray.mkv", 8, codec="ffv1", pix_fmt="gray")
    write_video(folder / "b_yuv444.mkv", 8, codec="ffv1", pix_fmt="yuv444p")
    write_video(folder / "c_rgb.mov", 8, codec="png", pix_fmt="rgb24")
    write_video(folder / "d_pal8.gif", 8, codec="gif", pix_fmt="rgb8", gop=None)
    write_video(folder / "e_yuvj422.avi", 8, codec="mjpeg", pix_fmt="yuvj422p")
    write_video(folder / "f_yuv420_10bit.mkv", 8, codec="ffv1", pix_fmt="yuv420p10le")
    ds = video_dataset_from_directory(tmp_path, batch_size=6, num_frames=3, shuffle=False)
    clips, _ = next(iter(ds))
    assert clips.shape == (6, 3, 112, 112, 3)
    for clip in clips.numpy():
        assert [read_index(f) for f in clip] == [2, 3, 4]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_file_failing_mid_epoch_raises_naming_it(tmp_path, on_error):
    make_class_folders(tmp_path, {"a": 3, "b": 3}, num_frames=8)
    ds = video_dataset_from_directory(tmp_path, on_error=on_error, **KW)
    victim = ds.file_paths[3]
    # The file changes after the listing-time probe: now it is garbage.
    with open(victim, "wb") as f:
        f.write(b"\x00garbage" * 100)
    seen = 0
    with pytest.raises(tf.errors.OpError, match=os.path.basename(victim)) as info:
        for _ in ds:
            seen += 1
    assert seen == 3  # the three files before it came through; iteration did not just stop
    assert victim in str(info.value)


def test_file_removed_mid_epoch_raises_naming_it(tmp_path):
    make_class_folders(tmp_path, {"a": 4}, num_frames=8)
    ds = video_dataset_from_directory(tmp_path, **KW)
    victim = ds.file_paths[-1]
    os.remove(victim)
    # PyAV's wording, or tensorflow-io's ("PATH; No such file or directory").
    gone = f"{victim}(: unreadable: no such file|; No such file or directory)"
    with pytest.raises(tf.errors.OpError, match=gone):
        list(ds)


def test_file_shortened_mid_epoch_raises_naming_it(tmp_path):
    make_class_folders(tmp_path, {"a": 2}, num_frames=30)
    ds = video_dataset_from_directory(tmp_path, **{**KW, "num_frames": 30})
    victim = ds.file_paths[0]
    shutil.copy(write_video(tmp_path / "short.tmp.mp4", 10), victim)
    with pytest.raises(tf.errors.OpError, match=f"{victim}: stream ended after 10 frame"):
        list(ds)
