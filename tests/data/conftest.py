"""Fixtures for the video input tests (helpers live in ``videotools``)."""

from __future__ import annotations

import os

import pytest
from videotools import make_class_folders

from keras_sideways.data import tfio_decoder_status


@pytest.fixture(scope="session")
def three_class_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """a/ (4 videos), b/ (5), c/ (3): 20-frame 64x64 H.264 index videos."""
    root = tmp_path_factory.mktemp("three_class")
    make_class_folders(root, {"a": 4, "b": 5, "c": 3})
    return str(root)


@pytest.fixture(scope="session")
def expected_decoder() -> str:
    """The decoder ``decoder="auto"`` must pick in this run (CI's tfio job forces "tfio")."""
    forced = os.environ.get("KERAS_SIDEWAYS_DECODER")
    if forced:
        return forced
    return "tfio" if tfio_decoder_status().available else "pyav"


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
