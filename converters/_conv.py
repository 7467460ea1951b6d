"""Convolutions and max pooling with Keras/TensorFlow semantics, in the form XLA runs fastest.

:func:`conv` equals ``lax.conv_general_dilated`` (TensorFlow's 'same' rule, dilation,
groups, NHWC or NCHW) but lowers two common cases differently, because XLA:CPU's
convolution emitter is slow for them (measured here, 2-core EPYC, jax 0.10.2, the
input gradient of 49 cells as the engine runs it):

* a 1x1 convolution without groups is a strided slice and a matrix product
  (``dot_general``): 4x faster than XLA:CPU's convolution, forward and backward;
* a depthwise convolution (one input channel per group) is a sum over kernel taps of
  shifted, strided slices times a per-channel weight: 15-40x faster than XLA:CPU's
  grouped convolution, whose backward pass is the slowest op in MobileNets;
* a strided convolution (no groups, no dilation) is a stride-1 convolution of the
  space-to-depth input with a rearranged kernel: its input gradient is then a plain
  convolution, not XLA's input-dilated one, which computes on the zeros it inserts
  (2.5x faster for ResNet50's 7x7 stride-2 stem).

Both are exact reformulations (the sums run in another order, so results agree to
float32 rounding); every other convolution goes to ``lax.conv_general_dilated``.
Kernels are HWIO: ``(kh, kw, C_in / groups, C_out)``.

:func:`max_pool` is the same idea for max pooling: the maximum over shifted, strided
slices, with the gradient routed to the first maximum of each window (as TensorFlow
routes it). ``lax.reduce_window``'s gradient, vmapped over 49 cells, took 0.86 s for
ResNet50's one pool and 3.6 s for VGG16's first; this takes 0.11 s and 0.31 s.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def same_padding(n: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding ``(before, after)`` along one axis (more after when odd)."""
    span = dilation * (k - 1) + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + span - n, 0)
    return total // 2, total - total // 2


def conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    channels_first: bool = False,
) -> jax.Array:
    """A 2-D convolution ``x (N, H, W, C)`` (``(N, C, H, W)`` if ``channels_first``) with an
    HWIO ``kernel``; ``padding`` is ``"SAME"``, ``"VALID"`` or explicit ``(before, after)``
    zero padding per spatial axis (inside XLA's convolution where it takes the
    convolution, so no padded copy of ``x`` is made; ahead of the fast forms)."""
    kh, kw, c_group, _ = kernel.shape
    c_in = x.shape[1 if channels_first else -1]
    pointwise = groups == 1 and (kh, kw) == (1, 1)
    depthwise = c_group == 1 and groups == c_in > 1
    strided = groups == 1 and max(strides) > 1 and tuple(dilation) == (1, 1)
    if not isinstance(padding, str):
        pads = [(int(a), int(b)) for a, b in padding]
        if pointwise or depthwise or strided:
            widths = [(0, 0), (0, 0), *pads] if channels_first else [(0, 0), *pads, (0, 0)]
            x = jnp.pad(x, widths) if any(map(any, pads)) else x
            padding = "VALID"
        else:
            padding = pads
    if pointwise:
        return _pointwise(x, kernel, strides, channels_first)
    if depthwise:
        return _nhwc(_depthwise, x, channels_first, kernel, strides, padding, dilation)
    if strided:
        return _nhwc(_space_to_depth, x, channels_first, kernel, strides, padding)
    layout = ("NCHW", "HWIO", "NCHW") if channels_first else ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(
        x,
        kernel,
        tuple(strides),
        padding,
        rhs_dilation=tuple(dilation),
        dimension_numbers=layout,
        feature_group_count=groups,
    )


def _nhwc(op, x: jax.Array, channels_first: bool, *args) -> jax.Array:
    """Run an NHWC-only ``op(x, *args)`` on an NCHW or NHWC ``x``."""
    if not channels_first:
        return op(x, *args)
    return jnp.moveaxis(op(jnp.moveaxis(x, 1, -1), *args), -1, 1)


