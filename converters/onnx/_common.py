"""Helpers shared by the op modules: static (numpy) versus traced values, and the RF
copy's rewrites that keep gradient supports while bounding magnitudes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters.onnx._registry import Ctx


def static(*values: Any) -> bool:
    """Whether every given value is known before tracing (numpy, Python numbers, ``None``)."""
    return all(v is None or isinstance(v, (np.ndarray, np.generic, int, float)) for v in values)


def xp(*values: Any) -> Any:
    """``numpy`` when every value is static (shape arithmetic stays numbers), else ``jax.numpy``."""
    return np if static(*values) else jnp


def ints(v: Any) -> list[int]:
    """A static 1-D value as Python ints."""
    return [int(i) for i in np.asarray(v).reshape(-1)]


def rf_dynamic(ctx: Ctx, *index: int) -> bool:
    """Whether the RF rewrite applies to this node: RF mode and the inputs at ``index``
    (all inputs when none are given) include one that depends on the image."""
    if not ctx.rf:
        return False
    flags = ctx.dynamic if not index else tuple(ctx.dynamic[i] for i in index if i < len(ctx.dynamic))
    return any(flags)


def keep(x: Any, *others: Any) -> Any:
    """``x`` standing for a per-pixel op of ``x`` with constants ``others`` (a bias, a
    scale): same supports. Broadcast up to their rank only (the one-channel copy has
    one channel where a constant has many)."""
    nd = max([np.ndim(o) for o in others] + [x.ndim])
    return jnp.reshape(x, (1,) * (nd - x.ndim) + tuple(x.shape)) if nd > x.ndim else x


def product(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a * b`` in the RF copy: ``a * b / stop_gradient(b)``, whose value is ``a``'s
    magnitude and whose gradient reaches both factors (a gate's global dependence
    stays visible; deep products do not overflow)."""
    return a * b / jax.lax.stop_gradient(b)


def mean_of(values: list) -> Any:
    """The elementwise mean of tensors (the RF copy of sums, differences, maxima):
    same supports as a sum, magnitudes bounded, no cancellation."""
    return sum(values[1:], values[0]) / len(values)


def normalised(ctx: Ctx, x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """The RF copy of a normalisation over ``axes`` (instance/layer norm, softmax): the
    value of ``x`` with gradient to every element the statistics read (so a
    normalisation over the image is seen as global), or ``x`` itself when ``held``."""
    if ctx.held or not axes:
        return x
    m = jnp.mean(x, axis=axes, keepdims=True)
    return product(x, m)


def spatial_axes(ctx: Ctx, ndim: int) -> tuple[int, ...]:
    """The spatial axes of an image value as stored: ``(1, 2)`` for a channels-last 4-D
    value, ``(2, ..., ndim - 1)`` in the file's channels-first layout."""
    return (1, 2) if ctx.channels_last and ndim == 4 else tuple(range(2, ndim))


def around(ctx: Ctx, ndim: int, spatial: Any, fill: Any) -> tuple:
    """Per-axis values of a stored image value: ``spatial`` on the spatial axes, ``fill``
    on the batch and channel axes (window shapes, strides, pads)."""
    spatial = tuple(spatial)
    return (fill, *spatial, fill) if ctx.channels_last and ndim == 4 else (fill, fill, *spatial)
