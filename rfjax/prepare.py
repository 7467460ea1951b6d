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
* :func:`linearize` rewrites a JAX function at the jaxpr level, control flow included
  (:mod:`rfjax.jaxpr`), where values depend on the input: ``max``/``min`` of two values
  becomes their mean (so ``relu``, ``relu6``, ``hard_sigmoid`` become affine with a
  non-zero slope), max/min pooling (``reduce_window_max``) becomes average pooling,
  ``reduce_max`` becomes a mean, an input-steered ``select`` the mean of its choices,
  and ``clamp`` passes its operand.

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

from rfjax.jaxpr import Rule, bind, evaluate

#: parameter leaf names (Flax and Keras) set to a constant positive kernel, to zero, to one
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "w", "weight")
ZERO_NAMES = ("bias", "beta", "mean", "moving_mean", "b")
ONE_NAMES = ("scale", "gamma", "var", "moving_variance", "variance")


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
        if name in KERNEL_NAMES:
            return jnp.full(leaf.shape, constant_kernel(tuple(leaf.shape)), leaf.dtype)
        if name in ZERO_NAMES:
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name in ONE_NAMES:
            return jnp.ones(leaf.shape, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(one, params)


# ----------------------------------------------------------------------- jaxpr rules
# Each rule replaces one equation whose floating-point outputs depend on the input (see
# rfjax.jaxpr): a choice made from values becomes the mean of the choices, so every path
# that could be chosen carries gradient, and a step function passes its operand through.


def _mean2(eqn, invals, flags):
    a, b = invals
    return [((a + b) * 0.5).astype(eqn.outvars[0].aval.dtype)]


def _avg_window(eqn, invals, flags):
    p = eqn.params
    total = lax.reduce_window(
        invals[0],
        0.0,
        lax.add,
        p["window_dimensions"],
        p["window_strides"],
        p["padding"],
        p["base_dilation"],
        p["window_dilation"],
    )
    return [total / math.prod(p["window_dimensions"])]


def _mean_axes(eqn, invals, flags):
    return [jnp.mean(invals[0], axis=tuple(eqn.params["axes"])).astype(eqn.outvars[0].aval.dtype)]


def _cumulative_mean(eqn, invals, flags):
    x, axis, reverse = invals[0], eqn.params["axis"], eqn.params["reverse"]
    count = lax.broadcasted_iota(x.dtype, x.shape, axis) + 1
    return [lax.cumsum(x, axis, reverse) / (lax.rev(count, (axis,)) if reverse else count)]


def _select_mean(eqn, invals, flags):
    if not flags[0]:  # a mask that does not depend on the input (padding, a constant switch)
        return bind(eqn, invals)
    cases = invals[1:]
    return [(sum(cases[1:], cases[0]) / len(cases)).astype(eqn.outvars[0].aval.dtype)]


def _mask_mean(eqn, invals, flags):
    if invals[0].dtype != jnp.bool_:
        return bind(eqn, invals)
    out = eqn.outvars[0].aval  # a boolean mask as a number, e.g. x * (x > 0): 0 or 1 -> their mean
    return [jnp.full(out.shape, 0.5, out.dtype)]


def _operand(eqn, invals, flags):
    return [invals[0]]


def _clamp(eqn, invals, flags):
    return [invals[1]]


#: The RF preparation's rules, keyed by primitive (see :mod:`rfjax.jaxpr` for when they apply).
RULES: dict[str, Rule] = {
    "max": _mean2,
    "min": _mean2,
    "reduce_window_max": _avg_window,
    "reduce_window_min": _avg_window,
    "reduce_max": _mean_axes,
    "reduce_min": _mean_axes,
    "cummax": _cumulative_mean,
    "cummin": _cumulative_mean,
    "select_n": _select_mean,
    "convert_element_type": _mask_mean,
    "clamp": _clamp,
    "floor": _operand,
    "ceil": _operand,
    "round": _operand,
    "sign": _operand,
    "stop_gradient": _operand,
}


def linearize(fn: Callable) -> Callable:
    """``fn`` rewritten for the RF: every path from the input carries gradient.

    Works on any JAX function (Flax, Equinox, plain ``jax.lax``), control flow included
    (``cond``, ``scan``, ``while``, ``checkpoint``, custom derivatives, ``shard_map``): the
    function is traced to a jaxpr on each new input shape and re-evaluated by
    :func:`rfjax.jaxpr.evaluate` with :data:`RULES` where values depend on the input, the
    last positional argument (``fn(x)`` or ``fn(params, x)``). ``max``/``min`` become means
    (``relu``, ``relu6``, ``hard_sigmoid`` turn affine with a non-zero slope), max/min
    pooling becomes average pooling, ``reduce_max``/``cummax`` means, a ``select`` (``where``)
    or a boolean mask steered by the input the mean of its choices, ``clamp``, rounding,
    ``sign`` and ``stop_gradient`` pass their operand. ``jax.jit`` over the result compiles
    the rewritten program once.

    Raises:
      RFUnsupported: from the call, for what cannot be made exact (input-steered control
        flow, value-chosen indices, unknown sub-programs); the message names the primitive
        and where it sits.
    """

    @functools.wraps(fn)
    def wrapped(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        leaves = [jax.tree_util.tree_leaves(a) for a in args]
        inputs = [i == len(args) - 1 for i, group in enumerate(leaves) for _ in group]
        outs = evaluate(closed, [leaf for group in leaves for leaf in group], rules=RULES, inputs=inputs)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs)

    return wrapped


@jax.custom_vjp
def support_only(y: jax.Array) -> jax.Array:
    """Identity whose backward pass keeps only the support of the cotangent (1 where it
    is non-zero). The one-channel RF copies of every adapter apply it after the layers
    that spread a gradient to neighbouring pixels (convolutions, pooling and resizing
    with windows larger than 1; the others are identities or means there): their fit
    reads supports only, and with true magnitudes the fringe of a deep network's RF falls
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
