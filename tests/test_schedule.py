"""The tick schedule, in pure Python (no TensorFlow)."""

import subprocess
import sys

import pytest

from keras_sideways import schedule


def test_schedule_imports_without_tensorflow():
    code = (
        "import sys, keras_sideways.schedule as s; "
        "print(s.min_clip_length(3)); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


@pytest.mark.parametrize("num_stages", [1, 2, 3, 5])
def test_validity_follows_design(num_stages):
    K = num_stages
    for stage in range(K):
        assert schedule.first_valid_cotangent_tick(K, stage) == 2 * K - 2 - stage
        assert schedule.frame_mismatch(K, stage) == 2 * (K - 1 - stage)
        for tick in range(3 * K):
            valid = schedule.cotangent_valid(K, stage, tick)
            # A valid cotangent descends from a real frame, and meets a real activation.
            assert valid == (schedule.cotangent_frame(K, stage, tick) >= 0)
            if valid:
                assert schedule.input_valid(stage, tick)
                mismatch = schedule.activation_frame(stage, tick) - schedule.cotangent_frame(
                    K, stage, tick
                )
                assert mismatch == schedule.frame_mismatch(K, stage)
    assert schedule.first_valid_output_tick(K) == K - 1
    assert schedule.output_frame(K, K - 1) == 0


def test_contributions_stateless_and_continued():
    K, T = 3, 7
    assert [schedule.contributions(K, k, T) for k in range(K)] == [3, 4, 5]
    # Two chunks of a stateful stream add up to one pass over the whole clip.
    for k in range(K):
        assert schedule.contributions(K, k, 3) + schedule.contributions(
            K, k, 4, start_tick=3
        ) == schedule.contributions(K, k, T)
    assert schedule.contributions(4, 0, 2) == 0


def test_clip_length_error_names_the_numbers_and_remedies():
    schedule.check_clip_length(3, 5)
    with pytest.raises(ValueError) as error:
        schedule.check_clip_length(3, 4)
    message = str(error.value)
    for part in ("K=3", "2K-1=5", "T=4", "stateful=True", "fewer stages"):
        assert part in message


def test_grid_prints_frames_and_counts():
    text = schedule.format_grid(3, 6)
    lines = text.splitlines()
    assert lines[0].split() == ["|", "t0", "t1", "t2", "t3", "t4", "t5"]
    top, middle, bottom = lines[2], lines[3], lines[4]
    assert top.startswith("stage 2") and bottom.startswith("stage 0")
    assert top.split()[3:] == ["a./g.", "a./g.", "a0/g0", "a1/g1", "a2/g2", "a3/g3", "n=4"]
    assert middle.split()[3:] == ["a./g.", "a0/g.", "a1/g.", "a2/g0", "a3/g1", "a4/g2", "n=3"]
    assert bottom.split()[3:] == ["a0/g.", "a1/g.", "a2/g.", "a3/g.", "a4/g0", "a5/g1", "n=2"]


def test_bad_stage_index():
    with pytest.raises(ValueError, match="stage must be in"):
        schedule.first_valid_cotangent_tick(2, 2)
