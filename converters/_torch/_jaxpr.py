"""The traced program of a PyTorch module as a jaxpr: live equations and global branches.

A :class:`torch.nn.Module` is traced once per input shape and mode into a closed jaxpr
whose outputs are *every* module's output (see :mod:`converters._torch._trace`). This
module finds the equations the outputs asked for depend on (dead equations dropped;
:mod:`converters._torch._layout` evaluates them), and the values that do not
follow the input size (global pooling, the flatten before a dense head) by comparing
the traces at two input sizes equation by equation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax.extend import core as jcore

_MAX_LIKE = frozenset(
    {
        "max",
        "min",
        "reduce_window_max",
        "reduce_window_min",
        "reduce_max",
        "reduce_min",
        "clamp",
        "cummax",
        "cummin",
    }
)


def _is_var(v: Any) -> bool:
    return not isinstance(v, jcore.Literal)


def _is_float(v: Any) -> bool:
    return jnp.issubdtype(v.aval.dtype, jnp.floating)


def live_equations(jaxpr: jcore.Jaxpr, outvars: Sequence[Any]) -> list:
    """The equations ``outvars`` depend on, in program order."""
    live = {v for v in outvars if _is_var(v)}
    keep = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            keep.append(eqn)
            live.update(v for v in eqn.invars if _is_var(v))
    return keep[::-1]


def global_values(small: Any, large: Any) -> frozenset:
    """The float values of ``small`` computed from an input-sized value whose shape is
    the same in ``large`` (the same program traced at a larger input): global pooling,
    spatial means, dense layers over flattened maps. ``small`` and ``large`` are traces
    (:class:`~converters._torch._trace.Traced`). Where the two programs differ in
    structure (an op lowered differently at another size, such as adaptive pooling),
    the named module outputs whose shape stays are taken instead."""
    a, b = small.jaxpr.jaxpr, large.jaxpr.jaxpr
    if len(a.eqns) != len(b.eqns) or any(x.primitive != y.primitive for x, y in zip(a.eqns, b.eqns)):
        sizes = dict(zip(large.names, (v.aval.shape for v in b.outvars)))
        return frozenset(
            v
            for n, v in zip(small.names, a.outvars)
            if _is_var(v) and _is_float(v) and sizes.get(n) == v.aval.shape
        )
    found: set[Any] = set()
    for x, y in zip(a.eqns, b.eqns):
        varies = any(
            _is_var(u) and _is_float(u) and u.aval.shape != w.aval.shape for u, w in zip(x.invars, y.invars)
        )
        if varies:
            found.update(
                u for u, w in zip(x.outvars, y.outvars) if _is_float(u) and u.aval.shape == w.aval.shape
            )
    return frozenset(found)


def downstream(jaxpr: jcore.Jaxpr, sources: frozenset) -> frozenset:
    """``sources`` and every value computed from one of them."""
    tainted = set(sources)
    for eqn in jaxpr.eqns:
        if any(_is_var(v) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    return frozenset(tainted)


def max_like(jaxpr: jcore.Jaxpr) -> str | None:
    """The first max/min-style primitive on floats in ``jaxpr`` (sub-jaxprs included)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _MAX_LIKE and all(_is_float(v) for v in eqn.outvars):
            return eqn.primitive.name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                if isinstance(inner, jcore.Jaxpr) and (found := max_like(inner)):
                    return found
    return None
