"""Evaluating a traced PyTorch program channels-last, in the forms XLA:CPU runs fastest.

torchax traces a module NCHW, as PyTorch computes it: ``conv_general_dilated`` with
``(N, C, H, W)`` activations and ``(O, I, kh, kw)`` kernels (depthwise ones as grouped
convolutions), ``reduce_window`` over the last two axes. Evaluated as traced, the input
gradients of torchvision's MobileNetV2 (49 cells, 224 px) took 9.0 s here against 0.9 s
for the same network converted from Keras: XLA:CPU's grouped convolution and its
``reduce_window`` max gradient are its slowest ops. This interpreter runs the equations
one by one (like ``jax.core.eval_jaxpr``) but stores every 4-D value ``v`` of the
program as ``transpose(v, (0, 2, 3, 1))`` wherever the equations that touch it allow,
and gives it back in the trace's layout only where an equation needs the trace's axes
(a reshape, a matrix product, a custom derivative rule):

* PyTorch-style convolutions go through :func:`converters._conv.conv` (1x1 as matrix
  products, depthwise as sums of shifted slices, strided as space-to-depth; kernels
  transposed to HWIO), other convolutions get re-indexed dimension numbers;
* spatial max pooling goes through :func:`converters._conv.max_pool` (``-inf``
  padding; the gradient to each window's first maximum, as PyTorch routes it); other
  reduce windows, pads and slices permute their per-axis parameters;
* element-wise equations (:data:`converters._torch._geometry.ELEMENTWISE`) and
  concatenations run channels-last when one 4-D operand is stored so (the others are
  transposed to match; scalars broadcast as before);
* reductions keep the stored layout when the axes they leave are in the trace's order
  (global pooling over ``H, W`` gives ``(N, C)`` either way);
* a transpose composes its permutation with the stored layout (the NCHW -> NHWC
  transposes that name every module's output become free);
* ``jit`` calls are evaluated inline by the same rules.

Same values: convolutions may sum in another order (float32 rounding only, never a
zero moved); ``tests/test_torch.py`` checks forwards and every cell's input gradient
against PyTorch's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from converters._conv import conv as fast_conv
from converters._conv import max_pool as fast_max_pool
from converters._torch._geometry import ELEMENTWISE

FILE = (0, 1, 2, 3)
LAST = (0, 2, 3, 1)  # stored = transpose(trace value, LAST): (N, C, H, W) -> (N, H, W, C)
_WINDOWS = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min"})
_WINDOW_KEYS = ("window_dimensions", "window_strides", "padding", "base_dilation", "window_dilation")
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"})
_CALLS = frozenset({"jit", "pjit"})


class _Value:
    """A value as stored: ``array = transpose(trace value, perm)`` (``perm`` is
    :data:`FILE` or :data:`LAST`; always :data:`FILE` unless 4-D)."""

    __slots__ = ("array", "perm")

    def __init__(self, array: Any, perm: tuple[int, ...] = FILE):
        self.array, self.perm = array, perm if np.ndim(array) == 4 else FILE

    @property
    def image(self) -> bool:
        return np.ndim(self.array) == 4

    def as_file(self) -> Any:
        """The value in the trace's layout."""
        return self.array if self.perm == FILE else lax.transpose(self.array, _inverse(self.perm))

    def as_last(self) -> Any:
        """A 4-D value channels-last."""
        return self.array if self.perm == LAST else lax.transpose(self.as_file(), LAST)


