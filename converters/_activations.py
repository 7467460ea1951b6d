"""Keras activation functions by name, as JAX functions (exact Keras 3 definitions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rfjax.errors import RFError


def identity(x: jax.Array) -> jax.Array:
    return x


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """Keras 3's hard sigmoid: ``relu6(x + 3) / 6``."""
    return jax.nn.relu6(x + 3.0) / 6.0


def relu(
    x: jax.Array, negative_slope: float = 0.0, max_value: float | None = None, threshold: float = 0.0
) -> jax.Array:
    """Keras' general ReLU: ``x`` above ``threshold`` (clipped at ``max_value``),
    ``negative_slope * (x - threshold)`` below it."""
    positive = jnp.where(x > threshold, x, 0.0) if threshold != 0 else jax.nn.relu(x)
    if max_value is not None:
        positive = jnp.minimum(positive, max_value)
    if negative_slope != 0:
        positive = positive - negative_slope * jax.nn.relu(threshold - x)
    return positive


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": identity,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2),
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "celu": jax.nn.celu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "sigmoid": jax.nn.sigmoid,
    "hard_sigmoid": hard_sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hard_silu": lambda x: x * hard_sigmoid(x),
    "hard_swish": lambda x: x * hard_sigmoid(x),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "tanh": jnp.tanh,
    "hard_tanh": lambda x: jnp.clip(x, -1.0, 1.0),
    "tanh_shrink": lambda x: x - jnp.tanh(x),
    "softplus": jax.nn.softplus,
    "softsign": jax.nn.soft_sign,
    "log_sigmoid": jax.nn.log_sigmoid,
    "exponential": jnp.exp,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
}


def activation_name(spec: Any) -> str:
    """The activation's Keras name from a config value (a name, ``None``, or a
    serialised function dict)."""
    if spec is None:
        return "linear"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("config"), str):
        return spec["config"]
    return getattr(spec, "__name__", repr(spec))


def activation(spec: Any, rf: bool = False) -> Callable[[jax.Array], jax.Array]:
    """The JAX function of a Keras activation (identity in RF mode)."""
    name = activation_name(spec)
    if name not in ACTIVATIONS:
        raise RFError(f"activation {name!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}.")
    return identity if rf else ACTIVATIONS[name]
