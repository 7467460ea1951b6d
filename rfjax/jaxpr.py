"""One jaxpr interpreter for every rewrite rfjax makes: the RF preparation and the CAM tap.

:func:`evaluate` re-evaluates a ``ClosedJaxpr`` equation by equation. It

* tracks which values depend on the arguments flagged in ``inputs`` (the image): the
  *dependence* of an equation's outputs is propagated exactly through every sub-jaxpr,
  with a fixed point over ``scan``/``while`` carries;
* applies ``rules`` (keyed by primitive name, see :mod:`rfjax.prepare`) to equations with
  floating-point outputs that depend on the input; everything else is bound unchanged, so
  index arithmetic, masks and parameter-only code (a train/eval switch) keep their values;
* recurses into every jaxpr-valued parameter of the primitives it knows. Calls are inlined:
  ``jit``/``pjit``, ``closed_call``/``core_call``, ``remat2`` (``jax.checkpoint``: the RF copy
  trades its memory saving for one program), ``compute_on``, ``composite``, the primal of
  ``custom_jvp_call``/``custom_vjp_call`` (JAX then differentiates the rewritten primal) and
  of ``custom_vmap_call``.
  Control flow is rewritten in place: ``cond``/``switch`` branches and ``scan`` bodies
  (``lax.map``, ``fori_loop`` with Python int bounds) are traced through the interpreter into
  new ``ClosedJaxpr`` s with the same input and output types (carries keep dtype and shape)
  and the primitive is bound again with them; ``shard_map`` bodies are traced again under
  :func:`jax.shard_map` with the same mesh and specs. A ``while`` whose carries depend on
  the input is refused: JAX cannot differentiate a while loop in reverse mode, so it has no
  gradient map (``fori_loop`` with array bounds is such a loop);
* adds a :class:`Tap` ``delta`` where a target variable is computed (for CAM: the gradient
  with respect to a layer of any JAX function), looking through inlined calls so that the
  consumers inside the same call see it. Control flow is not looked into: a tap after a
  ``cond``/``scan``/``while``/``shard_map`` whose other outputs are computed from the tapped
  value inside it would miss them, and is refused (:class:`~rfjax.errors.RFError`).

With ``inputs`` flagged, what cannot be made exact is refused with
:class:`~rfjax.errors.RFUnsupported` naming the primitive and where it sits
(``"`sort` in scan body > cond branch 1"``). Only equations whose operands depend on the
input are concerned (which pixels reach an output cannot depend on anything else):

* a primitive carrying a sub-jaxpr the interpreter does not know (``pallas_call``,
  ``custom_linear_solve``, ``linear_call``, ``custom_transpose_call``, ``run_state``,
  ``xla_pmap``, a ``reduce``/``reduce_window`` with a computation of its own, ...): rules
  could not reach inside;
* control flow steered by the input (:class:`~rfjax.errors.RFDataDependent`): the index of a
  ``cond``/``switch``, the predicate of a ``while``. The RF would only be that of the branch
  (trip count) taken at the constant input;
* primitives whose gradient support follows input *values* and for which no rule exists:
  ``gather``/``scatter*`` indices, ``dynamic_slice``/``dynamic_update_slice`` start indices,
  ``sort`` keys, ``top_k``/``approx_top_k`` (a value-chosen subset), integers derived from the
  input turned back into floats (``convert_element_type``/``bitcast_convert_type``: an
  ``argmax`` or a count used as a number carries no gradient), and opaque calls that may hide
  any of these (``pure_callback``, ``io_callback``, ``ffi_call``, ``call_exported``).
  ``argmax``, comparisons and integer arithmetic themselves are fine: they carry no
  gradient, and their results are caught where they re-enter (an index, a float).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from rfjax.errors import RFDataDependent, RFError, RFUnsupported

__all__ = ["Rule", "Tap", "bind", "depends", "evaluate"]

#: ``rule(eqn, invals, flags) -> outvals``: a replacement for one equation whose floating-point
#: outputs depend on the input; ``flags[i]`` says whether operand ``i`` does.
Rule = Callable[[jcore.JaxprEqn, list, list[bool]], list]


class Tap(NamedTuple):
    """Add ``delta`` to variable ``var`` of the top-level jaxpr where it is computed."""

    var: jcore.Var
    delta: Any


# Calls whose sub-jaxpr (parameter name) takes the equation's operands and gives its results.
_INLINE = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
    "compute_on": "jaxpr",
    "composite": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "custom_vmap_call": "call",
}
_LABELS = {
    "remat2": "checkpoint",
    "custom_jvp_call": "custom_jvp function",
    "custom_vjp_call": "custom_vjp function",
    "custom_vjp_call_jaxpr": "custom_vjp function",
    "custom_vmap_call": "custom_vmap function",
}


def bind(eqn: jcore.JaxprEqn, invals: Sequence[Any]) -> list:
    """The equation's primitive applied to ``invals`` unchanged, as a list of results."""
    outs = eqn.primitive.bind(*invals, **eqn.params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


def _label(eqn: jcore.JaxprEqn) -> str:
    name = eqn.primitive.name
    if name in ("jit", "pjit"):
        return f"jit {eqn.params.get('name', '')}".rstrip()
    return _LABELS.get(name, name)


def _where(where: tuple[str, ...]) -> str:
    return " > ".join(where) if where else "the function body"


def _inline_jaxpr(eqn: jcore.JaxprEqn) -> tuple[jcore.Jaxpr, Sequence[Any]]:
    sub = eqn.params[_INLINE[eqn.primitive.name]]
    return (sub.jaxpr, sub.consts) if isinstance(sub, jcore.ClosedJaxpr) else (sub, ())


def _has_sub_jaxpr(value: Any) -> bool:
    if isinstance(value, (jcore.Jaxpr, jcore.ClosedJaxpr)):
        return True
    return isinstance(value, (tuple, list)) and any(_has_sub_jaxpr(v) for v in value)


# --------------------------------------------------------------------------- dependence


def depends(jaxpr: jcore.Jaxpr, flags: Sequence[bool], seeds: frozenset = frozenset()) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on the inputs flagged in ``flags`` (one per invar)
    or on the variables in ``seeds``."""
    dep = set(seeds) | {v for v, f in zip(jaxpr.invars, flags, strict=True) if f}
    for eqn in jaxpr.eqns:
        outs = _eqn_depends(eqn, [_flag(v, dep) for v in eqn.invars])
        dep.update(v for v, f in zip(eqn.outvars, outs, strict=True) if f)
    return [_flag(v, dep) for v in jaxpr.outvars]


def _flag(v: Any, dep: set) -> bool:
    return not isinstance(v, jcore.Literal) and v in dep


def _carry_fixpoint(
    body: jcore.Jaxpr, before: list[bool], carry: list[bool], after: list[bool]
) -> list[bool]:
    """Carry flags of a loop body ``(before..., carry..., after...) -> (carry..., rest...)``
    after any number of iterations."""
    while True:
        out = depends(body, before + carry + after)[: len(carry)]
        new = [a or b for a, b in zip(carry, out, strict=True)]
        if new == carry:
            return carry
        carry = new


def _eqn_depends(eqn: jcore.JaxprEqn, flags: list[bool]) -> list[bool]:
    name, p, n = eqn.primitive.name, eqn.params, len(eqn.outvars)
    if not any(flags):
        return [False] * n
    if name in _INLINE:
        return depends(_inline_jaxpr(eqn)[0], flags)
    if name == "cond" and not flags[0]:
        per_branch = [depends(b.jaxpr, flags[1:]) for b in p["branches"]]
        return [any(col) for col in zip(*per_branch, strict=True)]
    if name == "scan":
        nc, nk = p["num_consts"], p["num_carry"]
        carry = _carry_fixpoint(p["jaxpr"].jaxpr, flags[:nc], flags[nc : nc + nk], flags[nc + nk :])
        return carry + depends(p["jaxpr"].jaxpr, flags[:nc] + carry + flags[nc + nk :])[nk:]
    if name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        carry = _carry_fixpoint(p["body_jaxpr"].jaxpr, flags[cn : cn + bn], flags[cn + bn :], [])
        if not any(depends(p["cond_jaxpr"].jaxpr, flags[:cn] + carry)):
            return carry
    if name == "shard_map":
        return depends(p["jaxpr"], flags)
    return [True] * n


# --------------------------------------------------------------------------- refusals


def _operands(*positions: int) -> Callable[[jcore.JaxprEqn, list[bool]], bool]:
    return lambda eqn, flags: any(flags[i] for i in positions if i < len(flags))


def _any_operand(eqn: jcore.JaxprEqn, flags: list[bool]) -> bool:
    return any(flags)


def _dtype(v: Any) -> Any:
    """The dtype of a jaxpr variable or literal (its abstract value is a shaped array)."""
    return getattr(v.aval, "dtype", None)


def _int_to_float(eqn: jcore.JaxprEqn, flags: list[bool]) -> bool:
    src, dst = _dtype(eqn.invars[0]), _dtype(eqn.outvars[0])
    return flags[0] and jnp.issubdtype(src, jnp.integer) and jnp.issubdtype(dst, jnp.inexact)


_SCATTERS = ("scatter", *(f"scatter{sep}{op}" for sep in "-_" for op in ("add", "sub", "mul", "min", "max")))
# primitive -> (does this use of input-dependent operands make the support value-dependent?,
# what the primitive does with them).
_VALUE_DEPENDENT: dict[str, tuple[Callable[[jcore.JaxprEqn, list[bool]], bool], str]] = {
    "gather": (_operands(1), "takes its indices from the input values"),
    **{name: (_operands(1), "takes its indices from the input values") for name in _SCATTERS},
    "dynamic_slice": (lambda eqn, flags: any(flags[1:]), "takes its start indices from the input values"),
    "dynamic_update_slice": (
        lambda eqn, flags: any(flags[2:]),
        "takes its start indices from the input values",
    ),
    "sort": (
        lambda eqn, flags: any(flags[: eqn.params["num_keys"]]),
        "sorts by keys computed from the input",
    ),
    "top_k": (_operands(0), "selects values computed from the input by their size"),
    "approx_top_k": (_operands(0), "selects values computed from the input by their size"),
    "convert_element_type": (_int_to_float, "turns integers computed from the input into floats"),
    "bitcast_convert_type": (_operands(0), "reinterprets the bits of values computed from the input"),
    **{
        name: (_any_operand, "is an opaque call on values computed from the input")
        for name in ("pure_callback", "io_callback", "ffi_call", "call_exported")
    },
}


def _refuse_unknown(eqn: jcore.JaxprEqn, where: tuple[str, ...]) -> None:
    name = eqn.primitive.name
    raise RFUnsupported(
        f"`{name}` in {_where(where)} carries a sub-program that the RF preparation does not know, so "
        "max pooling or ReLU inside it could not be made exact; compute it outside the function measured "
        "(known: jit, cond/switch, scan, checkpoint, custom_jvp/custom_vjp, shard_map).",
        name,
        _where(where),
    )


def _check_values(eqn: jcore.JaxprEqn, flags: list[bool], where: tuple[str, ...]) -> None:
    entry = _VALUE_DEPENDENT.get(eqn.primitive.name)
    if entry is not None and entry[0](eqn, flags):
        name = eqn.primitive.name
        raise RFUnsupported(
            f"`{name}` in {_where(where)} {entry[1]}, so which pixels reach an output depends on the image "
            "and no exact RF exists; keep it off the path from the input to the output measured, or make "
            "what it uses from the input constants or parameters.",
            name,
            _where(where),
        )


# --------------------------------------------------------------------------- the tap


def _bodies(eqn: jcore.JaxprEqn) -> list[jcore.Jaxpr] | None:
    """The sub-jaxprs whose outputs are the equation's outputs, position by position."""
    name, p = eqn.primitive.name, eqn.params
    if name in _INLINE:
        return [_inline_jaxpr(eqn)[0]]
    if name == "cond":
        return [b.jaxpr for b in p["branches"]]
    if name in ("scan", "while"):
        return [p["jaxpr" if name == "scan" else "body_jaxpr"].jaxpr]
    if name == "shard_map":
        return [p["jaxpr"]]
    return None


def _feeds_others(body: jcore.Jaxpr, pos: int) -> bool:
    inner = body.outvars[pos]
    seeds = frozenset() if isinstance(inner, jcore.Literal) else frozenset([inner])
    flags = depends(body, [False] * len(body.invars), seeds)
    return any(f for i, f in enumerate(flags) if i != pos)


def _check_tap(eqn: jcore.JaxprEqn, pos: int, where: tuple[str, ...]) -> None:
    """Refuse a tap added after an equation whose other outputs are computed from the
    tapped value inside it (they would not see the perturbation)."""
    if not any(_has_sub_jaxpr(v) for v in eqn.params.values()):
        return
    bodies = _bodies(eqn)
    if bodies is None or any(_feeds_others(body, pos) for body in bodies):
        name = eqn.primitive.name
        raise RFError(
            f"layer is computed inside `{name}` in {_where(where)} together with outputs computed from it, "
            f"so the gradient with respect to it cannot be taken there; return the layer from outside the `{name}`."
        )


# --------------------------------------------------------------------------- interpreter


def _like(value: Any, aval: Any) -> Any:
    """``value`` with the dtype of ``aval`` (rewritten bodies keep their output types)."""
    value = jnp.asarray(value)
    return value if value.dtype == aval.dtype else lax.convert_element_type(value, aval.dtype)


def _is_float(eqn: jcore.JaxprEqn) -> bool:
    return all(jnp.issubdtype(_dtype(v), jnp.floating) for v in eqn.outvars)


@dataclasses.dataclass(frozen=True)
class _Interpreter:
    rules: Mapping[str, Rule]

    def run(
        self,
        jaxpr: jcore.Jaxpr,
        consts: Sequence[Any],
        args: Sequence[Any],
        flags: Sequence[bool],
        where: tuple[str, ...],
        tap: Tap | None = None,
    ) -> tuple[list, list[bool], bool]:
        """``(outputs, output flags, whether the tap's variable is defined in jaxpr)``."""
        env: dict = {}
        dep: set = set()

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        for v, a, f in zip(jaxpr.invars, args, flags, strict=True):
            env[v] = a
            if f:
                dep.add(v)
        applied = False
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            pos = next((i for i, v in enumerate(eqn.outvars) if v is tap.var), None) if tap else None
            inflags = [_flag(v, dep) for v in eqn.invars]
            outs, outflags, hit = self.equation(eqn, invals, inflags, where, tap if pos is not None else None)
            if tap is not None and pos is not None and not hit:
                _check_tap(eqn, pos, where)
                outs[pos] = outs[pos] + tap.delta.astype(outs[pos].dtype)
            applied = applied or pos is not None
            for v, val, f in zip(eqn.outvars, outs, outflags, strict=True):
                env[v] = val
                if f:
                    dep.add(v)
        return [read(v) for v in jaxpr.outvars], [_flag(v, dep) for v in jaxpr.outvars], applied

    def equation(
        self, eqn: jcore.JaxprEqn, invals: list, flags: list[bool], where: tuple[str, ...], tap: Tap | None
    ) -> tuple[list, list[bool], bool]:
        """``(outputs, output flags, tap applied inside)`` of one equation; ``tap`` is given
        when the equation defines its variable."""
        name = eqn.primitive.name
        if name in _INLINE:
            jaxpr, consts = _inline_jaxpr(eqn)
            inner = None
            if tap is not None:
                var = jaxpr.outvars[eqn.outvars.index(tap.var)]
                computed = not isinstance(var, jcore.Literal) and var not in jaxpr.invars
                inner = (
                    Tap(var, tap.delta)
                    if computed and isinstance(var, jcore.Var) and var not in jaxpr.constvars
                    else None
                )
            return self.run(jaxpr, consts, invals, flags, where + (_label(eqn),), inner)
        if not any(flags):
            return bind(eqn, invals), [False] * len(eqn.outvars), False
        handler = _CONTROL_FLOW.get(name)
        if handler is not None:
            outs, outflags = handler(self, eqn, invals, flags, where)
            return outs, outflags, False
        if any(_has_sub_jaxpr(v) for v in eqn.params.values()):
            _refuse_unknown(eqn, where)
        _check_values(eqn, flags, where)
        rule = self.rules.get(name)
        if rule is not None and _is_float(eqn):
            return list(rule(eqn, invals, flags)), [True] * len(eqn.outvars), False
        return bind(eqn, invals), [True] * len(eqn.outvars), False

    def rewrite(
        self, closed: jcore.ClosedJaxpr, flags: list[bool], where: tuple[str, ...]
    ) -> jcore.ClosedJaxpr:
        """``closed`` traced through the interpreter: same input and output types."""

        def body(*args):
            outs, _, _ = self.run(closed.jaxpr, closed.consts, args, flags, where)
            return [_like(o, v.aval) for o, v in zip(outs, closed.jaxpr.outvars, strict=True)]

        avals = [v.aval for v in closed.jaxpr.invars]
        return jax.make_jaxpr(body)(
            *[jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals]
        )


# --------------------------------------------------------------------------- control flow


def _cond(interp: _Interpreter, eqn, invals, flags, where):
    if flags[0]:
        raise RFDataDependent(
            f"`cond` in {_where(where)} chooses its branch from the input values, so the RF is only defined "
            "for the branch taken at the constant input; make the predicate depend on parameters or constants "
            "only (e.g. a train/eval flag), or measure each branch as its own function.",
            "cond",
            _where(where),
        )
    branches = eqn.params["branches"]
    new = tuple(interp.rewrite(b, flags[1:], where + (f"cond branch {i}",)) for i, b in enumerate(branches))
    outs = eqn.primitive.bind(*invals, **{**eqn.params, "branches": new})
    return list(outs), _eqn_depends(eqn, flags)


def _scan(interp: _Interpreter, eqn, invals, flags, where):
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    carry = _carry_fixpoint(p["jaxpr"].jaxpr, flags[:nc], flags[nc : nc + nk], flags[nc + nk :])
    body = interp.rewrite(p["jaxpr"], flags[:nc] + carry + flags[nc + nk :], where + ("scan body",))
    outs = eqn.primitive.bind(*invals, **{**p, "jaxpr": body})
    return list(outs), _eqn_depends(eqn, flags)


def _while(interp: _Interpreter, eqn, invals, flags, where):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    carry = _carry_fixpoint(p["body_jaxpr"].jaxpr, flags[cn : cn + bn], flags[cn + bn :], [])
    if any(depends(p["cond_jaxpr"].jaxpr, flags[:cn] + carry)):
        raise RFDataDependent(
            f"`while` in {_where(where)} decides its number of steps from the input values, so the RF is only "
            "defined for the steps taken at the constant input; make the loop bounds depend on parameters or "
            "constants only (e.g. lax.fori_loop with fixed bounds).",
            "while",
            _where(where),
        )
    raise RFUnsupported(
        f"`while` in {_where(where)} carries values computed from the input and JAX cannot differentiate a "
        "while loop in reverse mode, so no gradient map exists; give lax.fori_loop Python int bounds (it "
        "becomes a scan) or use lax.scan.",
        "while",
        _where(where),
    )


def _shard_map(interp: _Interpreter, eqn, invals, flags, where):
    p = eqn.params

    def body(*args):
        return tuple(interp.run(p["jaxpr"], (), args, flags, where + ("shard_map body",))[0])

    mapped = jax.shard_map(
        body,
        mesh=p["mesh"],
        in_specs=p["in_specs"],
        out_specs=p["out_specs"],
        axis_names=p["newly_manual_axes"],
        check_vma=p["check_vma"],
    )
    return list(mapped(*invals)), depends(p["jaxpr"], flags)


_CONTROL_FLOW = {"cond": _cond, "scan": _scan, "while": _while, "shard_map": _shard_map}


# --------------------------------------------------------------------------- public


def evaluate(
    closed: jcore.ClosedJaxpr,
    args: Sequence[Any],
    *,
    rules: Mapping[str, Rule] | None = None,
    inputs: Sequence[bool] | None = None,
    tap: Tap | None = None,
) -> list:
    """Evaluate ``closed`` on the flat ``args`` with ``rules`` and a ``tap``.

    Args:
      closed: e.g. ``jax.make_jaxpr(fn)(*args)``.
      args: one value per invar of ``closed.jaxpr`` (flat leaves).
      rules: replacements keyed by primitive name, applied to equations whose floating-point
        outputs depend on the flagged inputs.
      inputs: one flag per argument: which arguments are the input (the image) whose
        dependence the rules and refusals are about. Default: none (plain evaluation).
      tap: add ``tap.delta`` to ``tap.var`` (a variable of ``closed.jaxpr``) where it is computed.

    Returns:
      The flat outputs.

    Raises:
      RFUnsupported: a primitive on the path from the flagged inputs that cannot be made exact
        (see the module docstring); RFDataDependent when it is input-steered control flow.
    """
    flags = [False] * len(args) if inputs is None else list(inputs)
    outs, _, _ = _Interpreter(dict(rules or {})).run(closed.jaxpr, closed.consts, list(args), flags, (), tap)
    return outs
