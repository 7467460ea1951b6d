"""RF preparation: make every path from the input to an output cell carry gradient.

The receptive field does not depend on trained weights, but real gradients can vanish
(dead ReLUs, clipped ReLU6, the single arg-max of max pooling) or turn NaN, which
makes a gradient-based RF too small. The references (the ``receptivefield`` package,
the TensorFlow tutorial in MISSION.md) therefore use linear activations, average
pooling, constant positive weights, zero biases and identity batch-norm on a constant
non-zero input. rfjax does the same without touching the user's code:

* :func:`prepare_params` maps a parameter pytree (Flax naming: ``kernel``, ``bias``,
  ``scale``, ``mean``, ``var``) to constant positive kernels, zero biases and
  identity normalisation statistics.
* :func:`linearize` rewrites a JAX function at the jaxpr level: ``max``/``min`` of
  two values becomes their mean (so ``relu``, ``relu6``, ``hard_sigmoid`` become
  affine with a non-zero slope), max/min pooling (``reduce_window_max``) becomes
  average pooling, ``reduce_max`` becomes a mean, and ``clamp`` passes its operand.

Kernels are set to ``1 / (C_in * sqrt(kh * kw))`` so that activations grow by at most
``sqrt(kh * kw)`` per layer while the gradient at an RF corner shrinks by the same
factor: both stay inside float32 range for networks hundreds of layers deep.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "w", "weight")
_ZERO_NAMES = ("bias", "beta", "mean", "moving_mean", "b")
_ONE_NAMES = ("scale", "gamma", "var", "moving_variance", "variance")


def _leaf_name(path: tuple) -> str:
    for key in reversed(path):
        name = getattr(key, "key", getattr(key, "name", None))
        if isinstance(name, str) and name not in ("value", "raw_value"):
            return name
    return ""


def constant_kernel(shape: tuple[int, ...]) -> float:
    """The positive constant used for a kernel of ``shape`` (HWIO for convolutions,
    ``(C_in, C_out)`` for dense layers)."""
    if len(shape) >= 3:
        return 1.0 / (shape[-2] * math.sqrt(math.prod(shape[:-2])))
    if len(shape) == 2:
        return 1.0 / shape[0]
    return 1.0


def prepare_params(params: Any) -> Any:
    """Constant positive kernels, zero biases, identity normalisation (a new pytree).

    Leaves are recognised by their last name in the tree path (Flax conventions and
    their Keras synonyms). Leaves with other names are returned unchanged.
    """

    def one(path, leaf):
        if not hasattr(leaf, "shape") or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return leaf
        name = _leaf_name(path)
        if name in _KERNEL_NAMES:
            return jnp.full(leaf.shape, constant_kernel(tuple(leaf.shape)), leaf.dtype)
        if name in _ZERO_NAMES:
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name in _ONE_NAMES:
            return jnp.ones(leaf.shape, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(one, params)


# ----------------------------------------------------------------------- jaxpr rewrite


def _mean2(eqn, a, b):
    return ((a + b) * 0.5).astype(eqn.outvars[0].aval.dtype)


def _avg_window(eqn, x):
    p = eqn.params
    total = lax.reduce_window(
        x,
        0.0,
        lax.add,
        p["window_dimensions"],
        p["window_strides"],
        p["padding"],
        p["base_dilation"],
        p["window_dilation"],
    )
    return total / math.prod(p["window_dimensions"])


def _mean_axes(eqn, x):
    return jnp.mean(x, axis=tuple(eqn.params["axes"])).astype(eqn.outvars[0].aval.dtype)


def _clamp(eqn, lo, x, hi):
    return x


_RULES: dict[str, Callable] = {
    "max": _mean2,
    "min": _mean2,
    "reduce_window_max": _avg_window,
    "reduce_window_min": _avg_window,
    "reduce_max": _mean_axes,
    "reduce_min": _mean_axes,
    "clamp": _clamp,
}
_INLINE = (
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "checkpoint",
    "remat",
)


def _is_float(eqn) -> bool:
    return all(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.outvars)


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub.jaxpr, sub.consts
        if isinstance(sub, jcore.Jaxpr):
            return sub, ()
    return None


def _eval(jaxpr, consts, *args):
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = _sub_jaxpr(eqn) if name in _INLINE else None
        if name in _RULES and _is_float(eqn):
            outs = [_RULES[name](eqn, *invals)]
        elif sub is not None:
            outs = _eval(sub[0], sub[1], *invals)
        else:
            outs = eqn.primitive.bind(*invals, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, val in zip(eqn.outvars, outs):
            env[v] = val
    return [read(v) for v in jaxpr.outvars]


def linearize(fn: Callable) -> Callable:
    """``fn`` with max/min turned into means, max pooling into average pooling.

    Works on any JAX function (Flax, Equinox, plain ``jax.lax``): the function is
    traced to a jaxpr on each new input shape and re-evaluated with the rewrite;
    ``jax.jit`` over the result compiles the rewritten program once.
    """

    @functools.wraps(fn)
    def wrapped(*args):
        closed = jax.make_jaxpr(fn)(*args)
        out_tree = jax.tree_util.tree_structure(jax.eval_shape(fn, *args))
        flat = jax.tree_util.tree_leaves(args)
        return jax.tree_util.tree_unflatten(out_tree, _eval(closed.jaxpr, closed.consts, *flat))

    return wrapped


@jax.custom_vjp
def support_only(y: jax.Array) -> jax.Array:
    """Identity whose backward pass keeps only the support of the cotangent (1 where it
    is non-zero). The one-channel RF copies apply it after every layer that spreads: its fit reads
    supports only, and with true magnitudes the fringe of a deep network's RF falls
    below float32's range (a 3x3 layer scales the centre by 3 and the edge by 1/3, so
    InceptionResNetV2's edges reached 1e-45 and were flushed to zero)."""
    return y


def _support_fwd(y: jax.Array):
    return y, None


def _support_bwd(_, g: jax.Array):
    return ((g != 0).astype(g.dtype),)


support_only.defvjp(_support_fwd, _support_bwd)


def constant_input(shape: tuple[int, ...], value: float = 1.0) -> np.ndarray:
    """The constant positive input the preparation feeds, ``(1, H, W, C)``."""
    return np.full((1,) + tuple(shape), value, np.float32)
