"""Fixtures for the video input tests (helpers live in ``videotools``)."""

from __future__ import annotations

import pytest
from videotools import make_class_folders


@pytest.fixture(scope="session")
def three_class_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """a/ (4 videos), b/ (5), c/ (3): 20-frame 64x64 H.264 index videos."""
    root = tmp_path_factory.mktemp("three_class")
    make_class_folders(root, {"a": 4, "b": 5, "c": 3})
    return str(root)


@pytest.fixture(autouse=True, scope="session")
def _frame_index_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the probe's on-disk frame index cache out of the home folder while testing."""
    import os

    from keras_sideways.data.index_cache import ENV_VAR

    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(tmp_path_factory.mktemp("frame_index_cache"))
    yield
    if old is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = old
