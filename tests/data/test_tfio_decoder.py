"""tensorflow-io as a first-class decoder: PyAV's clips, PyAV's bad-input policy, in-graph.

The decoding tests need tensorflow-io that can decode video here: CI's tfio job (TensorFlow
2.16, tensorflow-io 0.37.1, FFmpeg 4 from ``python -m keras_sideways.data.ffmpeg4``). Elsewhere
they are skipped with the probe's reasons (``test_tfio_probe.py`` checks those). The tests of the
decoder choice run everywhere: in the tfio job ``KERAS_SIDEWAYS_DECODER=tfio`` makes every
``decoder="auto"`` dataset of the data tests decode with tensorflow-io, and
``test_the_decoder_that_runs_is_the_one_expected`` fails if it fell back to PyAV.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_decoding import CODECS
from videotools import make_class_folders, read_index, write_video

from keras_sideways import SidewaysModel
from keras_sideways.data import (
    TfioUnavailableError,
    decode_clip,
    probe_video,
    tfio_decoder_status,
    video_dataset_from_directory,
)
from keras_sideways.data.pyav_decoder import iter_frames
from keras_sideways.data.video_folder import DECODER_VARIABLE

STATUS = tfio_decoder_status()
needs_tfio = pytest.mark.skipif(
    not STATUS.available, reason="tensorflow-io cannot decode video: " + "; ".join(STATUS.reasons)
)


def _all_clips(ds: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([clips.numpy() for clips, _ in ds])


def _graph_ops(ds: tf.data.Dataset) -> bytes:
    """The dataset's serialized graph, its functions included (op names appear in it)."""
    return ds._as_serialized_graph().numpy()  # noqa: SLF001 - the only view of the real graph


def test_the_decoder_that_runs_is_the_one_expected(three_class_dir, expected_decoder):
    ds = video_dataset_from_directory(three_class_dir, num_frames=2, image_size=(16, 16))
    assert ds.decoder == expected_decoder
    graph = _graph_ops(ds)
    if expected_decoder == "tfio":
        # tensorflow-io's FFmpeg reader is in the pipeline, and no Python decoding is.
        assert b"IO>FfmpegVideoReadableInit" in graph
        assert b"PyFunc" not in graph  # neither py_function nor numpy_function
        assert STATUS.ffmpeg_libraries, "tfio decoded, so its FFmpeg libraries must be mapped"
    else:
        assert b"PyFunc" in graph and b"IO>Ffmpeg" not in graph
    assert len(_all_clips(ds)) == 12


def test_environment_variable_chooses_for_auto(three_class_dir, monkeypatch, caplog):
    monkeypatch.setenv(DECODER_VARIABLE, "pyav")
    with caplog.at_level(logging.INFO, logger="keras_sideways.data"):
        ds = video_dataset_from_directory(three_class_dir, num_frames=1, image_size=(16, 16))
    assert ds.decoder == "pyav"
    assert any(f"{DECODER_VARIABLE}=pyav" in r.getMessage() for r in caplog.records)
    # An explicit decoder wins over the variable.
    monkeypatch.setenv(DECODER_VARIABLE, "tfio")
    assert video_dataset_from_directory(three_class_dir, decoder="pyav").decoder == "pyav"
    if STATUS.available:
        assert video_dataset_from_directory(three_class_dir, num_frames=1).decoder == "tfio"
    else:
        with pytest.raises(TfioUnavailableError, match="cannot decode video here"):
            video_dataset_from_directory(three_class_dir)
    monkeypatch.setenv(DECODER_VARIABLE, "opencv")
    with pytest.raises(ValueError, match=f'{DECODER_VARIABLE} must be "pyav" or "tfio"'):
        video_dataset_from_directory(three_class_dir)


def _tfio_clip(path: str, indices, size) -> np.ndarray:
    from keras_sideways.data.tfio_decoder import tfio_decode_clip  # noqa: PLC0415

    return tfio_decode_clip(tf.constant(path), tf.constant(indices, tf.int64), size).numpy()


def _tfio_video(path: str, frames: int, size) -> np.ndarray:
    from keras_sideways.data.tfio_decoder import tfio_decode_video  # noqa: PLC0415

    return tfio_decode_video(tf.constant(path), tf.constant(frames, tf.int64), size).numpy()


# Every codec/container of test_decoding.py, a variable-frame-rate file and grayscale.
_VFR_PTS = np.cumsum(np.random.default_rng(0).integers(10, 100, 30)).tolist()
TFIO_CASES = CODECS + [
    ("vfr.mkv", {"pts": _VFR_PTS, "time_base": Fraction(1, 1000), "gop": 8}),
    ("gray.mkv", {"codec": "ffv1", "pix_fmt": "gray"}),
]


@needs_tfio
@pytest.mark.parametrize("name,settings", TFIO_CASES, ids=[c[0] for c in TFIO_CASES])
def test_same_frames_and_frame_count_as_pyav(tmp_path, name, settings):
    path = write_video(tmp_path / name, 30, **settings)
    info = probe_video(path)
    whole = _tfio_video(path, info.num_frames, (64, 64))
    assert whole.shape == (30, 64, 64, 3)
    # At the native size nothing is resized: the same FFmpeg conversion, bit for bit.
    np.testing.assert_array_equal(whole, np.stack(list(iter_frames(path))))
    indices = [0, 5, 17, 29, 17, 5]  # out of order, with repeats
    clip = _tfio_clip(path, indices, (64, 64))
    assert [read_index(f) for f in clip] == indices
    np.testing.assert_array_equal(clip, decode_clip(path, indices, None, info=info))


