"""Smoke runs of the examples with tiny settings, their outputs, and their handling of bad input.

The examples' real default runs take minutes; they are marked ``slow`` (and check the accuracy
the README reports).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_sideways.data import write_synthetic_actions

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def action_recognition():
    return load_example("action_recognition")


@pytest.fixture(scope="module")
def video_autoencoder():
    return load_example("video_autoencoder")


TINY = ["--videos-per-class", "4", "--frames", "5", "--image-size", "32", "--epochs", "1",
        "--batch-size", "4", "--verbose", "0"]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    import matplotlib.image

    assert matplotlib.image.imread(path).ndim == 3


def test_action_recognition_tiny_compare_run(action_recognition, tmp_path, capsys):
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    metrics = action_recognition.main(
        TINY + ["--compare", "--cache-dir", str(cache), "--output-dir", str(out)]
    )
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["chance"] == 0.25 and written["class_names"] == ["down", "left", "right", "up"]
    assert written["data"]["train_videos"] == 12 and written["data"]["test_videos"] == 4
    for mode in ("sideways", "backprop"):
        result = written[mode]
        assert 0.0 <= result["test_accuracy"] <= 1.0
        assert result["train_seconds"] > 0 and result["epochs"] == 1
        assert np.sum(result["confusion_matrix"]) == 4  # every held-out video, counted once
        assert np.isfinite(result["final_train_loss"])
    assert_png(out / "learning_curves.png")
    assert_png(out / "confusion_matrix.png")
    table = capsys.readouterr().out
    assert "sideways" in table and "backprop" in table and "chance" in table

    # The exported SavedModel, served by plain TensorFlow, classifies the held-out clips exactly
    # as the trained Keras model did (the same confusion matrix).
    loaded = tf.saved_model.load(str(out / "saved_model"))
    serve = loaded.signatures["serving_default"]
    args = action_recognition.parse_args(TINY + ["--cache-dir", str(cache)])
    _, held_out, _ = action_recognition.load_data(args, written["data"]["directory"])
    confusion = np.zeros((4, 4), dtype=int)
    for clips, labels in held_out:
        (logits,) = serve(clips).values()
        assert logits.shape == (clips.shape[0], 4)
        np.add.at(confusion, (labels.numpy(), np.argmax(logits, axis=-1)), 1)
    assert confusion.tolist() == written["sideways"]["confusion_matrix"]

    # Second run: the cached data set is reused, not rewritten.
    videos = sorted(cache.rglob("*.mp4"))
    stamps = [v.stat().st_mtime_ns for v in videos]
    action_recognition.main(
        TINY + ["--cache-dir", str(cache), "--output-dir", str(tmp_path / "again"),
                "--mode", "backprop", "--no-export"]
    )
    assert "Using the cached synthetic data set" in capsys.readouterr().out
    assert [v.stat().st_mtime_ns for v in videos] == stamps
    assert not (tmp_path / "again" / "saved_model").exists()
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert "backprop" in again and "sideways" not in again


def test_action_recognition_on_a_folder_with_two_videos_per_class(action_recognition, tmp_path,
                                                                   capsys):
    data = tmp_path / "videos"
    write_synthetic_actions(str(data), classes=["left", "right", "grow"], videos_per_class=2,
                            num_frames=6, image_size=(32, 32))
    metrics = action_recognition.main(
        TINY + ["--data", str(data), "--output-dir", str(tmp_path / "run"), "--no-export"]
    )
    # A 0.25 split rounds to 0 of 2 videos; the example raises it to hold out one per class.
    assert "Validation split raised" in capsys.readouterr().out
    assert metrics["data"]["train_videos"] == 3 and metrics["data"]["test_videos"] == 3
    assert metrics["chance"] == pytest.approx(1 / 3)
    assert metrics["class_names"] == ["grow", "left", "right"]


@pytest.mark.parametrize(
    "layout,message",
    [
        ("missing", "does not exist"),
        ("flat", "no class subfolders"),
        ("empty_classes", "no video files found"),
        ("one_class", "at least 2 class subfolders"),
        ("one_video", "'right' has 1"),
    ],
)
def test_bad_data_folders_get_a_message_not_a_traceback(action_recognition, tmp_path, capsys,
                                                        layout, message):
    data = tmp_path / "data"
    if layout == "flat":
        write_synthetic_actions(str(tmp_path / "gen"), videos_per_class=1, num_frames=4,
                                image_size=(16, 16))
        data.mkdir()
        for video in (tmp_path / "gen").rglob("*.mp4"):
            video.rename(data / video.name)
    elif layout == "empty_classes":
        (data / "walk").mkdir(parents=True)
        (data / "run").mkdir()
        (data / "run" / "notes.txt").write_text("not a video")
    elif layout == "one_class":
        write_synthetic_actions(str(tmp_path / "gen"), classes=["left", "right"],
                                videos_per_class=2, num_frames=4, image_size=(16, 16))
        data.mkdir()
        (tmp_path / "gen" / "left").rename(data / "left")
    elif layout == "one_video":
        write_synthetic_actions(str(data), classes=["left", "right"], videos_per_class=2,
                                num_frames=4, image_size=(16, 16))
        os.remove(data / "right" / "right_0001.mp4")
    code = action_recognition.cli(TINY + ["--data", str(data),
                                          "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


def test_bad_folder_through_the_script_exits_cleanly(tmp_path):
    """The real entry point: one 'error:' message on stderr, exit status 2, no traceback."""
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "clip.mp4").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "action_recognition.py"), "--data",
         str(tmp_path / "flat"), "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "error: " in result.stderr and "no class subfolders" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--frames", "4"], "at least 2K-1=5 frames"),
        (["--windows", "3", "2"], "one value per stage"),
        (["--image-size", "33"], "must be even"),
        (["--validation-split", "1.5"], "between 0 and 1"),
    ],
)
def test_bad_arguments_are_usage_errors(action_recognition, capsys, argv, message):
    with pytest.raises(SystemExit) as raised:
        action_recognition.parse_args(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_video_autoencoder_tiny_run(video_autoencoder, tmp_path):
    out = tmp_path / "run"
    metrics = video_autoencoder.main(
        ["--videos-per-class", "2", "--frames", "7", "--image-size", "16", "--epochs", "1",
         "--batch-size", "4", "--verbose", "0", "--cache-dir", str(tmp_path / "cache"),
         "--output-dir", str(out)]
    )
    written = json.loads((out / "metrics.json").read_text())
    assert written["task"] == "reconstruction"
    for mode in ("sideways", "backprop"):
        assert np.isfinite(written[mode]["test_psnr"]) and written[mode]["test_psnr"] > 0
    assert np.isfinite(metrics["baseline_psnr"])
    assert_png(out / "reconstructions.png")


def test_video_autoencoder_next_frame_needs_one_more_frame(video_autoencoder, capsys):
    # K = 4 stages need 7 input frames; next-frame prediction uses T-1 of them as inputs.
    with pytest.raises(SystemExit):
        video_autoencoder.parse_args(["--next-frame", "--frames", "7"])
    assert "--frames >= 8" in capsys.readouterr().err


@pytest.mark.slow
def test_action_recognition_default_run_reaches_the_reported_accuracy(tmp_path):
    """The README's main job, as a user runs it (about 5-10 minutes on 2 CPU cores)."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "action_recognition.py"),
         "--output-dir", str(tmp_path / "run"), "--verbose", "2"],
        capture_output=True, text=True, timeout=1500, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    accuracy = metrics["sideways"]["test_accuracy"]
    assert accuracy >= 0.8 and accuracy >= 3 * metrics["chance"], metrics["sideways"]
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").exists()
