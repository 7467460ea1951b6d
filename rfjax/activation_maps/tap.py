"""The tap: gradients with respect to an intermediate value of any JAX function.

The function's jaxpr is re-evaluated by the one interpreter (:mod:`rfjax.jaxpr`) with a
perturbation ``delta`` added where the requested output leaf is computed, so
``d outputs / d delta`` is the gradient with respect to that layer, with no split of the
model into a body and a head.

An output that is only a ``transpose`` of the layer's value (a converted PyTorch model
returns its NCHW layers transposed to NHWC; the logits are computed from the NCHW value)
is tapped where the transposed value is computed, with ``delta`` transposed back, so the
perturbation reaches the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from rfjax.errors import RFError
from rfjax.jaxpr import Tap, evaluate


def tapped(fn: Callable, with_params: bool, layer_index: int) -> Callable:
    """``(params, x, delta) -> flat outputs`` of ``fn`` with ``delta`` added to output leaf
    ``layer_index`` where it is computed, so that ``d outputs / d delta`` is the gradient
    with respect to that layer."""

    def run(params, x, delta):
        args = (params, x) if with_params else (x,)
        closed = jax.make_jaxpr(fn)(*args)
        target = closed.jaxpr.outvars[layer_index]
        if (
            isinstance(target, jcore.Literal)
            or target in closed.jaxpr.invars
            or target in closed.jaxpr.constvars
        ):
            raise RFError(
                "layer names an output that is a constant or the input itself; pass a layer the model computes."
            )
        target, delta = through_transposes(closed.jaxpr, target, delta)
        return evaluate(closed, jax.tree_util.tree_leaves(args), tap=Tap(target, delta))

    return run


def through_transposes(
    jaxpr: jcore.Jaxpr, target: jcore.Var, delta: jax.Array
) -> tuple[jcore.Var, jax.Array]:
    """Move a tap on the output of a (top-level) ``transpose`` to its operand, with ``delta``
    permuted back: ``transpose(u + delta') = transpose(u) + delta`` for every consumer, and
    the consumers of ``u`` see it too. Adapters of channels-first models (PyTorch, ONNX)
    return a layer as an NHWC transpose of the NCHW value the rest of the network reads:
    tapped there, the logits would not depend on it."""
    producers = {v: e for e in jaxpr.eqns for v in e.outvars}
    while (eqn := producers.get(target)) is not None and eqn.primitive.name == "transpose":
        source = eqn.invars[0]
        if not isinstance(source, jcore.Var) or source in jaxpr.invars or source in jaxpr.constvars:
            break
        if jnp.ndim(delta):
            delta = jnp.transpose(delta, [int(i) for i in np.argsort(eqn.params["permutation"])])
        target = source
    return target, delta
