"""Closed-form RF bounds of every value of a traced PyTorch program (Araujo et al.).

The walk runs over the jaxpr itself, so it needs no module graph: every value carries,
per array axis, ``(size, jump)`` for the spatial axes it inherited from the input image
and ``None`` for the others (batch, channels). Convolutions and reduce windows grow a
spatial axis as ``size += d (k - 1) jump``, ``jump *= s``; strided slices multiply the
jump; element-wise operations take the largest bound of their operands; transposes,
broadcasts, pads and channel reshapes carry the axes along. A reduction or contraction
over a spatial axis makes a value *global* (left out of later merges, as in
:mod:`converters._geometry`); any other operation on a spatial value makes it unknown.

The bound is exact for chains and for graphs whose paths are centred alike; the engine
only uses it to pick an input large enough for a measurement (see
:meth:`rfjax.contract.ConvertedModel.rf_bound`), never as an answer.
"""

from __future__ import annotations

import math
from typing import Any

from jax.extend import core as jcore

Axes = tuple  # per axis: (size, jump) or None
CONST, GLOBAL, UNKNOWN = "const", "global", "unknown"
ELEMENTWISE = frozenset(
    [
        "add",
        "sub",
        "mul",
        "div",
        "max",
        "min",
        "neg",
        "exp",
        "exp2",
        "log",
        "log1p",
        "logistic",
        "tanh",
        "sqrt",
        "rsqrt",
        "pow",
        "integer_pow",
        "abs",
        "sign",
        "erf",
        "square",
        "convert_element_type",
        "select_n",
        "stop_gradient",
        "copy",
        "copy_p",
        "nextafter",
        "rem",
        "floor",
        "ceil",
        "round",
        "and",
        "or",
        "not",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "is_finite",
        "clamp",
    ]
)
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _merge(values: list[Any], ndim: int) -> Any:
    local = [v for v in values if isinstance(v, tuple)]
    if any(v == UNKNOWN for v in values):
        return UNKNOWN
    if not local:
        return GLOBAL if GLOBAL in values else CONST
    if any(len(v) != ndim for v in local):
        return UNKNOWN
    out = []
    for axis in zip(*local):
        spatial = [a for a in axis if a is not None]
        out.append((max(a[0] for a in spatial), max(a[1] for a in spatial)) if spatial else None)
    return tuple(out)


def _conv(eqn, lhs: Axes) -> Any:
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]):
        return UNKNOWN
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    rhs_shape = eqn.invars[1].aval.shape
    out: list = [None] * len(out_spec)
    for i in range(len(lhs_spec) - 2):
        a = lhs[lhs_spec[2 + i]]
        if a is not None:
            k, s, d = rhs_shape[rhs_spec[2 + i]], p["window_strides"][i], p["rhs_dilation"][i]
            out[out_spec[2 + i]] = (a[0] + d * (k - 1) * a[1], a[1] * s)
    return tuple(out)


def _window(eqn, x: Axes) -> Any:
    p = eqn.params
    if any(b != 1 for b in p["base_dilation"]):
        return UNKNOWN
    out = []
    for a, k, s, d in zip(x, p["window_dimensions"], p["window_strides"], p["window_dilation"]):
        out.append(None if a is None else (a[0] + d * (k - 1) * a[1], a[1] * s))
    return tuple(out)


def _reshape(eqn, x: Axes) -> Any:
    """Spatial axes must survive whole: the same sizes, in order, with the products of
    the dimensions between them unchanged (channels may be split or merged)."""
    old, new = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    keep = [i for i, a in enumerate(x) if a is not None]
    out: list = [None] * len(new)
    start_old = start_new = 0
    for i in keep:
        j, between = start_new, math.prod(old[start_old:i])
        while j < len(new) and not (new[j] == old[i] and math.prod(new[start_new:j]) == between):
            j += 1
        if j == len(new):
            return UNKNOWN
        out[j], start_old, start_new = x[i], i + 1, j + 1
    return tuple(out) if math.prod(old[start_old:]) == math.prod(new[start_new:]) else UNKNOWN


