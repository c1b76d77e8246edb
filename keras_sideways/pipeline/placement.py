"""Depth-parallel placement: stage devices, optimizer slots beside their variables, and the
fallback that lets a placed model load where its devices do not exist."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf


def check_stage_devices(devices: Sequence[str] | None, num_stages: int) -> list[str] | None:
    """The devices as a list, or a clear error for a wrong length or an unknown device."""
    if devices is None:
        return None
    if isinstance(devices, str) or not isinstance(devices, Sequence):
        raise TypeError(f"`stage_devices` must be a list of device strings, got {devices!r}.")
    devices = list(devices)
    if len(devices) != num_stages:
        raise ValueError(
            f"`stage_devices` names {len(devices)} devices for {num_stages} stages; give exactly "
            "one device per stage."
        )
    available = tf.config.list_logical_devices()
    known = {(d.device_type, tf.DeviceSpec.from_string(d.name).device_index) for d in available}
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except (ValueError, TypeError) as error:
            raise ValueError(f"`stage_devices` entry {device!r} is not a device string.") from error
        index = 0 if spec.device_index is None else spec.device_index
        if spec.device_type is None or (spec.device_type.upper(), index) not in known:
            names = ", ".join(d.name for d in available)
            raise ValueError(
                f"`stage_devices` entry {device!r} is not a device of this process; available: "
                f"{names}."
            )
    return devices


def loadable_devices(devices: Sequence[str] | None, num_stages: int) -> list[str] | None:
    """The configured devices, or None (with a warning) where this process lacks them.

    A model trained with a GPU per stage must still load where it is served (often a CPU-only
    machine): keep the weights, drop the placement, say so.
    """
    if devices is None:
        return None
    try:
        return check_stage_devices(devices, num_stages)
    except ValueError as error:
        warnings.warn(
            f"Loading without stage placement: {error} The stages run on the default "
            "device; pass `stage_devices` to a new model to place them.",
            stacklevel=3,
        )
        return None


def stage_device(devices: Sequence[str] | None, stage: int) -> contextlib.AbstractContextManager:
    """The device context of one stage (no-op without placement)."""
    if devices is None or devices[stage] is None:
        return contextlib.nullcontext()
    return tf.device(devices[stage])


def place_slots_with_variables(optimizer: keras.optimizers.Optimizer) -> None:
    """Create every optimizer slot on its variable's device, whoever builds the optimizer.

    Keras' TF optimizer colocates slots through the strategy's `colocate_vars_with`, a no-op for
    eager creation, so without this all slots of a depth-parallel model land on one device.
    """
    original = optimizer.add_variable_from_reference

    def placed(reference: Any, *args: Any, **kwargs: Any) -> Any:
        with tf.device(getattr(reference, "value", reference).device):
            return original(reference, *args, **kwargs)

    optimizer.add_variable_from_reference = placed
