"""The tap: gradients with respect to an intermediate value of any JAX function.

The function's jaxpr is re-evaluated by the one interpreter (:mod:`rfjax.jaxpr`) with a
perturbation ``delta`` added where the requested output leaf is computed, so
``d outputs / d delta`` is the gradient with respect to that layer, with no split of the
model into a body and a head.

An output that is only a transposed view of the value the computation goes on with
(a PyTorch module's NCHW map returned NHWC, see :mod:`converters._torch`) is tapped at
that value, with ``delta`` transposed back: perturbing the view itself would change
nothing downstream.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from rfjax.errors import RFError
from rfjax.jaxpr import Tap, evaluate


def layout_source(jaxpr: jcore.Jaxpr, target: jcore.Var) -> tuple[jcore.Var, tuple[int, ...]]:
    """``(var, perm)``: the value the computation uses of which output ``target`` is a
    transposed view (``target == transpose(var, perm)``, through a chain of transposes
    no equation reads), or ``(target, identity)`` when ``target`` itself is used or not a
    transpose."""
    produced = {v: e for e in jaxpr.eqns for v in e.outvars}
    read = {v for e in jaxpr.eqns for v in e.invars if isinstance(v, jcore.Var)}
    perm = tuple(range(len(getattr(target.aval, "shape", ()))))
    var = target
    while var not in read and var in produced and produced[var].primitive.name == "transpose":
        eqn = produced[var]
        src = eqn.invars[0]
        if not isinstance(src, jcore.Var) or src in jaxpr.invars or src in jaxpr.constvars:
            break
        step = tuple(eqn.params["permutation"])
        perm = tuple(step[p] for p in perm)  # var = transpose(src, step); target = transpose(var, perm)
        var = src
    return var, perm


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
        var, perm = layout_source(closed.jaxpr, target)
        if var is not target and jnp.ndim(delta) == len(perm):  # a scalar delta broadcasts as it is
            delta = jnp.transpose(delta, tuple(int(i) for i in np.argsort(perm)))
        return evaluate(closed, jax.tree_util.tree_leaves(args), tap=Tap(var, delta))

    return run
