"""Video input throughput: the tf.data pipelines against plain decoding loops.

Two comparisons, each measured in one run on one machine (the ratios are what matter):

1. ``video_dataset_from_directory`` (PyAV, seek + stop early, files decoded in parallel) against
   a plain single-process PyAV loop decoding the same centre clips: open, decode from the first
   frame, convert the frames the clip uses, stop after its last one. A third row, the library's
   own ``decode_clip`` in the same single-process loop, separates what seeking gains from what
   parallel decoding gains.
2. ``tfrecord_video_dataset`` on 300-frame videos with 16-frame clips: sample-before-decode
   (gather 16 JPEG strings, decode 16) against decoding all 300 frames and then gathering.

Videos are generated here (no downloads): H.264 mp4, a panning smooth random texture with a
moving square, so that decoding does real work; keyframe every ``--gop`` frames.

Usage::

    python benchmarks/video_input.py            # writes benchmarks/results/video_input.json
    python benchmarks/video_input.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import av
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_sideways.data import (  # noqa: E402 - after the path set-up above
    clip_indices,
    decode_clip,
    probe_video,
    tfrecord_video_dataset,
    video_dataset_from_directory,
    write_video_tfrecords,
)


def textured_video(path: str, num_frames: int, size: tuple[int, int], gop: int, seed: int) -> None:
    """A panning smooth random texture with a moving square, H.264 (crf 23) in mp4."""
    height, width = size
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3))
    texture = np.kron(coarse, np.ones((8, 8, 1)))  # blocky noise...
    for axis in (0, 1):  # ...smoothed by a box filter along each axis
        texture = sum(np.roll(texture, k, axis=axis) for k in range(-4, 5)) / 9
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23", "x264-params": f"keyint={gop}"}
        for i in range(num_frames):
            frame = np.roll(texture, (i, 2 * i), axis=(0, 1))[:height, :width].copy()
            y, x = (7 * i) % (height - 40), (5 * i) % (width - 40)
            frame[y : y + 40, x : x + 40] = (240, 40, 40)
            vf = av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def plain_pyav_clip(path: str, indices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What one would write by hand: decode from the start, keep the clip's frames, stop."""
    wanted = set(int(i) for i in indices)
    last = int(max(indices))
    frames = {}
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24", width=size[1], height=size[0])
            if i >= last:
                break
    return np.stack([frames[int(i)] for i in indices]).astype(np.float32) / 255.0


