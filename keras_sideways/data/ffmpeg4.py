"""FFmpeg 4 for tensorflow-io's video ops, from a package registry: ``python -m ... DIR``.

tensorflow-io 0.37.1's FFmpeg op library (``libtensorflow_io_ffmpeg_4.2.so``) is linked against
``libavformat.so.58`` and ``libswscale.so.5`` (FFmpeg 4); current distributions ship FFmpeg 5+
only, and PyAV's wheels no longer bundle FFmpeg 4. ``opencv-python-headless==4.6.0.66`` is the
last PyPI release whose wheel bundles FFmpeg 4.4 (libavformat 58.76.100, libswscale 5.9.100), so
this helper:

1. downloads that wheel with pip (``--require-hashes``: the hash below is pinned), or takes an
   already downloaded one (``--wheel``) and checks the same hash;
2. unpacks only its FFmpeg libraries and their own dependencies (9 files, ~24 MB) into DIR,
   under their bundled (hashed) names, which is how they find one another;
3. adds the two links tensorflow-io asks for, ``libavformat.so.58`` and ``libswscale.so.5``;
4. prints ``export LD_LIBRARY_PATH=DIR...`` on stdout (everything else goes to stderr), so
   ``eval "$(python -m keras_sideways.data.ffmpeg4 DIR)"`` sets it in the calling shell.

``LD_LIBRARY_PATH`` must be set before Python starts: the dynamic loader reads it once, at
process start. No other library is shadowed: the two links are the only unhashed names in DIR,
and nothing but tensorflow-io asks for them. Running it again on a complete DIR downloads nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import zipfile

WHEEL_REQUIREMENT = "opencv-python-headless==4.6.0.66"
WHEEL_NAME = (
    "opencv_python_headless-4.6.0.66-cp36-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
)
WHEEL_SHA256 = "2c032c373e447c3fc2a670bca20e2918a1205a6e72854df60425fd3f82c78c32"
FFMPEG_VERSION = "FFmpeg 4.4 (libavformat 58.76.100, libswscale 5.9.100)"

_LIBS_DIR = "opencv_python_headless.libs"
# libavformat's and libswscale's dependency closure inside the wheel (their NEEDED entries),
# under the wheel's names; the remaining system dependencies (libc, libz, libstdc++) are
# everywhere.
LIBRARIES = (
    "libavformat-8ef5c7db.so.58.76.100",
    "libavcodec-5896f664.so.58.134.100",
    "libavutil-9c768859.so.56.70.100",
    "libswscale-e6451464.so.5.9.100",
    "libswresample-99364a1c.so.3.9.100",
    "libvpx-f22f1483.so.7.0.0",
    "libssl-c8c53640.so.1.1",
    "libcrypto-d21001fc.so.1.1",
    "libbz2-a273e504.so.1.0.6",
)
# The sonames tensorflow-io's FFmpeg 4 op library is linked against -> the file providing each.
LINKS = {
    "libavformat.so.58": "libavformat-8ef5c7db.so.58.76.100",
    "libswscale.so.5": "libswscale-e6451464.so.5.9.100",
}
RECIPE = (
    "pip install 'keras-sideways[tfio]', then "
    'eval "$(python -m keras_sideways.data.ffmpeg4 DIR)" (fetches FFmpeg 4.4 from the '
    "opencv-python-headless==4.6.0.66 wheel into DIR and prints the LD_LIBRARY_PATH line) before "
    "starting Python"
)


class FFmpeg4Error(RuntimeError):
    """The FFmpeg 4 folder cannot be made; the message says what failed and what to do."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_platform() -> None:
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        raise FFmpeg4Error(
            f"only x86-64 Linux is supported (this is {sys.platform} {platform.machine()}): the "
            f"pinned wheel is {WHEEL_NAME}. Install FFmpeg 4 (libavformat.so.58, "
            "libswscale.so.5) another way, or use decoder=\"pyav\"."
        )


