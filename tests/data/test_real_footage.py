"""Files as found in the wild (issue 16): frame "i" is the i-th decoded frame, always.

Each file reproduces an oddity of real footage, made with PyAV only (see ``videotools``):

- H.264 with B-frames muxed with pts = dts: container timestamps in decode order;
- MPEG-4 ASP AVI with DivX-style packed B-frames: chunk timestamps off by one, +1/-1;
- Cinepak AVI whose index lists 7 entries per frame, 6 of them empty: the header counts 7x;
- H.264 mp4 whose last packet yields no frame: one packet more than frames.

Every test compares with the truth: a full sequential decode, whose frames show their own number.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from videotools import (
    read_index,
    write_avi_with_empty_chunks,
    write_packed_bframes_avi,
    write_pts_equals_dts_mp4,
    write_trailing_empty_packet_mp4,
    write_video,
)

from keras_sideways.data import (
    VideoInputError,
    clip_indices,
    decode_clip,
    probe_video,
    video_dataset_from_directory,
)
from keras_sideways.data.pyav_decoder import iter_frames

# (file name, maker, frames that decode, index the probe should settle on)
FILES = [
    ("pts_equals_dts.mp4", lambda p: write_pts_equals_dts_mp4(p, 100), 100, "decoded"),
    ("packed_bframes.avi", lambda p: write_packed_bframes_avi(p, 100), 100, "decoded"),
    ("empty_chunks.avi", lambda p: write_avi_with_empty_chunks(p, 60), 60, "timestamps"),
    ("trailing_packet.mp4", lambda p: write_trailing_empty_packet_mp4(p, 80), 80, "timestamps"),
    ("bframes.mp4", lambda p: write_video(p, 90, gop=15, b_frames=3), 90, "timestamps"),
    ("mpeg2.ts", lambda p: write_video(p, 70, codec="mpeg2video", b_frames=2), 70, "timestamps"),
]
IDS = [f[0] for f in FILES]


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("footage")
    os.makedirs(root / "clips")
    return {name: make(str(root / "clips" / name)) for name, make, _, _ in FILES}


def test_the_files_really_have_their_oddity(footage):
    import av

    def packets(name: str) -> list:
        with av.open(footage[name]) as container:
            stream = container.streams.video[0]
            return [(p.pts, p.dts) for p in container.demux(stream) if p.size]

    pts_dts = packets("pts_equals_dts.mp4")
    assert all(p == d for p, d in pts_dts)
    with av.open(footage["pts_equals_dts.mp4"]) as container:
        stamps = [f.pts for f in container.decode(video=0)]
    assert stamps != sorted(stamps), "decoded frames should carry decode-order timestamps"
    with av.open(footage["empty_chunks.avi"]) as container:
        assert container.streams.video[0].frames == 7 * 59 + 1  # the header counts empty slots
    assert len(packets("trailing_packet.mp4")) == 81
    with av.open(footage["packed_bframes.avi"]) as container:
        stamps = [f.pts for f in container.decode(video=0)]
    assert stamps != sorted(stamps)


@pytest.mark.parametrize("name,_,frames,source", FILES, ids=IDS)
def test_probe_counts_what_decodes(footage, name, _, frames, source):
    path = footage[name]
    truth = [read_index(f) for f in iter_frames(path)]
    assert truth == list(range(frames))  # the sequential decode is the definition
    info = probe_video(path)
    assert info.num_frames == frames
    assert info.index_source == source
    assert probe_video(path) is info  # learnt once per file, then cached


@pytest.mark.parametrize("name,_,frames,source", FILES, ids=IDS)
def test_every_clip_is_frame_accurate_and_seeks(footage, name, _, frames, source):
    path = footage[name]
    info = probe_video(path)
    keyframes = [p[0] for p in info.seek_points]
    assert len(keyframes) >= 4, "the file has keyframes to seek to"
    for step in (1, 2, 3):
        for start in range(0, frames, 3):
            indices = clip_indices(frames, 8, step, start=start)
            stats: dict = {}
            clip = decode_clip(path, indices, (32, 32), info=info, stats=stats)
            assert [read_index(f) for f in clip] == indices.tolist(), (step, start)
            assert stats["method"] == "seek"
            # Never from frame 0: from the keyframe at or before the clip's first frame.
            first = min(indices)
            keyframe = max(k for k in keyframes if k <= first)
            assert stats["decoded_frames"] <= max(indices) - keyframe + 1 + 4


@pytest.mark.parametrize("cache", [False, True], ids=["decode", "cache"])
@pytest.mark.parametrize("frame_step", [1, 3])
def test_dataset_over_odd_files_never_fails_and_is_exact(footage, cache, frame_step):
    directory = os.path.dirname(next(iter(footage.values())))
    ds = video_dataset_from_directory(
        directory, labels=None, batch_size=None, num_frames=8, frame_step=frame_step,
        image_size=(32, 32), shuffle=True, seed=3, decoder="pyav", cache=cache,
    )  # fmt: skip
    lengths = {
        os.path.basename(p): n for p, n in zip(ds.file_paths, _frame_counts(ds), strict=True)
    }
    assert lengths == {name: frames for name, _, frames, _ in FILES}
    starts = set()
    for _epoch in range(3):
        for clip in ds:
            shown = [read_index(f) for f in clip.numpy()]
            diffs = set(np.diff(shown).tolist())
            assert diffs == {frame_step}, shown  # consecutive in display order, no looping here
            starts.add(shown[0])
    assert len(starts) > 6  # random starts, up to the last frames


def _frame_counts(ds) -> list[int]:
    return [probe_video(p).num_frames for p in ds.file_paths]


def test_clips_touching_the_last_frame_decode(footage):
    path = footage["trailing_packet.mp4"]
    info = probe_video(path)
    clip = decode_clip(path, [70, 75, 79], None, info=info)
    assert [read_index(f) for f in clip] == [70, 75, 79]
    with pytest.raises(VideoInputError, match="trailing_packet.mp4: frame 80 .* has 80 frame"):
        decode_clip(path, [79, 80], None, info=info)


@pytest.mark.parametrize("maker", [write_avi_with_empty_chunks, write_packed_bframes_avi])
def test_a_really_truncated_avi_is_still_reported_with_numbers(tmp_path, maker):
    full = maker(tmp_path / "full.avi", 200)
    data = open(full, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        VideoInputError, match=r"cut.avi: truncated or corrupt: .* \d+ frames, only \d+"
    ):
        probe_video(str(cut))


@pytest.mark.parametrize("name", ["pts_equals_dts.mp4", "packed_bframes.avi", "bframes.mp4"])
def test_clips_are_pixel_identical_to_the_sequential_decode(footage, name):
    # Seeking, and skipping unreferenced pictures before the clip, change nothing decoded.
    path = footage[name]
    info = probe_video(path)
    full = np.stack(list(iter_frames(path, (32, 32), threads=1)))
    for start in (0, 5, 13, 37, 61, 82):
        indices = clip_indices(info.num_frames, 8, 2, start=start)
        np.testing.assert_array_equal(
            decode_clip(path, indices, (32, 32), info=info), full[indices]
        )


def test_the_index_is_learnt_once_and_kept_on_disk(tmp_path, monkeypatch):
    from keras_sideways.data import frame_index

    monkeypatch.setenv("KERAS_SIDEWAYS_INDEX_CACHE", str(tmp_path / "cache"))
    path = write_pts_equals_dts_mp4(tmp_path / "camera.mp4", 60)
    first = probe_video(path)
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == 1
    monkeypatch.setattr(frame_index, "_INDEX_CACHE", {})  # as a new process would start
    monkeypatch.setattr(frame_index, "_build_index", None)  # would fail if called
    again = probe_video(path)
    assert again == first and again is not first
    clip = decode_clip(path, [41, 42, 43], None, info=again)
    assert [read_index(f) for f in clip] == [41, 42, 43]
    os.utime(path, ns=(1, 1))  # a changed file is indexed again
    monkeypatch.undo()
    monkeypatch.setenv("KERAS_SIDEWAYS_INDEX_CACHE", str(tmp_path / "cache"))
    probe_video(path)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2
