"""The obvious TensorFlow ways to get the input gradient of every output cell.

All ways take a Keras 3 model with one NHWC output ``(1, Ho, Wo, Co)``; the cotangent
of cell ``(i, j)`` is one-hot on that cell and summed over all ``Co`` channels, and the
input gradient is summed over the input channels. They return numpy arrays:
``(Ho, Wo, H, W)`` for all cells, or ``(n, H, W)`` for an explicit list of ``cells``
(where a way supports it).

* :func:`per_cell_tape`    -- one ``GradientTape`` per cell, in a Python loop;
* :func:`batched_tape`     -- one tape over a batch of copies of the input, one copy
  per cell, loss ``sum(masks * outputs)``;
* :func:`jacobian_pfor`    -- ``tape.jacobian`` of the channel-summed output grid, with
  ``pfor`` vectorisation;
* :func:`batched_tape_xla` -- :func:`batched_tape` inside ``tf.function(jit_compile=True)``.

The networks: :func:`readme_net` (the ``receptivefield`` package's README network)
and, for later sweeps, :func:`keras_application` (``keras.applications`` models with
``weights=None``) with :func:`set_constant_weights`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

README_INPUT = (96, 96, 3)

# (kind, filters or pool size, kernel size, name); all 'valid', linear.
README_LAYERS = (
    ("conv", 32, 5, "conv1"),
    ("conv", 32, 3, "conv2"),
    ("pool", 2, None, "pool1"),
    ("conv", 64, 3, "conv3"),
    ("conv", 64, 3, "conv4"),
    ("pool", 2, None, "pool2"),
    ("conv", 128, 3, "conv5"),
    ("conv", 128, 3, "feature_grid"),
)


def constant_kernel_value(c_in: int, kh: int, kw: int) -> float:
    """Every kernel element of the constant-weight networks: ``1 / (C_in * sqrt(kh * kw))``."""
    return 1.0 / (c_in * math.sqrt(kh * kw))


def readme_net(input_shape: Sequence[int] = README_INPUT, width: float = 1.0) -> keras.Model:
    """The README network of the ``receptivefield`` package, in Keras 3.

    conv 32 5x5 -> conv 32 3x3 -> avgpool 2 -> conv 64 3x3 -> conv 64 3x3 -> avgpool 2
    -> conv 128 3x3 -> conv 128 3x3 ('feature_grid'); 'valid' padding, linear
    activations, constant kernels (:func:`constant_kernel_value`), zero biases.
    On 96x96x3 the output is 16x16x128. ``width`` scales every channel count.
    """
    inp = keras.Input(shape=tuple(input_shape), name="image")
    x = inp
    c_in = int(input_shape[-1])
    for kind, n, k, name in README_LAYERS:
        if kind == "pool":
            x = keras.layers.AveragePooling2D(pool_size=n, name=name)(x)
            continue
        filters = max(1, round(n * width))
        x = keras.layers.Conv2D(
            filters,
            k,
            padding="valid",
            activation=None,
            kernel_initializer=keras.initializers.Constant(constant_kernel_value(c_in, k, k)),
            bias_initializer="zeros",
            name=name,
        )(x)
        c_in = filters
    return keras.Model(inp, x, name="readme_net")


def keras_application(name: str, input_shape: Sequence[int] = (224, 224, 3)) -> keras.Model:
    """A ``keras.applications`` model without weights and without its classifier head,
    with constant weights (:func:`set_constant_weights`); its output is the last conv
    feature map."""
    ctor = getattr(keras.applications, name)
    model = ctor(weights=None, include_top=False, input_shape=tuple(input_shape))
    set_constant_weights(model)
    return model


def set_constant_weights(model: keras.Model) -> keras.Model:
    """The RF preparation on the TF side, in place: constant positive kernels
    (:func:`constant_kernel_value`), zero biases, batch norms as identities
    (mean 0, variance 1, scale 1, offset 0). Activations and max pooling are kept."""
    for layer in _all_layers(model):
        cls = type(layer).__name__
        if cls == "BatchNormalization":
            new = []
            for w in layer.weights:
                short = w.path.split("/")[-1]
                new.append(
                    np.ones(w.shape, np.float32)
                    if short in ("gamma", "moving_variance")
                    else np.zeros(w.shape, np.float32)
                )
            layer.set_weights(new)
            continue
        if not layer.weights:
            continue
        new = []
        for w in layer.weights:
            shape = tuple(w.shape)
            short = w.path.split("/")[-1]
            if short == "bias" or len(shape) < 4:
                new.append(np.zeros(shape, np.float32) if short == "bias" else np.asarray(w.numpy()))
            else:  # (kh, kw, c_in, c_out) or depthwise (kh, kw, c_in, mult)
                kh, kw, c_in = shape[:3]
                fan = 1 if "depthwise" in short else c_in
                new.append(np.full(shape, constant_kernel_value(fan, kh, kw), np.float32))
        layer.set_weights(new)
    return model


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


# --------------------------------------------------------------------------- helpers


def ones_input(model: keras.Model) -> tf.Tensor:
    """The all-ones input ``(1, H, W, C)`` of ``model``."""
    return tf.ones((1,) + tuple(model.input_shape[1:]), tf.float32)


def output_grid(model: keras.Model) -> tuple[int, int, int]:
    """``(Ho, Wo, Co)`` of the model's (single) output."""
    _, ho, wo, co = model.output_shape
    return int(ho), int(wo), int(co)


