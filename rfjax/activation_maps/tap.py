"""The tap: gradients with respect to an intermediate value of any JAX function.

The function's jaxpr is re-evaluated by the one interpreter (:mod:`rfjax.jaxpr`) with a
perturbation ``delta`` added where the requested output leaf is computed, so
``d outputs / d delta`` is the gradient with respect to that layer, with no split of the
model into a body and a head.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
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
        return evaluate(closed, jax.tree_util.tree_leaves(args), tap=Tap(target, delta))

    return run
