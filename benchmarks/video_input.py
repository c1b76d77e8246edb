"""Video input throughput: the tf.data pipelines against plain decoding loops.

Two comparisons, each measured in one run on one machine (the ratios are what matter):

1. ``video_dataset_from_directory`` (PyAV, seek + stop early, files decoded in parallel) against
   a plain single-process PyAV loop decoding the same centre clips: open, decode from the first
   frame, convert the frames the clip uses, stop after its last one. A third row, the library's
   own ``decode_clip`` in the same single-process loop, separates what seeking gains from what
   parallel decoding gains.
2. ``tfrecord_video_dataset`` on 300-frame videos with 16-frame clips: sample-before-decode
   (gather 16 JPEG strings, decode 16) against decoding all 300 frames and then gathering.
3. ``decoder="tfio"`` beside ``decoder="pyav"`` on comparison 1's files: decoded clip frames per
   second for two workloads (the centre 16-frame clip; every frame of each video, as
   ``cache=True``'s first epoch). tensorflow-io needs TensorFlow 2.16, so its half runs in a
   second process started from the tfio environment (``--tfio-python``, default
   ``.venv-tfio/bin/python``; FFmpeg 4 from ``python -m keras_sideways.data.ffmpeg4``); rounds
   alternate between the two processes, so both see the same machine load. Skipped, saying why,
   when that environment is missing.

Videos are generated here (no downloads): H.264 mp4, a panning smooth random texture with a
moving square, so that decoding does real work; keyframe every ``--gop`` frames.

Usage::

    python benchmarks/video_input.py            # writes benchmarks/results/video_input.json
    python benchmarks/video_input.py --quick    # smaller, for a smoke test
    python benchmarks/video_input.py --only-decoders   # comparison 3 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import av
import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

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


def write_folder(args: argparse.Namespace, work: str) -> tuple[str, list[str], float]:
    """Comparison 1's (and 3's) videos: ``(root, paths, seconds to write)``."""
    root = os.path.join(work, "folder")
    os.makedirs(os.path.join(root, "x"))
    paths = []
    start = time.perf_counter()
    for i in range(args.videos):
        path = os.path.join(root, "x", f"v{i:03d}.mp4")
        textured_video(path, args.frames, (240, 320), args.gop, seed=i)
        paths.append(path)
    return root, paths, time.perf_counter() - start


def folder_benchmark(args: argparse.Namespace, root: str, paths: list[str], write_s: float) -> dict:
    """Comparison 1: dataset vs plain PyAV loop on the same centre clips."""
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


# Comparison 3's workloads: name -> dataset arguments (on 150-frame 320x240 videos by default).
DECODER_WORKLOADS = {
    "centre_clip": {"num_frames": 16, "frame_step": 2, "batch_size": 8},
    "all_frames": {"num_frames": None, "frame_step": 1, "batch_size": 1},
}


def workload_dataset(root: str, workload: str, frames: int, decoder: str, parallel: int | None):
    """The dataset of one workload; ``all_frames`` takes each video whole as one clip."""
    kw = dict(DECODER_WORKLOADS[workload])
    kw["num_frames"] = kw["num_frames"] or frames
    if parallel is not None:
        kw["num_parallel_calls"] = parallel
    return video_dataset_from_directory(
        root, labels=None, image_size=(112, 112), shuffle=False, decoder=decoder, **kw
    )


def decoder_worker() -> None:
    """``--decoder-worker``: times epochs on request, one JSON line per request (stdin/stdout).

    A request is ``{"root", "workload", "frames", "decoder", "parallel", "check"}``; the reply
    gives wall and CPU seconds and clip frames, and with ``check`` writes the first batch to that
    ``.npy`` path so that the other process can compare the clips.
    """
    replies, sys.stdout = sys.stdout, sys.stderr  # the library's own prints go to stderr
    datasets: dict[str, tf.data.Dataset] = {}
    for line in sys.stdin:
        request = json.loads(line)
        key = json.dumps({k: request[k] for k in ("workload", "decoder", "parallel")})
        if key not in datasets:
            datasets[key] = workload_dataset(request["root"], request["workload"],
                                             request["frames"], request["decoder"],
                                             request["parallel"])  # fmt: skip
        ds = datasets[key]
        if request.get("check"):
            np.save(request["check"], next(iter(ds)).numpy())
        cpu, wall = time.process_time(), time.perf_counter()
        frames = sum(int(np.prod(batch.shape[:2])) for batch in ds)
        reply = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                 "frames": frames, "decoder": ds.decoder, "tensorflow": tf.__version__}  # fmt: skip
        print(json.dumps(reply), file=replies, flush=True)


class Worker:
    """A ``--decoder-worker`` process in another Python (the tfio environment)."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [python, os.path.abspath(__file__), "--decoder-worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    def run(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the decoder worker exited ({self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def tfio_environment(args: argparse.Namespace) -> tuple[str, dict[str, str]] | str:
    """``(python, environment)`` for the tfio worker, or why there is none."""
    python = args.tfio_python
    if not os.path.isfile(python):
        return f"no tfio environment at {python} (see README: the tensorflow-io route)"
    made = subprocess.run(
        [python, "-m", "keras_sideways.data.ffmpeg4", args.ffmpeg4_dir],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        return f"FFmpeg 4 folder failed: {made.stderr.strip().splitlines()[-1]}"
    env = dict(os.environ)
    ffmpeg_dir = os.path.abspath(args.ffmpeg4_dir)
    env["LD_LIBRARY_PATH"] = ffmpeg_dir + (":" + env["LD_LIBRARY_PATH"]
                                           if env.get("LD_LIBRARY_PATH") else "")  # fmt: skip
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return python, env


def decoder_benchmark(args: argparse.Namespace, root: str, work: str) -> dict:
    """Comparison 3: tfio (other process) beside PyAV (this one), the same files, alternating."""
    found = tfio_environment(args)
    if isinstance(found, str):
        print(f"Comparison 3 skipped: {found}")
        return {"skipped": found}
    worker = Worker(*found)
    # (label, process, decoder, parallel calls): PyAV as the library runs it (parallel,
    # autotuned) and one clip at a time, the way the tfio decoder has to run.
    variants = [("pyav", "here", "pyav", None), ("pyav_one_at_a_time", "here", "pyav", 1),
                ("tfio", "worker", "tfio", None)]  # fmt: skip
    local: dict[str, tf.data.Dataset] = {}
    out: dict = {"tfio_process": {}}
    try:
        for workload in DECODER_WORKLOADS:
            check = os.path.join(work, f"tfio_{workload}.npy")
            first = worker.run(root=root, workload=workload, frames=args.frames, decoder="tfio",
                               parallel=None, check=check)  # fmt: skip (warm-up, and the check)
            out["tfio_process"] = {"decoder": first["decoder"], "tensorflow": first["tensorflow"]}
            for _, where, decoder, parallel in variants:
                if where == "here":
                    local[f"{workload}{parallel}"] = workload_dataset(
                        root, workload, args.frames, decoder, parallel
                    )
            pyav_first = next(iter(local[f"{workload}None"])).numpy()
            difference = np.abs(np.load(check) - pyav_first) * 255
            for ds in local.values():  # warm-up: traces the pipelines once
                for _ in ds.take(1):
                    pass
            times = {name: {"wall": [], "cpu": []} for name, *_ in variants}
            frames = {}
            for _ in range(args.repeats):
                for name, where, decoder, parallel in variants:
                    if where == "worker":
                        r = worker.run(root=root, workload=workload, frames=args.frames,
                                       decoder=decoder, parallel=parallel)  # fmt: skip
                    else:
                        ds = local[f"{workload}{parallel}"]
                        cpu, wall = time.process_time(), time.perf_counter()
                        n = sum(int(np.prod(batch.shape[:2])) for batch in ds)
                        r = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                             "frames": n}  # fmt: skip
                    times[name]["wall"].append(r["wall"])
                    times[name]["cpu"].append(r["cpu"])
                    frames[name] = r["frames"]
            best = {name: frames[name] / min(t["wall"]) for name, t in times.items()}
            out[workload] = {
                "clip": dict(DECODER_WORKLOADS[workload], image_size=[112, 112]),
                "frames_per_epoch": frames,
                "seconds": times,
                "frames_per_second_best": best,
                "frames_per_second_median": {
                    name: frames[name] / statistics.median(t["wall"]) for name, t in times.items()
                },
                "cpu_ms_per_frame": {
                    name: 1000 * statistics.median(t["cpu"]) / frames[name]
                    for name, t in times.items()
                },
                "ratio_tfio_vs_pyav": best["tfio"] / best["pyav"],
                "ratio_tfio_vs_pyav_one_at_a_time": best["tfio"] / best["pyav_one_at_a_time"],
                "first_batch_abs_difference_0_255": {
                    "mean": float(difference.mean()), "p99": float(np.percentile(difference, 99)),
                    "max": float(difference.max()),
                },  # fmt: skip
            }
    finally:
        worker.close()
    return out


def print_decoders(dec: dict) -> None:
    """Comparison 3's table."""
    if "skipped" in dec:
        print(f"\ntfio vs PyAV: skipped ({dec['skipped']})")
        return
    print(f"\ntfio (TensorFlow {dec['tfio_process']['tensorflow']}, other process) vs PyAV "
          f"(TensorFlow {tf.__version__}), decoded clip frames/s, 112x112:")  # fmt: skip
    print("{:14s} {:>26s} {:>12s} {:>8s} {:>12s} {:>14s}".format(
        "workload", "decoder", "frames/s best", "median", "CPU ms/frame", "tfio / this"))
    for workload in DECODER_WORKLOADS:
        w = dec[workload]
        for name in ("pyav", "pyav_one_at_a_time", "tfio"):
            ratio = {"pyav": w["ratio_tfio_vs_pyav"],
                     "pyav_one_at_a_time": w["ratio_tfio_vs_pyav_one_at_a_time"]}.get(name)
            print(f"{workload:14s} {name:>26s} {w['frames_per_second_best'][name]:12.1f} "
                  f"{w['frames_per_second_median'][name]:8.1f} "
                  f"{w['cpu_ms_per_frame'][name]:12.2f} "
                  + (f"{ratio:13.2f}x" if ratio else ""))  # fmt: skip
        d = w["first_batch_abs_difference_0_255"]
        print(f"{'':14s} first batch, tfio - PyAV (0-255): mean {d['mean']:.2f}, "
              f"p99 {d['p99']:.0f}, max {d['max']:.0f}")


def main() -> None:
    """Run the comparisons, print tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32, help="videos for comparisons 1 and 3")
    parser.add_argument("--frames", type=int, default=150, help="frames per video (1, 3)")
    parser.add_argument("--gop", type=int, default=25, help="keyframe interval")
    parser.add_argument("--tfr-videos", type=int, default=24, help="videos for comparison 2")
    parser.add_argument("--tfr-frames", type=int, default=300, help="frames per video (2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--only-decoders", action="store_true", help="comparison 3 only")
    parser.add_argument("--skip-decoders", action="store_true", help="no comparison 3")
    parser.add_argument(
        "--tfio-python", default=os.path.join(REPO, ".venv-tfio", "bin", "python"),
        help="Python of the tfio environment (TensorFlow 2.16 + tensorflow-io)",
    )  # fmt: skip
    parser.add_argument("--ffmpeg4-dir", default=os.path.join(REPO, ".ffmpeg4"),
                        help="FFmpeg 4 folder for tfio, made with keras_sideways.data.ffmpeg4")
    parser.add_argument("--decoder-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                             "video_input.json"),
    )  # fmt: skip
    args = parser.parse_args()
    if args.decoder_worker:
        decoder_worker()
        return
    if args.quick:
        args.videos, args.frames, args.tfr_videos, args.tfr_frames = 8, 60, 4, 120
        args.repeats = 1

    load_start = list(os.getloadavg())
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)}")
    result: dict = {}
    with tempfile.TemporaryDirectory() as work:
        root, paths, write_s = write_folder(args, work)
        if not args.only_decoders:
            result["folder_vs_plain_pyav"] = folder_benchmark(args, root, paths, write_s)
            result["tfrecord_sample_before_decode"] = tfrecord_benchmark(args, work)
        if not args.skip_decoders:
            result["tfio_vs_pyav"] = decoder_benchmark(args, root, work)
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load_start,
        "loadavg_at_end": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "av": av.__version__,
    }
    result["goals"] = {"dataset_vs_plain": 1.8, "tfrecord_sample_vs_all": 3.0}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)

    if not args.only_decoders:
        folder, tfr = result["folder_vs_plain_pyav"], result["tfrecord_sample_before_decode"]
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
    if not args.skip_decoders:
        print_decoders(result["tfio_vs_pyav"])
    print(f"{os.cpu_count()} CPUs, load average at start {load_start[0]:.2f}, at end "
          f"{os.getloadavg()[0]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
