"""The paper's claims, measured on data we can make: Sideways vs backprop as video gets less smooth.

Three experiments, one command, all on the synthetic motion data set (classes defined only by
motion; real mp4 files written once, each video decoded once into memory):

1. **Smoothness sweep.** The temporal reference model (`models.temporal_cnn_classifier`) trained
   with Sideways and with backprop, several seeds, on clips sampled with ``frame_step`` in
   {1, 2, 4, 8} and with the frames of each clip in random order ("shuffled"). Held-out accuracy
   on separate videos, and accuracy on the training videos (same clip sampling as held out).
2. **Gradient alignment.** Per-stage cosine between the Sideways update and backprop's
   (`SidewaysModel.compute_gradients`), against stage depth, on smooth and less smooth clips, at
   three points of one Sideways training run (initial weights, after one epoch, final). Backprop
   is taken twice: over all T frames of the clip, and over only the frames whose losses Sideways'
   stage k actually received in the clip (see `sideways_loss_frames`).
3. **Encoder-decoder.** The reference frame encoder-decoder (`models.frame_autoencoder`) learning
   to reconstruct frames, both modes: held-out PSNR during training.

Writes ``results.json`` and PNG figures (default: ``docs/results.json``, ``docs/figures/``)::

    python benchmarks/paper_claims.py              # the full run (20 min on 2 busy CPU cores)
    python benchmarks/paper_claims.py --quick      # a smoke run (under a minute) into runs/

``docs/RESULTS.md`` reads the default run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sideways import SidewaysModel, models, schedule  # noqa: E402
from keras_sideways.data import (  # noqa: E402
    DEFAULT_ACTIONS,
    decode_clip,
    write_synthetic_actions,
)

ROOT = Path(__file__).resolve().parents[1]
MODES = ("sideways", "backprop")
DATA_VERSION = 1  # bump when the generated data changes, so that old caches are not reused


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of one run of the three experiments."""

    image_size: int = 32
    video_frames: int = 96  # per generated video: a clip of 12 at step 8 spans 89, no looping
    clip_frames: int = 12  # T of the classifier clips (K = 3 stages: stage 0 gets T-4 updates)
    train_videos_per_class: int = 80
    test_videos_per_class: int = 20
    frame_steps: tuple[int, ...] = (1, 2, 4, 8)
    shuffled: bool = True
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    alignment_batches: int = 4
    alignment_batch_size: int = 32
    ae_clip_frames: int = 12  # K = 4 stages: stage 0 gets T-6 updates
    ae_frame_steps: tuple[int, ...] = (1, 8)
    ae_seeds: tuple[int, ...] = (0, 1)
    ae_epochs: int = 10
    ae_learning_rate: float = 2e-3
    ae_evaluations: int = 12  # held-out PSNR points per curve (plus one before training)


DEFAULT = Config()
QUICK = Config(
    train_videos_per_class=6,
    test_videos_per_class=2,
    frame_steps=(1, 8),
    seeds=(0,),
    epochs=1,
    batch_size=8,
    alignment_batches=1,
    alignment_batch_size=8,
    ae_frame_steps=(1,),
    ae_seeds=(0,),
    ae_epochs=1,
    ae_evaluations=2,
)


# ---------------------------------------------------------------------- data


@dataclasses.dataclass
class VideoData:
    """Every video decoded once: uint8 ``(N, L, H, W, 3)``, labels, and the train/test split."""

    videos: np.ndarray
    labels: np.ndarray
    train: np.ndarray  # indices into videos
    test: np.ndarray
    class_names: list[str]
    directory: str


