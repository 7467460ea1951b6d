"""Converters for raw ``keras.ops`` calls recorded in functional graphs (keys ``ops.*``).

MobileNetV3 builds hard-swish as ``x * relu6(x + 3.0) * (1 / 6)`` and ConvNeXt adds
tensors with ``+``: such calls are graph operations, not layers. Their arguments are
the call's tensors and constants as recorded; their configs hold keyword options
(``axis``, ``keepdims``, ...). In RF mode activations become the identity and
maxima/minima averages, as for the layers.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from converters._activations import ACTIVATIONS, identity
from converters._layers import rf_product
from converters._registry import register


def _elementwise(name: str, fn: Callable, rf_fn: Callable | None = None) -> None:
    """Register ``ops.<name>`` as ``fn(*args)`` (``rf_fn`` in RF mode, default ``fn``)."""

    def convert(config: dict, weights: dict, rf: bool):
        f = rf_fn if (rf and rf_fn is not None) else fn
        return (lambda p, *args: f(*args)), {}

    register(f"ops.{name}")(convert)


def _mean2(a, b):
    return (a + b) / 2


def _tensors(*args) -> bool:
    """Whether every argument is a traced/computed tensor (graph constants are numpy or Python)."""
    return all(isinstance(a, jax.Array) for a in args)


for _name, _fn in {
    "Subtract": jnp.subtract,
    "Divide": jnp.divide,
    "TrueDivide": jnp.true_divide,
    "Power": jnp.power,
    "Negative": jnp.negative,
    "Abs": jnp.abs,
    "Square": jnp.square,
    "Sqrt": jnp.sqrt,
    "Exp": jnp.exp,
    "Log": jnp.log,
}.items():
    _elementwise(_name, _fn)  # type: ignore[arg-type]  # jnp ufuncs are callables

_elementwise("Add", jnp.add, lambda a, b: _mean2(a, b) if _tensors(a, b) else a + b)
_elementwise("Maximum", jnp.maximum, _mean2)
_elementwise("Multiply", jnp.multiply, lambda a, b: rf_product(a, b) if _tensors(a, b) else a * b)
_elementwise("Minimum", jnp.minimum, _mean2)

for _name, _key in {
    "Relu": "relu",
    "Relu6": "relu6",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "Silu": "silu",
    "HardSilu": "hard_silu",
    "Elu": "elu",
    "Selu": "selu",
    "Tanh": "tanh",
    "Softplus": "softplus",
}.items():
    _elementwise(_name, ACTIVATIONS[_key], identity)


@register("ops.Gelu")
def gelu(config: dict, weights: dict, rf: bool):
    approximate = bool(config.get("approximate", True))
    return (lambda p, x: x if rf else jax.nn.gelu(x, approximate=approximate)), {}


@register("ops.LeakyRelu")
def leaky_relu(config: dict, weights: dict, rf: bool):
    slope = float(config.get("negative_slope", 0.2))
    return (lambda p, x: x if rf else jax.nn.leaky_relu(x, slope)), {}


@register("ops.Softmax")
def softmax(config: dict, weights: dict, rf: bool):
    axis = config.get("axis", -1)
    axis = axis if isinstance(axis, int) else tuple(axis)
    return (lambda p, x: x if rf else jax.nn.softmax(x, axis=axis)), {}


def _axis(config: dict):
    axis = config.get("axis")
    return axis if axis is None or isinstance(axis, int) else tuple(axis)


@register("ops.Mean")
def mean(config: dict, weights: dict, rf: bool):
    axis, keep = _axis(config), bool(config.get("keepdims", False))
    return (lambda p, x: jnp.mean(x, axis=axis, keepdims=keep)), {}


@register("ops.Sum")
def sum_(config: dict, weights: dict, rf: bool):
    axis, keep = _axis(config), bool(config.get("keepdims", False))
    return (lambda p, x: jnp.sum(x, axis=axis, keepdims=keep)), {}


@register("ops.Max")
def max_(config: dict, weights: dict, rf: bool):
    axis, keep = _axis(config), bool(config.get("keepdims", False))
    fn = jnp.mean if rf else jnp.max
    return (lambda p, x: fn(x, axis=axis, keepdims=keep)), {}


@register("ops.Min")
def min_(config: dict, weights: dict, rf: bool):
    axis, keep = _axis(config), bool(config.get("keepdims", False))
    fn = jnp.mean if rf else jnp.min
    return (lambda p, x: fn(x, axis=axis, keepdims=keep)), {}


@register("ops.Reshape")
def reshape(config: dict, weights: dict, rf: bool):
    shape = tuple(config["newshape"])
    return (lambda p, x: jnp.reshape(x, shape)), {}


@register("ops.Transpose")
def transpose(config: dict, weights: dict, rf: bool):
    axes = config.get("axes")
    return (lambda p, x: jnp.transpose(x, None if axes is None else tuple(axes))), {}


@register("ops.Concatenate")
def concatenate(config: dict, weights: dict, rf: bool):
    axis = int(config.get("axis", 0))
    return (lambda p, xs: jnp.concatenate(xs, axis=axis)), {}
