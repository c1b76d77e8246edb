"""Clip decoding throughput and frame accuracy: the dataset against other video loaders.

Over a mix of generated files like real footage (a long H.264 file, camera-style B-frames with
pts = dts, a packed-B-frame MPEG-4 AVI, a Cinepak AVI with empty index entries, 720p, a file
whose last packet has no frame), every loader decodes the same 16-frame clips (frame step 2,
random starts drawn by the dataset each round), resized to 112x112 RGB, one FFmpeg thread each:

- ``dataset``: ``video_dataset_from_directory`` (``decoder="pyav"``, random clips, batches of 8;
  ``num_parallel_calls`` = workers), the whole tf.data pipeline;
- ``decode_clip``: the library's decode step in a plain loop (or a thread pool);
- ``pyav_seek``: what one writes by hand with PyAV: seek to the clip's time, decode forward,
  keep frames from that timestamp on;
- ``opencv``: ``cv2.VideoCapture`` + ``CAP_PROP_POS_FRAMES`` + ``cv2.resize``;
- ``decord``: ``VideoReader(width, height).get_batch``.

opencv and decord are benchmark-only (``pip install -e .[bench]``); missing ones are skipped.
Rounds alternate the loaders (A B C A B C ...), so load from other processes spreads over all
alike; ``single`` runs one worker, ``two`` a pool of two threads (each loader releases the
GIL while decoding). Every frame decoded is checked against the number it shows.

Usage::

    python benchmarks/decoders.py            # writes benchmarks/results/decoders.json
    python benchmarks/decoders.py --quick    # small, for a smoke test
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import av
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))

import tensorflow as tf  # noqa: E402
import videotools  # noqa: E402 - the test suite's generators of odd real-world files

from keras_sideways.data import decode_clip, probe_video, video_dataset_from_directory  # noqa: E402

SIZE = (112, 112)
CLIP = 16
STEP = 2

Job = tuple[str, np.ndarray]  # (path, frame indices)


def make_files(folder: str, quick: bool, copies: int = 1) -> dict[str, str]:
    """The file mix, written into ``folder/x/`` (one class folder for the dataset), each file
    listed ``copies`` times."""
    os.makedirs(os.path.join(folder, "x"))
    texture = videotools.textured_index_frames(seed=0)
    s = 4 if quick else 1  # --quick: shorter files
    qvga = (240, 320)
    specs: dict[str, Callable[[str], str]] = {
        "long_h264.mp4": lambda p: videotools.write_video(
            p, 3000 // s, size=qvga, gop=250, b_frames=3, make_frame=texture
        ),
        "camera_pts_eq_dts.mp4": lambda p: videotools.write_pts_equals_dts_mp4(
            p, 455 // s, size=qvga, gop=30, b_frames=2, make_frame=texture
        ),
        "packed_bframes.avi": lambda p: videotools.write_packed_bframes_avi(
            p, 300 // s, size=qvga, gop=30, make_frame=texture
        ),
        "cinepak_empty_chunks.avi": lambda p: videotools.write_avi_with_empty_chunks(
            p, 68, size=qvga, slots_per_frame=6, make_frame=texture
        ),
        "anim_720p.mp4": lambda p: videotools.write_video(
            p, 150 // s, size=(720, 1280), gop=50, b_frames=3, make_frame=texture
        ),
        "trailing_packet.mp4": lambda p: videotools.write_trailing_empty_packet_mp4(
            p, 300 // s, size=qvga, gop=25, b_frames=2, make_frame=texture
        ),
        "mpeg4.avi": lambda p: videotools.write_video(
            p, 300 // s, size=qvga, codec="mpeg4", gop=12, make_frame=texture
        ),
    }
    files = {name: make(os.path.join(folder, "x", name)) for name, make in specs.items()}
    # Links, so that an epoch holds many clips as a real data set's does (its start and end
    # cost little then); each link is probed as its own file, then found in the index cache.
    for copy in range(1, copies):
        for name, path in files.items():
            os.symlink(path, os.path.join(folder, "x", f"copy{copy}_{name}"))
    return files


# ------------------------------------------------------------------------------ loaders


def pyav_seek_clip(path: str, indices: np.ndarray) -> np.ndarray:
    """The hand-written PyAV loop: seek to the clip's start time, decode, keep from there."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate, time_base = stream.average_rate, stream.time_base
        start = stream.start_time or 0
        first, last = int(indices.min()), int(indices.max())
        target = start + int(first / rate / time_base)
        container.seek(target, stream=stream, backward=True)
        got: list[np.ndarray] = []
        for frame in container.decode(stream):
            if frame.pts is not None and frame.pts < target:
                continue
            got.append(frame.to_ndarray(format="rgb24", width=SIZE[1], height=SIZE[0]))
            if len(got) > last - first:
                break
    got += [got[-1]] * (last - first + 1 - len(got))  # ran out: repeat (a real loop would crash)
    return np.stack([got[int(i) - first] for i in indices])