def load_videos(config: Config, cache_dir: str) -> VideoData:
    """Write the synthetic videos once (cached), then decode each one fully into memory.

    Video i of a class depends only on (seed 0, class, i); the first ``train_videos_per_class``
    of each class are for training, the rest are held out (separate videos, never trained on).
    """
    per_class = config.train_videos_per_class + config.test_videos_per_class
    classes = list(DEFAULT_ACTIONS)
    key = (f"paper_claims_v{DATA_VERSION}_{'-'.join(classes)}_{per_class}x"
           f"{config.video_frames}f_{config.image_size}px_seed0")
    folder = Path(cache_dir) / key
    if not (folder / "COMPLETE").exists():
        print(f"Writing {len(classes)} x {per_class} synthetic videos to {folder} ...", flush=True)
        partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        write_synthetic_actions(str(partial), classes=classes, videos_per_class=per_class,
                                num_frames=config.video_frames,
                                image_size=(config.image_size, config.image_size), seed=0)
        (partial / "COMPLETE").write_text("written by benchmarks/paper_claims.py\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    class_names = sorted(classes)
    videos, labels, train, test = [], [], [], []
    for label, name in enumerate(class_names):
        for i in range(per_class):
            path = folder / name / f"{name}_{i:04d}.mp4"
            (train if i < config.train_videos_per_class else test).append(len(videos))
            videos.append(decode_clip(str(path), range(config.video_frames)))
            labels.append(label)
    return VideoData(np.stack(videos), np.asarray(labels), np.asarray(train), np.asarray(test),
                     class_names, str(folder))


@dataclasses.dataclass(frozen=True)
class Condition:
    """How clips are cut from a video: every ``frame_step``-th frame, optionally shuffled.

    Shuffled clips take T consecutive frames (step 1) and put them in a random order, a new one
    for every clip drawn (training and held-out clips alike; held-out orders are fixed per video).
    ``static`` (gradient alignment only) repeats one frame T times.
    """

    frame_step: int = 1
    shuffled: bool = False
    static: bool = False

    @property
    def name(self) -> str:
        if self.static:
            return "static"
        return "shuffled" if self.shuffled else f"frame_step={self.frame_step}"

    def record(self) -> dict[str, Any]:
        """The condition's keys in results.json."""
        return {"condition": self.name, "frame_step": self.frame_step,
                "shuffled": self.shuffled}


def clip_span(num_frames: int, frame_step: int) -> int:
    """Frames of the video that a clip of ``num_frames`` at ``frame_step`` covers."""
    return (num_frames - 1) * frame_step + 1


def cut_clips(videos: np.ndarray, indices: np.ndarray, num_frames: int, condition: Condition,
              rng: np.random.Generator | None) -> np.ndarray:
    """Float32 clips ``(len(indices), T, H, W, 3)`` in [0, 1] cut from the decoded videos.

    ``rng=None``: the centre clip of each video and, when shuffled, an order fixed per video
    (held-out and training-set evaluation); otherwise a random start and order per clip.
    Clips never loop: a video shorter than the clip's span is an error.
    """
    length = videos.shape[1]
    step = 1 if condition.shuffled else condition.frame_step
    span = 1 if condition.static else clip_span(num_frames, step)
    if span > length:
        raise ValueError(f"a clip of {num_frames} frames at step {step} spans {span} frames; "
                         f"the videos have {length}")
    clips = np.empty((len(indices), num_frames, *videos.shape[2:]), dtype=np.float32)
    for row, video in enumerate(indices):
        if rng is None:
            start = (length - span) // 2
            order_rng = np.random.default_rng([1234, int(video)])
        else:
            start = int(rng.integers(0, length - span + 1))
            order_rng = rng
        frames = start + np.arange(num_frames) * (0 if condition.static else step)
        if condition.shuffled:
            frames = order_rng.permutation(frames)
        clips[row] = videos[video, frames]
    clips /= 255.0
    return clips


# ---------------------------------------------------------------------- experiment 1: smoothness


def build_classifier(mode: str, seed: int, num_classes: int, learning_rate: float
                     ) -> SidewaysModel:
    """The example's temporal CNN (filters 16-32-64, windows 3-2-1), same weights for a seed."""
    keras.utils.set_random_seed(seed)
    model = models.temporal_cnn_classifier(num_classes).build_model(mode=mode)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def clip_accuracy(model: keras.Model, clips: np.ndarray, labels: np.ndarray,
                  batch_size: int = 64) -> float:
    """Accuracy of the exact forward (logits averaged over the clip's frames)."""
    hits = 0
    for i in range(0, len(clips), batch_size):
        logits = np.asarray(model(clips[i:i + batch_size], training=False))
        hits += int(np.sum(np.argmax(logits, axis=-1) == labels[i:i + batch_size]))
    return hits / len(clips)


def train_classifier(data: VideoData, condition: Condition, mode: str, seed: int,
                     config: Config, snapshots: dict[str, list] | None = None
                     ) -> dict[str, Any]:
    """Train one model; held-out and training-set accuracy on centre clips.

    The seed fixes the initial weights, the batch order and the clips drawn (the same in both
    modes). With ``snapshots`` (a dict), the weights are stored under "init", "epoch 1", "final".
    """
    num_classes = len(data.class_names)
    model = build_classifier(mode, seed, num_classes, config.learning_rate)
    rng = np.random.default_rng([seed, 7])
    test_clips = cut_clips(data.videos, data.test, config.clip_frames, condition, None)
    train_eval = cut_clips(data.videos, data.train, config.clip_frames, condition, None)
    test_labels, train_labels = data.labels[data.test], data.labels[data.train]
    batches = len(data.train) // config.batch_size
    history: dict[str, list[float]] = {"loss": [], "test_accuracy": []}
    model.build((None, *test_clips.shape[1:]))
    if snapshots is not None:
        snapshots["init"] = [np.array(w) for w in model.get_weights()]
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = rng.permutation(data.train)
        losses = []
        for b in range(batches):
            chosen = order[b * config.batch_size:(b + 1) * config.batch_size]
            clips = cut_clips(data.videos, chosen, config.clip_frames, condition, rng)
            loss = model.train_on_batch(clips, data.labels[chosen])
            losses.append(float(np.asarray(loss).ravel()[0]))
        history["loss"].append(float(np.mean(losses)))
        history["test_accuracy"].append(clip_accuracy(model, test_clips, test_labels))
        if snapshots is not None and epoch == 0:
            snapshots["epoch 1"] = [np.array(w) for w in model.get_weights()]
    seconds = time.perf_counter() - start
    if snapshots is not None:
        snapshots["final"] = [np.array(w) for w in model.get_weights()]
    result = {
        "mode": mode,
        **condition.record(),
        "seed": seed,
        "test_accuracy": history["test_accuracy"][-1],
        "train_accuracy": clip_accuracy(model, train_eval, train_labels),
        "final_train_loss": history["loss"][-1],
        "epochs": config.epochs,
        "train_seconds": round(seconds, 2),
        "history": history,
    }
    result["generalisation_gap"] = result["train_accuracy"] - result["test_accuracy"]
    return result


def smoothness_conditions(config: Config) -> list[Condition]:
    conditions = [Condition(frame_step=s) for s in config.frame_steps]
    if config.shuffled:
        conditions.append(Condition(shuffled=True))
    return conditions


# ---------------------------------------------------------------------- experiment 2: alignment


def sideways_loss_frames(num_stages: int, stage: int, num_frames: int) -> range:
    """Frames of a stateless clip whose losses reach stage ``stage``'s Sideways update.

    Stage k contributes at ticks ``2K-2-k … T-1``; at tick t its cotangent descends from frame
    ``schedule.cotangent_frame(K, k, t)`` = ``t-2K+2+k``. So the losses of frames
    ``0 … T-2K+1+k`` reach it and the last ``2K-2-k`` frames' losses do not (the top's own last
    K-1 frames never even leave the pipeline within the clip).
    """
    first = schedule.first_valid_cotangent_tick(num_stages, stage)
    if num_frames <= first:
        return range(0)
    return range(schedule.cotangent_frame(num_stages, stage, first),
                 schedule.cotangent_frame(num_stages, stage, num_frames - 1) + 1)


def sideways_activation_frames(num_stages: int, stage: int, num_frames: int) -> range:
    """Frames whose activations stage ``stage``'s Sideways contributions are evaluated at.

    ``schedule.activation_frame(k, t)`` = ``t-k`` over the same ticks: ``2K-2-2k … T-1-k``, each
    ``schedule.frame_mismatch(K, k)`` = ``2(K-1-k)`` frames newer than the loss it carries.
    """
    first = schedule.first_valid_cotangent_tick(num_stages, stage)
    if num_frames <= first:
        return range(0)
    return range(schedule.activation_frame(stage, first),
                 schedule.activation_frame(stage, num_frames - 1) + 1)


def stage_owner(model: SidewaysModel) -> list[int]:
    """For every entry of ``model.trainable_variables``, the index of the stage that owns it."""
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    owner = [-1] * len(position)
    for k, stage in enumerate(model.stages):
        for v in stage.trainable_variables:
            owner[position[id(v)]] = k
    return owner


def stage_vectors(gradients: Sequence[Any], owner: Sequence[int], num_stages: int
                  ) -> list[np.ndarray]:
    """Each stage's gradients flattened into one vector (float64)."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_stages)]
    for gradient, k in zip(gradients, owner, strict=True):
        parts[k].append(np.asarray(gradient, dtype=np.float64).ravel())
    return [np.concatenate(p) if p else np.zeros(0) for p in parts]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors; NaN when either is zero."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norm) if norm > 0 else math.nan


def stage_cosines(first: Sequence[Any], second: Sequence[Any], owner: Sequence[int],
                  num_stages: int) -> list[float]:
    """Per-stage cosine between two gradient lists aligned with ``trainable_variables``."""
    a = stage_vectors(first, owner, num_stages)
    b = stage_vectors(second, owner, num_stages)
    return [cosine(x, y) for x, y in zip(a, b, strict=True)]


def stage_norm_ratios(first: Sequence[Any], second: Sequence[Any], owner: Sequence[int],
                      num_stages: int) -> list[float]:
    """Per-stage ``|first| / |second|``."""
    a = stage_vectors(first, owner, num_stages)
    b = stage_vectors(second, owner, num_stages)
    return [float(np.linalg.norm(x) / np.linalg.norm(y)) if np.linalg.norm(y) > 0 else math.nan
            for x, y in zip(a, b, strict=True)]


def alignment_on_batch(model: SidewaysModel, clips: np.ndarray, labels: np.ndarray
                       ) -> dict[str, list[float]]:
    """Per-stage cosines of the Sideways update with backprop over all frames and over the
    frames each stage's Sideways update descends from (backprop on the clip's first frames:
    the windows are causal, so frames 0…m do not depend on later ones)."""
    num_stages, num_frames = model.num_stages, clips.shape[1]
    sideways = model.compute_gradients(clips, labels, mode="sideways")
    owner = stage_owner(model)  # after the first call, which builds an unbuilt model
    full = model.compute_gradients(clips, labels, mode="backprop")
    result: dict[str, list[float]] = {
        "cos_full": stage_cosines(sideways, full, owner, num_stages),
        "norm_ratio_full": stage_norm_ratios(sideways, full, owner, num_stages),
        "cos_restricted": [],
        "norm_ratio_restricted": [],
    }
    restricted_cache: dict[int, list] = {}
    for k in range(num_stages):
        used = len(sideways_loss_frames(num_stages, k, num_frames))
        if used not in restricted_cache:
            restricted_cache[used] = model.compute_gradients(clips[:, :used], labels,
                                                             mode="backprop")
        restricted = restricted_cache[used]
        result["cos_restricted"].append(stage_cosines(sideways, restricted, owner,
                                                      num_stages)[k])
        result["norm_ratio_restricted"].append(stage_norm_ratios(sideways, restricted, owner,
                                                                 num_stages)[k])
    return result


def gradient_alignment(data: VideoData, snapshots: dict[str, list], config: Config
                       ) -> list[dict[str, Any]]:
    """Cosines per stage, condition and checkpoint, averaged over held-out batches."""
    model = build_classifier("sideways", 0, len(data.class_names), config.learning_rate)
    shape = (None, config.clip_frames, *data.videos.shape[2:])
    model.build(shape)
    conditions = [Condition(static=True), *smoothness_conditions(config)]
    num_stages, num_frames = model.num_stages, config.clip_frames
    entries = []
    for checkpoint, weights in snapshots.items():
        model.set_weights(weights)
        for condition in conditions:
            rng = np.random.default_rng([99, len(entries)])
            per_batch = []
            for _ in range(config.alignment_batches):
                chosen = rng.choice(data.test, config.alignment_batch_size, replace=False)
                clips = cut_clips(data.videos, chosen, num_frames, condition, rng)
                per_batch.append(alignment_on_batch(model, clips, data.labels[chosen]))
            for k in range(num_stages):
                entry: dict[str, Any] = {
                    "checkpoint": checkpoint,
                    **condition.record(),
                    "static": condition.static,
                    "stage": k,
                    "depth_from_top": num_stages - 1 - k,
                    "frame_mismatch": schedule.frame_mismatch(num_stages, k),
                    "loss_frames": list(sideways_loss_frames(num_stages, k, num_frames)),
                    "activation_frames": list(
                        sideways_activation_frames(num_stages, k, num_frames)),
                    "batches": config.alignment_batches,
                    "batch_size": config.alignment_batch_size,
                }
                for key in ("cos_restricted", "cos_full", "norm_ratio_restricted",
                            "norm_ratio_full"):
                    values = [batch[key][k] for batch in per_batch]
                    entry[key] = float(np.mean(values))
                    entry[key + "_std"] = float(np.std(values))
                entries.append(entry)
            print(f"  alignment {checkpoint:>8} {condition.name:>13}: cos vs restricted "
                  + " ".join(f"{e['cos_restricted']:+.3f}" for e in entries[-num_stages:])
                  + " | vs all frames "
                  + " ".join(f"{e['cos_full']:+.3f}" for e in entries[-num_stages:]), flush=True)
    return entries


# ---------------------------------------------------------------------- experiment 3: autoencoder


def frame_mse(y_true: Any, y_pred: Any) -> Any:
    """Mean squared error per frame, ``(B, H, W, C) -> (B,)`` (as examples/video_autoencoder)."""
    return keras.ops.mean(keras.ops.square(y_pred - y_true), axis=(1, 2, 3))


def psnr(mse: np.ndarray) -> np.ndarray:
    """PSNR in dB of frames in [0, 1], from per-frame mean squared errors."""
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def mean_psnr(model: keras.Model | None, clips: np.ndarray, batch_size: int = 32) -> float:
    """Mean per-frame PSNR of the reconstructions; ``model=None``: each frame's mean colour."""
    values = []
    for i in range(0, len(clips), batch_size):
        batch = clips[i:i + batch_size]
        if model is None:
            outputs = np.broadcast_to(batch.mean(axis=(2, 3), keepdims=True), batch.shape)
        else:
            outputs = np.asarray(model(batch, training=False))
        values.append(psnr(np.mean((outputs - batch) ** 2, axis=(2, 3, 4))).ravel())
    return float(np.mean(np.concatenate(values)))


