"""The tensorflow-io decoder, behind a probe that says exactly why it cannot work.

tensorflow-io's video ops need two things that a current machine usually lacks (see
DESIGN.md section 4):

1. its op library must load into the running TensorFlow; every release is built against one
   TensorFlow minor version (0.37.x: 2.16) and fails to load on others (undefined symbols);
2. its FFmpeg ops are linked against FFmpeg 4 (``libavformat.so.58``, ``libswscale.so.5``) or
   older; Debian 12 / Ubuntu 24.04 ship FFmpeg 5+ (``libavformat.so.59`` and up).

Both can be had from PyPI: ``pip install 'keras-sideways[tfio]'`` (pins TensorFlow 2.16 and
tensorflow-io 0.37.1) and ``python -m keras_sideways.data.ffmpeg4 DIR`` (FFmpeg 4.4 from a pinned
wheel, then ``LD_LIBRARY_PATH``). :func:`tfio_decoder_status` checks each point, loading the op
libraries for real but without importing ``tensorflow_io`` (whose import can itself fail), and
reports every reason found, the recipe, and the alternative ``decoder="pyav"``; when the FFmpeg
ops load, it reports the FFmpeg files they bound to.

Decoding (:func:`tfio_decode_clip`) runs in-graph: tensorflow-io's streaming FFmpeg reader opens
the file by name (so its errors name it), frames are counted in presentation order exactly as
the PyAV decoder counts them, and decoding stops after the clip's last frame (it cannot seek).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os
import re
import uuid
from collections.abc import Callable
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

# tensorflow-io's FFmpeg op libraries, in the order it tries them
# (tensorflow_io/python/ops/ffmpeg_ops.py), with the sonames each is linked against.
_FFMPEG_OP_LIBRARIES = {
    "libtensorflow_io_ffmpeg_4.2.so": ("libavformat.so.58", "libswscale.so.5"),
    "libtensorflow_io_ffmpeg_3.4.so": ("libavformat.so.57", "libavutil.so.55", "libswscale.so.4"),
}
# A mapped file counts as an FFmpeg library tensorflow-io bound to when its name has one of
# these majors: PyAV, loaded in the same process, brings its own newer FFmpeg (libavformat 6x).
_BOUND_LIBRARY = re.compile(r"^lib(avformat|swscale|avcodec|avutil)[-.].*\.so\.(58|57|5|4|56|55)\b")

ALTERNATIVE = 'Use decoder="pyav" (PyAV wheels bundle their own FFmpeg; it works everywhere).'


def _recipe() -> str:
    # Imported here, not at module level, so that `python -m keras_sideways.data.ffmpeg4` does
    # not find its own module already imported (runpy warns about that).
    from keras_sideways.data.ffmpeg4 import RECIPE  # noqa: PLC0415

    return RECIPE


@dataclass(frozen=True)
class TfioStatus:
    """Result of :func:`tfio_decoder_status`.

    Attributes:
        available: True when tensorflow-io's video decoder can run here.
        reasons: each reason it cannot (empty when available).
        tensorflow_version: the running TensorFlow.
        tfio_version: installed tensorflow-io, or None.
        tfio_built_for: TensorFlow minor version that tensorflow-io release was built for.
        ffmpeg_found: the libavformat tensorflow-io's FFmpeg ops bound to (a path, e.g.
            ``".../.ffmpeg4/libavformat-8ef5c7db.so.58.76.100"``) when they load; otherwise the
            system libavformat found by name (e.g. ``"libavformat.so.59"``), or None.
        ffmpeg_libraries: every FFmpeg library file tensorflow-io's FFmpeg ops bound to, read
            from the process's memory map after loading them (empty when they did not load).
    """

    available: bool
    reasons: tuple[str, ...]
    tensorflow_version: str
    tfio_version: str | None
    tfio_built_for: str | None
    ffmpeg_found: str | None
    ffmpeg_libraries: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """One human-readable paragraph: every reason, then the recipe and the alternative."""
        if self.available:
            return (
                f"tensorflow-io {self.tfio_version} video decoder is available (FFmpeg: "
                f"{', '.join(self.ffmpeg_libraries) or self.ffmpeg_found})."
            )
        lines = "\n".join(f"- {r}" for r in self.reasons)
        return (
            f"tensorflow-io cannot decode video here:\n{lines}\n"
            f"To make it work: {_recipe()}.\n{ALTERNATIVE}"
        )


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


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def mapped_ffmpeg_libraries() -> tuple[str, ...]:
    """FFmpeg 4 / 3.4 library files mapped into this process (from ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(None, 5) for line in f]
    except OSError:
        return ()
    # address perms offset device inode [path]: anonymous mappings have no path.
    paths = {entry[5].strip() for entry in fields if len(entry) == 6}
    return tuple(sorted(p for p in paths if _BOUND_LIBRARY.match(os.path.basename(p))))