def opencv_clip(path: str, indices: np.ndarray) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    first, last = int(indices.min()), int(indices.max())
    cap.set(cv2.CAP_PROP_POS_FRAMES, first)
    got: list[np.ndarray] = []
    for _ in range(last - first + 1):
        ok, bgr = cap.read()
        if not ok:
            break
        small = cv2.resize(bgr, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
        got.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
    cap.release()
    blank = np.zeros((*SIZE, 3), np.uint8)
    got += [got[-1] if got else blank] * (last - first + 1 - len(got))
    return np.stack([got[int(i) - first] for i in indices])


def decord_clip(path: str, indices: np.ndarray) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, width=SIZE[1], height=SIZE[0], num_threads=1)
    safe = np.minimum(indices, len(reader) - 1)
    return reader.get_batch(safe.tolist()).asnumpy()


def library_clip(infos: dict) -> Callable[[str, np.ndarray], np.ndarray]:
    return lambda path, indices: decode_clip(path, indices, SIZE, info=infos[path])


def available_loaders(infos: dict) -> dict[str, Callable[[str, np.ndarray], np.ndarray]]:
    loaders = {"decode_clip": library_clip(infos), "pyav_seek": pyav_seek_clip}
    try:
        import cv2

        cv2.setNumThreads(1)
        loaders["opencv"] = opencv_clip
    except ImportError:
        print("opencv not installed: skipped (pip install -e .[bench])")
    try:
        import decord  # noqa: F401

        loaders["decord"] = decord_clip
    except ImportError:
        print("decord not installed: skipped (pip install -e .[bench])")
    return loaders


# ------------------------------------------------------------------------------ measuring


def accuracy(clip: np.ndarray, indices: np.ndarray) -> int:
    """Frames of ``clip`` that show the frame number asked for."""
    return sum(videotools.read_index(f) == int(i) for f, i in zip(clip, indices, strict=True))


def run_loader(fn: Callable, jobs: list[Job], workers: int) -> tuple[float, float, list]:
    """Wall and CPU seconds (all threads of this process) for ``jobs``, and the clips."""
    cpu, start = time.process_time(), time.perf_counter()
    if workers == 1:
        clips = [fn(p, i) for p, i in jobs]
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            clips = list(pool.map(lambda job: fn(*job), jobs))
    return time.perf_counter() - start, time.process_time() - cpu, clips


def dataset_factory(folder: str, num_files: int, workers: int, seed: int) -> tf.data.Dataset:
    """The dataset, labelled with each file's number, so the clips it drew can be given to the
    other loaders."""
    return video_dataset_from_directory(
        folder, labels=list(range(num_files)), batch_size=8, num_frames=CLIP,
        frame_step=STEP, image_size=SIZE, shuffle=True, seed=seed, decoder="pyav",
        num_parallel_calls=workers,
    )  # fmt: skip


