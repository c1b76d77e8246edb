"""``video_dataset_from_directory``: output contract, labels, splits, sampling, determinism."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from videotools import BLUE, RED, make_class_folders, patch_colours, read_index, write_video

from keras_sideways.data import clip_indices, video_dataset_from_directory


def _all(ds):
    """Every element of a dataset as NumPy (clips, labels) arrays."""
    clips, labels = [], []
    for x, y in ds:
        clips.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(clips), np.concatenate(labels)


def test_output_contract_and_class_names(three_class_dir, expected_decoder):
    ds = video_dataset_from_directory(
        three_class_dir, batch_size=5, num_frames=6, image_size=(32, 48), seed=0
    )
    assert ds.class_names == ["a", "b", "c"]
    assert ds.decoder == expected_decoder
    assert len(ds.file_paths) == 12 and ds.skipped_files == []
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    x, y = batches[0]
    assert x.shape == (5, 6, 32, 48, 3) and x.dtype == "float32" and y.dtype == "int32"
    clips, labels = _all(ds)
    assert clips.min() >= 0.0 and clips.max() <= 1.0
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 5 + [2] * 3
    red, blue = patch_colours(clips[0, 0])
    np.testing.assert_allclose(red, RED, atol=20)
    np.testing.assert_allclose(blue, BLUE, atol=20)


def test_eval_order_labels_and_centre_clips(three_class_dir):
    ds = video_dataset_from_directory(
        three_class_dir, batch_size=4, num_frames=5, frame_step=2, shuffle=False,
        image_size=(64, 64),
    )  # fmt: skip
    clips, labels = _all(ds)
    assert labels.tolist() == [0] * 4 + [1] * 5 + [2] * 3  # listing order
    expected = clip_indices(20, 5, 2).tolist()  # 20-frame videos: centre clip [5, 7, ..., 13]
    for clip in clips:
        assert [read_index(f) for f in clip] == expected
    again, _ = _all(ds)
    assert np.array_equal(clips, again)  # evaluation is the same every epoch


def test_training_clips_are_random_strided_and_in_range(three_class_dir):
    ds = video_dataset_from_directory(
        three_class_dir, batch_size=None, num_frames=4, frame_step=3, seed=7, image_size=(64, 64)
    )
    starts = set()
    for _ in range(3):
        for clip, _ in ds:
            idx = [read_index(f) for f in clip.numpy()]
            assert np.all(np.diff(idx) == 3)
            assert 0 <= idx[0] <= 20 - 10
            starts.add(idx[0])
    assert len(starts) > 3  # starts vary between videos and epochs


def test_short_videos_loop_to_a_full_clip(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    write_video(folder / "short.mp4", 5)
    for shuffle in (False, True):
        ds = video_dataset_from_directory(
            tmp_path, batch_size=None, num_frames=8, shuffle=shuffle, seed=1, image_size=(64, 64)
        )
        clip, label = next(iter(ds))
        assert clip.shape == (8, 64, 64, 3)
        assert [read_index(f) for f in clip.numpy()] == [0, 1, 2, 3, 4, 0, 1, 2]


def test_label_modes(three_class_dir):
    kw = dict(batch_size=12, num_frames=2, shuffle=False, image_size=(16, 16))
    _, y = next(iter(video_dataset_from_directory(three_class_dir, label_mode="categorical", **kw)))
    assert y.shape == (12, 3) and y.dtype == "float32"
    assert y.numpy().argmax(1).tolist() == [0] * 4 + [1] * 5 + [2] * 3
    x = next(iter(video_dataset_from_directory(three_class_dir, label_mode=None, **kw)))
    assert x.shape == (12, 2, 16, 16, 3)  # clips only
    x = next(iter(video_dataset_from_directory(three_class_dir, labels=None, **kw)))
    assert x.shape == (12, 2, 16, 16, 3)
    ds = video_dataset_from_directory(
        three_class_dir, label_mode="binary", class_names=["c", "a"], **kw
    )
    _, y = next(iter(ds))
    assert ds.class_names == ["c", "a"]
    assert y.shape == (7, 1) and y.numpy().ravel().tolist() == [0] * 3 + [1] * 4


def test_class_names_pick_and_order_classes(three_class_dir):
    ds = video_dataset_from_directory(
        three_class_dir, class_names=["c", "a"], shuffle=False, batch_size=20, num_frames=1,
        image_size=(16, 16),
    )  # fmt: skip
    _, y = next(iter(ds))
    assert ds.class_names == ["c", "a"]
    assert y.numpy().tolist() == [0] * 3 + [1] * 4
    assert all(os.sep + "b" + os.sep not in p for p in ds.file_paths)
    with pytest.raises(ValueError, match="class_names"):
        video_dataset_from_directory(three_class_dir, class_names=["a", "zzz"])


def test_explicit_label_list(three_class_dir):
    labels = list(range(12))
    ds = video_dataset_from_directory(
        three_class_dir, labels=labels, shuffle=False, batch_size=12, num_frames=1,
        image_size=(16, 16),
    )  # fmt: skip
    _, y = next(iter(ds))
    assert y.numpy().tolist() == labels and ds.class_names is None
    with pytest.raises(ValueError, match="3 labels given for 12 video files"):
        video_dataset_from_directory(three_class_dir, labels=[0, 1, 2])


def test_validation_split_is_disjoint_covering_and_per_class(tmp_path):
    make_class_folders(tmp_path, {"p": 10, "q": 10}, num_frames=4, size=(16, 16))
    kw = dict(validation_split=0.3, seed=5, num_frames=1, image_size=(16, 16))
    train = video_dataset_from_directory(tmp_path, subset="training", **kw)
    val = video_dataset_from_directory(tmp_path, subset="validation", **kw)
    assert not set(train.file_paths) & set(val.file_paths)
    assert len(set(train.file_paths) | set(val.file_paths)) == 20
    assert len(val.file_paths) == 6
    assert sum("/p/" in p for p in val.file_paths) == 3  # 30% of each class
    both = video_dataset_from_directory(tmp_path, subset="both", **kw)
    assert [d.file_paths for d in both] == [train.file_paths, val.file_paths]
    other = video_dataset_from_directory(tmp_path, subset="validation", **{**kw, "seed": 6})
    assert other.file_paths != val.file_paths  # the seed decides the split
    with pytest.raises(ValueError, match="seed"):
        video_dataset_from_directory(tmp_path, validation_split=0.3, subset="training")
    with pytest.raises(ValueError, match="together"):
        video_dataset_from_directory(tmp_path, validation_split=0.3, seed=1)


def test_seed_makes_epochs_reproducible(three_class_dir):
    kw = dict(batch_size=4, num_frames=3, image_size=(32, 32), seed=11)
    first = video_dataset_from_directory(three_class_dir, **kw)
    second = video_dataset_from_directory(three_class_dir, **kw)
    a1, b1 = _all(first), _all(second)
    assert np.array_equal(a1[0], b1[0]) and np.array_equal(a1[1], b1[1])
    a2, b2 = _all(first), _all(second)  # epoch 2: reshuffled, still equal across datasets
    assert np.array_equal(a2[0], b2[0])
    assert not np.array_equal(a1[0], a2[0])
    other = _all(video_dataset_from_directory(three_class_dir, **{**kw, "seed": 12}))
    assert not np.array_equal(a1[0], other[0])


def test_auto_decoder_logs_its_choice(three_class_dir, caplog):
    with caplog.at_level(logging.INFO, logger="keras_sideways.data"):
        ds = video_dataset_from_directory(three_class_dir, decoder="auto", num_frames=1)
    assert ds.decoder in ("pyav", "tfio")
    assert any('decoder="auto": using' in r.getMessage() for r in caplog.records)


def test_parallel_decoding_keeps_listing_order(tmp_path):
    # Videos of different lengths finish decoding at different times; order must not change.
    folder = tmp_path / "k"
    folder.mkdir()
    for i, n in enumerate([60, 3, 40, 5, 80, 2]):
        write_video(folder / f"v{i}.mp4", n)
    ds = video_dataset_from_directory(
        tmp_path, labels=None, shuffle=False, batch_size=None, num_frames=2, image_size=(64, 64),
        num_parallel_calls=4,
    )  # fmt: skip
    firsts = [read_index(clip.numpy()[0]) for clip in ds]
    assert firsts == [clip_indices(n, 2, 1)[0] for n in [60, 3, 40, 5, 80, 2]]


def test_mixed_resolutions_are_resized(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    write_video(folder / "small.mp4", 6, size=(48, 64))
    write_video(folder / "large.mkv", 6, size=(96, 128), codec="mpeg4")
    write_video(folder / "tall.webm", 6, size=(80, 32), codec="libvpx")
    ds = video_dataset_from_directory(
        tmp_path, batch_size=3, num_frames=4, shuffle=False, image_size=(40, 40)
    )
    clips, _ = _all(ds)
    assert clips.shape == (3, 4, 40, 40, 3)
    for clip in clips:
        assert [read_index(f) for f in clip] == [1, 2, 3, 4]
        red, blue = patch_colours(clip[0])
        np.testing.assert_allclose(red, RED, atol=25)
        np.testing.assert_allclose(blue, BLUE, atol=25)


@pytest.mark.parametrize("shuffle", [True, False])
def test_cache_gives_the_same_clips_without_decoding_again(three_class_dir, shuffle):
    kw = dict(batch_size=4, num_frames=3, frame_step=2, image_size=(32, 32), seed=5,
              shuffle=shuffle)
    plain = video_dataset_from_directory(three_class_dir, **kw)
    cached = video_dataset_from_directory(three_class_dir, cache=True, **kw)
    for _ in range(2):  # the second epoch samples from memory: new clips if shuffled
        expected, got = _all(plain), _all(cached)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
    # Really from memory: the files can go once the first epoch has run.
    for path in cached.file_paths:
        os.rename(path, path + ".gone")
    try:
        assert _all(cached)[0].shape == expected[0].shape
    finally:
        for path in cached.file_paths:
            os.rename(path + ".gone", path)

