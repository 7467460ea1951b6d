"""Helpers shared by the converter tests: Keras reference outputs and error measures.

Imported by ``tests/test_converters*.py`` only after ``pytest.importorskip("keras")``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np


def rel_error(a, b) -> float:
    """``max|a - b| / max|b|`` (``b`` is the Keras reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def randomize_normalization(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial BatchNormalization statistics and affine weights, so inference-mode
    normalisation is really exercised (a fresh model has mean 0, variance 1)."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = tuple(layer.moving_mean.shape)
            layer.moving_mean.assign(rng.normal(0.0, 0.3, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.2, shape))


def keras_outputs(model: keras.Model, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Inference outputs of top-level layers ``names`` (the model's output for its own name)."""
    tensors = [model.output if n == "__output__" else model.get_layer(n).output for n in names]
    probe = keras.Model(model.inputs, tensors)
    values = probe([x], training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    return {n: np.asarray(v) for n, v in zip(names, values)}


def weights_snapshot(model: keras.Model) -> list[np.ndarray]:
    """Copies of every variable of ``model`` (to check a conversion changed nothing)."""
    return [np.array(v.numpy()) for v in model.weights]


def assert_unchanged(model: keras.Model, before: list[np.ndarray]) -> None:
    after = weights_snapshot(model)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


def spread_layers(model: keras.Model, count: int = 3) -> list[str]:
    """``count`` top-level layer names with 4-D outputs, spread evenly through the model."""
    spatial = [layer.name for layer in model.layers if len(layer.output.shape) == 4]
    return [spatial[len(spatial) * i // (count + 1)] for i in range(1, count + 1)]
