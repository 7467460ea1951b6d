"""Test helper: pure JAX functions for chains of :class:`rfjax.analytic.Layer`.

``chain_fn(layers)`` returns ``fn(x)`` mapping ``x (1, H, W, C)`` (NHWC) to the
chain's output ``(1, Ho, Wo, C')``: convolutions via ``jax.lax.conv_general_dilated``
with constant positive kernels and zero bias, pooling via ``jax.lax.reduce_window``
(sum divided by the window area for 'avg_pool', max for 'max_pool'). Padding is passed
as explicit ``(before, after)`` pairs from the analytic module's 'same' rule; with
``padding_mode="strings"`` 'same'/'valid' layers are given to JAX as 'SAME'/'VALID'
instead, so tests can check that both agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from rfjax.analytic import Layer


def _jax_padding(layer: Layer, hw: tuple[int, int], mode: str):
    if mode == "strings" and isinstance(layer.padding, str):
        return layer.padding.upper()
    return layer.padding_pairs(hw)


def chain_fn(
    layers: Sequence[Layer],
    channels: int | Sequence[int] = 1,
    *,
    padding_mode: str = "explicit",
) -> Callable[[jax.Array], jax.Array]:
    """A pure function ``x (1, H, W, C) -> (1, Ho, Wo, C')`` for ``layers``.

    Args:
      layers: the chain, input side first.
      channels: output channels of every convolution (an int), or one count per
        convolution; pooling keeps its input's channels.
      padding_mode: ``"explicit"`` (pairs from :meth:`Layer.padding_pairs`) or
        ``"strings"`` ('SAME' / 'VALID' handed to JAX).
    """
    layers = list(layers)
    n_conv = sum(layer.kind == "conv" for layer in layers)
    outs = [channels] * n_conv if isinstance(channels, int) else list(channels)
    if len(outs) != n_conv:
        raise ValueError(f"channels has {len(outs)} entries for {n_conv} convolutions")

    def fn(x: jax.Array) -> jax.Array:
        conv_i = 0
        for layer in layers:
            hw = (int(x.shape[1]), int(x.shape[2]))
            pad = _jax_padding(layer, hw, padding_mode)
            kh, kw = layer.kernel
            if layer.kind == "conv":
                cin, cout = int(x.shape[3]), outs[conv_i]
                conv_i += 1
                w = jnp.full((kh, kw, cin, cout), 1.0 / (cin * kh * kw), x.dtype)
                x = lax.conv_general_dilated(
                    x,
                    w,
                    window_strides=layer.stride,
                    padding=pad,
                    rhs_dilation=layer.dilation,
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )
            else:
                dims = (1, kh, kw, 1)
                strides = (1, *layer.stride, 1)
                dil = (1, *layer.dilation, 1)
                full = pad if isinstance(pad, str) else ((0, 0), *pad, (0, 0))
                if layer.kind == "avg_pool":
                    x = lax.reduce_window(x, 0.0, lax.add, dims, strides, full, window_dilation=dil) / (
                        kh * kw
                    )
                else:
                    x = lax.reduce_window(x, -math.inf, lax.max, dims, strides, full, window_dilation=dil)
        return x

    return fn
