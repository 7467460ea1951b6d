"""Growing the input without changing the geometry the user asked about.

An RF that reaches past the requested input is measured on a larger one. With 'same'
padding a layer pads according to its input size modulo its stride, so an arbitrary
larger size can shift the RF offset (Xception at 1216x1216 reports offset 27.5, at
299x299 the offset is 7.5). rfjax therefore measures only at sizes
``requested + k * T`` per axis, ``T`` a multiple of the network's total stride (every
layer's input size then keeps its residue modulo that layer's stride), and it *proves*
each such size before measuring there: the function is traced (no compute) at both
sizes and every windowed or padding operation -- convolutions, window reductions,
explicit pads, slices, in every sub-program -- must have the same padding, cropping,
strides and dilations at both (:func:`padding_signature`). Size, stride and offset
measured there are then those of the requested size.

``T`` comes from the closed-form bounds of a converted model when it has them, else
from the output grid itself: ``out(n + 1024) - out(n) = 1024 / S`` for a total stride
``S`` that divides 1024; each candidate is checked at one and two steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.extend import core as jcore

#: the largest step tried when the total stride is not known in closed form
_PROBE = 1024
#: the largest input side a growing fit reaches by default, at every entry point
#: (``receptive_field``, ``sweep_layers``, ``sweep``, the CLI)
MAX_INPUT = 4096


class Geometry(NamedTuple):
    """What a trace at one input size tells: the padding signature, and the spatial
    ``(Ho, Wo)`` of every 4-D output by name (dict key, list index, ``None`` for a
    single array)."""

    signature: tuple
    grids: dict[Any, tuple[int, int]]


def _sub_jaxprs(params: dict) -> Iterator[jcore.Jaxpr]:
    for value in params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, jcore.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jcore.Jaxpr):
                yield item


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(getattr(getattr(v, "aval", None), "shape", ()))


def _entry(eqn: Any) -> tuple | None:
    """The size-independent geometry of one equation, ``None`` for the rest."""
    name, p = eqn.primitive.name, eqn.params
    if name == "conv_general_dilated":
        return (
            name,
            tuple(map(tuple, p["padding"])),
            p["window_strides"],
            p["lhs_dilation"],
            p["rhs_dilation"],
        )
    if name.startswith("reduce_window"):
        return (name, tuple(map(tuple, p["padding"])), p["window_strides"], p["base_dilation"])
    if name == "pad":
        return (name, tuple(map(tuple, p["padding_config"])))
    if name == "slice":
        cut = tuple(s - lim for s, lim in zip(_shape(eqn.invars[0]), p["limit_indices"], strict=True))
        return (name, tuple(p["start_indices"]), cut, p["strides"])
    return None


def _walk(jaxpr: jcore.Jaxpr, out: list) -> None:
    for eqn in jaxpr.eqns:
        entry = _entry(eqn)
        if entry is not None:
            out.append(entry)
        for sub in _sub_jaxprs(eqn.params):
            _walk(sub, out)


def geometry(jaxpr: Any, out: Any) -> Geometry:
    """The :class:`Geometry` of a traced program: ``jaxpr`` (a ``ClosedJaxpr``) and the
    shape tree ``out`` of the function's outputs (dict, list/tuple or one array)."""
    found: list = []
    _walk(jaxpr.jaxpr, found)
    if isinstance(out, dict):
        named = list(out.items())
    elif isinstance(out, (list, tuple)):
        named = list(enumerate(out))
    else:
        named = [(None, out)]
    grids = {k: (int(v.shape[1]), int(v.shape[2])) for k, v in named if len(getattr(v, "shape", ())) == 4}
    return Geometry(tuple(found), grids)


def trace_function(fn: Callable, params: Any) -> Callable[[tuple[int, int, int]], Geometry]:
    """A tracer for :class:`Grower` from a plain ``fn`` (``fn(params, x)`` when
    ``params`` is not ``None``): ``jax.make_jaxpr`` on a ``(1, H, W, C)`` input."""

    def trace(shape: tuple[int, int, int]) -> Geometry:
        x = jax.ShapeDtypeStruct((1,) + tuple(int(v) for v in shape), np.float32)
        make = jax.make_jaxpr(fn, return_shape=True)
        return geometry(*(make(x) if params is None else make(params, x)))

    return trace


