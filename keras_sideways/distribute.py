"""Workarounds that let `model.fit` run under `tf.distribute.MultiWorkerMirroredStrategy`.

Keras 3 (checked up to 3.15, TensorFlow backend) cannot `fit` *any* model under
`MultiWorkerMirroredStrategy` with more than one worker (keras-team/keras#20585), for two reasons
in `keras/src/backend/tensorflow/trainer.py`:

1. `_maybe_symbolic_build` peeks at the first distributed batch and, to get one batch of the
   per-replica shape, reduces it eagerly with ``strategy.reduce("MEAN", batch, axis=None)``. Under
   a multi-worker strategy that reduction is a collective that cannot take the `PerReplica`
   value eagerly ("Attempt to convert a value (PerReplica…) … to a Tensor").
2. `reduce_per_replica` (used on the logs every step) reduces with
   ``strategy.reduce("MEAN", value, axis=0)`` under a multi-worker strategy, so every scalar log
   (loss, metrics) fails: a scalar has no axis 0.

`MultiWorkerFitMixin` fixes both, and changes nothing under any other strategy (or none),
except that the first fix also serves a one-host `MirroredStrategy` whose first global batch does
not split evenly between the replicas (e.g. 5 clips on 2 replicas: 3 and 2): there Keras' eager
mean of the replicas' batches fails in `AddN` ("must have the same size and shape",
keras-team/keras#19246), for any model, while the training steps themselves take uneven batches.
`tests/test_multi_worker.py` and `tests/test_distribute.py` pin the upstream failures, so that the
day Keras fixes them the tests say the workaround can go.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf
from keras import tree

__all__ = ["MultiWorkerFitMixin", "is_multi_worker"]


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` is a `MultiWorkerMirroredStrategy` spanning more than one worker.

    The same test Keras uses (`_collective_all_reduce_multi_worker`) to pick the failing code
    paths, so the workaround engages exactly where the bug does.
    """
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.extended._in_multi_worker_mode()


class MultiWorkerFitMixin:
    """Mix into a `keras.Model` subclass (before `keras.Model`) to `fit` it multi-worker.

    ``class MyModel(MultiWorkerFitMixin, keras.Model): ...``. Both overrides defer to Keras
    unchanged unless the model's strategy is a multi-worker `MultiWorkerMirroredStrategy`; the
    first one also takes over under any other strategy of more than one replica (see the module).
    """

    # keras-team/keras#20585 (1): Keras reduces the first distributed batch eagerly across workers
    # only to learn its per-replica shape. Any one local replica's batch has that shape, so take
    # it instead: no collective, nothing to convert. The same eager mean fails on one host when
    # the replicas' batches differ in size (keras-team/keras#19246): the first one's shape serves
    # there too (building needs the shape past the batch axis only).
    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None or strategy.num_replicas_in_sync == 1 or iterator is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, data_iterator in iterator:
            batch = next(data_iterator)
            data_batch = tree.map_structure(
                lambda value: _first_local_value(strategy, value), batch
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    # keras-team/keras#20585 (2): under a multi-worker strategy `reduce_per_replica` reduces every
    # log with ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars and would also
    # average over the first axis of a non-scalar log. Giving every log a leading axis of length
    # one inside the replica makes that call exactly the mean over replicas, of the log's shape.
    def _make_function(self, step_function: Callable[[Any], Any]) -> Callable[[Any], Any]:
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None or not is_multi_worker(strategy):
            return super()._make_function(step_function)

        def step_with_leading_axis(data: Any) -> Any:
            return tree.map_structure(
                lambda log: tf.expand_dims(log, 0) if tf.is_tensor(log) else log,
                step_function(data),
            )

        return super()._make_function(step_with_leading_axis)


def _first_local_value(strategy: tf.distribute.Strategy, value: Any) -> Any:
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value