def _space_to_depth(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: str) -> jax.Array:
    """Strided convolution (NHWC) as a stride-1 one: input pixel ``(s * a + p, s * b + q)``
    becomes channel ``(p, q, c)`` of pixel ``(a, b)``; the kernel, zero-padded to a
    multiple of the stride, is cut the same way into ``ceil(k / s)`` taps per axis."""
    kh, kw, c, co = kernel.shape
    n, h, w, _ = x.shape
    (sh, sw) = strides
    if padding == "SAME":
        x = jnp.pad(x, ((0, 0), same_padding(h, kh, sh), same_padding(w, kw, sw), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    th, tw = -(-kh // sh), -(-kw // sw)
    lh, lw = sh * (oh + th - 1), sw * (ow + tw - 1)
    x = x[:, :lh, :lw]
    x = jnp.pad(x, ((0, 0), (0, lh - x.shape[1]), (0, lw - x.shape[2]), (0, 0)))
    x = (
        x.reshape(n, lh // sh, sh, lw // sw, sw, c)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(n, lh // sh, lw // sw, -1)
    )
    k = jnp.pad(kernel, ((0, sh * th - kh), (0, sw * tw - kw), (0, 0), (0, 0)))
    k = k.reshape(th, sh, tw, sw, c, co).transpose(0, 2, 1, 3, 4, 5).reshape(th, tw, sh * sw * c, co)
    return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _pointwise(x: jax.Array, kernel: jax.Array, strides: Sequence[int], channels_first: bool) -> jax.Array:
    """1x1 convolution: 'same' and 'valid' agree (no padding), so it is a strided slice
    and a product over channels."""
    sh, sw = strides
    w = kernel[0, 0]
    if channels_first:
        return jnp.einsum("nchw,co->nohw", x[:, :, ::sh, ::sw], w)
    return jnp.einsum("nhwc,co->nhwo", x[:, ::sh, ::sw, :], w)


def _depthwise(
    x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: str, dilation: Sequence[int]
) -> jax.Array:
    """Depthwise convolution (NHWC), kernel ``(kh, kw, 1, C * m)``: output channel
    ``c * m + k`` reads input channel ``c`` (Keras' depth-multiplier order)."""
    kh, kw, _, cm = kernel.shape
    n, h, w, c = x.shape
    if cm != c:
        x = jnp.repeat(x, cm // c, axis=-1)
    (sh, sw), (dh, dw) = strides, dilation
    if padding == "SAME":
        pads = (same_padding(h, kh, sh, dh), same_padding(w, kw, sw, dw))
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            start = (0, i * dh, j * dw, 0)
            stop = (n, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, cm)
            term = lax.slice(x, start, stop, (1, sh, sw, 1)) * kernel[i, j, 0]
            out = term if out is None else out + term
    assert out is not None  # kh, kw >= 1
    return out


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: str) -> jax.Array:
    """``lax.reduce_window(x, -inf, max, window, strides, padding)`` for 4-D ``x`` whose
    ``window``/``strides`` are 1 on the non-spatial axes. The value is the window's
    maximum; its gradient goes to the window's first maximum (row-major order).

    A ``custom_vjp`` around a plain maximum over taps: :func:`rfjax.prepare.linearize`
    inlines it and turns the maxima into means (average pooling), as it does for
    ``reduce_window``; 'same' windows are padded with edge copies (not ``-inf``, which
    the means would spread) that the gradient never selects."""
    return _max_pool(x, tuple(int(v) for v in window), tuple(int(v) for v in strides), padding)


def _pool_taps(x: jax.Array, window: tuple, strides: tuple, padding: str) -> tuple[list, list]:
    """The strided slices of every window offset, and for each a boolean (broadcastable)
    mask of the outputs whose tap lies inside the unpadded input."""
    pads = [(0, 0)] * 4
    if padding == "SAME":
        pads = [same_padding(x.shape[a], window[a], strides[a]) for a in range(4)]
        x = jnp.pad(x, pads, mode="edge")
    n = [x.shape[a] - sum(pads[a]) for a in range(4)]
    out_shape = [(x.shape[a] - window[a]) // strides[a] + 1 for a in range(4)]
    taps, valid = [], []
    for offset in np.ndindex(*window):
        stop = [o + strides[a] * (out_shape[a] - 1) + 1 for a, o in enumerate(offset)]
        taps.append(lax.slice(x, offset, stop, strides))
        mask = np.ones([1] * 4, bool)
        for a in range(4):
            pos = offset[a] + strides[a] * np.arange(out_shape[a]) - pads[a][0]
            mask = mask & ((pos >= 0) & (pos < n[a])).reshape([-1 if b == a else 1 for b in range(4)])
        valid.append(mask)
    return taps, valid


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: tuple, strides: tuple, padding: str) -> jax.Array:
    taps, _ = _pool_taps(x, window, strides, padding)
    return functools.reduce(jnp.maximum, taps)


def _first_maxima(x: jax.Array, window: tuple, strides: tuple, padding: str) -> tuple[jax.Array, list]:
    """The pooled value and, per tap, where it is the window's first maximum inside the
    unpadded input (the taps the gradient goes to)."""
    taps, valid = _pool_taps(x, window, strides, padding)
    top = functools.reduce(jnp.maximum, taps)
    firsts, found = [], None
    for v, ok in zip(taps, valid):
        hit = (v == top) & ok
        first = hit if found is None else hit & ~found
        found = first if found is None else found | first
        firsts.append(first)
    return top, firsts


def _max_pool_fwd(x, window, strides, padding):
    top, firsts = _first_maxima(x, window, strides, padding)
    return top, (x, firsts)  # the masks are computed once, in the forward pass


def _max_pool_bwd(window, strides, padding, res, g):
    x, firsts = res
    _, pull = jax.vjp(lambda x: _pool_taps(x, window, strides, padding)[0], x)  # slices: linear
    return pull([jnp.where(f, g, 0.0) for f in firsts])


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
