"""Crash-safe saving: a file being written never replaces the one it updates until it is whole.

Keras writes a `.keras` file (and a `.weights.h5` file) straight into its path, truncating it
first, so a process killed while `ModelCheckpoint` overwrites ``model.keras`` leaves a partial
file and no checkpoint at all. `SidewaysModel.save` and `save_weights` write into a temporary
sibling instead and move it over the path (`os.replace`, atomic on POSIX and Windows) once it is
complete and flushed to disk: a crash at any moment leaves either the previous file or the new
one, never a broken one (`CrashSafeSavingMixin`, usable on any `keras.Model` subclass).
`tests/test_faults.py` kills a real chief while it writes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from keras.src.utils import file_utils

PARTIAL_PREFIX = ".partial-"


def can_write_atomically(filepath: Any) -> bool:
    """Whether ``filepath`` is a local file path that `atomic_path` can stand in for (not a file
    object, not a remote path such as ``gs://`` or ``hf://``)."""
    if not isinstance(filepath, (str, os.PathLike)):
        return False
    return not file_utils.is_remote_path(os.fspath(filepath))


@contextlib.contextmanager
def atomic_path(filepath: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``filepath`` to write to; moved over ``filepath`` on success.

    The temporary name ends like ``filepath`` (``.keras``, ``.weights.h5``), as Keras requires,
    and starts with ``.partial-<pid>-``. On an exception it is removed and ``filepath`` is left
    untouched; after a SIGKILL it stays behind, harmless, beside the intact ``filepath``.
    """
    path = os.fspath(filepath)
    directory, name = os.path.split(path)
    partial = os.path.join(directory, f"{PARTIAL_PREFIX}{os.getpid()}-{name}")
    try:
        yield partial
        with open(partial, "rb+") as file:
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


class CrashSafeSavingMixin:
    """Mix into a `keras.Model` subclass (before `keras.Model`): `save` and `save_weights`
    (which `ModelCheckpoint` calls) write through `atomic_path`. Directories (``zipped=False``),
    remote paths, file objects, ``overwrite=False`` and sharded weights go to Keras unchanged.
    ``keras.saving.save_model(model, path)`` is Keras' function and is not covered."""

    def save(self, filepath: Any, overwrite: bool = True, zipped: Any = None,
             **kwargs: Any) -> None:
        if zipped is False or not can_write_atomically(filepath) or (
                not overwrite and os.path.exists(filepath)):
            return super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)
        with atomic_path(filepath) as partial:
            super().save(partial, overwrite=True, zipped=zipped, **kwargs)

    def save_weights(self, filepath: Any, overwrite: bool = True,
                     max_shard_size: Any = None) -> None:
        if max_shard_size is not None or not can_write_atomically(filepath) or (
                not overwrite and os.path.exists(filepath)):
            return super().save_weights(filepath, overwrite=overwrite,
                                        max_shard_size=max_shard_size)
        with atomic_path(filepath) as partial:
            super().save_weights(partial, overwrite=True)
