"""Reference video models for `SidewaysModel`, sized for 64×64 clips by default.

Each factory returns a :class:`StagedNetwork`: freshly built stages (Keras layers), the temporal
window of each stage and the pooling the task needs. ``network.build_model(mode=...)`` turns it
into a `SidewaysModel`; the fields can also be passed by hand::

    net = models.temporal_cnn_classifier(num_classes=4)
    model = net.build_model(mode="sideways")
    # the same as
    model = SidewaysModel(net.stages, temporal_windows=net.temporal_windows, pool=net.pool)

The factories:

- :func:`frame_cnn_classifier`: every frame classified on its own (no temporal context); the
  baseline that *cannot* solve motion-only classes.
- :func:`temporal_cnn_classifier`: the same convolutions, but the lower stages read temporal
  windows (the last few frames / feature maps, folded into channels by :class:`FoldTime`), so the
  network sees motion. This is the model of ``examples/action_recognition.py``.
- :func:`isotropic_cnn_classifier`: a deep per-frame CNN of identical blocks at one resolution
  (after a patch stem), so its stages cost the same: the reference for depth parallelism.
- :func:`frame_autoencoder`: an encoder-decoder that reconstructs each frame (or, with
  ``predict_next=True`` and a window, is meant to be trained to predict the next frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras

from keras_sideways.model import SidewaysModel

__all__ = [
    "FoldTime",
    "StagedNetwork",
    "frame_autoencoder",
    "frame_cnn_classifier",
    "isotropic_cnn_classifier",
    "temporal_cnn_classifier",
]


@keras.saving.register_keras_serializable(package="keras_sideways")
class FoldTime(keras.layers.Layer):
    """Fold a temporal window into channels: ``(B, w, H, W, C) -> (B, H, W, w·C)``.

    A stage with a temporal window receives ``(B, w, …)`` (oldest first). Folding the window
    into channels lets an ordinary `Conv2D` act as a causal spatio-temporal kernel of length w
    (its weights mix the w time steps freely), at the cost of one 2-D convolution: much cheaper
    on CPU than `Conv3D`, and exactly what a first "early fusion" layer does.

    Channel order: time-major (``[t0 c0, t0 c1, …, t1 c0, …]``).
    """

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        if len(input_shape) != 5:
            raise ValueError(
                "FoldTime expects a window of feature maps shaped (batch, window, height, width, "
                f"channels); got shape {tuple(input_shape)}."
            )
        batch, window, height, width, channels = input_shape
        folded = None if window is None or channels is None else window * channels
        return (batch, height, width, folded)

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.compute_output_shape(input_shape)  # validates the rank
        if input_shape[1] is None or input_shape[4] is None:
            raise ValueError(
                "FoldTime needs a static window length and channel count, got input shape "
                f"{tuple(input_shape)}."
            )
        self.built = True

    def call(self, inputs: Any) -> Any:
        _, window, height, width, channels = inputs.shape
        # (B, w, H, W, C) -> (B, H, W, w, C) -> (B, H, W, w·C); H, W may be dynamic.
        moved = keras.ops.transpose(inputs, (0, 2, 3, 1, 4))
        shape = keras.ops.shape(moved)
        return keras.ops.reshape(moved, (shape[0], shape[1], shape[2], window * channels))


@dataclass
class StagedNetwork:
    """What a reference-model factory returns: the stages and how to run them.

    Attributes:
        stages: K freshly built Keras layers, lowest first (pass them to one model only: stages
            cannot be shared).
        temporal_windows: one window length per stage (1: the stage sees one frame / one
            feature map; w > 1: the last w, see `SidewaysModel`).
        pool: ``"mean"`` for per-clip targets (classification), ``None`` for per-frame targets
            (reconstruction).
    """

    stages: list[keras.layers.Layer]
    temporal_windows: list[int] = field(default_factory=list)
    pool: str | None = "mean"

    def __post_init__(self) -> None:
        if not self.temporal_windows:
            self.temporal_windows = [1] * len(self.stages)

    @property
    def num_stages(self) -> int:
        """K, the number of stages."""
        return len(self.stages)

    def build_model(self, mode: str = "sideways", **kwargs: Any) -> SidewaysModel:
        """A `SidewaysModel` over these stages (``kwargs`` go to `SidewaysModel`).

        Call it once per network: a second model would share the first one's layers.
        """
        return SidewaysModel(
            self.stages,
            mode=mode,
            pool=kwargs.pop("pool", self.pool),
            temporal_windows=self.temporal_windows,
            **kwargs,
        )


def _check_sizes(name: str, values: Sequence[int], minimum: int = 1) -> list[int]:
    values = list(values)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values
    ):
        raise ValueError(f"`{name}` must be a non-empty list of ints >= {minimum}, got {values!r}.")
    return values


def _conv_stage(
    filters: int,
    kernel_size: int,
    window: int,
    name: str,
    *,
    extra_conv: bool = False,
    center_input: bool = False,
    head: Sequence[keras.layers.Layer] = (),
) -> keras.layers.Layer:
    """One down-sampling stage: [centre] [fold window] Conv2D stride 2 [Conv2D] [head]."""
    layers: list[keras.layers.Layer] = []
    if center_input:
        # Frames in [0, 1] -> [-1, 1]: zero-centred inputs let the first ReLUs start useful.
        layers.append(keras.layers.Rescaling(2.0, offset=-1.0, name=f"{name}_center"))
    if window > 1:
        layers.append(FoldTime(name=f"{name}_fold"))
    layers.append(
        keras.layers.Conv2D(filters, kernel_size, strides=2, padding="same", activation="relu",
                            name=f"{name}_conv")
    )
    if extra_conv:
        layers.append(
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                name=f"{name}_conv2")
        )
    layers.extend(head)
    return keras.Sequential(layers, name=name)


def _classifier(
    num_classes: int,
    filters: Sequence[int],
    windows: Sequence[int],
    *,
    kernel_size: int,
    extra_conv: bool,
    global_pool: str,
    dropout: float,
    name: str,
) -> StagedNetwork:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
    _check_sizes("kernel_size", [kernel_size])
    if global_pool not in ("max", "avg"):
        raise ValueError(f"`global_pool` must be 'max' or 'avg', got {global_pool!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
    # The head shares the top stage: a stage of its own would add one tick of pipeline depth,
    # and with it 2 more frames of Sideways' activation/cotangent mismatch at every stage below.
    pool_layer = (
        keras.layers.GlobalMaxPooling2D(name=f"{name}_pool")
        if global_pool == "max"
        else keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")
    )
    head: list[keras.layers.Layer] = [pool_layer]
    if dropout:
        head.append(keras.layers.Dropout(dropout, name=f"{name}_dropout"))
    head.append(keras.layers.Dense(num_classes, name=f"{name}_logits"))
    top = len(filters) - 1
    stages = [
        _conv_stage(
            f,
            kernel_size if k == 0 else 3,
            windows[k],
            f"{name}_stage{k}",
            extra_conv=extra_conv,
            center_input=k == 0,
            head=head if k == top else (),
        )
        for k, f in enumerate(filters)
    ]
    return StagedNetwork(stages, list(windows), pool="mean")


def frame_cnn_classifier(
    num_classes: int,
    *,
    filters: Sequence[int] = (16, 32, 64),
    kernel_size: int = 5,
    extra_conv: bool = False,
    global_pool: str = "max",
    dropout: float = 0.0,
) -> StagedNetwork:
    """A per-frame CNN classifier: every frame classified on its own, logits averaged over time.

    All temporal windows are 1, so it cannot tell apart classes that differ only in motion: the
    no-temporal-context baseline (at chance on the synthetic motion data set).

    Stage k is a stride-2 convolution with ``filters[k]`` channels and ReLU (stage 0 first maps
    frames from [0, 1] to [-1, 1]); the top stage ends in global pooling and a dense layer to
    ``num_classes`` logits (use ``SparseCategoricalCrossentropy(from_logits=True)``). The head
    shares the top stage because a stage of its own would deepen the pipeline by one tick. K =
    ``len(filters)`` stages; Sideways needs stateless clips of at least ``2K - 1`` frames.

    Args:
        num_classes: number of classes.
        filters: channels of each stage (64×64 frames -> 8×8 maps with the default three).
        kernel_size: kernel of stage 0's convolution (the others are 3×3).
        extra_conv: add a stride-1 3×3 convolution to every stage (more capacity, ~2-3× the
            compute).
        global_pool: ``"max"`` (default) or ``"avg"``. Max pooling keeps the strongest response
            wherever the moving shape is; averaging dilutes it over the static background and
            learns motion-only classes far more slowly.
        dropout: dropout rate before the logits (0 for none).
    """
    filters = _check_sizes("filters", filters)
    return _classifier(num_classes, filters, [1] * len(filters), kernel_size=kernel_size,
                       extra_conv=extra_conv, global_pool=global_pool, dropout=dropout,
                       name="frame_cnn")


def temporal_cnn_classifier(
    num_classes: int,
    *,
    filters: Sequence[int] = (16, 32, 64),
    windows: Sequence[int] = (3, 2, 1),
    kernel_size: int = 5,
    extra_conv: bool = False,
    global_pool: str = "max",
    dropout: float = 0.0,
) -> StagedNetwork:
    """A temporal CNN classifier: the frame CNN with causal temporal windows in its stages.

    Stage k reads the last ``windows[k]`` frames (k = 0) or feature maps of the stage below,
    folded into channels by :class:`FoldTime`, so its convolution is a causal spatio-temporal
    kernel; the top's temporal receptive field is ``1 + sum(w - 1)`` frames (4 by default). The
    model of ``examples/action_recognition.py``: it solves the motion-only synthetic classes.

    Stage k is a stride-2 convolution with ``filters[k]`` channels and ReLU (stage 0 first maps
    frames from [0, 1] to [-1, 1]); the top stage ends in global pooling and a dense layer to
    ``num_classes`` logits (use ``SparseCategoricalCrossentropy(from_logits=True)``). The head
    shares the top stage because a stage of its own would deepen the pipeline by one tick. K =
    ``len(filters)`` stages; Sideways needs stateless clips of at least ``2K - 1`` frames.

    Args:
        num_classes: number of classes.
        filters: channels of each stage (64×64 frames -> 8×8 maps with the default three).
        windows: one window length per stage (same length as ``filters``).
        kernel_size: kernel of stage 0's convolution (the others are 3×3).
        extra_conv: add a stride-1 3×3 convolution to every stage (more capacity, ~2-3× the
            compute).
        global_pool: ``"max"`` (default) or ``"avg"``. Max pooling keeps the strongest response
            wherever the moving shape is; averaging dilutes it over the static background and
            learns motion-only classes far more slowly.
        dropout: dropout rate before the logits (0 for none).
    """
    filters = _check_sizes("filters", filters)
    windows = _check_sizes("windows", windows)
    if len(windows) != len(filters):
        raise ValueError(
            f"`windows` gives {len(windows)} lengths for {len(filters)} stages (`filters`); give "
            "one per stage."
        )
    return _classifier(num_classes, filters, windows, kernel_size=kernel_size,
                       extra_conv=extra_conv, global_pool=global_pool, dropout=dropout,
                       name="temporal_cnn")


def isotropic_cnn_classifier(
    num_classes: int,
    *,
    num_stages: int = 4,
    blocks_per_stage: int = 2,
    width: int = 64,
    patch_size: int = 4,
    window: int = 1,
) -> StagedNetwork:
    """A deep CNN of identical blocks at one resolution: stages of equal cost.

    A patch stem (a ``patch_size`` × ``patch_size`` convolution with that stride, ``width``
    channels) maps 64×64 frames to 16×16 maps; then ``num_stages · blocks_per_stage`` identical
    3×3 convolutions with ``width`` channels and ReLU, ``blocks_per_stage`` per stage; the top
    stage ends in global max pooling and a dense layer to ``num_classes`` logits (use
    ``SparseCategoricalCrossentropy(from_logits=True)``). Stage 0 also holds the stem (cheap next
    to a block). Isotropic networks like this (ConvMixer-style, or a transformer's blocks) are
    what depth parallelism splits well: every stage does the same work, so a Sideways tick on K
    devices costs one K-th of the network (see ``benchmarks/performance.py --sections depth``).
    The downsampling classifiers above are limited by their largest layer instead.

    Args:
        num_classes: number of classes.
        num_stages: K.
        blocks_per_stage: identical convolutions per stage.
        width: channels of the stem and every block.
        patch_size: stride and kernel of the stem; height and width must be divisible by it.
        window: temporal window of stage 0 (frames folded into channels, see
            :class:`FoldTime`); 1 for a per-frame network.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
    for argument, value in (("num_stages", num_stages), ("blocks_per_stage", blocks_per_stage),
                            ("width", width), ("patch_size", patch_size), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{argument}` must be an int >= 1, got {value!r}.")
    stages: list[keras.layers.Layer] = []
    for k in range(num_stages):
        layers: list[keras.layers.Layer] = []
        if k == 0:
            layers.append(keras.layers.Rescaling(2.0, offset=-1.0, name="isotropic_center"))
            if window > 1:
                layers.append(FoldTime(name="isotropic_fold"))
            layers.append(keras.layers.Conv2D(width, patch_size, strides=patch_size,
                                              activation="relu", name="isotropic_stem"))
        layers.extend(
            keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                name=f"isotropic_stage{k}_block{b}")
            for b in range(blocks_per_stage)
        )
        if k == num_stages - 1:
            layers += [keras.layers.GlobalMaxPooling2D(name="isotropic_pool"),
                       keras.layers.Dense(num_classes, name="isotropic_logits")]
        stages.append(keras.Sequential(layers, name=f"isotropic_stage{k}"))
    return StagedNetwork(stages, [window] + [1] * (num_stages - 1), pool="mean")


def frame_autoencoder(
    *,
    filters: Sequence[int] = (16, 32),
    channels: int = 3,
    window: int = 1,
) -> StagedNetwork:
    """An encoder-decoder over frames: one stage per encoder block and per decoder block.

    Encoder stage k: Conv2D stride 2 with ``filters[k]`` channels (halving the resolution).
    Decoder stages mirror it with stride-2 `Conv2DTranspose`; the last one ends in a 1×1 conv to
    ``channels`` outputs with a sigmoid (frames in [0, 1]). K = ``2 * len(filters)`` stages, and
    ``pool=None``: targets are per frame, ``(B, T, H, W, channels)`` (the clip itself for
    reconstruction; the clip shifted by one frame for next-frame prediction). Height and width
    must be divisible by ``2 ** len(filters)``.

    Args:
        filters: encoder channels, lowest stage first.
        channels: output channels (3 for RGB frames).
        window: temporal window of the first stage (frames folded into channels); use > 1 to
            predict the next frame, which needs motion.
    """
    filters = _check_sizes("filters", filters)
    _check_sizes("window", [window])
    stages: list[keras.layers.Layer] = [
        _conv_stage(f, 3, window if k == 0 else 1, f"encoder{k}", center_input=k == 0)
        for k, f in enumerate(filters)
    ]
    decoder_filters = list(reversed(filters))
    for k, f in enumerate(decoder_filters):
        last = k == len(decoder_filters) - 1
        layers: list[keras.layers.Layer] = [
            keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu",
                                         name=f"decoder{k}_upconv")
        ]
        if last:
            layers.append(
                keras.layers.Conv2D(channels, 1, activation="sigmoid", name=f"decoder{k}_out")
            )
        stages.append(keras.Sequential(layers, name=f"decoder{k}"))
    windows = [window] + [1] * (len(stages) - 1)
    return StagedNetwork(stages, windows, pool=None)
