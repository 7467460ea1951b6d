"""Convolutions, pooling and dense layers (ONNX padding rules; 4-D images NCHW as in the
file, or NHWC when the interpreter stores them channels-last, ``ctx.channels_last``).

In the RF copy convolution kernels are the constant ``1 / (C_in_per_group *
sqrt(kh * kw))`` with the kernel's own shape (one input and output channel in the
one-channel copy), biases are zero, max pooling is average pooling with the same
window, padding, dilation and ``ceil_mode``, and dense layers (Gemm, MatMul with a
constant) average their input features into every output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from converters._conv import conv as fast_conv
from converters._conv import max_pool as fast_max_pool
from converters.onnx._common import around, rf_dynamic, spatial_axes
from converters.onnx._registry import Ctx, register
from rfjax.errors import RFError

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _geometry(ctx: Ctx, spatial: tuple[int, ...], kernel: Sequence[int]) -> tuple[list, list, list]:
    """``(strides, dilations, [(before, after)] pads)`` per spatial axis, ``auto_pad`` resolved."""
    n = len(spatial)
    strides = list(ctx.attr("strides") or [1] * n)
    dil = list(ctx.attr("dilations") or [1] * n)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dil):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto == "SAME_UPPER" else (large, small))
    elif auto == "VALID":
        pads = [(0, 0)] * n
    elif auto == "NOTSET":
        flat = list(ctx.attr("pads") or [0] * (2 * n))
        pads = list(zip(flat[:n], flat[n:]))
    else:
        raise RFError(f"auto_pad={auto!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID.")
    return strides, dil, pads


def _rf_kernel(w: Any, groups: int, one_channel: bool) -> tuple[Any, int]:
    """The RF copy's constant kernel (OIHW) and group count."""
    _, c_group, *window = w.shape
    if one_channel:
        return jnp.full((1, 1, *window), 1.0 / np.sqrt(np.prod(window)), jnp.float32), 1
    return jnp.full(w.shape, 1.0 / (c_group * np.sqrt(np.prod(window))), jnp.float32), groups


@register("Conv", attrs=_CONV_ATTRS, spreads=True)
def conv(ctx: Ctx, x: Any, w: Any, b: Any = None) -> Any:
    """N-d convolution, ``w`` in ``(C_out, C_in / group, k...)``; 2-d ones take the
    fast forms of :mod:`converters._conv`."""
    groups = int(ctx.attr("group", 1))
    kernel = tuple(w.shape[2:])
    strides, dil, pads = _geometry(ctx, tuple(x.shape[a] for a in spatial_axes(ctx, x.ndim)), kernel)
    if rf_dynamic(ctx, 0):
        w, groups = _rf_kernel(w, groups, ctx.one_channel)
        b = None
    if x.ndim == 4:
        # NHWC, where the fast forms and XLA:CPU's convolution are fastest; the padding
        # inside XLA's convolution where it takes it (no padded copy of x)
        y = fast_conv(
            x if ctx.channels_last else jnp.transpose(x, (0, 2, 3, 1)),
            jnp.transpose(w, (2, 3, 1, 0)),
            strides,
            pads,
            dil,
            groups,
        )
        if ctx.channels_last:
            return y if b is None else y + b
        y = jnp.transpose(y, (0, 3, 1, 2))
    else:
        y = lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dil, feature_group_count=groups)
    return y if b is None else y + jnp.reshape(b, (1, -1) + (1,) * (y.ndim - 2))


