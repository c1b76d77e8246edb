"""Official split readers (UCF101, HMDB51, Kinetics) over small fake folders in each layout."""

from __future__ import annotations

import os

import numpy as np
import pytest
from videotools import write_video

from keras_sideways.data import (
    hmdb51_split,
    kinetics_csv,
    ucf101_split,
    video_dataset_from_directory,
)

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "YoYo"]


def _video(path: str, frames: int = 6) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_video(path, frames, size=(32, 32), gop=3)


@pytest.fixture(scope="module")
def ucf(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """UCF-101/<class>/v_<class>_gXX_cYY.avi and ucfTrainTestlist/, groups 1-2 test, 3-4 train."""
    root = tmp_path_factory.mktemp("ucf")
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    os.makedirs(lists)
    (lists / "classInd.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(UCF_CLASSES, start=1))
    )
    train, test = [], []
    for i, c in enumerate(UCF_CLASSES, start=1):
        for g in (1, 2, 3, 4):
            name = f"{c}/v_{c}_g{g:02d}_c01.avi"
            _video(str(videos / name))
            (test if g <= 2 else train).append(name)
        train_lines = [f"{n} {i}" for n in train if n.startswith(c)]
        test_lines = [n for n in test if n.startswith(c)]
        with open(lists / "trainlist01.txt", "a", newline="\r\n") as f:  # CRLF, as shipped
            f.write("".join(line + "\n" for line in train_lines))
        with open(lists / "testlist01.txt", "a") as f:
            f.write("".join(line + "\n" for line in test_lines))
    return str(videos), str(lists)


def test_ucf101_split_reads_the_official_lists(ucf):
    videos, lists = ucf
    train = ucf101_split(videos, lists, split=1, subset="training")
    test = ucf101_split(videos, lists, split=1, subset="test")
    assert train.class_names == tuple(UCF_CLASSES) == test.class_names
    names = lambda s: [os.path.relpath(p, videos) for p in s.file_paths]  # noqa: E731
    assert names(train) == [f"{c}/v_{c}_g{g:02d}_c01.avi" for c in UCF_CLASSES for g in (3, 4)]
    assert names(test) == [f"{c}/v_{c}_g{g:02d}_c01.avi" for c in UCF_CLASSES for g in (1, 2)]
    assert train.labels == (0, 0, 1, 1, 2, 2) == test.labels
    assert not set(train.file_paths) & set(test.file_paths)


def test_dataset_takes_a_ucf101_list_file(ucf):
    videos, lists = ucf
    ds = video_dataset_from_directory(
        videos, split_file=os.path.join(lists, "testlist01.txt"), batch_size=None,
        num_frames=4, image_size=(16, 16), shuffle=False, decoder="pyav",
    )  # fmt: skip
    assert ds.class_names == UCF_CLASSES
    assert [os.path.basename(p) for p in ds.file_paths][:2] == [
        "v_ApplyEyeMakeup_g01_c01.avi",
        "v_ApplyEyeMakeup_g02_c01.avi",
    ]
    labels = [int(y) for _, y in ds]
    assert labels == [0, 0, 1, 1, 2, 2]


def test_ucf101_missing_listed_video_is_named(ucf, tmp_path):
    videos, lists = ucf
    for name in ("classInd.txt", "trainlist01.txt"):
        (tmp_path / name).write_text(open(os.path.join(lists, name)).read())
    with open(tmp_path / "trainlist01.txt", "a") as f:
        f.write("YoYo/v_YoYo_g25_c07.avi 3\n")
    with pytest.raises(
        ValueError, match=r"(?s)trainlist01.txt: 1 listed video.*v_YoYo_g25_c07.avi"
    ):
        ucf101_split(videos, str(tmp_path), 1, "training")
    with pytest.raises(ValueError, match="split must be one of"):
        ucf101_split(videos, lists, 4)
    with pytest.raises(ValueError, match="testlist02.txt: split file not found"):
        ucf101_split(videos, lists, 2, "test")
    with pytest.raises(ValueError, match="must be UCF101's trainlist0N.txt"):
        video_dataset_from_directory(videos, split_file=os.path.join(lists, "classInd.txt"))


def test_hmdb51_split_marks_train_test_unused(tmp_path):
    videos, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    os.makedirs(splits)
    marks = {"brush_hair": ["1", "2", "0", "1"], "cartwheel": ["2", "1", "1", "0"]}
    for c, ms in marks.items():
        lines = []
        for k, m in enumerate(ms):
            name = f"{c}_clip_{k}.avi"
            _video(str(videos / c / name))
            lines.append(f"{name} {m} \n")  # trailing space, as shipped
        (splits / f"{c}_test_split1.txt").write_text("".join(lines))
        (splits / f"{c}_test_split2.txt").write_text(
            "".join(f"{c}_clip_{k}.avi 1\n" for k in range(4))
        )
    train = hmdb51_split(str(videos), str(splits), 1, "training")
    test = hmdb51_split(str(videos), str(splits), 1, "test")
    base = lambda s: [os.path.basename(p) for p in s.file_paths]  # noqa: E731
    assert train.class_names == ("brush_hair", "cartwheel")
    assert base(train) == ["brush_hair_clip_0.avi", "brush_hair_clip_3.avi",
                           "cartwheel_clip_1.avi", "cartwheel_clip_2.avi"]  # fmt: skip
    assert train.labels == (0, 0, 1, 1)
    assert base(test) == ["brush_hair_clip_1.avi", "cartwheel_clip_0.avi"]
    assert len(hmdb51_split(str(videos), str(splits), 2, "training").file_paths) == 8
    ds = video_dataset_from_directory(
        str(videos), split_file=test, batch_size=2, num_frames=4, image_size=(16, 16),
        shuffle=False, decoder="pyav",
    )  # fmt: skip
    clips, labels = next(iter(ds))
    assert clips.shape == (2, 4, 16, 16, 3) and labels.numpy().tolist() == [0, 1]
    os.remove(videos / "cartwheel" / "cartwheel_clip_1.avi")
    with pytest.raises(ValueError, match="(?s)1 listed video.*cartwheel_clip_1.avi"):
        hmdb51_split(str(videos), str(splits), 1, "training")
    with pytest.raises(ValueError, match="no <class>_test_split3.txt"):
        hmdb51_split(str(videos), str(splits), 3, "training")


def test_kinetics_csv_finds_clips_in_any_layout(tmp_path):
    videos = tmp_path / "kinetics"
    rows = [
        ("abseiling", "aaa111", 10, 20, "train", "train/abseiling"),
        ("abseiling", "bbb222", 0, 10, "val", "val/abseiling"),
        ("zumba", "ccc333", 125, 135, "train", "train/zumba"),
        ("zumba", "ddd444", 3, 13, "val", ""),  # flat, beside the split folders
    ]
    lines = ["label,youtube_id,time_start,time_end,split"]
    for label, vid, t0, t1, split, folder in rows:
        _video(str(videos / folder / f"{vid}_{t0:06d}_{t1:06d}.mp4"))
        lines.append(f"{label},{vid},{t0},{t1},{split}")
    (tmp_path / "k400.csv").write_text("\n".join(lines) + "\n")
    train = kinetics_csv(str(videos), str(tmp_path / "k400.csv"), subset="train")
    val = kinetics_csv(str(videos), str(tmp_path / "k400.csv"), subset="val")
    assert train.class_names == ("abseiling", "zumba") == val.class_names
    assert [os.path.basename(p) for p in train.file_paths] == [
        "aaa111_000010_000020.mp4",
        "ccc333_000125_000135.mp4",
    ]
    assert train.labels == (0, 1) and val.labels == (0, 1)
    assert len(kinetics_csv(str(videos), str(tmp_path / "k400.csv")).file_paths) == 4
    ds = video_dataset_from_directory(
        str(videos), split_file=val, batch_size=None, num_frames=3, image_size=(16, 16),
        shuffle=False, decoder="pyav", label_mode="categorical",
    )  # fmt: skip
    assert np.array([y.numpy() for _, y in ds]).tolist() == [[1, 0], [0, 1]]

    (tmp_path / "more.csv").write_text(lines[0] + "\nzumba,zzz999,1,11,train\n")
    with pytest.raises(ValueError, match=r"(?s)more.csv: 1 listed video.*zzz999_000001_000011"):
        kinetics_csv(str(videos), str(tmp_path / "more.csv"))
    (tmp_path / "bad.csv").write_text("label,id\nzumba,x\n")
    with pytest.raises(ValueError, match="bad.csv: needs columns"):
        kinetics_csv(str(videos), str(tmp_path / "bad.csv"))


def test_example_trains_on_an_official_ucf101_split(ucf, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "action_recognition.py"
    spec = importlib.util.spec_from_file_location("example_action_recognition_split", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    videos, lists = ucf
    tiny = ["--frames", "5", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
            "--verbose", "0", "--no-export", "--data", videos, "--split", "1"]  # fmt: skip
    metrics = example.main(
        tiny + ["--split-file", lists, "--output-dir", str(tmp_path / "run"), "--mode", "backprop"]
    )
    assert metrics["class_names"] == UCF_CLASSES
    assert metrics["data"]["train_videos"] == 6 and metrics["data"]["test_videos"] == 6
    with pytest.raises(example.UsageError, match="trainlist02.txt: split file not found"):
        example.main(tiny[:-1] + ["2", "--split-file", lists, "--output-dir", str(tmp_path)])
