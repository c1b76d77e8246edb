"""On-disk cache of the PyAV probe's frame indexes, so that a file is indexed once, not per run.

Building a frame index decodes a few dozen frames of every file (all of a file whose timestamps
are not in display order); for a large data set that is worth keeping. One small JSON file per
video, named by a hash of its real path, size and modification time (a changed file is indexed
again) and of :data:`INDEX_VERSION` (bumped when the indexing rules change).

Where: ``$KERAS_SIDEWAYS_INDEX_CACHE`` if set (an empty value turns the cache off), else
``~/.cache/keras-sideways/frame-index``. The cache only saves time: a folder that cannot be
written is skipped (logged at DEBUG), and an unreadable entry is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import Any

logger = logging.getLogger("keras_sideways.data")

INDEX_VERSION = 1
ENV_VAR = "KERAS_SIDEWAYS_INDEX_CACHE"


def cache_dir() -> str | None:
    """The cache folder, or ``None`` when turned off."""
    value = os.environ.get(ENV_VAR)
    if value is None:
        return os.path.join(os.path.expanduser("~"), ".cache", "keras-sideways", "frame-index")
    return value or None


def _entry(key: tuple[str, int, int]) -> str | None:
    folder = cache_dir()
    if folder is None:
        return None
    digest = hashlib.sha1(repr((INDEX_VERSION, *key)).encode()).hexdigest()
    return os.path.join(folder, digest[:2], digest + ".json")


def load(key: tuple[str, int, int]) -> dict[str, Any] | None:
    """The stored fields for ``key`` (real path, size, mtime_ns), or ``None``."""
    entry = _entry(key)
    if entry is None or not os.path.exists(entry):
        return None
    try:
        with open(entry, encoding="utf-8") as f:
            fields = json.load(f)
        if fields.pop("key") != list(key):
            return None
        return fields
    except (OSError, ValueError, KeyError) as e:
        logger.debug("frame index cache: ignoring %s (%s)", entry, e)
        return None


def store(key: tuple[str, int, int], info: Any) -> None:
    """Write ``info`` (a dataclass) for ``key``; written whole or not at all."""
    entry = _entry(key)
    if entry is None:
        return
    fields = dataclasses.asdict(info)
    fields.pop("path")
    fields["key"] = list(key)
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(fields, f, separators=(",", ":"))
        os.replace(tmp, entry)  # atomic: a concurrent reader sees the old entry or the new one
    except OSError as e:
        logger.debug("frame index cache: not written to %s (%s)", entry, e)
