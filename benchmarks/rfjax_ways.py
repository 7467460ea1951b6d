"""The README network as a pure JAX function, and the rfjax ways to get its gradients.

The network matches :func:`benchmarks.tf_ways.readme_net` layer for layer, with the same
constant weights (each kernel element ``1 / (C_in * sqrt(kh * kw))``, zero biases), so
the two give the same gradients. Nothing here imports TensorFlow.

Ways (each returns what the benchmark times; the maps are ``(Ho, Wo, H, W)``):

* :func:`gradient_maps`       -- ``rfjax.gradient_maps`` for every cell (``strategy="auto"``);
* :func:`gradient_maps_dense` -- the same with one backward pass per cell (``strategy="dense"``),
  the like-for-like comparison with the TF ways;
* :func:`receptive_field`     -- ``rfjax.receptive_field`` (the RF fit, the user-facing answer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import rfjax

README_INPUT = (96, 96, 3)
_DN = ("NHWC", "HWIO", "NHWC")

# (kind, filters or pool size, kernel size); the same chain as tf_ways.README_LAYERS.
README_LAYERS = (
    ("conv", 32, 5),
    ("conv", 32, 3),
    ("pool", 2, None),
    ("conv", 64, 3),
    ("conv", 64, 3),
    ("pool", 2, None),
    ("conv", 128, 3),
    ("conv", 128, 3),
)


def readme_params(channels: int = 3, width: float = 1.0) -> list[dict[str, jax.Array]]:
    """Constant weights of the README network: one ``{"kernel" (HWIO), "bias"}`` per conv."""
    params = []
    c_in = channels
    for kind, n, k in README_LAYERS:
        if kind != "conv":
            continue
        c_out = max(1, round(n * width))
        value = 1.0 / (c_in * math.sqrt(k * k))
        params.append(
            {
                "kernel": jnp.full((k, k, c_in, c_out), value, jnp.float32),
                "bias": jnp.zeros((c_out,), jnp.float32),
            }
        )
        c_in = c_out
    return params


def _avg_pool(x: jax.Array, size: int) -> jax.Array:
    window = (1, size, size, 1)
    return lax.reduce_window(x, 0.0, lax.add, window, window, "VALID") / float(size * size)


def readme_net(params: Sequence[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """The README network, ``x (N, H, W, C) -> (N, Ho, Wo, 128)``, linear, 'valid'."""
    convs = iter(params)
    for kind, n, _ in README_LAYERS:
        if kind == "pool":
            x = _avg_pool(x, n)
            continue
        p = next(convs)
        x = lax.conv_general_dilated(x, p["kernel"], (1, 1), "VALID", dimension_numbers=_DN) + p["bias"]
    return x


def ones_input(input_shape: Sequence[int] = README_INPUT) -> np.ndarray:
    return np.ones((1,) + tuple(input_shape), np.float32)


# --------------------------------------------------------------------------- ways


def gradient_maps(
    params=None, x=None, *, strategy: str = "auto", cells=None, input_channels: str = "sum"
) -> np.ndarray:
    """Input gradients (summed over input channels) of every cell via ``rfjax.gradient_maps``."""
    params = readme_params() if params is None else params
    x = ones_input() if x is None else x
    return rfjax.gradient_maps(
        readme_net, x, params=params, cells=cells, input_channels=input_channels, strategy=strategy
    ).maps


def gradient_maps_dense(params=None, x=None, *, cells=None) -> np.ndarray:
    """:func:`gradient_maps` with one backward pass per cell (no packing)."""
    return gradient_maps(params, x, strategy="dense", cells=cells)


def receptive_field(params=None, input_shape: Sequence[int] = README_INPUT):
    """``rfjax.receptive_field`` of the README network (the default, prepared, fit)."""
    params = readme_params(input_shape[-1]) if params is None else params
    return rfjax.receptive_field(readme_net, tuple(input_shape), params=params)


# --------------------------------------------------------------------------- keras.applications


def keras_application(name: str, input_shape: Sequence[int] = (224, 224, 3)):
    """The benchmark's ``keras.applications`` model (:func:`benchmarks.tf_ways.keras_application`:
    no top, constant weights, activations and max pooling kept) converted by
    :func:`converters.from_keras`: ``(apply, params, x)``. Imports TensorFlow (to build it)."""
    import converters
    from benchmarks import tf_ways

    model = converters.from_keras(tf_ways.keras_application(name, input_shape))
    return model.apply, model.params, ones_input(input_shape)


def gradient_maps_of(converted, *, strategy: str = "auto") -> np.ndarray:
    """Input gradients (summed over input channels) of every cell of a converted model's
    single output, with the model's own (constant) weights: ``(Ho, Wo, H, W)``."""
    apply, params, x = converted
    (maps,) = rfjax.gradient_maps(apply, x, params=params, input_channels="sum", strategy=strategy).values()
    return maps.maps


WAYS = {
    "rfjax_gradient_maps": gradient_maps,
    "rfjax_gradient_maps_dense": gradient_maps_dense,
    "rfjax_receptive_field": receptive_field,
}