def _structural(eqn, x: Axes) -> Any:
    """Transpose, broadcast, squeeze, expand, pad, slice, reduction, contraction."""
    name, p = eqn.primitive.name, eqn.params
    if name == "transpose":
        return tuple(x[i] for i in p["permutation"])
    if name == "broadcast_in_dim":
        out: list = [None] * len(p["shape"])
        for src, dst in enumerate(p["broadcast_dimensions"]):
            out[dst] = x[src]
        return tuple(out)
    if name == "squeeze":
        return tuple(a for i, a in enumerate(x) if i not in p["dimensions"])
    if name == "expand_dims":
        out = list(x)
        for d in sorted(p["dimensions"]):
            out.insert(d, None)
        return tuple(out)
    if name == "pad":
        return x if all(interior == 0 for _, _, interior in p["padding_config"]) else UNKNOWN
    if name == "slice":
        strides = p["strides"] or (1,) * len(x)
        return tuple(None if a is None else (a[0], a[1] * s) for a, s in zip(x, strides))
    if name == "reshape":
        return _reshape(eqn, x)
    if name.startswith(("reduce_", "argm")) and not name.startswith("reduce_window") and "axes" in p:
        if any(x[i] is not None for i in p["axes"]):
            return GLOBAL
        return tuple(a for i, a in enumerate(x) if i not in p["axes"])
    return UNKNOWN


def _dot(eqn, lhs: Any, rhs: Any) -> Any:
    """Output axes: batch, then the free axes of each side; a spatial axis contracted
    (a dense layer over a flattened map) makes the value global."""
    (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
    sides = [(lhs, lc, eqn.invars[0].aval.ndim), (rhs, rc, eqn.invars[1].aval.ndim)]
    if any(isinstance(a, tuple) and any(a[i] is not None for i in c) for a, c, _ in sides):
        return GLOBAL
    l_axes = lhs if isinstance(lhs, tuple) else (None,) * sides[0][2]
    r_axes = rhs if isinstance(rhs, tuple) else (None,) * sides[1][2]
    (_, rb) = eqn.params["dimension_numbers"][1]
    batch = [l_axes[i] for i in lb]
    left = [a for i, a in enumerate(l_axes) if i not in lc and i not in lb]
    right = [a for i, a in enumerate(r_axes) if i not in rc and i not in rb]
    return tuple(batch + left + right)


def _sub_jaxpr(eqn) -> Any:
    for key in _CALLS:
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr
        if isinstance(sub, jcore.Jaxpr):
            return sub
    return None


def _equation(eqn, ins: list[Any]) -> list[Any]:
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    if all(v == CONST for v in ins):
        return [CONST] * n_out
    sub = _sub_jaxpr(eqn)
    if sub is not None:
        return walk(sub, ins)
    if any(v == UNKNOWN for v in ins):
        return [UNKNOWN] * n_out
    if name in ELEMENTWISE or name == "custom_jvp_call":
        return [_merge(ins, eqn.outvars[0].aval.ndim)] * n_out
    if name == "concatenate":
        merged = _merge(ins, eqn.outvars[0].aval.ndim)
        along = eqn.params["dimension"]
        return [UNKNOWN if isinstance(merged, tuple) and merged[along] is not None else merged]
    if name == "dot_general":
        return [_dot(eqn, *ins)]
    x = ins[0]
    if not isinstance(x, tuple) or any(v != CONST for v in ins[1:]) and name != "conv_general_dilated":
        return [x if x in (GLOBAL, CONST) else UNKNOWN] * n_out
    if name == "conv_general_dilated":
        return [_conv(eqn, x)]
    if name.startswith("reduce_window"):
        return [_window(eqn, x)] * n_out
    return [_structural(eqn, x)] * n_out


def walk(jaxpr: jcore.Jaxpr, in_axes: list[Any]) -> list[Any]:
    """The bounds of ``jaxpr``'s outputs given its inputs' (``CONST`` for parameters)."""
    env: dict = {v: CONST for v in jaxpr.constvars}
    env.update(zip(jaxpr.invars, in_axes))

    def read(v):
        return CONST if isinstance(v, jcore.Literal) else env.get(v, UNKNOWN)

    for eqn in jaxpr.eqns:
        for v, b in zip(eqn.outvars, _equation(eqn, [read(v) for v in eqn.invars])):
            env[v] = b
    return [read(v) for v in jaxpr.outvars]


def nhwc_bounds(jaxpr: jcore.Jaxpr, n_params: int) -> list[tuple[int, int, int, int] | None]:
    """``(size_h, size_w, stride_h, stride_w)`` of every output of a traced program
    ``(params..., x NHWC) -> [maps NHWC]``, ``None`` where unknown or global."""
    x_axes = (None, (1, 1), (1, 1), None)
    out = []
    for b in walk(jaxpr, [CONST] * n_params + [x_axes]):
        ok = isinstance(b, tuple) and len(b) == 4 and b[1] is not None and b[2] is not None
        out.append((b[1][0], b[2][0], b[1][1], b[2][1]) if ok else None)
    return out
