"""What `SidewaysModel.fit` adds to Keras' `fit`: the model builds itself before callbacks run,
and a stateful model's streams are not shuffled apart.

Keras builds a model from the first batch before callbacks start only under a tf.distribute
strategy; without one it waits for the first train step, which comes after `on_train_begin`,
where `keras.callbacks.BackupAndRestore` needs the variables to restore into (and refuses an
unbuilt model). `FitMixin` builds from the first batch's shape there too, so no `build` call is
needed; calling `build` yourself still works.

Consecutive batches of a stateful model continue the same streams, while `fit` shuffles arrays
(and a `PyDataset`'s batch order) by default, which would cut every stream at every batch without
an error: `FitMixin.fit` refuses that. Datasets and generators are never shuffled by `fit`.
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
from keras.src.trainers.data_adapters.array_data_adapter import can_convert_arrays


class FitMixin:
    """Mix into a `keras.Model` subclass (before `keras.Model`) whose ``build`` takes the input
    shape: `fit` then builds it from the first batch before any callback runs, and refuses to
    shuffle arrays for a model whose ``stateful`` attribute is true."""

    def fit(self, *args: Any, **kwargs: Any) -> keras.callbacks.History:
        if getattr(self, "stateful", False):
            arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs).arguments
            check_stream_order(arguments.get("x"), arguments.get("y"),
                               arguments.get("shuffle", True))
        return super().fit(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        if not self.built and iterator is not None and self._distribute_strategy is None:
            # One batch peeked: Keras rewinds the iterator after this call.
            for _, _, data_iterator in iterator:
                inputs = keras.utils.unpack_x_y_sample_weight(next(data_iterator))[0]
                self.build(tuple(inputs.shape))
                break
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def check_stream_order(x: Any, y: Any, shuffle: Any) -> None:
    """Refuse what `fit` would shuffle (arrays, a `PyDataset`) for a stateful model."""
    if shuffle is False:
        return
    if not (isinstance(x, keras.utils.PyDataset) or can_convert_arrays((x, y))):
        return
    raise ValueError(
        f"fit(shuffle={shuffle!r}) on a stateful SidewaysModel: consecutive batches continue "
        "the same streams, and shuffling the clips (Keras' default for arrays) would cut them "
        "at every batch. Pass `shuffle=False` (each batch then holds the next chunk of the "
        "previous batch's streams), or use stateful=False."
    )
