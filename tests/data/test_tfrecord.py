"""TFRecord frame shards: writing, reading with sample-before-decode, equality with direct decoding,
and use under tf.distribute and tf.data service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from videotools import make_class_folders, read_index, write_video

from keras_sideways.data import (
    BadVideoFilesError,
    tfrecord_video_dataset,
    video_dataset_from_directory,
    write_video_tfrecords,
)
from keras_sideways.data.tfrecord import METADATA_FILE, parse_video_example


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three classes of 20-frame index videos, plus one 5-frame video; written to 3 shards."""
    root = tmp_path_factory.mktemp("videos")
    make_class_folders(root, {"a": 3, "b": 2, "c": 2}, num_frames=20)
    write_video(root / "c" / "short.mkv", 5, codec="mpeg4")
    out = tmp_path_factory.mktemp("shards")
    paths = write_video_tfrecords(str(root), str(out), num_shards=3)
    return str(root), str(out), paths


def _records(paths):
    return [parse_video_example(r) for r in tf.data.TFRecordDataset(paths)]


def test_shards_and_metadata(shards):
    root, out, paths = shards
    assert [os.path.basename(p) for p in paths] == [
        f"videos-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    records = [len(_records([p])) for p in paths]
    assert records == [3, 3, 2]  # dealt round-robin
    meta = json.load(open(os.path.join(out, METADATA_FILE)))
    assert meta["class_names"] == ["a", "b", "c"] and meta["num_videos"] == 8
    assert meta["skipped"] == []
    lengths = sorted(int(r["jpegs"].shape[0]) for r in _records(paths))
    assert lengths == [5] + [20] * 7  # every frame stored


def test_round_trip_equals_direct_decoding_within_jpeg_tolerance(shards):
    root, out, _ = shards
    kw = dict(num_frames=6, frame_step=2, image_size=(64, 64), shuffle=False, batch_size=None)
    direct_list = list(video_dataset_from_directory(root, **kw))
    # Videos of one class hold identical frames, so (label, frame numbers) finds the match
    # whatever order the shards are read in.
    direct = {(int(y), tuple(read_index(f) for f in x.numpy())): x.numpy() for x, y in direct_list}
    via = list(tfrecord_video_dataset(out, **kw))
    assert len(via) == len(direct_list) == 8
    for x, y in via:
        x = x.numpy()
        key = (int(y), tuple(read_index(f) for f in x))  # same clip indices as direct decoding
        assert key in direct
        diff = np.abs(x - direct[key])
        # JPEG (q90, 4:2:0) error: small on average, largest on the sharp block edges.
        assert diff.mean() < 3 / 255 and np.percentile(diff, 99) < 40 / 255


def test_sample_before_decode_equals_decode_all(shards):
    _, out, _ = shards
    kw = dict(num_frames=4, frame_step=3, image_size=(48, 48), seed=3, batch_size=4)
    fast = [x.numpy() for x, _ in tfrecord_video_dataset(out, **kw)]
    slow = [x.numpy() for x, _ in tfrecord_video_dataset(out, sample_before_decode=False, **kw)]
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))