def run_dataset(
    ds: tf.data.Dataset, epochs: int, paths: list[str], counts: dict[str, int]
) -> tuple[float, float, list[Job], int]:
    """Wall and CPU seconds for ``epochs`` passes, the clips drawn, how many frames were exact.

    A clip's frame numbers are read off its frames; exact means each one is ``STEP`` after the
    one before (modulo the file's length: short files loop), from a valid first frame.
    """
    cpu, start = time.process_time(), time.perf_counter()
    batches = [(x.numpy(), y.numpy()) for _ in range(epochs) for x, y in ds]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    jobs: list[Job] = []
    exact = 0
    for clips, labels in batches:
        for clip, label in zip(clips, labels, strict=True):
            path = paths[int(label)]
            shown = [videotools.read_index(f) for f in clip]
            indices = (shown[0] + np.arange(CLIP) * STEP) % counts[path]
            exact += int(np.sum(np.array(shown) == indices))
            jobs.append((path, indices))
    return seconds, cpu, jobs, exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per setting")
    parser.add_argument("--epochs", type=int, default=2, help="dataset epochs per round")
    parser.add_argument("--copies", type=int, default=4, help="times each file is listed")
    parser.add_argument("--quick", action="store_true", help="short files, 1 round")
    parser.add_argument(
        "--out", default=os.path.join(ROOT, "benchmarks", "results", "decoders.json")
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.epochs = 1, 2
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        files = make_files(work, args.quick, args.copies)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        infos = {p: probe_video(p) for p in files.values()}
        probe_s = time.perf_counter() - t0
        paths = sorted(
            os.path.join(work, "x", name) for name in os.listdir(os.path.join(work, "x"))
        )
        infos = {p: probe_video(p) for p in paths}
        counts = {p: infos[p].num_frames for p in paths}
        loaders = available_loaders(infos)
        results: dict = {}
        for workers in (1, 2):
            setting = "single" if workers == 1 else "two"
            ds = dataset_factory(work, len(paths), workers, seed=workers)
            run_dataset(ds, 1, paths, counts)  # warm-up: traces the pipeline
            times: dict[str, list[float]] = {name: [] for name in ["dataset", *loaders]}
            cpu_times: dict[str, list[float]] = {name: [] for name in times}
            checked = {name: [0, 0] for name in times}
            for round_ in range(args.rounds):
                # The dataset draws the clips; every other loader decodes exactly those, in an
                # order that rotates from round to round.
                seconds, cpu, jobs, exact = run_dataset(ds, args.epochs, paths, counts)
                times["dataset"].append(seconds / len(jobs))
                cpu_times["dataset"].append(cpu / len(jobs))
                checked["dataset"][0] += CLIP * len(jobs)
                checked["dataset"][1] += exact
                names = list(loaders)
                names = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in names:
                    seconds, cpu, clips = run_loader(loaders[name], jobs, workers)
                    times[name].append(seconds / len(jobs))
                    cpu_times[name].append(cpu / len(jobs))
                    checked[name][0] += CLIP * len(jobs)
                    checked[name][1] += sum(
                        accuracy(c, i) for c, (_, i) in zip(clips, jobs, strict=True)
                    )
            results[setting] = {
                name: {
                    "clips_per_second_best": 1 / min(t),
                    "clips_per_second_median": 1 / statistics.median(t),
                    "cpu_ms_per_clip_median": 1000 * statistics.median(cpu_times[name]),
                    "frames_checked": checked[name][0],
                    "frames_exact": checked[name][1],
                }
                for name, t in times.items()
            }
            others = [n for n in loaders if n not in ("decode_clip", "pyav_seek")]
            rate = {n: r["clips_per_second_median"] for n, r in results[setting].items()}
            fastest = max(others, key=rate.get) if others else None
            results[setting]["ratios"] = {
                "dataset_vs_pyav_seek": rate["dataset"] / rate["pyav_seek"],
                "decode_clip_vs_pyav_seek": rate["decode_clip"] / rate["pyav_seek"],
                **(
                    {f"dataset_vs_fastest_other ({fastest})": rate["dataset"] / rate[fastest]}
                    if fastest
                    else {}
                ),
            }
        per_file = {
            os.path.basename(p): {
                "frames": counts[p],
                "index": infos[p].index_source,
                "codec": infos[p].codec,
                "size": f"{infos[p].width}x{infos[p].height}",
            }
            for p in files.values()
        }
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": list(load_start),
            "loadavg_at_end": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "av": av.__version__,
            "versions": _versions(),
        },
        "files": per_file,
        "write_seconds": write_s,
        "probe_seconds": probe_s,
        "clip": f"{CLIP} frames, frame step {STEP}, random start (drawn by the dataset), "
        f"{SIZE[1]}x{SIZE[0]} RGB uint8 (the dataset: float32 in [0, 1], batches of 8)",
        "rounds": args.rounds,
        "results": results,
        "goals": {"dataset_vs_pyav_seek": 1.0, "dataset_vs_fastest_other": 0.9},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for setting, table in results.items():
        print(f"\n{setting} worker(s)   clips/s median   best   CPU ms/clip   exact frames")
        for name, r in table.items():
            if name == "ratios":
                continue
            median, best = r["clips_per_second_median"], r["clips_per_second_best"]
            print(
                f"  {name:12s} {median:14.1f} {best:6.1f} {r['cpu_ms_per_clip_median']:13.1f}   "
                f"{r['frames_exact']}/{r['frames_checked']}"
            )
        for name, ratio in table["ratios"].items():
            print(f"  {name}: {ratio:.2f}x")
    print(f"\nprobe of {len(per_file)} files: {probe_s:.2f} s; load average start "
          f"{load_start[0]:.2f}, end {os.getloadavg()[0]:.2f}; wrote {args.out}")  # fmt: skip


def _versions() -> dict[str, str]:
    out = {}
    for name in ("cv2", "decord"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


if __name__ == "__main__":
    main()