def train_autoencoder(data: VideoData, mode: str, seed: int, frame_step: int, config: Config
                      ) -> dict[str, Any]:
    """Train the frame encoder-decoder (filters 16-32, K = 4) to reconstruct every frame."""
    keras.utils.set_random_seed(seed)
    model = models.frame_autoencoder(filters=(16, 32)).build_model(mode=mode)
    model.compile(optimizer=keras.optimizers.Adam(config.ae_learning_rate), loss=frame_mse)
    condition = Condition(frame_step=frame_step)
    test_clips = cut_clips(data.videos, data.test, config.ae_clip_frames, condition, None)
    rng = np.random.default_rng([seed, 11])
    batches = len(data.train) // config.batch_size
    total = batches * config.ae_epochs
    evaluate_at = set(np.linspace(0, total, config.ae_evaluations + 1).round().astype(int))
    curve: dict[str, list[float]] = {"step": [], "test_psnr": [], "train_loss": []}
    losses: list[float] = []
    step = 0
    start = time.perf_counter()

    def record() -> None:
        curve["step"].append(step)
        curve["test_psnr"].append(mean_psnr(model, test_clips))
        curve["train_loss"].append(float(np.mean(losses)) if losses else math.nan)
        losses.clear()

    model.compute_gradients(test_clips[:2], test_clips[:2])  # build before the first evaluation
    record()
    for _ in range(config.ae_epochs):
        order = rng.permutation(data.train)
        for b in range(batches):
            chosen = order[b * config.batch_size:(b + 1) * config.batch_size]
            clips = cut_clips(data.videos, chosen, config.ae_clip_frames, condition, rng)
            losses.append(float(np.asarray(model.train_on_batch(clips, clips)).ravel()[0]))
            step += 1
            if step in evaluate_at:
                record()
    return {
        "mode": mode,
        "seed": seed,
        "frame_step": frame_step,
        "clip_frames": config.ae_clip_frames,
        "num_stages": model.num_stages,
        "steps": step,
        "final_test_psnr": curve["test_psnr"][-1],
        "train_seconds": round(time.perf_counter() - start, 2),
        "curve": curve,
    }


