"""Resize (nearest and linear, every coordinate transformation mode but the cropping one).

Each resized axis is a static ``(out, in)`` interpolation matrix built in numpy from
the ONNX rules (source coordinate, nearest rounding or linear taps clamped to the
input) and applied with a contraction: an exact linear op, the same in the RF copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from converters.onnx._common import ints
from converters.onnx._registry import Ctx, register
from rfjax.errors import RFError

_MODES = ("half_pixel", "asymmetric", "pytorch_half_pixel", "align_corners", "tf_half_pixel_for_nn")
_ROUNDING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "round_prefer_floor": lambda v: np.ceil(v - 0.5),
    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _source(mode: str, out: int, size: int, scale: float) -> np.ndarray:
    """The input coordinate of every output pixel along one axis, in float32 as ONNX
    Runtime computes it (a float64 coordinate can land on the other side of .5)."""
    x, scale32 = np.arange(out, dtype=np.float32), np.float32(scale)
    if mode == "half_pixel":
        return (x + 0.5) / scale32 - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale32 - 0.5 if out > 1 else np.zeros(out, np.float32)
    if mode == "align_corners":
        return x * np.float32(size - 1) / np.float32(out - 1) if out > 1 else np.zeros(out, np.float32)
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale32
    return x / scale32


def matrix(ctx: Ctx, out: int, size: int, scale: float) -> np.ndarray:
    """The ``(out, size)`` interpolation matrix of one axis."""
    coord = _source(ctx.attr("coordinate_transformation_mode", "half_pixel"), out, size, scale)
    m = np.zeros((out, size), np.float32)
    rows = np.arange(out)
    if ctx.attr("mode", "nearest") == "nearest":
        idx = _ROUNDING[ctx.attr("nearest_mode", "round_prefer_floor")](coord)
        m[rows, np.clip(idx, 0, size - 1).astype(int)] = 1.0
        return m
    coord = np.clip(coord, 0, size - 1)
    lo = np.floor(coord).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    frac = coord - lo
    np.add.at(m, (rows, lo), 1 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def _check(ctx: Ctx) -> None:
    mode, coords = ctx.attr("mode", "nearest"), ctx.attr("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        raise RFError(f"mode={mode!r} is not supported (nearest and linear are).")
    if coords not in _MODES:
        raise RFError(
            f"coordinate_transformation_mode={coords!r} is not supported; one of {', '.join(_MODES)}."
        )
    if ctx.attr("nearest_mode", "round_prefer_floor") not in _ROUNDING:
        raise RFError(f"nearest_mode={ctx.attr('nearest_mode')!r} is not supported.")
    if ctx.attr("antialias", 0) or ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise RFError("antialias and keep_aspect_ratio_policy other than 'stretch' are not supported.")


@register(
    "Resize",
    attrs=(
        "antialias",
        "axes",
        "coordinate_transformation_mode",
        "cubic_coeff_a",
        "exclude_outside",
        "extrapolation_value",
        "keep_aspect_ratio_policy",
        "mode",
        "nearest_mode",
    ),
    static=(1, 2, 3),
    spreads=True,
)
def resize(ctx: Ctx, x: Any, roi: Any = None, scales: Any = None, sizes: Any = None) -> Any:
    """Resize with ``scales`` or ``sizes`` over all axes or ``axes``; N and C must stay."""
    _check(ctx)
    nd = x.ndim
    axes = [a % nd for a in ctx.attr("axes", range(nd))]
    shape = list(x.shape)
    if sizes is not None and np.size(sizes):
        outs = ints(sizes)
        factors = [o / shape[a] for a, o in zip(axes, outs)]
    else:
        factors = [float(s) for s in np.asarray(scales).reshape(-1)]
        outs = [int(np.floor(shape[a] * f)) for a, f in zip(axes, factors)]
    y = x
    for a, out, f in zip(axes, outs, factors):
        if out == shape[a] and f == 1.0:
            continue
        if a < 2 and nd == 4:
            raise RFError(f"resizing axis {a} (batch or channels) is not supported.")
        m = jnp.asarray(matrix(ctx, out, shape[a], f))
        y = jnp.moveaxis(jnp.tensordot(y, m, axes=([a], [1])), -1, a)
    return y
