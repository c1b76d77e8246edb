"""``python -m keras_sideways.data.ffmpeg4``: clear failures, the shell line, the folder it makes.

The download itself runs in CI's tfio job (which builds its FFmpeg 4 folder with this helper)
and in the slow test below; the failure cases use real files and a real shell.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from keras_sideways.data import ffmpeg4


def test_a_wheel_with_another_hash_is_refused_naming_both_hashes(tmp_path):
    fake = tmp_path / ffmpeg4.WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as archive:  # the right layout, the wrong bytes
        for name in ffmpeg4.LIBRARIES:
            archive.writestr(f"opencv_python_headless.libs/{name}", b"not a library")
    with pytest.raises(ffmpeg4.FFmpeg4Error) as info:
        ffmpeg4.install(str(tmp_path / "out"), wheel=str(fake))
    message = str(info.value)
    assert str(fake) in message and ffmpeg4.WHEEL_SHA256 in message
    assert "is not the pinned" in message
    assert not (tmp_path / "out").exists()  # nothing unpacked from an unverified wheel


def test_command_line_failure_is_one_message_and_exit_1(tmp_path):
    missing = tmp_path / "nowhere.whl"
    result = subprocess.run(
        [sys.executable, "-m", "keras_sideways.data.ffmpeg4", str(tmp_path / "d"),
         "--wheel", str(missing)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""  # so that eval "$(...)" runs nothing
    assert f"error: {missing}: no such file" in result.stderr


def test_export_line_sets_the_path_in_a_real_shell(tmp_path):
    folder = str(tmp_path / "with space")
    for before in ("", "/opt/other"):
        script = f'eval "{ffmpeg4.export_line(folder)}"; printf %s "$LD_LIBRARY_PATH"'
        env = {**os.environ, "LD_LIBRARY_PATH": before}
        if not before:
            del env["LD_LIBRARY_PATH"]
        out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        assert out.stdout == (folder if not before else f"{folder}:{before}")


def _check_folder(folder: str) -> None:
    assert ffmpeg4.is_complete(folder)
    for link, target in ffmpeg4.LINKS.items():
        assert os.readlink(os.path.join(folder, link)) == target
    with open(os.path.join(folder, "libavformat.so.58"), "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_a_complete_folder_is_reused_without_downloading():
    # CI's tfio job puts the folder the helper made on LD_LIBRARY_PATH.
    folders = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    made = [p for p in folders if ffmpeg4.is_complete(p)]
    if not made:
        pytest.skip("no FFmpeg 4 folder from the helper on LD_LIBRARY_PATH")
    before = {n: os.stat(os.path.join(made[0], n)).st_mtime_ns for n in ffmpeg4.LIBRARIES}
    assert ffmpeg4.install(made[0]) == os.path.abspath(made[0])
    after = {n: os.stat(os.path.join(made[0], n)).st_mtime_ns for n in ffmpeg4.LIBRARIES}
    assert before == after
    _check_folder(made[0])


@pytest.mark.slow
def test_downloads_and_lays_out_the_pinned_wheel(tmp_path):
    """Needs the package index (48 MB download)."""
    result = subprocess.run(
        [sys.executable, "-m", "keras_sideways.data.ffmpeg4", str(tmp_path / "ffmpeg4")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ffmpeg4.export_line(str(tmp_path / "ffmpeg4"))
    _check_folder(str(tmp_path / "ffmpeg4"))