def test_sampling_labels_and_modes(shards):
    _, out, paths = shards
    ds = tfrecord_video_dataset(out, num_frames=8, image_size=(64, 64), shuffle=False,
                                batch_size=None)  # fmt: skip
    assert ds.class_names == ["a", "b", "c"] and ds.file_paths == paths
    seen = {}
    for x, y in ds:
        idx = [read_index(f) for f in x.numpy()]
        seen.setdefault(int(y), []).append(idx)
    assert sorted(len(v) for v in seen.values()) == [2, 3, 3]
    assert [0, 1, 2, 3, 4, 0, 1, 2] in seen[2]  # the 5-frame video loops
    assert [6, 7, 8, 9, 10, 11, 12, 13] in seen[0]  # centre clip of 20 frames

    train = tfrecord_video_dataset(out, num_frames=4, frame_step=2, image_size=(64, 64),
                                   seed=1, batch_size=None)  # fmt: skip
    starts = set()
    for _ in range(3):
        for x, _ in train:
            idx = [read_index(f) for f in x.numpy()]
            if idx[0] <= 4 and idx[-1] < 5:
                continue  # the short looping video
            assert np.all(np.diff(idx) == 2) and 0 <= idx[0] <= 13
            starts.add(idx[0])
    assert len(starts) > 3

    cat = tfrecord_video_dataset(paths, label_mode="categorical", num_frames=2,
                                 image_size=(16, 16), batch_size=8, shuffle=False)  # fmt: skip
    x, y = next(iter(cat))
    assert x.shape == (8, 2, 16, 16, 3) and y.shape == (8, 3)
    only = tfrecord_video_dataset(os.path.join(out, "*.tfrecord"), label_mode=None,
                                  num_frames=2, image_size=(16, 16), batch_size=8)  # fmt: skip
    assert next(iter(only)).shape == (8, 2, 16, 16, 3)


def test_seed_determinism(shards):
    _, out, _ = shards
    kw = dict(num_frames=3, image_size=(32, 32), seed=9, batch_size=3)
    a = [x.numpy() for x, _ in tfrecord_video_dataset(out, **kw)]
    b = [x.numpy() for x, _ in tfrecord_video_dataset(out, **kw)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_resize_at_write_time_and_bad_files(tmp_path):
    root = tmp_path / "v"
    make_class_folders(root, {"x": 2, "y": 1}, num_frames=6, size=(48, 64))
    open(root / "y" / "empty.mp4", "wb").close()
    with pytest.raises(BadVideoFilesError, match="empty.mp4: zero-byte file"):
        write_video_tfrecords(str(root), str(tmp_path / "o1"))
    out = tmp_path / "o2"
    write_video_tfrecords(str(root), str(out), image_size=(32, 32), on_error="skip")
    meta = json.load(open(out / METADATA_FILE))
    assert meta["num_videos"] == 3
    assert meta["skipped"] == [[str(root / "y" / "empty.mp4"), "zero-byte file"]]
    frame = tf.io.decode_jpeg(_records([str(p) for p in out.glob("*.tfrecord")])[0]["jpegs"][0])
    assert frame.shape == (32, 32, 3)
    x, _ = next(iter(tfrecord_video_dataset(str(out), image_size=(16, 24), num_frames=2)))
    assert x.shape[1:] == (2, 16, 24, 3)


def test_works_under_mirrored_strategy_and_tf_data_service(shards):
    """Pure TF ops: the dataset distributes over 2 replicas and runs on a tf.data service
    worker. Run in a fresh process, which can still split its CPU into 2 logical devices."""
    _, out, _ = shards
    script = textwrap.dedent(
        f"""
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_sideways.data import tfrecord_video_dataset
        kw = dict(num_frames=4, image_size=(32, 32), shuffle=False, batch_size=4)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        dist = strategy.experimental_distribute_dataset(tfrecord_video_dataset({out!r}, **kw))
        shapes = []
        for x, y in dist:
            shapes += [tuple(t.shape) for t in strategy.experimental_local_results(x)]
        assert shapes[0] == (2, 4, 32, 32, 3), shapes

        dispatcher = tf.data.experimental.service.DispatchServer()
        address = dispatcher.target.split("://")[1]
        worker = tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(dispatcher_address=address))
        local = tfrecord_video_dataset({out!r}, **kw)
        remote = local.apply(tf.data.experimental.service.distribute(
            processing_mode="parallel_epochs", service=dispatcher.target))
        a = [x.numpy() for x, _ in local]
        b = [x.numpy() for x, _ in remote]
        assert len(a) == len(b) == 2 and all(np.array_equal(p, q) for p, q in zip(a, b))
        print("DISTRIBUTED-OK")
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert "DISTRIBUTED-OK" in result.stdout, result.stdout + result.stderr
