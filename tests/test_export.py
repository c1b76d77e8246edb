"""SavedModel export: served without this library, streaming equals `predict` delayed by K-1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_sideways import SidewaysModel

WINDOWS = [2, 1, 3]
FRAMES = 6


def windowed_model(pool: str | None) -> SidewaysModel:
    keras.utils.set_random_seed(0)
    stages = [
        keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(6, activation="tanh")]),
        keras.layers.Dense(5, activation="relu"),
        keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)]),
    ]
    model = SidewaysModel(stages, pool=pool, temporal_windows=WINDOWS)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def clips_and_targets(pool: str | None):
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(3, FRAMES, 4)).astype("float32")
    labels = rng.integers(0, 3, size=3)
    return clips, labels if pool == "mean" else np.repeat(labels[:, None], FRAMES, axis=1)


def run_stream(step, init, clips: np.ndarray, num_stages: int):
    """Feed every frame, then K-1 more to flush the pipeline; keep the valid outputs."""
    state = init(clips.shape[0])
    outputs = []
    frames = list(np.moveaxis(clips, 1, 0)) + [np.zeros_like(clips[:, 0])] * (num_stages - 1)
    for tick, frame in enumerate(frames):
        result = step(frame, state)
        assert bool(result["valid"]) == (tick >= num_stages - 1)
        state = {key: value for key, value in result.items() if key not in ("output", "valid")}
        if bool(result["valid"]):
            outputs.append(np.asarray(result["output"]))
    return np.stack(outputs, axis=1)


@pytest.mark.parametrize("stateful", [False, True])
def test_stream_step_is_predict_delayed(stateful):
    model = windowed_model(pool=None)
    clips, targets = clips_and_targets(None)
    model.fit(clips, targets, batch_size=3, epochs=1, verbose=0)
    expected = model.predict(clips, verbose=0)
    streamed = run_stream(model.stream_step, model.stream_init, clips, model.num_stages)
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-6)


def test_stream_step_rejects_wrong_state():
    model = windowed_model(pool=None)
    model.build((None, FRAMES, 4))
    state = model.stream_init(2)
    del state["history_2"]
    with pytest.raises(ValueError, match="expected .*history_2"):
        model.stream_step(np.zeros((2, 4), "float32"), state)


CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    clips = np.load(sys.argv[2])
    served = loaded.signatures["serving_default"](clips=tf.constant(clips))["output"].numpy()
    init = loaded.signatures["stream_init"]
    step = loaded.signatures["stream_step"]
    state = init(batch_size=tf.constant(clips.shape[0]))
    num_stages = int(sys.argv[3])
    frames = list(np.moveaxis(clips, 1, 0)) + [np.zeros_like(clips[:, 0])] * (num_stages - 1)
    outputs = []
    for frame in frames:
        result = step(frame=tf.constant(frame), **state)
        if bool(result["valid"]):
            outputs.append(result["output"].numpy())
        state = {k: v for k, v in result.items() if k not in ("output", "valid")}
    np.save(sys.argv[4], served)
    np.save(sys.argv[5], np.stack(outputs, axis=1))
    forbidden = [m for m in sys.modules if m.startswith("keras_sideways")]
    print(json.dumps({"signatures": sorted(loaded.signatures), "forbidden": forbidden,
                      "state_keys": sorted(state)}))
    """
)


@pytest.mark.parametrize("pool", ["mean", None])
def test_saved_model_served_by_plain_tensorflow_in_another_process(tmp_path, pool):
    model = windowed_model(pool)
    clips, targets = clips_and_targets(pool)
    model.fit(clips, targets, batch_size=3, epochs=1, verbose=0)
    expected = model.predict(clips, verbose=0)
    per_frame = model.sequence_forward(clips, training=False).numpy()
    export_dir = tmp_path / "saved"
    model.export(export_dir)

    np.save(tmp_path / "clips.npy", clips)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(script), str(export_dir), str(tmp_path / "clips.npy"),
         str(model.num_stages), str(tmp_path / "served.npy"), str(tmp_path / "streamed.npy")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["forbidden"] == [], "the child imported keras_sideways"
    assert {"serving_default", "stream_init", "stream_step"} <= set(report["signatures"])
    assert report["state_keys"] == sorted(model.stream_init(1))
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "streamed.npy"), per_frame, rtol=1e-5,
                               atol=1e-6)


def test_saved_model_cli_shows_and_runs(tmp_path):
    model = windowed_model("mean")
    clips, targets = clips_and_targets("mean")
    model.fit(clips, targets, batch_size=3, epochs=1, verbose=0)
    model.export(tmp_path / "saved")
    # saved_model_cli is installed with tensorflow, beside this interpreter.
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    cli = cli if os.path.exists(cli) else shutil.which("saved_model_cli")
    assert cli, "saved_model_cli not found (it ships with the tensorflow package)"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    shown = subprocess.run([cli, "show", "--all", "--dir", str(tmp_path / "saved")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "stream_init", "stream_step", "inputs['frame']",
                 "inputs['history_2']", "outputs['valid']"):
        assert name in shown.stdout
    np.save(tmp_path / "clips.npy", clips)
    ran = subprocess.run(
        [cli, "run", "--dir", str(tmp_path / "saved"), "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"clips={tmp_path / 'clips.npy'}",
         "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "output.npy"),
                               model.predict(clips, verbose=0), rtol=1e-5, atol=1e-6)


def test_export_needs_a_built_model(tmp_path):
    with pytest.raises(ValueError, match="needs a built model"):
        windowed_model(None).export(tmp_path / "x")
    with pytest.raises(ValueError, match="format='tf_saved_model' only"):
        windowed_model(None).export(tmp_path / "x", format="onnx")