def _load_ffmpeg_ops(package_dir: str) -> tuple[bool, list[str]]:
    """Load tensorflow-io's FFmpeg op library as tensorflow-io itself would; (loaded, errors)."""
    errors = []
    for name in _FFMPEG_OP_LIBRARIES:
        path = _find_in_package(package_dir, name)
        if path is None:
            errors.append(f"{name} is missing in {package_dir}")
            continue
        try:
            tf.load_op_library(path)
            return True, []
        except Exception as e:  # noqa: BLE001 - any load failure is the answer we report
            errors.append(f"{name} fails to load: {_first_line(e)}")
    return False, errors


@functools.lru_cache(maxsize=1)
def tfio_decoder_status() -> TfioStatus:
    """Probe whether tensorflow-io can decode video in this process, and if not, why.

    The result is cached: the checks load shared libraries and do not change during a run.
    """
    tf_version = tf.__version__
    reasons: list[str] = []
    tfio_version: str | None = None
    built_for: str | None = None
    ffmpeg_ops_loaded = False
    ffmpeg_errors: list[str] = []

    spec = importlib.util.find_spec("tensorflow_io")
    if spec is None or not spec.submodule_search_locations:
        reasons.append(
            "tensorflow_io is not installed (pip install 'keras-sideways[tfio]' installs "
            "tensorflow-io 0.37.1 with the TensorFlow 2.16 it is built for; this is "
            f"TensorFlow {tf_version})"
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
                reasons.append(f"its op library {os.path.basename(core)} fails to load: "
                               f"{_first_line(e)}")
            else:
                ffmpeg_ops_loaded, ffmpeg_errors = _load_ffmpeg_ops(package_dir)
    bound = mapped_ffmpeg_libraries() if ffmpeg_ops_loaded else ()
    avformat = [p for p in bound if os.path.basename(p).startswith("libavformat")]
    ffmpeg_found = avformat[0] if avformat else ctypes.util.find_library("avformat")
    if not ffmpeg_ops_loaded:
        # Checked even when tensorflow-io is missing or does not load: fixing that alone would
        # not be enough.
        ffmpeg_ok = any(
            all(_can_dlopen(so) for so in sonames) for sonames in _FFMPEG_OP_LIBRARIES.values()
        )
        if ffmpeg_errors or not ffmpeg_ok:
            found = f"found {ffmpeg_found}" if ffmpeg_found else "no system FFmpeg found at all"
            detail = f" ({'; '.join(ffmpeg_errors)})" if ffmpeg_errors else ""
            reasons.append(
                "its FFmpeg ops need the FFmpeg 4 libraries libavformat.so.58 and libswscale.so.5 "
                f"(or FFmpeg 3.4's libavformat.so.57) on LD_LIBRARY_PATH, which are missing "
                f"({found}){detail}; Debian 12 / Ubuntu 24.04 and newer ship FFmpeg 5+ only: "
                "python -m keras_sideways.data.ffmpeg4 DIR fetches FFmpeg 4.4 from PyPI"
            )

    return TfioStatus(
        available=not reasons,
        reasons=tuple(reasons),
        tensorflow_version=tf_version,
        tfio_version=tfio_version,
        tfio_built_for=built_for,
        ffmpeg_found=ffmpeg_found,
        ffmpeg_libraries=bound,
    )


def require_tfio() -> None:
    """Raise :class:`TfioUnavailableError` with every reason when the tfio decoder cannot run."""
    status = tfio_decoder_status()
    if not status.available:
        raise TfioUnavailableError(status.message)


def _video_frames(path: tf.Tensor) -> tf.data.Dataset:
    """The file's video frames (stream 0) in presentation order, uint8 ``(H, W, 3)`` each."""
    import tensorflow_io as tfio  # noqa: PLC0415 - optional dependency, probed first

    # The graph variant opens the file by name in an op (works inside Dataset.map) and decodes
    # frame by frame; its errors name the file ("unable to open file: PATH: ...").
    return tfio.IODataset.graph(tf.uint8).from_ffmpeg(path, "v:0")


def resize_frames(frames: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Bilinear resize of uint8 frames, rounded back to uint8.

    ``antialias=True`` widens the filter when shrinking, as FFmpeg's swscale bilinear (the PyAV
    decoder's resize) does; without it a shrink by more than 2x samples only some pixels.
    """
    resized = tf.image.resize(frames, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def tfio_decode_clip(path: tf.Tensor, indices: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Decode the frames at ``indices`` with tensorflow-io, in-graph; ``uint8 (n, H, W, 3)``.

    Call only after :func:`require_tfio`. Frames are counted in presentation order from the
    first, like the PyAV decoder; decoding stops after the last frame needed (tensorflow-io's
    reader cannot seek), and only the frames used are kept and resized.

    Errors name the file: tensorflow-io's own (cannot open, not a video) and, when the file has
    fewer frames than a clip needs (changed since the dataset was built), an
    ``InvalidArgumentError`` saying how many frames the stream had.
    """
    path = tf.convert_to_tensor(path, tf.string)
    indices = tf.cast(indices, tf.int64)
    wanted = tf.sort(tf.unique(indices).y)
    last = wanted[-1]
    height, width = image_size

    def is_wanted(index: tf.Tensor, frame: tf.Tensor) -> tf.Tensor:
        return tf.reduce_any(tf.equal(index, wanted))

    kept = (
        _video_frames(path)
        .enumerate()
        .take(last + 1)
        .filter(is_wanted)
        .map(lambda index, frame: resize_frames(frame, image_size))
        .batch(tf.size(wanted, out_type=tf.int64))
    )
    # At most one batch; the empty start makes a file with no frame at all an empty result.
    frames = kept.reduce(tf.zeros((0, height, width, 3), tf.uint8), lambda _, batch: batch)

    def stream_too_short() -> tf.Tensor:
        total = _video_frames(path).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
        message = tf.strings.join([
            path, ": stream ended after ", tf.strings.as_string(total),
            " frame(s) but frame ", tf.strings.as_string(last),
            " was needed (file truncated or changed since the dataset was built?)",
        ])  # fmt: skip
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.identity(frames)

    complete = tf.equal(tf.shape(frames, out_type=tf.int64)[0], tf.size(wanted, out_type=tf.int64))
    frames = tf.cond(complete, lambda: frames, stream_too_short)
    clip = tf.gather(frames, tf.searchsorted(wanted, indices))
    return tf.ensure_shape(clip, (None, height, width, 3))


def tfio_decode_video(
    path: tf.Tensor, video_frames: tf.Tensor, image_size: tuple[int, int]
) -> tf.Tensor:
    """Every frame of a video (``video_frames`` of them, as probed), resized; in-graph."""
    return tfio_decode_clip(path, tf.range(tf.cast(video_frames, tf.int64)), image_size)


# (path, indices or frame count) -> uint8 frames
DecodeFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def make_tfio_decoders(
    image_size: tuple[int, int], num_frames: int, readers: int | None = None
) -> tuple[DecodeFn, DecodeFn]:
    """The decode steps for tfio, safe to run in parallel: ``(clip_fn, video_fn)``.

    ``clip_fn(path, indices)`` gives ``uint8 (num_frames, H, W, 3)``; ``video_fn(path,
    video_frames)`` every frame. tensorflow-io's reader op keeps one resource per op and
    re-initialises it on every call, so two calls of one op at once crash or hang the process.
    Hence ``readers`` copies of the reader (default: one per CPU, at most 8), each its own op
    behind its own mutex; a file always goes to the copy its path hashes to, so calls run in
    parallel on different copies and one at a time on each.
    """
    count = readers or min(8, os.cpu_count() or 1)
    # Mutexes made by ops in the pipeline's own graph (found by shared name), not captured from
    # Python: the pipeline stays serializable (MirroredStrategy, tf.data service, snapshots).
    names = [f"keras_sideways_tfio_reader_{uuid.uuid4().hex}" for _ in range(count)]

    def locked(name: str, decode: Callable[[], tf.Tensor]) -> tf.Tensor:
        lock = tf.raw_ops.MutexLock(mutex=tf.raw_ops.MutexV2(shared_name=name))
        with tf.control_dependencies([lock]):
            frames = decode()  # every op of the decode waits for the lock
        with tf.control_dependencies([frames]):
            release = tf.raw_ops.ConsumeMutexLock(mutex_lock=lock)
        with tf.control_dependencies([release]):
            return tf.identity(frames)

    def exclusive(decode: Callable[[], tf.Tensor], path: tf.Tensor) -> tf.Tensor:
        slot = tf.cast(tf.strings.to_hash_bucket_fast(path, count), tf.int32)
        # Each branch is traced on its own, so it holds its own reader op (its own resource).
        branches = [functools.partial(locked, name, decode) for name in names]
        return tf.switch_case(slot, branches)

    def clip_fn(path: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
        frames = exclusive(lambda: tfio_decode_clip(path, indices, image_size), path)
        return tf.ensure_shape(frames, (num_frames, image_size[0], image_size[1], 3))

    def video_fn(path: tf.Tensor, video_frames: tf.Tensor) -> tf.Tensor:
        return exclusive(lambda: tfio_decode_video(path, video_frames, image_size), path)

    return clip_fn, video_fn
