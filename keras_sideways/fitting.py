"""What `SidewaysModel.fit` adds to Keras' `fit`: the model builds itself before callbacks run.

Keras builds a model from the first batch before callbacks start only under a tf.distribute
strategy; without one it waits for the first train step, which comes after `on_train_begin`,
where `keras.callbacks.BackupAndRestore` needs the variables to restore into (and refuses an
unbuilt model). `FitMixin` builds from the first batch's shape there too, so no `build` call is
needed; calling `build` yourself still works.
"""

from __future__ import annotations

from typing import Any

import keras


class FitMixin:
    """Mix into a `keras.Model` subclass (before `keras.Model`) whose ``build`` takes the input
    shape: `fit` then builds it from the first batch before any callback runs."""

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        if not self.built and iterator is not None and self._distribute_strategy is None:
            # One batch peeked: Keras rewinds the iterator after this call.
            for _, _, data_iterator in iterator:
                inputs = keras.utils.unpack_x_y_sample_weight(next(data_iterator))[0]
                self.build(tuple(inputs.shape))
                break
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
