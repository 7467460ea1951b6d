"""Resize (nearest and linear, every coordinate transformation mode but the cropping one)
and its older forms, Upsample (opsets 7 to 9) and Resize of opset 10.

Each resized axis is a static ``(out, in)`` interpolation matrix built in numpy from
the ONNX rules (source coordinate, nearest rounding or linear taps clamped to the
input) and applied with a contraction: an exact linear op, the same in the RF copy.

The older forms have one coordinate rule, ``asymmetric`` (``x_in = x_out / scale``),
output sizes ``floor(size * scale)``, and, as ONNX Runtime computes them, nearest
rounding ``floor`` on upsampled axes and ``ceil`` on downsampled ones; linear taps are
clamped to the input.
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
    """The ``(out, size)`` interpolation matrix of one axis of a Resize (opset 11+)."""
    mode, coords = ctx.attr("mode", "nearest"), ctx.attr("coordinate_transformation_mode", "half_pixel")
    return axis_matrix(mode, coords, ctx.attr("nearest_mode", "round_prefer_floor"), out, size, scale)


def axis_matrix(mode: str, coords: str, rounding: str, out: int, size: int, scale: float) -> np.ndarray:
    """The ``(out, size)`` matrix taking one axis of ``size`` pixels to ``out`` pixels
    (``mode`` nearest or linear, ``coords`` a coordinate transformation mode,
    ``rounding`` a nearest mode)."""
    coord = _source(coords, out, size, scale)
    m = np.zeros((out, size), np.float32)
    rows = np.arange(out)
    if mode == "nearest":
        idx = _ROUNDING[rounding](coord)
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
    """Resize with ``scales`` or ``sizes`` over all axes or ``axes``; N and C must stay.
    At opset 10 the second input is the scales and the rules are Upsample's (:func:`legacy`)."""
    if ctx.opset < 11:
        return legacy(ctx, x, roi)
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
    return _apply(x, axes, outs, factors, lambda out, size, f: matrix(ctx, out, size, f))


def _apply(x: Any, axes: list[int], outs: list[int], factors: list[float], make: Callable) -> Any:
    """``x`` with every axis in ``axes`` taken to its ``outs`` size by the matrix
    ``make(out, size, factor)`` (axes that keep their size and factor 1 are skipped)."""
    y, shape = x, list(x.shape)
    for a, out, f in zip(axes, outs, factors):
        if out == shape[a] and f == 1.0:
            continue
        if a < 2 and x.ndim == 4:
            raise RFError(f"resizing axis {a} (batch or channels) is not supported.")
        m = jnp.asarray(make(out, shape[a], f))
        y = jnp.moveaxis(jnp.tensordot(y, m, axes=([a], [1])), -1, a)
    return y


def legacy(ctx: Ctx, x: Any, scales: Any) -> Any:
    """Upsample (opsets 7 to 9) and Resize of opset 10: ``scales`` per axis (the
    ``scales`` attribute of opset 7 or the input), asymmetric coordinates, output sizes
    ``floor(size * scale)``, nearest rounding ``floor`` up and ``ceil`` down."""
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise RFError(f"mode={mode!r} is not supported (nearest and linear are).")
    if scales is None:
        raise RFError("the scales are missing (the scales attribute before opset 9, the second input after).")
    factors = [float(f) for f in np.asarray(scales, np.float32).reshape(-1)]
    if len(factors) != x.ndim or min(factors) <= 0:
        raise RFError(f"scales {factors} must be {x.ndim} positive numbers, one per axis.")
    outs = [int(np.floor(np.float32(n) * np.float32(f))) for n, f in zip(x.shape, factors)]

    def make(out: int, size: int, f: float) -> np.ndarray:
        return axis_matrix(mode, "asymmetric", "floor" if f >= 1 else "ceil", out, size, f)

    return _apply(x, list(range(x.ndim)), outs, factors, make)


@register("Upsample", attrs=("mode", "scales"), static=(1,), spreads=True)
def upsample(ctx: Ctx, x: Any, scales: Any = None) -> Any:
    """Upsample, deprecated since opset 10 (see :func:`legacy`)."""
    return legacy(ctx, x, ctx.attr("scales") if scales is None else scales)