@register("ConvTranspose", attrs=_CONV_ATTRS + ("output_padding", "output_shape"), spreads=True)
def conv_transpose(ctx: Ctx, x: Any, w: Any, b: Any = None) -> Any:
    """Transposed convolution, ``w`` in ``(C_in, C_out / group, k...)``."""
    groups = int(ctx.attr("group", 1))
    c_in, c_group, *kernel = w.shape
    n = len(kernel)
    strides = list(ctx.attr("strides") or [1] * n)
    dil = list(ctx.attr("dilations") or [1] * n)
    extra = list(ctx.attr("output_padding") or [0] * n)
    pads = _transpose_pads(ctx, tuple(x.shape[2:]), kernel, strides, dil, extra)
    if rf_dynamic(ctx, 0):
        per_group = 1 if ctx.one_channel else c_in // groups
        c_in, c_group, groups = (1, 1, 1) if ctx.one_channel else (c_in, c_group, groups)
        w, b = (
            jnp.full((c_in, c_group, *kernel), 1.0 / (per_group * np.sqrt(np.prod(kernel))), jnp.float32),
            None,
        )
    # the equivalent forward convolution: kernel (C_out, C_in / group, k...) flipped in space
    k = jnp.reshape(w, (groups, c_in // groups, c_group, *kernel))
    k = jnp.swapaxes(k, 1, 2).reshape(groups * c_group, c_in // groups, *kernel)
    k = jnp.flip(k, axis=tuple(range(2, 2 + n)))
    span = [d * (kk - 1) for d, kk in zip(dil, kernel)]
    padding = [(s - p0, s - p1 + e) for s, (p0, p1), e in zip(span, pads, extra)]
    y = lax.conv_general_dilated(
        x, k, [1] * n, padding, lhs_dilation=strides, rhs_dilation=dil, feature_group_count=groups
    )
    return y if b is None else y + jnp.reshape(b, (1, -1) + (1,) * n)


def _transpose_pads(ctx: Ctx, spatial: tuple, kernel: list, strides: list, dil: list, extra: list) -> list:
    auto = ctx.attr("auto_pad", "NOTSET")
    target = ctx.attr("output_shape")
    if target is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        if auto == "VALID":
            return [(0, 0)] * len(kernel)
        flat = list(ctx.attr("pads") or [0] * (2 * len(kernel)))
        return list(zip(flat[: len(kernel)], flat[len(kernel) :]))
    target = list(target)[-len(kernel) :] if target is not None else [v * s for v, s in zip(spatial, strides)]
    pads = []
    for size, k, s, d, e, out in zip(spatial, kernel, strides, dil, extra, target):
        total = s * (size - 1) + e + (k - 1) * d + 1 - out
        pads.append(
            (total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2)
        )
    return pads


# ----------------------------------------------------------------------------- pooling


def _pool_geometry(ctx: Ctx, x: Any) -> tuple[list, list, list, list]:
    """``(window, strides, dilations, pads)`` with ``ceil_mode``'s extra padding added at
    the end (the last window must start inside the input or its leading padding)."""
    kernel = list(ctx.attr("kernel_shape"))
    spatial = tuple(x.shape[a] for a in spatial_axes(ctx, x.ndim))
    strides, dil, pads = _geometry(ctx, spatial, kernel)
    if ctx.attr("ceil_mode", 0):
        grown = []
        for size, k, s, d, (p0, p1) in zip(spatial, kernel, strides, dil, pads):
            span = d * (k - 1) + 1
            out = -(-(size + p0 + p1 - span) // s) + 1
            if (out - 1) * s >= size + p0:
                out -= 1
            grown.append((p0, max(p1, (out - 1) * s + span - size - p0)))
        pads = grown
    return kernel, strides, dil, pads


def _window(
    ctx: Ctx, x: Any, init: float, op: Any, kernel: list, strides: list, dil: list, pads: list
) -> Any:
    nd = x.ndim
    return lax.reduce_window(
        x,
        init,
        op,
        around(ctx, nd, kernel, 1),
        around(ctx, nd, strides, 1),
        around(ctx, nd, pads, (0, 0)),
        window_dilation=around(ctx, nd, dil, 1),
    )


def _average(ctx: Ctx, x: Any, kernel: list, strides: list, dil: list, pads: list, include_pad: bool) -> Any:
    """Average pooling; ``include_pad`` counts the explicit padding (never ``ceil_mode``'s)."""
    total = _window(ctx, x, 0.0, lax.add, kernel, strides, dil, pads)
    spatial = tuple(x.shape[a] for a in spatial_axes(ctx, x.ndim))
    ones = np.ones(around(ctx, x.ndim, spatial, 1), np.float32)
    if include_pad:
        explicit = _geometry(ctx, spatial, kernel)[2]
        ones = np.pad(ones, around(ctx, x.ndim, explicit, (0, 0)), constant_values=1.0)
        pads = [(p0 - e0, p1 - e1) for (p0, p1), (e0, e1) in zip(pads, explicit)]
    count = _count(ctx, ones, kernel, strides, dil, pads)
    return total / count


def _count(ctx: Ctx, ones: np.ndarray, kernel: list, strides: list, dil: list, pads: list) -> np.ndarray:
    """How many counted pixels each window covers (numpy, static)."""
    with jax.ensure_compile_time_eval():
        return np.asarray(_window(ctx, jnp.asarray(ones), 0.0, lax.add, kernel, strides, dil, pads))


@register(
    "MaxPool",
    attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"),
    spreads=True,
)
def max_pool(ctx: Ctx, x: Any) -> Any:
    """Max pooling (average pooling over the same windows in the RF copy)."""
    if ctx.n_outputs > 1:
        raise RFError("the Indices output of MaxPool is not supported.")
    kernel, strides, dil, pads = _pool_geometry(ctx, x)
    if rf_dynamic(ctx):
        return _average(ctx, x, kernel, strides, dil, pads, include_pad=False)
    if x.ndim == 4 and dil == [1, 1]:
        x = jnp.pad(x, around(ctx, 4, pads, (0, 0)), constant_values=-jnp.inf)
        return fast_max_pool(x, around(ctx, 4, kernel, 1), around(ctx, 4, strides, 1), "VALID")
    return _window(ctx, x, -jnp.inf, lax.max, kernel, strides, dil, pads)


@register(
    "AveragePool",
    attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "strides"),
    spreads=True,
)
def average_pool(ctx: Ctx, x: Any) -> Any:
    kernel, strides, dil, pads = _pool_geometry(ctx, x)
    return _average(ctx, x, kernel, strides, dil, pads, include_pad=bool(ctx.attr("count_include_pad", 0)))


@register("GlobalAveragePool")
def global_average_pool(ctx: Ctx, x: Any) -> Any:
    return jnp.mean(x, axis=spatial_axes(ctx, x.ndim), keepdims=True)


@register("GlobalMaxPool")
def global_max_pool(ctx: Ctx, x: Any) -> Any:
    reduce = jnp.mean if rf_dynamic(ctx) else jnp.max
    return reduce(x, axis=spatial_axes(ctx, x.ndim), keepdims=True)


# ----------------------------------------------------------------------------- dense


def _rf_dense(ctx: Ctx, x: Any, units: int) -> Any:
    """The RF copy of ``x @ W``: the mean of the features in every output unit."""
    y = jnp.mean(x, axis=-1, keepdims=True)
    return y if ctx.one_channel else jnp.broadcast_to(y, (*y.shape[:-1], units))


@register("Gemm", attrs=("alpha", "beta", "transA", "transB"))
def gemm(ctx: Ctx, a: Any, b: Any, c: Any = None) -> Any:
    """``alpha * A' @ B' + beta * C``."""
    a = a.T if ctx.attr("transA", 0) else a
    b = b.T if ctx.attr("transB", 0) else b
    if rf_dynamic(ctx, 0) and not ctx.dynamic[1]:
        return _rf_dense(ctx, a, b.shape[1])
    y = ctx.attr("alpha", 1.0) * (a @ b)
    return y if c is None else y + ctx.attr("beta", 1.0) * c


@register("MatMul")
def matmul(ctx: Ctx, a: Any, b: Any) -> Any:
    if rf_dynamic(ctx, 0) and not ctx.dynamic[1] and np.ndim(b) == 2:
        return _rf_dense(ctx, a, b.shape[1])
    return jnp.matmul(a, b)
