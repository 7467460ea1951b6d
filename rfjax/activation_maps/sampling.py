"""The sample axes of the CAM program: one VJP per class vmapped, Integrated Gradients' path
points and SmoothGrad's noisy copies as batch axes of the one compiled program."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rfjax import sharding


def grads(vjp: Callable, cls: jax.Array, n_classes: int) -> jax.Array:
    """``(k, N, ...)``: the VJP of each explained class (``cls (N, k)``), one ``jax.vmap``."""
    one = lambda c: vjp(jax.nn.one_hot(c, n_classes, dtype=jnp.float32))[0].astype(jnp.float32)
    return jax.vmap(one, in_axes=1)(cls)


def weigh_all(weigh: Callable, a: jax.Array, g: jax.Array) -> jax.Array:
    """``(N, k, h, w)``: the method applied to ``A`` and each class's gradient."""
    return jnp.moveaxis(jax.vmap(lambda gj: weigh(a, gj))(g), 0, 1)


def path_mean(grads_at: Callable, x: jax.Array, steps: int, n_devices: int = 1) -> jax.Array:
    """Integrated gradients' path average: the mean of ``grads_at((s / m) x)`` over
    ``s = 1..m`` (black baseline, right Riemann sum), the ``m`` points one vmapped batch
    split over ``n_devices`` local devices (:func:`rfjax.sharding.mean_over`)."""
    alphas = jnp.arange(1, steps + 1, dtype=jnp.float32) / steps
    return sharding.mean_over(lambda t: grads_at(t * x), alphas, n_devices)


def smoothed(
    explain: Callable,
    weigh: Callable,
    params: Any,
    x: jax.Array,
    cls: jax.Array,
    n_classes: int,
    keys: jax.Array,
    noise: jax.Array,
    samples: int,
    method: str,
    n_devices: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017):
    ``samples`` copies of each image plus Gaussian noise of standard deviation
    ``noise * (max(x_n) - min(x_n))`` (the image's range, as tf-keras-vis), drawn from the
    image's own key (``keys (N, 2)``: the same noise whatever the chunking or the devices),
    one vmapped batch split over ``n_devices`` local devices
    (:func:`rfjax.sharding.mean_over`). Saliency averages ``|G|`` over the copies before its
    channel maximum (as tf-keras-vis); every other method averages its maps. Returns
    ``(mean |G|, maps)``."""
    span = x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))
    eps = jax.vmap(lambda key: jax.random.normal(key, (samples,) + x.shape[1:]))(keys)
    copies = jnp.moveaxis(x[:, None] + (noise * span)[:, None, None, None, None] * eps, 1, 0)

    def one(xs):
        _, vjp, a = explain(params, xs)
        g = grads(vjp, cls, n_classes)
        return jnp.abs(g), (jnp.zeros(()) if method == "saliency" else weigh_all(weigh, a, g))

    g, maps = sharding.mean_over(one, copies, n_devices)
    return g, (weigh_all(weigh, x, g) if method == "saliency" else maps)