def _inverse(perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(perm.index(d) for d in range(len(perm)))


def _stored_axes(spec: Sequence[int]) -> tuple[int, ...]:
    """Trace axes ``spec`` as the stored axes of a channels-last value."""
    return tuple(LAST.index(d) for d in spec)


def _bind(eqn: Any, params: dict, args: Sequence[Any], perm: tuple[int, ...]) -> list[_Value]:
    outs = eqn.primitive.bind(*args, **params)
    return [_Value(o, perm) for o in (outs if eqn.primitive.multiple_results else [outs])]


def _conv(eqn: Any, params: dict, ins: list[_Value]) -> list[_Value]:
    """Convolution of a channels-last image: PyTorch's ``(N, C, H, W)`` / ``(O, I, kh,
    kw)`` convolutions through :func:`converters._conv.conv` (its fast forms for 1x1,
    depthwise and strided convolutions; XLA:CPU's grouped convolution was the slowest
    op of MobileNets), any other with its dimension numbers re-indexed."""
    lhs, rhs, out = params["dimension_numbers"]
    plain = tuple(lhs) == tuple(rhs) == tuple(out) == FILE and params["batch_group_count"] == 1
    if (
        plain
        and set(params["lhs_dilation"]) == {1}
        and params.get("preferred_element_type") in (None, np.float32)
    ):
        kernel = lax.transpose(ins[1].as_file(), (2, 3, 1, 0))  # OIHW -> HWIO
        y = fast_conv(
            ins[0].as_last(),
            kernel,
            params["window_strides"],
            params["padding"],
            params["rhs_dilation"],
            params["feature_group_count"],
        )
        return [_Value(y, LAST)]
    numbers = lax.ConvDimensionNumbers(_stored_axes(lhs), tuple(rhs), _stored_axes(out))
    return _bind(eqn, {**params, "dimension_numbers": numbers}, [ins[0].as_last(), ins[1].as_file()], LAST)


def _max_pool(params: dict, value: _Value) -> list[_Value] | None:
    """Spatial max pooling through :func:`converters._conv.max_pool` (maxima of strided
    slices, the gradient to each window's first maximum, as PyTorch routes it; XLA's
    ``reduce_window`` gradient was several times slower), padding with ``-inf``."""
    window, strides, pads = params["window_dimensions"], params["window_strides"], params["padding"]
    if tuple(window[:2]) != (1, 1) or tuple(strides[:2]) != (1, 1) or any(map(any, pads[:2])):
        return None
    if set(params["base_dilation"]) != {1} or set(params["window_dilation"]) != {1}:
        return None
    x = value.as_last()
    if any(map(any, pads[2:])):
        x = jnp.pad(x, ((0, 0), tuple(pads[2]), tuple(pads[3]), (0, 0)), constant_values=-jnp.inf)
    return [
        _Value(fast_max_pool(x, (1, window[2], window[3], 1), (1, strides[2], strides[3], 1), "VALID"), LAST)
    ]


def _per_axis(params: dict, keys: Sequence[str]) -> dict:
    """``params`` with the per-axis tuples under ``keys`` in stored-axis order."""
    return {k: (tuple(v[p] for p in LAST) if k in keys and v is not None else v) for k, v in params.items()}


def _reduction(eqn: Any, params: dict, ins: list[_Value]) -> list[_Value] | None:
    """A reduction of a channels-last value whose kept axes stay in the trace's order."""
    axes = tuple(sorted(LAST.index(a) for a in params["axes"]))
    kept = [LAST[i] for i in range(4) if i not in axes]
    if kept != sorted(kept):
        return None
    return _bind(eqn, {**params, "axes": axes}, [ins[0].array], FILE)


def _transpose(eqn: Any, params: dict, value: _Value) -> list[_Value]:
    """Compose the permutation with the stored layout; free where it undoes it."""
    q = params["permutation"]
    to_last = tuple(value.perm.index(q[t]) for t in LAST)
    to_file = tuple(value.perm.index(d) for d in q)
    if to_last == FILE:
        return [_Value(value.array, LAST)]
    if to_file == FILE:
        return [_Value(value.array, FILE)]
    return _bind(eqn, {**params, "permutation": to_file}, [value.array], FILE)


def _step(eqn: Any, ins: list[_Value]) -> list[_Value]:
    name = eqn.primitive.name
    params = eqn.primitive.get_bind_params(eqn.params)
    images = [v for v in ins if v.image]
    stored_last = any(v.perm == LAST for v in images)
    if name in _CALLS:
        closed = eqn.params["jaxpr"]
        return _eval(closed.jaxpr, closed.consts, ins)
    if name == "conv_general_dilated" and ins[0].image:
        return _conv(eqn, params, ins)
    if name == "reduce_window_max" and ins[0].image and (pooled := _max_pool(params, ins[0])) is not None:
        return pooled
    if name in _WINDOWS and ins[0].image:
        return _bind(eqn, _per_axis(params, _WINDOW_KEYS), [ins[0].as_last()], LAST)
    if name == "transpose" and ins[0].image:
        return _transpose(eqn, params, ins[0])
    elementwise = name in ELEMENTWISE or name == "concatenate"
    if stored_last and elementwise and all(v.image or np.ndim(v.array) == 0 for v in ins):
        if name == "concatenate":
            params = {**params, "dimension": LAST.index(params["dimension"])}
        return _bind(eqn, params, [v.as_last() if v.image else v.array for v in ins], LAST)
    if stored_last and ins[0].perm == LAST:
        if name == "pad":
            config = tuple(params["padding_config"][p] for p in LAST)
            return _bind(eqn, {**params, "padding_config": config}, [ins[0].array, ins[1].array], LAST)
        if name == "slice":
            keys = ("start_indices", "limit_indices", "strides")
            return _bind(eqn, _per_axis(params, keys), [ins[0].array], LAST)
        if name in _REDUCTIONS and len(ins) == 1 and (done := _reduction(eqn, params, ins)) is not None:
            return done
    return _bind(eqn, params, [v.as_file() for v in ins], FILE)


def _run(
    jaxpr: jcore.Jaxpr, consts: Sequence[Any], ins: Sequence[_Value], eqns: Sequence, hold: frozenset
) -> Callable[[Any], _Value]:
    """Run ``eqns`` of ``jaxpr``; returns the reader of the values computed."""
    env: dict = {v: _Value(c) for v, c in zip(jaxpr.constvars, consts)}
    env.update(zip(jaxpr.invars, ins))

    def read(v: Any) -> _Value:
        return _Value(v.val) if isinstance(v, jcore.Literal) else env[v]

    for eqn in eqns:
        for v, val in zip(eqn.outvars, _step(eqn, [read(u) for u in eqn.invars])):
            env[v] = _Value(lax.stop_gradient(val.array), val.perm) if v in hold else val
    return read


def _eval(jaxpr: jcore.Jaxpr, consts: Sequence[Any], ins: Sequence[_Value]) -> list[_Value]:
    read = _run(jaxpr, consts, ins, jaxpr.eqns, frozenset())
    return [read(v) for v in jaxpr.outvars]


def evaluate(
    closed: jcore.ClosedJaxpr, eqns: Sequence, outvars: Sequence[Any], args: Sequence[Any], hold: frozenset
) -> list:
    """Run ``eqns`` of ``closed`` on ``args`` (the trace's layout) and return
    ``outvars`` in the trace's layout; every value in ``hold`` goes through
    ``stop_gradient`` where it is computed. Same contract as
    :func:`converters._torch._jaxpr.evaluate`; the values in between are stored
    channels-last where the rules above allow."""
    read = _run(closed.jaxpr, closed.consts, [_Value(a) for a in args], eqns, hold)
    return [read(v).as_file() for v in outvars]
