"""Shared test helpers (in the spirit of keras-hub's `run_layer_test` / `run_model_saving_test`).

`check_layer_or_model` is the one check every serializable piece of this library goes through:
config round trip, a real `fit` step, and a `.keras` save/load after which predictions match and
training continues exactly where it stopped (optimizer state restored).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np


def assert_weights_equal(actual: list[Any], expected: list[Any], rtol: float = 1e-5,
                         atol: float = 1e-6) -> None:
    """Two lists of weights (arrays or variables) are equal, pairwise, to float tolerance."""
    assert len(actual) == len(expected), (len(actual), len(expected))
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def _json_round_trip(config: dict[str, Any]) -> dict[str, Any]:
    # What `.keras` does to a config: it must survive JSON unchanged (tuples become lists).
    return json.loads(json.dumps(config))


def check_layer_or_model(
    make: Callable[[], keras.layers.Layer],
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    tmp_path: Path,
    compile_kwargs: dict[str, Any] | None = None,
    expected_output_shape: tuple[int | None, ...] | None = None,
    batch_size: int | None = None,
    before_continue: Callable[[keras.Model], None] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> keras.Model:
    """Check that a layer or model serializes, trains, saves, reloads and keeps training.

    Args:
        make: builds a fresh, uncompiled instance (a `keras.Model` is trained as is; any other
            layer is wrapped in a `keras.Sequential` for the training and saving checks).
        inputs, targets: one small data set; `fit` runs over it once per check, unshuffled.
        tmp_path: where the `.keras` file goes.
        compile_kwargs: for `compile`; default SGD with momentum (so that the optimizer has
            state worth restoring) and mean squared error.
        expected_output_shape: if given, the shape of ``instance(inputs)``.
        batch_size: for `fit` and `predict` (default: the whole data set in one batch).
        before_continue: called on the *original* model just before both models continue
            training (e.g. ``reset_buffers`` for a stateful model, whose buffers are not saved).

    Returns:
        The reloaded model, for further checks.
    """
    compile_kwargs = compile_kwargs or {
        "optimizer": keras.optimizers.SGD(0.05, momentum=0.9),
        "loss": "mse",
    }
    batch_size = batch_size or len(inputs)

    # 1. Forward and shape.
    instance = make()
    outputs = instance(inputs)
    if expected_output_shape is not None:
        assert tuple(outputs.shape) == tuple(expected_output_shape), outputs.shape

    # 2. Config round trip: `from_config(get_config())` rebuilds an equal object, and the full
    # serialized form (class name, module, registered name) survives JSON.
    config = instance.get_config()
    assert _json_round_trip(config) == _json_round_trip(
        type(instance).from_config(config).get_config()
    )
    serialized = _json_round_trip(keras.saving.serialize_keras_object(instance))
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(instance)
    assert _json_round_trip(revived.get_config()) == _json_round_trip(config)

    # 3. A real fit step changes the weights and reports a finite loss.
    model = instance if isinstance(instance, keras.Model) else keras.Sequential([instance])
    model.compile(**compile_kwargs)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(inputs, targets, batch_size=batch_size, epochs=1, shuffle=False,
                        verbose=0)
    assert np.all(np.isfinite(history.history["loss"])), history.history
    after = [np.array(w) for w in model.trainable_weights]
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True)), (
        "one fit step left every trainable weight unchanged"
    )

    # 4. `.keras` round trip: same class and config, same predictions, same optimizer state.
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    if model is not instance:
        assert type(loaded.layers[0]) is type(instance)
    assert _json_round_trip(loaded.get_config()) == _json_round_trip(model.get_config())
    np.testing.assert_allclose(
        loaded.predict(inputs, batch_size=batch_size, verbose=0),
        model.predict(inputs, batch_size=batch_size, verbose=0),
        rtol=rtol,
        atol=atol,
    )
    assert_weights_equal(loaded.weights, model.weights, rtol=rtol, atol=atol)
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())
    assert_weights_equal(loaded.optimizer.variables, model.optimizer.variables, rtol, atol)

    # 5. Training continues: one more epoch on each gives the same weights, which needs the
    # optimizer's slots (momentum) and step count, not just the weights.
    if before_continue is not None:
        before_continue(model)
    continued = model.fit(inputs, targets, batch_size=batch_size, epochs=1, shuffle=False,
                          verbose=0)
    resumed = loaded.fit(inputs, targets, batch_size=batch_size, epochs=1, shuffle=False,
                         verbose=0)
    np.testing.assert_allclose(resumed.history["loss"], continued.history["loss"], rtol=rtol)
    assert_weights_equal(loaded.weights, model.weights, rtol=rtol, atol=atol)
    return loaded
