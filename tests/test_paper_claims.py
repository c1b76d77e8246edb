"""benchmarks/paper_claims.py: the pieces its measurements rest on, and a slow `--quick` run.

The fast tests pin the frame bookkeeping of the gradient-alignment comparison against
`keras_sideways.schedule`, the clip cutting of the smoothness sweep, and that the alignment
measurement reads exactly 1 where the algorithm is exact (the top stage against backprop over the
same frames; every stage on a static clip).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_sideways import models, schedule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("paper_claims",
                                                  ROOT / "benchmarks" / "paper_claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_loss_and_activation_frames_follow_the_tick_grid(claims):
    # The grid of docs/algorithm.md (K=3, T=7): stage 0 meets a4..a6 with g0..g2, stage 1 a3..a5
    # with g0..g3, stage 2 a0..a4 with g0..g4.
    expected = {0: ([0, 1, 2], [4, 5, 6]), 1: ([0, 1, 2, 3], [2, 3, 4, 5]),
                2: ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])}
    for stage, (losses, activations) in expected.items():
        assert list(claims.sideways_loss_frames(3, stage, 7)) == losses
        assert list(claims.sideways_activation_frames(3, stage, 7)) == activations
    for k_stages in (1, 2, 3, 4):
        for stage in range(k_stages):
            for frames in range(2 * k_stages - 1, 16):
                used = claims.sideways_loss_frames(k_stages, stage, frames)
                assert len(used) == schedule.contributions(k_stages, stage, frames)
                met = claims.sideways_activation_frames(k_stages, stage, frames)
                assert [a - g for a, g in zip(met, used, strict=True)] == [
                    schedule.frame_mismatch(k_stages, stage)] * len(used)


def test_cosines_per_stage(claims):
    a = [np.array([1.0, 0.0]), np.array([2.0]), np.array([[1.0, 1.0]])]
    b = [np.array([2.0, 0.0]), np.array([-1.0]), np.array([[1.0, -1.0]])]
    owner = [0, 0, 1]  # stage 0: [1, 0, 2] vs [2, 0, -1]; stage 1: [1, 1] vs [1, -1]
    cosines = claims.stage_cosines(a, b, owner, 2)
    assert cosines[0] == pytest.approx(0.0)
    assert cosines[1] == pytest.approx(0.0)
    assert claims.stage_cosines(a, a, owner, 2) == pytest.approx([1.0, 1.0])
    assert claims.stage_norm_ratios(a, b, owner, 2) == pytest.approx([1.0, 1.0])
    assert math.isnan(claims.cosine(np.zeros(3), np.ones(3)))


def test_cut_clips_steps_shuffles_and_never_loops(claims):
    # Video v, frame f holds the value 100*v + f in every pixel.
    videos = np.zeros((2, 30, 2, 2, 3), dtype=np.float64)
    videos += np.arange(30)[None, :, None, None, None] + 100 * np.arange(2)[:, None, None, None,
                                                                               None]
    videos = videos.astype(np.uint8)
    indices = np.array([0, 1])

    def frames(clips):
        return np.rint(clips[:, :, 0, 0, 0] * 255).astype(int) % 100

    centre = frames(claims.cut_clips(videos, indices, 4, claims.Condition(frame_step=3), None))
    assert centre.tolist() == [[10, 13, 16, 19]] * 2  # span 10, centred in 30 frames
    rng = np.random.default_rng(0)
    drawn = frames(claims.cut_clips(videos, indices, 4, claims.Condition(frame_step=9), rng))
    assert all(np.all(np.diff(row) == 9) for row in drawn)  # span 28 of 30: starts 0..2
    shuffled = frames(claims.cut_clips(videos, indices, 5, claims.Condition(shuffled=True), rng))
    for row in shuffled:
        assert sorted(row) == list(range(min(row), min(row) + 5))
    held_out = claims.cut_clips(videos, indices, 5, claims.Condition(shuffled=True), None)
    again = claims.cut_clips(videos, indices, 5, claims.Condition(shuffled=True), None)
    np.testing.assert_array_equal(held_out, again)  # held-out orders are fixed per video
    static = frames(claims.cut_clips(videos, indices, 4, claims.Condition(static=True), rng))
    assert all(len(set(row)) == 1 for row in static)
    with pytest.raises(ValueError, match="spans 31 frames"):
        claims.cut_clips(videos, indices, 4, claims.Condition(frame_step=10), None)


def test_alignment_is_exact_where_sideways_is(claims):
    keras.utils.set_random_seed(0)
    model = models.temporal_cnn_classifier(4, filters=(4, 4, 8)).build_model()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    clips = rng.uniform(size=(3, 7, 8, 8, 3)).astype("float32")
    labels = np.array([0, 1, 2])
    moving = claims.alignment_on_batch(model, clips, labels)
    # The top stage's update is exact backprop over the frames whose losses it received.
    assert moving["cos_restricted"][2] == pytest.approx(1.0, abs=1e-5)
    assert moving["norm_ratio_restricted"][2] == pytest.approx(1.0, abs=1e-4)
    assert all(-1.0 <= c <= 1.0 + 1e-6 for c in moving["cos_full"] + moving["cos_restricted"])
    static = np.repeat(clips[:, :1], 7, axis=1)
    still = claims.alignment_on_batch(model, static, labels)
    # On a static clip, Sideways is exact backprop at every stage (DESIGN.md §2).
    assert still["cos_restricted"] == pytest.approx([1.0] * 3, abs=1e-5)
    assert still["cos_full"] == pytest.approx([1.0] * 3, abs=1e-5)


@pytest.mark.slow
def test_quick_run_writes_results_and_figures(claims, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    results = claims.main(["--quick", "--output-dir", str(out),
                           "--cache-dir", str(tmp_path / "cache")])
    written = json.loads((out / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    modes = {e["mode"] for e in written["smoothness"]}
    assert modes == {"sideways", "backprop"}
    for entry in written["smoothness"]:
        assert {"mode", "frame_step", "shuffled", "seed", "test_accuracy",
                "train_accuracy"} <= set(entry)
    tops = [e for e in written["gradient_alignment"] if e["stage"] == 2]
    assert all(e["cos_restricted"] == pytest.approx(1.0, abs=1e-4) for e in tops)
    assert {r["mode"] for r in written["encoder_decoder"]["runs"]} == modes
    for name in ("smoothness", "smoothness_curves", "gradient_alignment",
                 "encoder_decoder_psnr"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