def _cells(model: keras.Model, cells) -> tuple[np.ndarray, bool]:
    ho, wo, _ = output_grid(model)
    if cells is None:
        ii, jj = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
        return np.stack([ii.ravel(), jj.ravel()], axis=1), True
    return np.asarray(cells, np.int64).reshape(-1, 2), False


def _one_hot_masks(model: keras.Model, cells: np.ndarray) -> tf.Tensor:
    ho, wo, _ = output_grid(model)
    m = np.zeros((len(cells), ho, wo, 1), np.float32)
    m[np.arange(len(cells)), cells[:, 0], cells[:, 1], 0] = 1.0
    return tf.constant(m)


def _shape_result(model: keras.Model, g: np.ndarray, full: bool) -> np.ndarray:
    if not full:
        return g
    ho, wo, _ = output_grid(model)
    return g.reshape((ho, wo) + g.shape[1:])


# --------------------------------------------------------------------------- ways


def per_cell_tape(model: keras.Model, x: tf.Tensor | None = None, cells=None) -> np.ndarray:
    """(a) One ``GradientTape`` (forward and backward pass) per cell, in a Python loop."""
    x = ones_input(model) if x is None else tf.convert_to_tensor(x, tf.float32)
    cell_arr, full = _cells(model, cells)
    maps = np.empty((len(cell_arr),) + tuple(x.shape[1:3]), np.float32)
    for n, (i, j) in enumerate(cell_arr):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model(x, training=False)
            loss = tf.reduce_sum(out[0, int(i), int(j), :])
        g = tape.gradient(loss, x)
        maps[n] = tf.reduce_sum(g[0], axis=-1).numpy()
    return _shape_result(model, maps, full)


def _batched_grad(model: keras.Model, x: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    xb = tf.repeat(x, tf.shape(masks)[0], axis=0)
    with tf.GradientTape() as tape:
        tape.watch(xb)
        out = model(xb, training=False)
        loss = tf.reduce_sum(masks * out)
    g = tape.gradient(loss, xb)
    return tf.reduce_sum(g, axis=-1)


def batched_tape(model: keras.Model, x: tf.Tensor | None = None, cells=None) -> np.ndarray:
    """(b) One tape over one copy of the input per cell; loss ``sum(masks * outputs)``."""
    x = ones_input(model) if x is None else tf.convert_to_tensor(x, tf.float32)
    cell_arr, full = _cells(model, cells)
    g = _batched_grad(model, x, _one_hot_masks(model, cell_arr))
    return _shape_result(model, g.numpy(), full)


def jacobian_pfor(model: keras.Model, x: tf.Tensor | None = None) -> np.ndarray:
    """(c) ``tape.jacobian`` of the channel-summed output ``(Ho, Wo)`` with respect to the
    input, vectorised by ``pfor``. All cells only."""
    x = ones_input(model) if x is None else tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(model(x, training=False)[0], axis=-1)  # (Ho, Wo)
    jac = tape.jacobian(out, x, experimental_use_pfor=True)  # (Ho, Wo, 1, H, W, C)
    return tf.reduce_sum(jac[:, :, 0], axis=-1).numpy()


_XLA_CACHE: dict[int, tuple[keras.Model, object]] = {}


def _xla_fn(model: keras.Model):
    hit = _XLA_CACHE.get(id(model))
    if hit is None or hit[0] is not model:
        fn = tf.function(lambda x, masks: _batched_grad(model, x, masks), jit_compile=True)
        hit = _XLA_CACHE[id(model)] = (model, fn)
    return hit[1]


def batched_tape_xla(model: keras.Model, x: tf.Tensor | None = None, cells=None) -> np.ndarray:
    """(d) :func:`batched_tape` inside ``tf.function(jit_compile=True)`` (compiled by
    XLA on the first call, one program per model and cell count)."""
    x = ones_input(model) if x is None else tf.convert_to_tensor(x, tf.float32)
    cell_arr, full = _cells(model, cells)
    g = _xla_fn(model)(x, _one_hot_masks(model, cell_arr))
    return _shape_result(model, g.numpy(), full)


WAYS = {
    "tf_per_cell_tape": per_cell_tape,
    "tf_batched_tape": batched_tape,
    "tf_jacobian_pfor": jacobian_pfor,
    "tf_batched_tape_xla": batched_tape_xla,
}