# ---------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLOURS = {"sideways": "tab:orange", "backprop": "tab:blue"}


def plot_smoothness(entries: list[dict[str, Any]], chance: float, path: Path) -> None:
    """Held-out accuracy per condition (seeds as dots, mean as a line) and train-test gap."""
    plt = _pyplot()
    conditions = list(dict.fromkeys(e["condition"] for e in entries))
    x = np.arange(len(conditions))
    labels = [c.replace("frame_step=", "step ") for c in conditions]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, mode in zip((-0.08, 0.08), MODES, strict=True):
        tests = [[e["test_accuracy"] for e in entries
                  if e["mode"] == mode and e["condition"] == c] for c in conditions]
        trains = [[e["train_accuracy"] for e in entries
                   if e["mode"] == mode and e["condition"] == c] for c in conditions]
        for i, values in enumerate(tests):
            left.scatter([x[i] + offset] * len(values), values, color=COLOURS[mode], s=14,
                         alpha=0.6)
        left.plot(x + offset, [np.mean(v) for v in tests], "-o", color=COLOURS[mode],
                  label=f"{mode} held-out")
        left.plot(x + offset, [np.mean(v) for v in trains], ":", color=COLOURS[mode],
                  label=f"{mode} train videos")
        gaps = [np.mean(np.subtract(a, b)) for a, b in zip(trains, tests, strict=True)]
        right.bar(x + 2 * offset, gaps, width=0.3, color=COLOURS[mode], label=mode)
    left.axhline(chance, color="grey", linestyle="--", label="chance")
    left.set_xticks(x, labels)
    left.set(ylabel="accuracy (centre clips)", ylim=(0, 1.02),
             title="Temporal CNN: accuracy as clips get less smooth")
    left.legend(fontsize="small")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(x, labels)
    right.set(ylabel="train - held-out accuracy", title="Generalisation gap (mean over seeds)")
    right.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_learning_curves(entries: list[dict[str, Any]], chance: float, path: Path) -> None:
    """Held-out accuracy per epoch, one panel per condition, mean over seeds per mode."""
    plt = _pyplot()
    conditions = list(dict.fromkeys(e["condition"] for e in entries))
    figure, axes = plt.subplots(1, len(conditions), figsize=(3.2 * len(conditions), 3.2),
                                squeeze=False, sharey=True)
    for axis, condition in zip(axes[0], conditions, strict=True):
        for mode in MODES:
            runs = [e["history"]["test_accuracy"] for e in entries
                    if e["mode"] == mode and e["condition"] == condition]
            curves = np.asarray(runs)
            epochs = np.arange(1, curves.shape[1] + 1)
            for run in curves:
                axis.plot(epochs, run, color=COLOURS[mode], alpha=0.25, linewidth=0.8)
            axis.plot(epochs, curves.mean(axis=0), color=COLOURS[mode], label=mode)
        axis.axhline(chance, color="grey", linestyle="--")
        axis.set(title=condition, xlabel="epoch", ylim=(0, 1.02))
    axes[0][0].set_ylabel("held-out accuracy")
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_alignment(entries: list[dict[str, Any]], path: Path) -> None:
    """Cosine vs stage, one panel per checkpoint; solid: vs backprop over the same frames,
    dashed: vs backprop over all frames."""
    plt = _pyplot()
    checkpoints = list(dict.fromkeys(e["checkpoint"] for e in entries))
    conditions = list(dict.fromkeys(e["condition"] for e in entries))
    cmap = plt.get_cmap("viridis")
    figure, axes = plt.subplots(1, len(checkpoints), figsize=(4.6 * len(checkpoints), 4),
                                squeeze=False, sharey=True)
    for axis, checkpoint in zip(axes[0], checkpoints, strict=True):
        for i, condition in enumerate(conditions):
            rows = sorted((e for e in entries
                           if e["checkpoint"] == checkpoint and e["condition"] == condition),
                          key=lambda e: e["stage"])
            stages = [e["stage"] for e in rows]
            colour = "black" if condition == "static" else cmap(i / max(len(conditions) - 1, 1))
            axis.errorbar(stages, [e["cos_restricted"] for e in rows],
                          yerr=[e["cos_restricted_std"] for e in rows], color=colour,
                          marker="o", capsize=3, label=condition)
            axis.plot(stages, [e["cos_full"] for e in rows], "--", color=colour, marker="x")
        num_stages = len(stages)
        axis.set_xticks(range(num_stages),
                        [f"{k}\n(mismatch {2 * (num_stages - 1 - k)})" for k in range(num_stages)])
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set(title=f"weights: {checkpoint}", xlabel="stage (0 = bottom; frames of mismatch)",
                 ylim=(-0.3, 1.05))
    axes[0][0].set_ylabel("cosine(Sideways update, backprop gradient)")
    axes[0][0].legend(fontsize="small", title="solid: same frames\ndashed: all frames",
                      title_fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_autoencoder(runs: list[dict[str, Any]], baselines: dict[int, float], path: Path
                     ) -> None:
    """Held-out reconstruction PSNR against training steps, per mode; one panel per frame step."""
    plt = _pyplot()
    steps = sorted(baselines)
    figure, axes = plt.subplots(1, len(steps), figsize=(5.5 * len(steps), 4), squeeze=False,
                                sharey=True)
    for axis, frame_step in zip(axes[0], steps, strict=True):
        for mode in MODES:
            mine = [r for r in runs if r["mode"] == mode and r["frame_step"] == frame_step]
            for r in mine:
                axis.plot(r["curve"]["step"], r["curve"]["test_psnr"], color=COLOURS[mode],
                          alpha=0.3, linewidth=0.8)
            psnrs = np.asarray([r["curve"]["test_psnr"] for r in mine])
            axis.plot(mine[0]["curve"]["step"], psnrs.mean(axis=0), "-o", markersize=3,
                      color=COLOURS[mode], label=f"{mode} (mean of {len(mine)} seeds)")
        axis.axhline(baselines[frame_step], color="grey", linestyle="--",
                     label="each frame's mean colour")
        axis.set(xlabel="training step", title=f"Encoder-decoder (K = 4), frame_step={frame_step}")
        axis.legend(fontsize="small")
    axes[0][0].set_ylabel("held-out reconstruction PSNR (dB)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------- tables


def smoothness_table(entries: list[dict[str, Any]]) -> str:
    """Markdown: per condition and mode, mean ± std over seeds of held-out/train accuracy."""
    lines = ["| clips | mode | held-out accuracy | train accuracy | gap (train - held-out) "
             "| per seed (held-out) |", "|---|---|---|---|---|---|"]
    for condition in dict.fromkeys(e["condition"] for e in entries):
        for mode in MODES:
            rows = [e for e in entries if e["mode"] == mode and e["condition"] == condition]
            test = np.array([e["test_accuracy"] for e in rows])
            train = np.array([e["train_accuracy"] for e in rows])
            lines.append(
                f"| {condition} | {mode} | {test.mean():.3f} ± {test.std():.3f} | "
                f"{train.mean():.3f} ± {train.std():.3f} | {np.mean(train - test):+.3f} | "
                + ", ".join(f"{v:.3f}" for v in test) + " |")
    return "\n".join(lines)


def alignment_table(entries: list[dict[str, Any]]) -> str:
    """Markdown: cosines per checkpoint, condition and stage (restricted / all frames)."""
    stages = sorted({e["stage"] for e in entries})
    header = "| weights | clips | " + " | ".join(
        f"stage {k}: same frames / all frames" for k in stages) + " |"
    lines = [header, "|---|---|" + "---|" * len(stages)]
    for checkpoint in dict.fromkeys(e["checkpoint"] for e in entries):
        for condition in dict.fromkeys(e["condition"] for e in entries):
            rows = sorted((e for e in entries
                           if e["checkpoint"] == checkpoint and e["condition"] == condition),
                          key=lambda e: e["stage"])
            lines.append(f"| {checkpoint} | {condition} | " + " | ".join(
                f"{e['cos_restricted']:+.3f} / {e['cos_full']:+.3f}" for e in rows) + " |")
    return "\n".join(lines)


def autoencoder_table(runs: list[dict[str, Any]], baselines: dict[int, float]) -> str:
    """Markdown: held-out PSNR at a few points of training, mean over seeds."""
    steps = runs[0]["curve"]["step"]
    picks = sorted({0, len(steps) // 4, len(steps) // 2, len(steps) - 1})
    lines = ["| clips | mode | " + " | ".join(f"step {steps[i]}" for i in picks)
             + " | final, per seed |", "|---|---|" + "---|" * (len(picks) + 1)]
    for frame_step, baseline in sorted(baselines.items()):
        for mode in MODES:
            mine = [r for r in runs if r["mode"] == mode and r["frame_step"] == frame_step]
            psnrs = np.asarray([r["curve"]["test_psnr"] for r in mine])
            lines.append(f"| frame_step={frame_step} | {mode} | "
                         + " | ".join(f"{psnrs[:, i].mean():.2f} dB" for i in picks)
                         + " | " + ", ".join(f"{r['final_test_psnr']:.2f}" for r in mine) + " |")
        lines.append(f"| frame_step={frame_step} | mean-colour baseline | {baseline:.2f} dB |"
                     + " |" * len(picks))
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def machine() -> dict[str, Any]:
    """What ran it."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every experiment with tiny sizes (into runs/)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where results.json and figures/ go (default: docs/, or "
                        "runs/paper-claims-quick with --quick)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        default=os.path.join(os.path.expanduser("~"), ".cache", "keras-sideways"),
                        help="where the synthetic videos are written and reused")
    parser.add_argument("--experiments", nargs="+", default=["smoothness", "alignment",
                                                             "autoencoder"],
                        choices=["smoothness", "alignment", "autoencoder"],
                        help="which experiments to run (alignment needs smoothness)")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the figures from the output folder's results.json")
    args = parser.parse_args(argv)
    if "alignment" in args.experiments and "smoothness" not in args.experiments:
        parser.error("alignment uses the weights of a smoothness run: add smoothness")
    return args


def draw_figures(results: dict[str, Any], figures: Path) -> None:
    """Every figure of the experiments present in ``results``."""
    figures.mkdir(parents=True, exist_ok=True)
    if "smoothness" in results:
        chance = results["meta"]["data"]["chance"]
        plot_smoothness(results["smoothness"], chance, figures / "smoothness.png")
        plot_learning_curves(results["smoothness"], chance, figures / "smoothness_curves.png")
    if "gradient_alignment" in results:
        plot_alignment(results["gradient_alignment"], figures / "gradient_alignment.png")
    if "encoder_decoder" in results:
        baselines = {int(key.split("=")[1]): value for key, value
                     in results["encoder_decoder"]["baseline_psnr"].items()}
        plot_autoencoder(results["encoder_decoder"]["runs"], baselines,
                         figures / "encoder_decoder_psnr.png")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the experiments; returns what it writes to ``results.json``."""
    args = parse_args(argv)
    config = QUICK if args.quick else DEFAULT
    default_out = ROOT / "runs" / "paper-claims-quick" if args.quick else ROOT / "docs"
    output_dir = Path(args.output_dir) if args.output_dir else default_out
    figures = output_dir / "figures"
    if args.replot:
        results = json.loads((output_dir / "results.json").read_text())
        draw_figures(results, figures)
        print(f"Redrew the figures in {figures}/ from {output_dir / 'results.json'}")
        return results
    figures.mkdir(parents=True, exist_ok=True)
    tf.get_logger().setLevel("ERROR")
    command = "python benchmarks/paper_claims.py" + (" " + " ".join(argv if argv is not None
                                                                    else sys.argv[1:])).rstrip()
    run_start = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "command": command.strip(),
            "quick": args.quick,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "config": dataclasses.asdict(config),
        }
    }
    data = load_videos(config, args.cache_dir)
    chance = 1.0 / len(data.class_names)
    results["meta"]["data"] = {
        "directory": data.directory,
        "class_names": data.class_names,
        "train_videos": len(data.train),
        "test_videos": len(data.test),
        "video_frames": config.video_frames,
        "image_size": config.image_size,
        "chance": chance,
        "seconds_to_load": round(time.perf_counter() - run_start, 2),
    }
    print(f"{len(data.train)} training and {len(data.test)} held-out videos of "
          f"{config.video_frames} frames at {config.image_size}px", flush=True)
    timings: dict[str, float] = {}

    snapshots: dict[str, list] = {}
    if "smoothness" in args.experiments:
        start = time.perf_counter()
        entries = []
        for condition in smoothness_conditions(config):
            for seed in config.seeds:
                for mode in MODES:
                    keep = (mode == "sideways" and seed == config.seeds[0]
                            and condition == Condition(frame_step=1))
                    entry = train_classifier(data, condition, mode, seed, config,
                                             snapshots if keep else None)
                    entries.append(entry)
                    print(f"  {condition.name:>13} seed {seed} {mode:>8}: held-out "
                          f"{entry['test_accuracy']:.3f} train {entry['train_accuracy']:.3f} "
                          f"({entry['train_seconds']:.0f} s)", flush=True)
        results["smoothness"] = entries
        timings["smoothness"] = time.perf_counter() - start
        plot_smoothness(entries, chance, figures / "smoothness.png")
        plot_learning_curves(entries, chance, figures / "smoothness_curves.png")
        print("\n" + smoothness_table(entries) + "\n", flush=True)

    if "alignment" in args.experiments:
        start = time.perf_counter()
        alignment = gradient_alignment(data, snapshots, config)
        results["gradient_alignment"] = alignment
        timings["alignment"] = time.perf_counter() - start
        plot_alignment(alignment, figures / "gradient_alignment.png")
        print("\n" + alignment_table(alignment) + "\n", flush=True)

    if "autoencoder" in args.experiments:
        start = time.perf_counter()
        baselines = {
            step: mean_psnr(None, cut_clips(data.videos, data.test, config.ae_clip_frames,
                                            Condition(frame_step=step), None))
            for step in config.ae_frame_steps
        }
        runs = []
        for frame_step in config.ae_frame_steps:
            for seed in config.ae_seeds:
                for mode in MODES:
                    run = train_autoencoder(data, mode, seed, frame_step, config)
                    runs.append(run)
                    print(f"  autoencoder frame_step={frame_step} seed {seed} {mode:>8}: "
                          f"held-out PSNR {run['final_test_psnr']:.2f} dB "
                          f"({run['train_seconds']:.0f} s)", flush=True)
        results["encoder_decoder"] = {
            "baseline": "each frame's mean colour",
            "baseline_psnr": {f"frame_step={k}": v for k, v in baselines.items()},
            "runs": runs,
        }
        timings["autoencoder"] = time.perf_counter() - start
        plot_autoencoder(runs, baselines, figures / "encoder_decoder_psnr.png")
        print("\n" + autoencoder_table(runs, baselines) + "\n", flush=True)

    results["meta"]["seconds"] = {key: round(v, 1) for key, v in timings.items()}
    results["meta"]["run_seconds"] = round(time.perf_counter() - run_start, 1)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"Wrote {output_dir / 'results.json'} and {figures}/ in "
          f"{results['meta']['run_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