def is_complete(directory: str) -> bool:
    """True when ``directory`` holds every library and both links (a previous run's result)."""
    files = [os.path.join(directory, name) for name in (*LIBRARIES, *LINKS)]
    return all(os.path.isfile(f) for f in files)


def download_wheel(destination: str) -> str:
    """Download the pinned wheel with pip into ``destination``; returns its path."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--require-hashes", "--disable-pip-version-check", "--dest", destination,
        "--requirement", req.name,
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        os.remove(req.name)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise FFmpeg4Error(
            f"pip could not download {WHEEL_REQUIREMENT} (exit {result.returncode}):\n{tail}\n"
            f"Command: {shlex.join(command)}\n"
            "Without network access, download the wheel elsewhere and pass it with --wheel."
        )
    path = os.path.join(destination, WHEEL_NAME)
    if not os.path.isfile(path):
        found = ", ".join(sorted(os.listdir(destination))) or "nothing"
        raise FFmpeg4Error(f"pip downloaded {found}, expected {WHEEL_NAME}")
    return path


def unpack(wheel: str, directory: str) -> list[str]:
    """Check ``wheel``'s hash, extract the FFmpeg libraries into ``directory``, add the links."""
    if not os.path.isfile(wheel):
        raise FFmpeg4Error(f"{wheel}: no such file (expected {WHEEL_NAME})")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise FFmpeg4Error(
            f"{wheel}: sha256 {digest} is not the pinned {WHEEL_SHA256} of {WHEEL_NAME}"
        )
    os.makedirs(directory, exist_ok=True)
    written = []
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in LIBRARIES:
                target = os.path.join(directory, name)
                with archive.open(f"{_LIBS_DIR}/{name}") as src, open(target + ".part", "wb") as f:
                    f.write(src.read())
                os.chmod(target + ".part", 0o755)
                os.replace(target + ".part", target)  # a half-written library is never used
                written.append(target)
    except (zipfile.BadZipFile, KeyError) as e:
        raise FFmpeg4Error(f"{wheel}: not the expected wheel layout ({e})") from None
    except OSError as e:
        raise FFmpeg4Error(f"{directory}: cannot write the libraries ({e.strerror or e})") from None
    for link, target in LINKS.items():
        path = os.path.join(directory, link)
        if os.path.lexists(path):
            os.remove(path)
        os.symlink(target, path)  # relative: the folder can be moved
        written.append(path)
    return written


def install(directory: str, wheel: str | None = None) -> str:
    """Make ``directory`` an FFmpeg 4 folder for tensorflow-io; returns its absolute path.

    Downloads nothing when the folder is already complete and no ``wheel`` is given.

    Raises:
        FFmpeg4Error: naming what failed (platform, pip, hash, wheel layout, folder).
    """
    _check_platform()
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FFmpeg4Error(f"{directory}: exists and is not a directory")
    if wheel is None and is_complete(directory):
        return directory
    if wheel is not None:
        unpack(wheel, directory)
    else:
        with tempfile.TemporaryDirectory(prefix="ffmpeg4-wheel-") as tmp:
            unpack(download_wheel(tmp), directory)
    return directory


def export_line(directory: str) -> str:
    """The shell line that puts ``directory`` first on ``LD_LIBRARY_PATH``."""
    return (
        f"export LD_LIBRARY_PATH={shlex.quote(directory)}"
        "${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: make the folder, print the ``export`` line; 1 with a message on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_sideways.data.ffmpeg4",
        description=__doc__.split("\n\n")[0],
        epilog='Typical use: eval "$(python -m keras_sideways.data.ffmpeg4 .ffmpeg4)"',
    )
    parser.add_argument("directory", help="folder to put the FFmpeg 4 libraries in")
    parser.add_argument("--wheel", help=f"an already downloaded {WHEEL_NAME}")
    args = parser.parse_args(argv)
    try:
        directory = install(args.directory, args.wheel)
    except FFmpeg4Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{FFMPEG_VERSION} for tensorflow-io is in {directory}", file=sys.stderr)
    print(export_line(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
