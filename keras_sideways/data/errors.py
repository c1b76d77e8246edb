"""Errors raised by the video input pipelines."""

from __future__ import annotations


class VideoInputError(ValueError):
    """A video file or folder cannot be used. ``path`` and ``reason`` are kept as attributes.

    The message always starts with the path, so that an error surfacing from deep inside a
    ``tf.data`` iterator (where TensorFlow wraps it in its own error type) still names the file.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BadVideoFilesError(VideoInputError):
    """Several files failed the listing-time probe; raised with ``on_error="raise"``."""

    def __init__(self, bad: list[tuple[str, str]]) -> None:
        self.bad = list(bad)
        shown = "\n".join(f"  {path}: {reason}" for path, reason in self.bad[:20])
        more = f"\n  ... and {len(self.bad) - 20} more" if len(self.bad) > 20 else ""
        path = self.bad[0][0] if self.bad else ""
        reason = (
            f"{len(self.bad)} unusable video file(s):\n{shown}{more}\n"
            'Pass on_error="skip" to leave them out (they are counted and reported).'
        )
        ValueError.__init__(self, reason)
        self.path = path
        self.reason = reason


class TfioUnavailableError(RuntimeError):
    """``decoder="tfio"`` was asked for but tensorflow-io cannot decode video here."""
