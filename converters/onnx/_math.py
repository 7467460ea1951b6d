"""Elementwise ops, activations, reductions and normalisations.

In the RF copy every activation is the identity, sums/differences/maxima of image
tensors are means, products of two image tensors keep one factor's magnitude
(:func:`~converters.onnx._common.product`), an op of an image tensor with a constant
(a bias, a scale) is the image tensor itself, max/min/sum reductions are means,
batch normalisation is the identity and normalisations over image axes keep their
global dependence (:func:`~converters.onnx._common.normalised`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters.onnx._common import ints, keep, mean_of, normalised, product, rf_dynamic, xp
from converters.onnx._registry import Ctx, register
from rfjax.errors import RFError

# ----------------------------------------------------------------------------- activations


def _unary(fn: Callable[[Ctx, Any], Any]) -> Callable:
    """An activation: the identity in the RF copy."""

    def op(ctx: Ctx, x: Any) -> Any:
        return x if rf_dynamic(ctx) else fn(ctx, x)

    op.__doc__ = fn.__doc__
    return op


_ACTIVATIONS: dict[str, tuple[tuple[str, ...], Callable[[Ctx, Any], Any]]] = {
    "Relu": ((), lambda c, x: jnp.maximum(x, 0)),
    "LeakyRelu": (("alpha",), lambda c, x: jnp.where(x >= 0, x, c.attr("alpha", 0.01) * x)),
    "Sigmoid": ((), lambda c, x: jax.nn.sigmoid(x)),
    "HardSigmoid": (
        ("alpha", "beta"),
        lambda c, x: jnp.clip(c.attr("alpha", 0.2) * x + c.attr("beta", 0.5), 0, 1),
    ),
    "HardSwish": ((), lambda c, x: x * jnp.clip(x / 6 + 0.5, 0, 1)),
    "Tanh": ((), lambda c, x: jnp.tanh(x)),
    "Erf": ((), lambda c, x: jax.scipy.special.erf(x)),
    "Elu": (("alpha",), lambda c, x: jnp.where(x > 0, x, c.attr("alpha", 1.0) * jnp.expm1(x))),
    "Selu": (
        ("alpha", "gamma"),
        lambda c, x: (
            c.attr("gamma", 1.0507009873554805)
            * jnp.where(x > 0, x, c.attr("alpha", 1.6732632423543772) * jnp.expm1(x))
        ),
    ),
    "Softplus": ((), lambda c, x: jax.nn.softplus(x)),
    "Mish": ((), lambda c, x: x * jnp.tanh(jax.nn.softplus(x))),
    "Gelu": (
        ("approximate",),
        lambda c, x: jax.nn.gelu(x, approximate=c.attr("approximate", "none") == "tanh"),
    ),
}

for _name, (_attrs, _fn) in _ACTIVATIONS.items():
    register(_name, attrs=_attrs)(_unary(_fn))


@register("Clip", attrs=("min", "max"))
def clip(ctx: Ctx, x: Any, lo: Any = None, hi: Any = None) -> Any:
    """Clip (ReLU6); bounds from inputs (opset 11+) or attributes."""
    if rf_dynamic(ctx, 0):
        return x
    lo = ctx.attr("min") if lo is None else lo
    hi = ctx.attr("max") if hi is None else hi
    return xp(x, lo, hi).clip(x, lo, hi)


@register("PRelu")
def prelu(ctx: Ctx, x: Any, slope: Any) -> Any:
    return x if rf_dynamic(ctx, 0) else jnp.where(x >= 0, x, slope * x)


_MATH: dict[str, Callable[[Any, Any], Any]] = {
    "Sqrt": lambda m, x: m.sqrt(x),
    "Exp": lambda m, x: m.exp(x),
    "Log": lambda m, x: m.log(x),
    "Abs": lambda m, x: m.abs(x),
    "Neg": lambda m, x: -x,
    "Reciprocal": lambda m, x: 1 / x,
    "Floor": lambda m, x: m.floor(x),
    "Ceil": lambda m, x: m.ceil(x),
    "Not": lambda m, x: m.logical_not(x),
}


def _math(fn: Callable[[Any, Any], Any]) -> Callable:
    def op(ctx: Ctx, x: Any) -> Any:
        return x if rf_dynamic(ctx) else fn(xp(x), x)

    return op


for _name, _fn2 in _MATH.items():
    register(_name)(_math(_fn2))


# ----------------------------------------------------------------------------- arithmetic


def _divide(m: Any, a: Any, b: Any) -> Any:
    if m is np and np.asarray(a).dtype.kind in "iu" and np.asarray(b).dtype.kind in "iu":
        return np.trunc(np.asarray(a) / np.asarray(b)).astype(np.result_type(a, b))
    return a / b


_BINARY: dict[str, Callable[[Any, Any, Any], Any]] = {
    "Add": lambda m, a, b: a + b,
    "Sub": lambda m, a, b: a - b,
    "Mul": lambda m, a, b: a * b,
    "Div": _divide,
    "Pow": lambda m, a, b: m.power(a, b),
    "Equal": lambda m, a, b: m.equal(a, b),
    "Greater": lambda m, a, b: m.greater(a, b),
    "Less": lambda m, a, b: m.less(a, b),
    "And": lambda m, a, b: m.logical_and(a, b),
    "Or": lambda m, a, b: m.logical_or(a, b),
}
_MEAN_IN_RF = {"Add", "Sub"}  # two image tensors -> their mean; Mul/Div/Pow -> a product


def _binary(op_type: str, fn: Callable[[Any, Any, Any], Any]) -> Callable:
    def op(ctx: Ctx, a: Any, b: Any) -> Any:
        if rf_dynamic(ctx):
            if ctx.dynamic[0] and ctx.dynamic[1]:
                return mean_of([a, b]) if op_type in _MEAN_IN_RF else product(a, b)
            return keep(a, b) if ctx.dynamic[0] else keep(b, a)
        return fn(xp(a, b), a, b)

    return op


for _name, _fn3 in _BINARY.items():
    register(_name)(_binary(_name, _fn3))


def _variadic(reduce: Callable[[Any, Any, Any], Any]) -> Callable:
    """Sum / Max / Min of any number of tensors; the mean of the image ones in the RF copy."""

    def op(ctx: Ctx, *xs: Any) -> Any:
        if rf_dynamic(ctx):
            dyn = [x for x, d in zip(xs, ctx.dynamic) if d]
            return keep(mean_of(dyn), *[x for x, d in zip(xs, ctx.dynamic) if not d])
        m = xp(*xs)
        out = xs[0]
        for x in xs[1:]:
            out = reduce(m, out, x)
        return out

    return op


register("Sum")(_variadic(lambda m, a, b: a + b))
register("Max")(_variadic(lambda m, a, b: m.maximum(a, b)))
register("Min")(_variadic(lambda m, a, b: m.minimum(a, b)))
register("Mean")(_variadic(lambda m, a, b: a + b))


@register("Where")
def where(ctx: Ctx, cond: Any, a: Any, b: Any) -> Any:
    if rf_dynamic(ctx, 1, 2) and ctx.dynamic[1] and ctx.dynamic[2]:
        return mean_of([a, b])
    return xp(cond, a, b).where(cond, a, b)


# ----------------------------------------------------------------------------- reductions


def _reduce_axes(ctx: Ctx, x: Any, axes: Any) -> tuple[int, ...] | None:
    """The reduced axes from the ``axes`` attribute or input; ``None`` for none at all."""
    axes = ctx.attr("axes") if axes is None else axes
    if axes is None or len(np.atleast_1d(axes)) == 0:
        return None if ctx.attr("noop_with_empty_axes", 0) else tuple(range(x.ndim))
    return tuple(int(a) % x.ndim for a in ints(axes))


_REDUCE = {
    "ReduceMean": "mean",
    "ReduceMax": "max",
    "ReduceMin": "min",
    "ReduceSum": "sum",
    "ReduceProd": "prod",
}


def _reduction(kind: str) -> Callable:
    def op(ctx: Ctx, x: Any, axes: Any = None) -> Any:
        found = _reduce_axes(ctx, x, axes)
        if found is None:
            return x
        m = xp(x)
        method = "mean" if rf_dynamic(ctx, 0) else kind
        out = getattr(m, method)(x, axis=found, keepdims=bool(ctx.attr("keepdims", 1)))
        return np.asarray(out) if m is np else out

    return op


for _name, _kind in _REDUCE.items():
    register(_name, attrs=("axes", "keepdims", "noop_with_empty_axes"), static=(1,))(_reduction(_kind))


# ----------------------------------------------------------------------------- softmax


def _softmax_axes(ctx: Ctx, ndim: int) -> tuple[int, ...]:
    axis = int(ctx.attr("axis", -1 if ctx.opset >= 13 else 1)) % ndim
    return (axis,) if ctx.opset >= 13 else tuple(range(axis, ndim))


def _softmax(log: bool) -> Callable:
    def op(ctx: Ctx, x: Any) -> Any:
        axes = _softmax_axes(ctx, x.ndim)
        if rf_dynamic(ctx):
            return normalised(ctx, x, axes)
        fn = jax.nn.log_softmax if log else jax.nn.softmax
        return fn(x, axis=axes)

    return op


register("Softmax", attrs=("axis",), reduces=_softmax_axes)(_softmax(False))
register("LogSoftmax", attrs=("axis",), reduces=_softmax_axes)(_softmax(True))


# ----------------------------------------------------------------------------- normalisation


def _channel(v: Any, ndim: int, last: bool = False) -> Any:
    """A per-channel vector shaped to broadcast over ``(N, C, ...)``, or over ``(N, H, W, C)``
    when ``last`` (a channels-last 4-D image)."""
    return v if last and ndim == 4 else jnp.reshape(v, (1, -1) + (1,) * (ndim - 2))


@register("BatchNormalization", attrs=("epsilon", "momentum", "training_mode", "spatial"))
def batch_norm(ctx: Ctx, x: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
    """Inference batch normalisation (the identity in the RF copy)."""
    if ctx.attr("training_mode", 0) or not ctx.attr("spatial", 1):
        raise RFError("training_mode=1 or spatial=0 is not supported; export the model in inference mode.")
    if ctx.n_outputs > 1:
        raise RFError("the running mean and variance outputs (training mode) are not supported.")
    if rf_dynamic(ctx, 0):
        return x
    last = ctx.channels_last
    inv = _channel(scale, x.ndim, last) / jnp.sqrt(_channel(var, x.ndim, last) + ctx.attr("epsilon", 1e-5))
    return (x - _channel(mean, x.ndim, last)) * inv + _channel(bias, x.ndim, last)


def _instance_axes(ctx: Ctx, ndim: int) -> tuple[int, ...]:
    return tuple(range(2, ndim))


@register("InstanceNormalization", attrs=("epsilon",), reduces=_instance_axes)
def instance_norm(ctx: Ctx, x: Any, scale: Any, bias: Any) -> Any:
    """Normalisation over the spatial axes of each sample and channel."""
    axes = _instance_axes(ctx, x.ndim)
    if rf_dynamic(ctx, 0):
        return normalised(ctx, x, axes)
    mu = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=axes, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + ctx.attr("epsilon", 1e-5))
    return y * _channel(scale, x.ndim) + _channel(bias, x.ndim)


def _layer_axes(ctx: Ctx, ndim: int) -> tuple[int, ...]:
    return tuple(range(int(ctx.attr("axis", -1)) % ndim, ndim))


@register("LayerNormalization", attrs=("axis", "epsilon", "stash_type"), reduces=_layer_axes)
def layer_norm(ctx: Ctx, x: Any, scale: Any, bias: Any = None) -> Any:
    """Normalisation over the axes from ``axis`` on (mean and inverse std outputs unsupported)."""
    if ctx.n_outputs > 1:
        raise RFError("the Mean and InvStdDev outputs are not supported.")
    axes = _layer_axes(ctx, x.ndim)
    if rf_dynamic(ctx, 0):
        return normalised(ctx, x, axes)
    mu = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=axes, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + ctx.attr("epsilon", 1e-5)) * scale
    return y if bias is None else y + bias
