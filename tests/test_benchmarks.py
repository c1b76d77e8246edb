"""Benchmarks run as their commands do. `benchmarks/depth_gpu.py` has no GPU to run on here: its
`--device-type CPU` check runs the same code on logical CPU devices, so that the first GPU
measurement is one command that works. `benchmarks/tick_loop.py` (the C x in-flight grid of
docs/scaling.md) runs its quick form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "depth_gpu.py"
CONFIGS = {"sideways_depth", "sideways_one_gpu", "backprop", "mirrored_backprop"}


TICK_LOOP = SCRIPT.parent / "tick_loop.py"


def run_script(*arguments: str, timeout: float = 600,
               script: Path = SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *arguments], capture_output=True,
                          text=True, timeout=timeout)


def test_a_batch_that_does_not_split_over_the_replicas_is_refused_by_name():
    result = run_script("--device-type", "CPU", "--batch", "10", timeout=120)
    assert result.returncode == 2
    assert "--batch 10 does not split evenly over 3 replicas" in result.stderr
    assert "multiple of 12" in result.stderr


@pytest.mark.slow
def test_depth_gpu_runs_end_to_end_on_logical_cpu_devices(tmp_path):
    output = tmp_path / "depth_gpu.json"
    result = run_script("--device-type", "CPU", "--batch", "12", "--frames", "8", "--rounds",
                        "1", "--steps", "1", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["device_type"] == "CPU"
    assert set(report["models"]) == {"isotropic", "temporal"}
    for name, num_stages in (("isotropic", 4), ("temporal", 3)):
        entry = report["models"][name]
        assert entry["num_stages"] == num_stages
        assert len(entry["stage_devices"]) == num_stages
        assert set(entry["frames_per_second"]) == CONFIGS
        assert all(rate > 0 for rate in entry["frames_per_second"].values())
        assert set(entry["paired_ratios"]) == {f"sideways_depth/{c}"
                                               for c in CONFIGS - {"sideways_depth"}}
    # The per-model files of the child processes are merged and removed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth_gpu.json"]


@pytest.mark.parametrize("argument, value, message", [
    ("--configs", "8:1,8", "--configs: '8' is not C:P"),
    ("--memory-frames", "64,16", "--memory-frames: '64,16' must increase"),
    ("--memory-frames", "64", "--memory-frames: '64' is not two or more"),
    # --quick fills only what is not given: a bad list given with it is still checked.
    ("--quick --memory-frames", "64,16", "--memory-frames: '64,16' must increase"),
])
def test_a_tick_loop_argument_it_cannot_run_is_refused_by_name(argument, value, message):
    result = run_script(*argument.split(), value, timeout=120, script=TICK_LOOP)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.slow
def test_tick_loop_grid_runs_and_writes_its_figures(tmp_path):
    output = tmp_path / "tick_loop.json"
    # --quick keeps the clip lengths given (its own are 16,32).
    result = run_script("--quick", "--memory-frames", "16,40", "--output", str(output),
                        script=TICK_LOOP)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["configs"] == ["d:d", "d:1"]
    assert set(report["speed"]["over_backprop"]) == {"d:d", "d:1"}
    assert all(rate > 0 for rate in report["speed"]["frames_per_second"].values())
    # The plans are the ones asked for: the default keeps two in flight, d:1 one.
    assert "parallel_iterations=2" in report["speed"]["plans"]["d:d"]
    assert "parallel_iterations=1" in report["speed"]["plans"]["d:1"]
    for config in ("backprop", "d:d", "d:1"):
        assert set(report["memory"][config]["mib"]) == {"T16", "T40"}
        assert all(mib > 0 for mib in report["memory"][config]["mib"].values())
    # Backprop holds every frame's activations: its step memory grows with T, Sideways' one in
    # flight does not.
    assert report["memory"]["backprop"]["longest_over_shortest"] > 1.5
    assert report["memory"]["d:1"]["longest_over_shortest"] < 1.5