class Grower:
    """Input sizes that keep the requested size's padding at every layer.

    ``trace(shape)`` gives the :class:`Geometry` of the measured function at an
    ``(H, W, C)`` input (the engine passes its own forward trace, which the measurement
    then reuses); ``given`` is the requested ``(H, W, C)``; ``step`` a per-axis step
    believed to be a multiple of the total stride (from closed-form bounds), or ``None``
    to find one from the output grid. Every size :meth:`sizes` yields is proven by
    :meth:`keeps`; a believed step that fails the proof is replaced by a found one.
    """

    def __init__(
        self,
        trace: Callable[[tuple[int, int, int]], Geometry],
        given: tuple[int, int, int],
        step: tuple[int, int] | None,
    ):
        self.trace, self.given = trace, given
        self._cache: dict[tuple[int, int, int], Geometry] = {}
        self._believed = step
        self._step: tuple[int, int] | None = None
        self._found = False

    @property
    def base(self) -> Geometry:
        """The geometry at the requested size."""
        return self.at(self.given)

    @property
    def step(self) -> tuple[int, int] | None:
        """The proven per-axis growth step (``None``: none found up to 1024)."""
        if not self._found:
            self._found = True
            self._step = self._believed if self._believed is not None else self._find_step()
        return self._step

    def _distrust(self) -> None:
        """The believed step failed its proof: find one from the output grid instead."""
        self._believed = None
        self._step = self._find_step()

    def at(self, shape: tuple[int, int, int]) -> Geometry:
        if shape not in self._cache:
            self._cache[shape] = self.trace(shape)
        return self._cache[shape]

    def grid(self, name: Any) -> tuple[int, int] | None:
        """``(Ho, Wo)`` of output ``name`` at the requested size."""
        return self.base.grids.get(name)

    def keeps(self, shape: tuple[int, int, int]) -> bool:
        """Whether ``shape`` has the requested size's padding everywhere (the proof)."""
        try:
            return self.at(shape).signature == self.base.signature
        except Exception:  # noqa: BLE001 - a size the function cannot even trace at keeps nothing
            return False

    def _grown(self, kh: int, kw: int, step: tuple[int, int]) -> tuple[int, int, int]:
        return (self.given[0] + kh * step[0], self.given[1] + kw * step[1], self.given[2])

    def _find_step(self) -> tuple[int, int] | None:
        """A per-axis step from the output grids at ``given`` and ``given + 1024``: each
        output's total stride is ``1024 / (grid growth)`` when it divides 1024; the
        least common multiple of them is the step, proven at one and two steps (else
        twice it, ...). ``None`` when no step up to 1024 is proven."""
        try:
            far = self.at(self._grown(1, 1, (_PROBE, _PROBE))).grids
        except Exception:  # noqa: BLE001 - a function that cannot run at a larger size
            return None
        step = []
        for a in (0, 1):
            total = 1
            for name, g in self.base.grids.items():
                grew = far[name][a] - g[a]
                if grew <= 0 or _PROBE % grew:
                    return None
                total = math.lcm(total, _PROBE // grew)
            step.append(total)
        m = 1
        while max(step) * m <= _PROBE:
            cand = (step[0] * m, step[1] * m)
            if all(self.keeps(self._grown(k, k, cand)) for k in (1, 2)):
                return cand
            m *= 2
        return None

    def sizes(self, start: tuple[int, int], limit: int) -> Iterator[tuple[tuple[int, int, int], bool]]:
        """``(shape, final)``: the requested size first when ``start`` allows, then proven
        sizes of at least ``start`` per axis, about doubling, at most ``limit`` per axis;
        ``final`` marks the last one (a fit there need not leave room to grow)."""
        tried = set()
        if start[0] <= self.given[0] and start[1] <= self.given[1]:
            tried.add(self.given)
            yield self.given, max(self.given[:2]) >= limit
        yield from self._grown_sizes(start, limit, tried)

    def _grown_sizes(
        self, start: tuple[int, int], limit: int, tried: set
    ) -> Iterator[tuple[tuple[int, int, int], bool]]:
        step = self.step
        if step is None:
            if self.given in tried and max(self.given[:2]) < limit:
                yield self.given, True  # no larger proven size: the requested one, without room to grow
            return
        kmax = [max(0, (limit - self.given[a]) // step[a]) for a in (0, 1)]
        k = [min(kmax[a], max(0, math.ceil((start[a] - self.given[a]) / step[a]))) for a in (0, 1)]
        while True:
            shape = self._grown(k[0], k[1], step)
            final = k[0] >= kmax[0] and k[1] >= kmax[1]
            if shape not in tried:
                tried.add(shape)
                if self.keeps(shape):
                    yield shape, final
                elif self._believed is not None:  # the closed-form step was wrong here
                    self._distrust()
                    yield from self._grown_sizes(start, limit, tried)
                    return
            if final:
                return
            for a in (0, 1):  # about double the size on each axis
                now = self.given[a] + k[a] * step[a]
                k[a] = min(kmax[a], max(k[a] + 1, math.ceil((2 * now - self.given[a]) / step[a])))