@needs_tfio
def test_resized_frames_differ_from_pyav_only_within_the_documented_bound(three_class_dir):
    # PyAV resizes in swscale (bilinear, from YUV); tfio converts at full size, then
    # tf.image.resize (bilinear, antialiased). docs/data.md gives these bounds.
    for size in [(48, 80), (20, 20), (112, 112)]:
        kw = dict(batch_size=4, num_frames=4, frame_step=3, image_size=size, shuffle=False)
        pyav = _all_clips(video_dataset_from_directory(three_class_dir, decoder="pyav", **kw))
        tfio = _all_clips(video_dataset_from_directory(three_class_dir, decoder="tfio", **kw))
        assert tfio.shape == pyav.shape
        for a, b in zip(pyav.reshape(-1, *size, 3), tfio.reshape(-1, *size, 3), strict=True):
            assert read_index(a) == read_index(b)  # the same frames
        difference = np.abs(pyav - tfio) * 255
        assert difference.mean() <= 3.0, (size, difference.mean())
        assert np.percentile(difference, 99) <= 24.0, (size, np.percentile(difference, 99))


@needs_tfio
@pytest.mark.parametrize("cache", [False, True])
def test_same_training_and_evaluation_clips_as_pyav(three_class_dir, cache):
    for shuffle in (True, False):
        kw = dict(batch_size=4, num_frames=4, frame_step=2, image_size=(64, 64), seed=3,
                  shuffle=shuffle, cache=cache)  # fmt: skip
        pyav = video_dataset_from_directory(three_class_dir, decoder="pyav", **kw)
        tfio = video_dataset_from_directory(three_class_dir, decoder="tfio", **kw)
        assert tfio.decoder == "tfio" and tfio.cached == cache
        for _ in range(2):  # epoch 2 draws new random clips (and, cached, reads memory)
            np.testing.assert_array_equal(_all_clips(tfio), _all_clips(pyav))


@needs_tfio
def test_errors_name_the_file_and_say_what_is_wrong(tmp_path):
    short = write_video(tmp_path / "short.mp4", 10)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=f"{short}: stream ended after 10 frame\\(s\\) but frame 12 was needed",
    ):
        _tfio_clip(short, [4, 12], (32, 32))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"unable to open file: {garbage}: "):
        _tfio_clip(str(garbage), [0], (32, 32))
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(tf.errors.NotFoundError, match=f"{missing}; No such file"):
        _tfio_clip(missing, [0], (32, 32))


@needs_tfio
def test_skip_counts_bad_files_and_decodes_the_rest(tmp_path, caplog):
    make_class_folders(tmp_path, {"a": 2, "b": 2}, num_frames=8)
    (tmp_path / "a" / "empty.mp4").write_bytes(b"")
    (tmp_path / "b" / "text.avi").write_text("not a video\n" * 10)
    with caplog.at_level(logging.WARNING, logger="keras_sideways.data"):
        ds = video_dataset_from_directory(
            tmp_path, decoder="tfio", on_error="skip", batch_size=None, num_frames=3,
            image_size=(32, 32), shuffle=False,
        )  # fmt: skip
    assert ds.decoder == "tfio"
    assert sorted(os.path.basename(p) for p, _ in ds.skipped_files) == ["empty.mp4", "text.avi"]
    assert any("Skipped 2 unusable" in r.getMessage() for r in caplog.records)
    assert [[read_index(f) for f in clip.numpy()] for clip, _ in ds] == [[2, 3, 4]] * 4


@needs_tfio
def test_trains_under_mirrored_strategy_like_pyav(three_class_dir):
    strategy = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])
    init = keras.initializers.GlorotUniform  # seeded: both runs start from the same weights

    def train(decoder: str) -> list[np.ndarray]:
        ds = video_dataset_from_directory(
            three_class_dir, decoder=decoder, batch_size=4, num_frames=4, image_size=(64, 64),
            seed=1,
        )  # fmt: skip
        with strategy.scope():
            stages = [
                keras.layers.Conv2D(4, 3, strides=2, activation="relu", kernel_initializer=init(5)),
                keras.Sequential([keras.layers.GlobalMaxPooling2D(),
                                  keras.layers.Dense(3, kernel_initializer=init(6))]),
            ]  # fmt: skip
            model = SidewaysModel(stages)
            model.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        history = model.fit(ds, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        return model.get_weights()

    for a, b in zip(train("pyav"), train("tfio"), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_tfio
def test_parallel_calls_on_one_reader_take_turns(three_class_dir):
    # tensorflow-io's reader op re-initialises its one resource on every call: unguarded, 8
    # parallel calls on one reader crash or hang the process. Its mutex makes them take turns.
    from keras_sideways.data.tfio_decoder import make_tfio_decoders  # noqa: PLC0415

    paths = sorted(
        os.path.join(root, name) for root, _, names in os.walk(three_class_dir) for name in names
    ) * 2
    clip_fn, _ = make_tfio_decoders((64, 64), 5, readers=1)
    indices = tf.constant([3, 6, 9, 12, 15], tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: clip_fn(path, indices), num_parallel_calls=8
    )
    expected = np.stack([decode_clip(p, indices.numpy(), None) for p in paths])
    for _ in range(3):
        np.testing.assert_array_equal(np.stack([clip.numpy() for clip in ds]), expected)
