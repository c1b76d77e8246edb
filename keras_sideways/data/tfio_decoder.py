"""The optional tensorflow-io decoder, behind a probe that says exactly why it cannot work.

tensorflow-io's video ops need two things that a current machine usually lacks (see
DESIGN.md section 4):

1. its op library must load into the running TensorFlow; every release is built against one
   TensorFlow minor version (0.37.x: 2.16) and fails to load on others (undefined symbols);
2. its FFmpeg ops are linked against system FFmpeg 4 (``libavformat.so.58``, ``libswscale.so.5``)
   or older; Debian 12 / Ubuntu 24.04 ship FFmpeg 5+ (``libavformat.so.59`` and up).

:func:`tfio_decoder_status` checks each point without importing ``tensorflow_io`` (whose import
can itself fail), and reports every reason found plus the working alternative,
``decoder="pyav"``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass

import tensorflow as tf

from keras_sideways.data.errors import TfioUnavailableError

# tensorflow-io release -> the TensorFlow minor version it was built for, from its README's
# compatibility table; used only when the installed package's metadata does not pin TensorFlow.
_TFIO_BUILT_FOR = {
    "0.37": "2.16",
    "0.36": "2.15",
    "0.35": "2.14",
    "0.34": "2.13",
    "0.33": "2.12",
    "0.32": "2.12",
    "0.31": "2.11",
    "0.30": "2.11",
    "0.29": "2.10",
    "0.28": "2.10",
    "0.27": "2.9",
}

# FFmpeg sonames tensorflow-io's FFmpeg op libraries are linked against, newest first
# (tensorflow_io/python/ops/ffmpeg_ops.py).
_FFMPEG_SONAMES = {
    "FFmpeg 4.x": ("libavformat.so.58", "libswscale.so.5"),
    "FFmpeg 3.4": ("libavformat.so.57", "libavutil.so.55", "libswscale.so.4"),
}

ALTERNATIVE = 'Use decoder="pyav" (PyAV wheels bundle their own FFmpeg; it is the default).'


@dataclass(frozen=True)
class TfioStatus:
    """Result of :func:`tfio_decoder_status`.

    Attributes:
        available: True when tensorflow-io's video decoder can run here.
        reasons: each reason it cannot (empty when available).
        tensorflow_version: the running TensorFlow.
        tfio_version: installed tensorflow-io, or None.
        tfio_built_for: TensorFlow minor version that tensorflow-io release was built for.
        ffmpeg_found: the system libavformat found (e.g. ``"libavformat.so.59"``), or None.
    """

    available: bool
    reasons: tuple[str, ...]
    tensorflow_version: str
    tfio_version: str | None
    tfio_built_for: str | None
    ffmpeg_found: str | None

    @property
    def message(self) -> str:
        """One human-readable paragraph: every reason, then the alternative."""
        if self.available:
            return f"tensorflow-io {self.tfio_version} video decoder is available."
        lines = "\n".join(f"- {r}" for r in self.reasons)
        return f"tensorflow-io cannot decode video here:\n{lines}\n{ALTERNATIVE}"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _built_for(tfio_version: str) -> str | None:
    """The TensorFlow minor version a tensorflow-io release was built for."""
    try:
        requires = importlib.metadata.requires("tensorflow-io") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    for req in requires:
        # e.g. 'tensorflow<2.17.0,>=2.16.0; extra == "tensorflow"'
        m = re.match(r"tensorflow\s*[<>=!~,.\d\s]*>=\s*(\d+\.\d+)", req)
        if m and req.startswith("tensorflow") and not req.startswith("tensorflow-"):
            return m.group(1)
    return _TFIO_BUILT_FOR.get(_minor(tfio_version))


def _find_in_package(package_dir: str, name: str) -> str | None:
    for root, _, files in os.walk(package_dir):
        if name in files:
            return os.path.join(root, name)
    return None


def _can_dlopen(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def tfio_decoder_status() -> TfioStatus:
    """Probe whether tensorflow-io can decode video in this process, and if not, why.

    The result is cached: the checks load shared libraries and do not change during a run.
    """
    tf_version = tf.__version__
    reasons: list[str] = []
    tfio_version: str | None = None
    built_for: str | None = None

    spec = importlib.util.find_spec("tensorflow_io")
    if spec is None or not spec.submodule_search_locations:
        reasons.append(
            "tensorflow_io is not installed (pip install 'keras-sideways[tfio]'; note its last "
            f"release, 0.37.1, is built for TensorFlow 2.16 and this is TensorFlow {tf_version})"
        )
    else:
        try:
            tfio_version = importlib.metadata.version("tensorflow-io")
        except importlib.metadata.PackageNotFoundError:
            tfio_version = "unknown"
        built_for = _built_for(tfio_version)
        if built_for is not None and _minor(tf_version) != built_for:
            reasons.append(
                f"tensorflow-io {tfio_version} is built for TensorFlow {built_for}, but "
                f"TensorFlow {tf_version} is running"
            )
        package_dir = list(spec.submodule_search_locations)[0]
        core = _find_in_package(package_dir, "libtensorflow_io.so")
        if core is None:
            reasons.append(
                f"tensorflow-io's op library libtensorflow_io.so is missing in {package_dir}"
            )
        else:
            try:
                tf.load_op_library(core)
            except Exception as e:  # noqa: BLE001 - any load failure is the answer we report
                detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                reasons.append(f"its op library {os.path.basename(core)} fails to load: {detail}")
    # Checked even when tensorflow-io is missing: installing it would not be enough.
    ffmpeg_found = ctypes.util.find_library("avformat")
    ffmpeg_ok = any(all(_can_dlopen(so) for so in sonames) for sonames in _FFMPEG_SONAMES.values())
    if not ffmpeg_ok:
        found = f"found {ffmpeg_found}" if ffmpeg_found else "no system FFmpeg found at all"
        reasons.append(
            "its FFmpeg ops need the FFmpeg 4 libraries libavformat.so.58 and libswscale.so.5 "
            f"(or FFmpeg 3.4's libavformat.so.57), which are missing ({found}); "
            "Debian 12 / Ubuntu 24.04 and newer ship FFmpeg 5+ only"
        )

    return TfioStatus(
        available=not reasons,
        reasons=tuple(reasons),
        tensorflow_version=tf_version,
        tfio_version=tfio_version,
        tfio_built_for=built_for,
        ffmpeg_found=ffmpeg_found,
    )


def require_tfio() -> None:
    """Raise :class:`TfioUnavailableError` with every reason when the tfio decoder cannot run."""
    status = tfio_decoder_status()
    if not status.available:
        raise TfioUnavailableError(status.message)


def tfio_decode_clip(path: tf.Tensor, indices: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Decode a clip with tensorflow-io (in-graph). Call only after :func:`require_tfio`.

    tensorflow-io decodes the whole file (it has no seek), then the sampled frames are gathered.
    """
    import tensorflow_io as tfio  # noqa: PLC0415 - optional dependency, probed first

    video = tfio.experimental.ffmpeg.decode_video(tf.io.read_file(path))
    frames = tf.gather(video, indices)
    frames = tf.image.resize(frames, image_size, method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(frames), 0, 255), tf.uint8)
