"""Test-session setup shared by every test file.

The CPU is split into two logical devices before TensorFlow initialises, so that strategy and
placement tests can run in the same process as everything else (the split cannot be changed once
the runtime is up). Single-device tests simply use CPU:0.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