def timed(variants: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and CPU seconds of each variant, ``repeats`` times, interleaved.

    Interleaving (A B C A B C ...) spreads any load from other processes over all variants
    alike; the best (minimum) wall time of each is the least disturbed measurement.
    """
    out = {name: {"wall": [], "cpu": []} for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            out[name]["wall"].append(time.perf_counter() - wall)
            out[name]["cpu"].append(time.process_time() - cpu)
    return out


def rates(times: dict[str, dict[str, list[float]]], n: int) -> dict[str, dict[str, float]]:
    """Clips per second: from the best and the median wall time; CPU seconds per clip."""
    return {
        name: {
            "best": n / min(t["wall"]),
            "median": n / statistics.median(t["wall"]),
            "cpu_ms_per_clip": 1000 * statistics.median(t["cpu"]) / n,
        }
        for name, t in times.items()
    }


def folder_benchmark(args: argparse.Namespace, work: str) -> dict:
    """Comparison 1: dataset vs plain PyAV loop on the same centre clips."""
    root = os.path.join(work, "folder")
    os.makedirs(os.path.join(root, "x"))
    paths = []
    start = time.perf_counter()
    for i in range(args.videos):
        path = os.path.join(root, "x", f"v{i:03d}.mp4")
        textured_video(path, args.frames, (240, 320), args.gop, seed=i)
        paths.append(path)
    write_s = time.perf_counter() - start
    size, num_frames, step = (112, 112), 16, 2
    infos = [probe_video(p) for p in paths]
    clips = [clip_indices(info.num_frames, num_frames, step) for info in infos]

    def plain() -> None:
        for p, idx in zip(paths, clips, strict=True):
            plain_pyav_clip(p, idx, size)

    def library_loop() -> None:
        for p, idx, info in zip(paths, clips, infos, strict=True):
            decode_clip(p, idx, size, info=info).astype(np.float32) / 255.0

    # Same clips: the dataset's evaluation mode samples the centre clip, as `clips` does.
    start = time.perf_counter()
    ds = video_dataset_from_directory(
        root, labels=None, batch_size=8, num_frames=num_frames, frame_step=step,
        image_size=size, shuffle=False, decoder="pyav",
    )  # fmt: skip
    build_s = time.perf_counter() - start

    def dataset() -> None:
        for _ in ds:
            pass

    check = np.concatenate([b.numpy() for b in ds])
    reference = np.stack(
        [plain_pyav_clip(p, idx, size) for p, idx in zip(paths, clips, strict=True)]
    )
    assert np.abs(check - reference).max() < 1e-6, "dataset and plain loop decoded different clips"

    dataset()  # warm-up: traces the pipeline once
    n = len(paths)
    results = timed(
        {"plain_pyav_loop": plain, "decode_clip_loop": library_loop, "dataset": dataset},
        args.repeats,
    )
    r = rates(results, n)
    best = {k: v["best"] for k, v in r.items()}
    return {
        "videos": n,
        "video": f"{args.frames} frames 320x240 H.264, keyframe every {args.gop}",
        "clip": f"{num_frames} frames, frame_step {step}, resized to 112x112, centre clip",
        "write_seconds": write_s,
        "dataset_build_seconds_incl_probe": build_s,
        "seconds": results,
        "clips_per_second": r,
        "ratio_dataset_vs_plain": best["dataset"] / best["plain_pyav_loop"],
        "ratio_decode_clip_vs_plain": best["decode_clip_loop"] / best["plain_pyav_loop"],
        "ratio_dataset_vs_decode_clip_loop": best["dataset"] / best["decode_clip_loop"],
    }


def tfrecord_benchmark(args: argparse.Namespace, work: str) -> dict:
    """Comparison 2: sample-before-decode vs decode-all for 16-frame clips of long videos."""
    root = os.path.join(work, "long")
    os.makedirs(os.path.join(root, "x"))
    start = time.perf_counter()
    for i in range(args.tfr_videos):
        textured_video(
            os.path.join(root, "x", f"v{i:03d}.mp4"), args.tfr_frames, (112, 112), args.gop, i
        )
    shards = os.path.join(work, "shards")
    write_video_tfrecords(root, shards, num_shards=4)
    write_s = time.perf_counter() - start
    kw = dict(
        batch_size=8, num_frames=16, frame_step=1, image_size=(112, 112), shuffle=False,
        label_mode=None,
    )  # fmt: skip
    fast = tfrecord_video_dataset(shards, sample_before_decode=True, **kw)
    slow = tfrecord_video_dataset(shards, sample_before_decode=False, **kw)
    a = np.concatenate([b.numpy() for b in fast])
    b = np.concatenate([b.numpy() for b in slow])
    assert np.array_equal(a, b), "both TFRecord paths must give the same clips"

    def run(ds: tf.data.Dataset):
        return lambda: [None for _ in ds]

    n = args.tfr_videos
    results = timed(
        {"sample_before_decode": run(fast), "decode_all_frames": run(slow)}, args.repeats
    )
    r = rates(results, n)
    return {
        "videos": n,
        "video": f"{args.tfr_frames} frames 112x112, stored as JPEG (quality 90)",
        "clip": "16 frames, frame_step 1, centre clip",
        "write_seconds": write_s,
        "seconds": results,
        "clips_per_second": r,
        "ratio_sample_before_decode_vs_decode_all": r["sample_before_decode"]["best"]
        / r["decode_all_frames"]["best"],
    }


def main() -> None:
    """Run both comparisons, print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32, help="videos for comparison 1")
    parser.add_argument("--frames", type=int, default=150, help="frames per video (1)")
    parser.add_argument("--gop", type=int, default=25, help="keyframe interval")
    parser.add_argument("--tfr-videos", type=int, default=24, help="videos for comparison 2")
    parser.add_argument("--tfr-frames", type=int, default=300, help="frames per video (2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                             "video_input.json"),
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.videos, args.frames, args.tfr_videos, args.tfr_frames = 8, 60, 4, 120
        args.repeats = 1

    with tempfile.TemporaryDirectory() as work:
        folder = folder_benchmark(args, work)
        tfr = tfrecord_benchmark(args, work)
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_at_end": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "av": av.__version__,
        },
        "folder_vs_plain_pyav": folder,
        "tfrecord_sample_before_decode": tfr,
        "goals": {"dataset_vs_plain": 1.8, "tfrecord_sample_vs_all": 3.0},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)

    f, t = folder["clips_per_second"], tfr["clips_per_second"]
    rows = [
        ("plain PyAV loop (1 process)", f["plain_pyav_loop"], 1.0),
        ("decode_clip loop (seek, 1 process)", f["decode_clip_loop"],
         folder["ratio_decode_clip_vs_plain"]),
        ("video_dataset_from_directory", f["dataset"], folder["ratio_dataset_vs_plain"]),
        ("TFRecord, decode all frames", t["decode_all_frames"], 1.0),
        ("TFRecord, sample before decode", t["sample_before_decode"],
         tfr["ratio_sample_before_decode_vs_decode_all"]),
    ]  # fmt: skip
    header = ("pipeline", "clips/s best", "median", "CPU ms/clip", "ratio")
    print("\n{:38s} {:>12s} {:>8s} {:>11s} {:>7s}".format(*header))
    for name, r, ratio in rows:
        print(
            f"{name:38s} {r['best']:12.1f} {r['median']:8.1f} {r['cpu_ms_per_clip']:11.1f} "
            f"{ratio:6.2f}x"
        )
    print("(ratios from the best of the interleaved repeats)")
    print(f"\n{folder['video']}; {folder['clip']}")
    print(f"{tfr['video']}; {tfr['clip']}")
    print(f"{os.cpu_count()} CPUs, load average at end {os.getloadavg()[0]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
