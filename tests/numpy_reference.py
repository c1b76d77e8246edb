"""An independent NumPy implementation of Sideways (DESIGN.md §2), for checking the library.

It does not import keras_sideways and does not share its schedule: validity is tracked the naive
way, by carrying ``None`` for "nothing here yet" through the same shift registers that carry the
activations, cotangents and targets. Stages are dense layers ``act(x @ W + b)`` in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DenseStage:
    kernel: np.ndarray
    bias: np.ndarray
    activation: str  # "tanh" or "linear"

    def forward(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.kernel + self.bias
        return np.tanh(z) if self.activation == "tanh" else z

    def pullback(self, x: np.ndarray, cotangent: np.ndarray):
        """(d kernel, d bias, d input) of <cotangent, forward(x)>."""
        z = x @ self.kernel + self.bias
        if self.activation == "tanh":
            cotangent = cotangent * (1.0 - np.tanh(z) ** 2)
        return x.T @ cotangent, cotangent.sum(axis=0), cotangent @ self.kernel.T


def mse_and_cotangent(outputs: np.ndarray, targets: np.ndarray):
    """Keras "mse": mean over features, then over the batch."""
    diff = outputs - targets
    return np.mean(diff**2), 2.0 * diff / diff.size


def sparse_crossentropy_and_cotangent(logits: np.ndarray, labels: np.ndarray):
    """Keras sparse categorical cross-entropy from logits, averaged over the batch."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    batch = logits.shape[0]
    loss = -np.mean(np.log(probabilities[np.arange(batch), labels]))
    onehot = np.zeros_like(logits)
    onehot[np.arange(batch), labels] = 1.0
    return loss, (probabilities - onehot) / batch


LOSSES = {"mse": mse_and_cotangent, "sparse_crossentropy": sparse_crossentropy_and_cotangent}


def sideways_gradients(stages: list[DenseStage], clips: np.ndarray, targets: np.ndarray,
                       loss: str, per_frame_targets: bool, windows: list[int] | None = None):
    """Per-stage mean pseudo-gradients [(dW, db) per stage] and the tick losses (None if empty).

    ``windows[k] > 1``: stage k reads its last w inputs, oldest first, flattened; before w have
    arrived the oldest real one is repeated. The window's input cotangents are summed.
    """
    loss_fn = LOSSES[loss]
    num_stages = len(stages)
    windows = windows or [1] * num_stages
    histories: list[list | None] = [None] * num_stages  # the last w-1 inputs of each stage
    num_frames = clips.shape[1]
    activations = [None] * (num_stages - 1)  # a_k: stage k's output at the previous tick
    cotangents = [None] * (num_stages - 1)  # e_k: cotangent for a_k from stage k+1
    target_tags = [None] * (num_stages - 1)  # target of the frame whose activation a_k holds
    sums = [[np.zeros_like(s.kernel), np.zeros_like(s.bias)] for s in stages]
    counts = [0] * num_stages
    tick_losses = []
    for t in range(num_frames):
        frame_target = targets[:, t] if per_frame_targets else targets
        newest = [clips[:, t]] + activations
        inputs = []
        for k in range(num_stages):
            if newest[k] is None or windows[k] == 1:
                inputs.append(newest[k])
                continue
            if histories[k] is None:
                histories[k] = [newest[k]] * (windows[k] - 1)
            window = histories[k] + [newest[k]]
            histories[k] = window[1:]
            inputs.append(np.concatenate(window, axis=1))  # == reshape of (B, w, D), row-major
        top_target = target_tags[-1] if num_stages > 1 else frame_target
        outputs = [
            None if inputs[k] is None else stages[k].forward(inputs[k]) for k in range(num_stages)
        ]
        new_cotangents = [None] * (num_stages - 1)
        tick_loss = None
        for k in range(num_stages):
            if k == num_stages - 1:
                if outputs[k] is None or top_target is None:
                    continue
                tick_loss, cotangent = loss_fn(outputs[k], top_target)
            else:
                cotangent = cotangents[k]
                if cotangent is None:
                    continue
            d_kernel, d_bias, d_input = stages[k].pullback(inputs[k], cotangent)
            sums[k][0] += d_kernel
            sums[k][1] += d_bias
            counts[k] += 1
            if k > 0:
                if windows[k] > 1:
                    d_input = d_input.reshape(d_input.shape[0], windows[k], -1).sum(axis=1)
                new_cotangents[k - 1] = d_input
        tick_losses.append(tick_loss)
        activations = outputs[:-1]
        cotangents = new_cotangents
        target_tags = [frame_target] + target_tags[:-1]
    means = [[g / max(counts[k], 1) for g in sums[k]] for k in range(num_stages)]
    return means, counts, tick_losses
