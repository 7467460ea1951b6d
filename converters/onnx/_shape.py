"""Shape, indexing and layout ops; static inputs give static (numpy) outputs.

``Shape`` and ``Size`` of any tensor are numpy values (shapes are static under
tracing), so the Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains exporters
emit are computed in numpy before XLA sees them. In the one-channel RF copy a
concatenation along the channel axis of image tensors is their mean, and a reshape
that names the original channel count divides it out.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from converters.onnx._common import ints, mean_of, rf_dynamic, static, xp
from converters.onnx._registry import Ctx, register
from rfjax.errors import RFError


@register("Shape", attrs=("start", "end"))
def shape(ctx: Ctx, x: Any) -> np.ndarray:
    dims = np.asarray(np.shape(x), np.int64)
    return dims[slice(ctx.attr("start", 0), ctx.attr("end"))]


@register("Size")
def size(ctx: Ctx, x: Any) -> np.ndarray:
    return np.asarray(math.prod(np.shape(x)), np.int64)


@register("Constant", attrs=("value", "value_float", "value_floats", "value_int", "value_ints"))
def constant(ctx: Ctx) -> np.ndarray:
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32)):
        if key in ctx.attrs:
            return np.asarray(ctx.attrs[key], dtype)
    for key in ("value_int", "value_ints"):
        if key in ctx.attrs:
            return np.asarray(ctx.attrs[key], np.int64)
    return np.asarray(ctx.attrs["value"])


@register("ConstantOfShape", attrs=("value",), static=(0,))
def constant_of_shape(ctx: Ctx, dims: Any) -> np.ndarray:
    value = np.asarray(ctx.attr("value", np.zeros(1, np.float32))).reshape(-1)
    return np.full(ints(dims), value[0], value.dtype)


@register("Cast", attrs=("to", "saturate"))
def cast(ctx: Ctx, x: Any) -> Any:
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(int(ctx.attr("to")))
    if static(x):
        return np.asarray(x).astype(dtype)
    return x.astype(jnp.float32) if np.dtype(dtype).kind == "f" else x.astype(dtype)


@register("Identity")
def identity(ctx: Ctx, x: Any) -> Any:
    return x


@register("Dropout", attrs=("ratio", "seed"), static=(1, 2))
def dropout(ctx: Ctx, x: Any, ratio: Any = None, training: Any = None) -> Any:
    """Inference dropout: the identity (a mask output, when used, is all ones)."""
    if training is not None and bool(np.asarray(training)):
        raise RFError("training_mode=True is not supported; export the model in inference mode.")
    return (x, np.ones(np.shape(x), bool)) if ctx.n_outputs > 1 else x


@register("Gather", attrs=("axis",), static=(1,))
def gather(ctx: Ctx, x: Any, idx: Any) -> Any:
    axis = int(ctx.attr("axis", 0)) % np.ndim(x)
    idx = np.asarray(idx)
    idx = np.where(idx < 0, idx + np.shape(x)[axis], idx)
    return xp(x).take(x, idx, axis=axis)


@register("Concat", attrs=("axis",))
def concat(ctx: Ctx, *xs: Any) -> Any:
    axis = int(ctx.attr("axis")) % np.ndim(xs[0])
    if ctx.channels_last and np.ndim(xs[0]) == 4:
        axis = (0, 3, 1, 2)[axis]  # the file's axis as stored NHWC
    if (
        ctx.one_channel
        and rf_dynamic(ctx)
        and axis == (3 if ctx.channels_last else 1)
        and np.ndim(xs[0]) == 4
    ):
        return mean_of([x for x, d in zip(xs, ctx.dynamic) if d])
    return xp(*xs).concatenate(xs, axis=axis)


@register("Split", attrs=("axis", "split", "num_outputs"), static=(1,))
def split(ctx: Ctx, x: Any, sizes: Any = None) -> tuple:
    axis = int(ctx.attr("axis", 0)) % np.ndim(x)
    sizes = ctx.attr("split") if sizes is None else sizes
    n = np.shape(x)[axis]
    if sizes is None:
        parts = int(ctx.attr("num_outputs", ctx.declared))
        step = -(-n // parts)
        sizes = [min(step, n - i * step) for i in range(parts)]
    cuts = np.cumsum(ints(sizes))[:-1]
    return tuple(xp(x).split(x, cuts, axis=axis))


@register("Slice", static=(1, 2, 3, 4))
def slice_(ctx: Ctx, x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts, ends = ints(starts), ints(ends)
    axes = list(range(len(starts))) if axes is None else [a % np.ndim(x) for a in ints(axes)]
    steps = [1] * len(starts) if steps is None else ints(steps)
    index = [slice(None)] * np.ndim(x)
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a] = slice(s, e, st)
    return x[tuple(index)]


@register("Pad", attrs=("mode",), static=(1, 2, 3))
def pad(ctx: Ctx, x: Any, pads: Any, value: Any = None, axes: Any = None) -> Any:
    """Constant, reflect, edge and wrap padding; negative pads crop."""
    nd = np.ndim(x)
    axes = list(range(nd)) if axes is None else [a % nd for a in ints(axes)]
    flat = ints(pads)
    widths: list[list[int]] = [[0, 0] for _ in range(nd)]
    for i, a in enumerate(axes):
        widths[a] = [flat[i], flat[i + len(axes)]]
    if ctx.channels_last and nd == 4:
        widths = [widths[a] for a in (0, 2, 3, 1)]  # the file's axes as stored NHWC
    crop = tuple(slice(max(-b, 0), np.shape(x)[a] - max(-e, 0)) for a, (b, e) in enumerate(widths))
    x = x[crop]
    pad_widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    mode = ctx.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise RFError(f"mode={mode!r} is not one of constant, reflect, edge, wrap.")
    if mode != "constant":
        return xp(x).pad(x, pad_widths, mode=mode)
    fill = 0 if value is None or np.size(value) == 0 else np.asarray(value).reshape(-1)[0]
    return xp(x).pad(x, pad_widths, mode="constant", constant_values=fill)


def _one_channel_target(target: list[int], size: int) -> list[int]:
    """A reshape target naming the original channel count, divided so it fits a
    one-channel tensor of ``size`` elements (the batch axis is kept)."""
    extra = math.prod(target) // max(size, 1)
    out = list(target)
    for i in range(1, len(out)):
        g = math.gcd(out[i], extra)
        out[i], extra = out[i] // g, extra // g
    return out


@register("Reshape", attrs=("allowzero",), static=(1,))
def reshape(ctx: Ctx, x: Any, target: Any) -> Any:
    dims = ints(target)
    if not ctx.attr("allowzero", 0):
        dims = [np.shape(x)[i] if d == 0 else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = math.prod(np.shape(x)) // max(known, 1)
    if ctx.one_channel and rf_dynamic(ctx) and math.prod(dims) != math.prod(np.shape(x)):
        dims = _one_channel_target(dims, math.prod(np.shape(x)))
    return xp(x).reshape(x, dims)


@register("Flatten", attrs=("axis",))
def flatten(ctx: Ctx, x: Any) -> Any:
    axis = int(ctx.attr("axis", 1)) % (np.ndim(x) + 1)
    lead = math.prod(np.shape(x)[:axis])
    return xp(x).reshape(x, (lead, -1) if lead else (1, -1))


@register("Transpose", attrs=("perm",))
def transpose(ctx: Ctx, x: Any) -> Any:
    perm = ctx.attr("perm") or list(range(np.ndim(x)))[::-1]
    return xp(x).transpose(x, perm)


def _axes(ctx: Ctx, axes: Any) -> list[int] | None:
    axes = ctx.attr("axes") if axes is None else axes
    return None if axes is None else ints(axes)


@register("Squeeze", attrs=("axes",), static=(1,))
def squeeze(ctx: Ctx, x: Any, axes: Any = None) -> Any:
    found = _axes(ctx, axes)
    if found is None:
        return xp(x).squeeze(x)
    return xp(x).squeeze(x, axis=tuple(a % np.ndim(x) for a in found))


@register("Unsqueeze", attrs=("axes",), static=(1,))
def unsqueeze(ctx: Ctx, x: Any, axes: Any = None) -> Any:
    found = _axes(ctx, axes) or []
    nd = np.ndim(x) + len(found)
    return xp(x).expand_dims(x, axis=tuple(sorted(a % nd for a in found)))


@register("Expand", static=(1,))
def expand(ctx: Ctx, x: Any, dims: Any) -> Any:
    return xp(x).broadcast_to(x, np.broadcast_shapes(np.shape(x), tuple(ints(dims))))


@register("Tile", static=(1,))
def tile(ctx: Ctx, x: Any, repeats: Any) -> Any:
    return xp(x).tile(x, ints(repeats))


@register("Range", static=(0, 1, 2))
def range_(ctx: Ctx, start: Any, limit: Any, delta: Any) -> np.ndarray:
    first, last, step = (np.asarray(v).item() for v in (start, limit, delta))
    return np.arange(first, last, step).astype(np.asarray(start).dtype)
