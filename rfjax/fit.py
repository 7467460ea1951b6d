"""The RF fit: size, stride and offset per axis from gradient supports.

Per axis, every cell (or grid line) contributes the set of input rows (columns) where
its gradient is non-zero. Cells whose support touches the image border may be clipped
and are left out. From the rest:

* size  = the largest extent ``max - min + 1`` (an extent, not a count, so RFs with
  holes from dilation get their full size);
* stride, offset = slope and intercept of the least-squares line through the support
  centres ``(min + max + 1) / 2`` against the grid index;
* padding ``P = size / 2 - offset`` (Araujo et al.).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from rfjax import engine, growth
from rfjax._types import HW, GradientMaps, ReceptiveField, check_input_shape
from rfjax.contract import ConvertedModel, as_function, on_clear, resolve_model
from rfjax.errors import RFCallError, RFError, RFGlobal, RFTooLarge, RFZeroGradient, output_label
from rfjax.growth import MAX_INPUT
from rfjax.lines import central_index, central_lines, line_supports
from rfjax.prepare import constant_input, linearize, prepare_params

_PREPARE_HINT = "use prepare=True (linear activations, average pooling, constant positive weights)"


class _TooSmall(Exception):
    """Internal: no unclipped cell on an axis (the RF reaches past the input)."""

    def __init__(self, axis: str, everywhere: bool):
        super().__init__(axis)
        self.axis = axis
        self.everywhere = everywhere


def _axis_fit(index: np.ndarray, supports: list[np.ndarray], n: int, axis: str, strict: bool = False):
    """Fit one axis. ``supports[k]`` holds the input indices touched by entry ``k``,
    whose grid index is ``index[k]``; ``n`` is the input length on this axis.

    ``strict`` also leaves out cells whose support touches the edge of the reachable
    input (used while the input can still grow: two RFs clipped at opposite ends can
    tie at the largest extent by chance)."""
    lo = np.array([s[0] for s in supports], float)
    hi = np.array([s[-1] for s in supports], float)
    extent = hi - lo + 1
    # The reachable input: a strided 'valid' layer may never read the last pixels.
    first, last = lo.min(), hi.max()
    whole = (lo == first) & (hi == last)
    # A cell whose RF reaches into padding (or past a strided layer's unread edge)
    # loses pixels at one end, so only cells of the largest extent are whole; one
    # spanning the whole reachable input may be clipped on both sides.
    free = (extent == extent.max()) & ~whole
    if strict:
        free &= (lo > first) & (hi < last)
    everywhere = bool(np.all(whole))
    if np.unique(index[free]).size < 2:
        raise _TooSmall(axis, everywhere)
    centre = (lo[free] + hi[free] + 1) / 2
    idx = index[free].astype(float)
    a = np.stack([np.ones_like(idx), idx], axis=1)
    (offset, stride), *_ = np.linalg.lstsq(a, centre, rcond=None)
    resid = float(np.sqrt(np.mean((a @ np.array([offset, stride]) - centre) ** 2)))
    size = float(extent[free].max())
    return _clean(size), _clean(stride), _clean(offset), _clean(resid), free


def _central_axis(index: np.ndarray, supports: list, n: int, axis: str):
    """Fit one axis from a few adjacent central lines (:func:`rfjax.lines.central_lines`):
    ``(size, stride, offset)``, or ``None`` when they do not look like translated copies
    of one unclipped RF (unreadable, unequal extents or spacing), so the full lines pass
    must decide. Raises ``_TooSmall`` when the middle line reaches the input's edge."""
    if any(s is None or s.size == 0 for s in supports):
        return None
    lo = np.array([s[0] for s in supports], float)
    hi = np.array([s[-1] for s in supports], float)
    edge = (lo == 0) | (hi == n - 1)
    if edge[len(edge) // 2]:  # the middle line is clipped: grow
        raise _TooSmall(axis, bool(np.all((lo == 0) & (hi == n - 1))))
    if edge.any():
        return None
    extent = hi - lo + 1
    steps = np.diff((lo + hi + 1) / 2) / np.diff(index)
    if np.any(extent != extent[0]) or np.any(steps != steps[0]) or steps[0] <= 0:
        return None
    stride = float(steps[0])
    return _clean(extent[0]), _clean(stride), _clean((lo[0] + hi[0] + 1) / 2 - stride * index[0])


def fit_central(
    index: np.ndarray, rows: list, cols: list, input_shape: HW, output_shape: HW, name: Any = None
) -> ReceptiveField | None:
    """The RF from a few central lines per axis (``method="central"``), or ``None`` when
    they are not enough (see :func:`_central_axis`)."""
    h = _central_axis(index, rows, int(input_shape.h), "h")
    w = _central_axis(index, cols, int(input_shape.w), "w")
    if h is None or w is None:
        return None
    return _result(h, w, input_shape, output_shape, cells_used=2 * len(index), method="central", name=name)


def _result(h: tuple, w: tuple, input_shape: HW, output_shape: HW, **fields: Any) -> ReceptiveField:
    """A :class:`ReceptiveField` from per-axis ``(size, stride, offset)``, with the
    effective padding ``P = size / 2 - offset``."""
    (sh, st_h, off_h), (sw, st_w, off_w) = h, w
    return ReceptiveField(
        size=HW(sh, sw),
        stride=HW(st_h, st_w),
        offset=HW(off_h, off_w),
        padding=HW(_clean(sh / 2 - off_h), _clean(sw / 2 - off_w)),
        input_shape=input_shape,
        output_shape=output_shape,
        **fields,
    )


def _clean(v: float) -> float:
    """Round away least-squares noise: RF quantities are multiples of 1/2 (or ratios)."""
    r = round(float(v), 9)
    return 0.0 if r == 0 else r


def fit(
    rows: tuple[np.ndarray, list[np.ndarray]],
    cols: tuple[np.ndarray, list[np.ndarray]],
    input_shape: HW,
    output_shape: HW,
    *,
    method: str,
    name: Any = None,
    strict: bool = False,
) -> ReceptiveField:
    """Fit a :class:`ReceptiveField` from per-axis supports.

    Args:
      rows: ``(grid row index per entry, input-row support per entry)``.
      cols: the same for columns.
    Raises ``_TooSmall`` when an axis has fewer than two unclipped grid indices.
    """
    sh, st_h, off_h, res_h, free_h = _axis_fit(rows[0], rows[1], int(input_shape.h), "h", strict)
    sw, st_w, off_w, res_w, free_w = _axis_fit(cols[0], cols[1], int(input_shape.w), "w", strict)
    if method == "cells":
        used = int(np.sum(free_h & free_w))
        total = len(free_h)
    else:
        used = int(free_h.sum() + free_w.sum())
        total = len(free_h) + len(free_w)
    return _result(
        (sh, st_h, off_h),
        (sw, st_w, off_w),
        input_shape,
        output_shape,
        cells_used=used,
        cells_clipped=total - used,
        residual=HW(res_h, res_w),
        method=method,
        name=name,
    )


def fit_maps(maps: GradientMaps, strict: bool = False) -> ReceptiveField:
    """Fit the RF from per-cell gradient maps (``method="cells"``)."""
    flat = maps.flat
    nz = np.abs(flat) > 0
    if nz.ndim == 4:
        nz = nz.any(-1)
    _check_maps(flat, nz, maps.name)
    rows = [np.flatnonzero(m.any(axis=1)) for m in nz]
    cols = [np.flatnonzero(m.any(axis=0)) for m in nz]
    return fit(
        (maps.cells[:, 0], rows),
        (maps.cells[:, 1], cols),
        maps.input_shape,
        maps.output_shape,
        method="cells",
        name=maps.name,
        strict=strict,
    )


def _check_maps(values: np.ndarray, nz: np.ndarray, name: Any) -> None:
    nan = np.asarray(np.isnan(values).reshape(len(values), -1).any(axis=1))
    if nan.any():
        raise RFError(
            f"the input gradient of {output_label(name)} is NaN for {int(nan.sum())} of {len(nan)} cells; {_PREPARE_HINT}."
        )
    zero = np.asarray(~nz.reshape(len(nz), -1).any(axis=1))
    if zero.any():
        raise RFZeroGradient(
            f"the input gradient of {output_label(name)} is zero for {int(zero.sum())} of {len(zero)} cells "
            f"(dead ReLUs or max pooling can block it); {_PREPARE_HINT}."
        )


# --------------------------------------------------------------------------- public


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _view(
    model: ConvertedModel,
    outputs: Sequence | None,
    prepared: bool,
    held: bool = False,
    one_channel: bool = True,
) -> ConvertedModel:
    """The (prepared) converted model restricted to ``outputs``, with its global
    branches ``held`` constant or not, with one channel per layer where the model
    offers it (same supports, far cheaper); cached per model so repeated calls reuse
    one compiled program."""
    cache = _VIEWS.setdefault(model, {})
    key = (prepared, held, one_channel, None if outputs is None else tuple(outputs))
    if key not in cache:
        view = model.prepared(one_channel=one_channel) if prepared else model
        view = view.held() if held else view
        cache[key] = view if outputs is None else view.with_outputs(list(outputs))
    return cache[key]


@functools.lru_cache(maxsize=64)
def _prepared_fn(fn: Callable) -> Callable:
    """Linearised ``fn`` (cached so repeated calls reuse the compiled program)."""
    return linearize(fn)


on_clear(_VIEWS.clear)
on_clear(_prepared_fn.cache_clear)


def receptive_field(
    fn: Any,
    input_shape: Sequence[int] | None = None,
    *,
    params: Any = None,
    x: Any = None,
    prepare: bool = True,
    method: str = "auto",
    grow: bool = False,
    max_input: int = MAX_INPUT,
    outputs: Sequence[str | int] | None = None,
    layer: str | None = None,
    channels: Any = None,
) -> ReceptiveField | dict[Any, ReceptiveField]:
    """Receptive field of every output cell of ``fn``, fitted per axis.

    Args:
      fn: a JAX function ``x (1, H, W, C) -> (1, Ho, Wo, Co)`` (or dict/list of such),
        or ``fn(params, x)`` when ``params`` is given; a Flax NNX module; a Flax Linen
        module with ``params=variables``; a Keras model (converted on the fly, never
        modified); or a converted model (``converters.from_keras``), whose preparation
        is the exact layer-level one.
      input_shape: ``(H, W, C)``; or pass ``x``.
      params: parameter pytree for ``fn(params, x)``.
      x: the input ``(H, W, C)`` to take gradients at; default a constant (ones).
      prepare: apply the RF preparation (:mod:`rfjax.prepare`): linear activations,
        average pooling, constant positive weights, zero biases, identity norms, a
        constant input. ``False`` uses the real weights (and ``x``) as they are.
      method: ``"lines"`` (one backward pass per grid row/column pair: fast, exact for
        RFs that are a product of a row set and a column set, as in every conv/pool
        network), ``"cells"`` (one gradient map per cell), or ``"auto"`` (lines when
        prepared, cells otherwise, since real-weight gradients can cancel in sums).
      grow: when the RF reaches past the input, double the input size (up to
        ``max_input``) until cells with unclipped RFs exist. For fully convolutional
        functions only.
      outputs: which outputs of a dict/list-valued ``fn`` to fit; default all.
      layer: one output (a Keras layer name for Keras/converted models); the result
        is then a single :class:`ReceptiveField`.
      channels: output channels the masks cover (default all), as in
        :func:`rfjax.gradient_maps`.

    Returns:
      A :class:`ReceptiveField`, or a dict of them for dict/list outputs.
    """
    if method not in ("auto", "lines", "cells"):
        raise RFError(f"method={method!r} is not one of ('auto', 'lines', 'cells').")
    if layer is not None:
        outputs = [layer]
    target = _target(fn, params, input_shape, x, prepare, outputs, channels)
    model_shape = () if target.model is None else tuple(target.model.input_shape)
    if input_shape is None and x is None and model_shape and None not in model_shape:
        input_shape = tuple(int(v) for v in model_shape if v is not None)
    given = _input_shape(input_shape, x)
    method = ("lines" if prepare else "cells") if method == "auto" else method
    if grow and x is None:
        result = _measure_grown(target, given, method, channels, max_input)
    else:
        xin = constant_input(given) if x is None else x
        try:
            result = _measure(target, xin, method, channels, strict=False)
        except _TooSmall as e:
            raise _too_large(e, given) from e
    if target.held and isinstance(result, dict):
        result = {
            k: dataclasses.replace(r, global_=True) if k in target.held else r for k, r in result.items()
        }
    return result[layer] if layer is not None and isinstance(result, dict) else result


class _Target(NamedTuple):
    """What the fit runs: ``fn(params, x)`` (or ``fn(x)``), the outputs to fit, the
    converted model behind it (``None`` for a plain function) and the outputs measured
    with their global branches held."""

    fn: Callable
    params: Any
    outputs: Sequence | None
    model: ConvertedModel | None
    names: tuple
    held: frozenset


def _target(
    fn: Any, params: Any, input_shape: Any, x: Any, prepare: bool, outputs: Any, channels: Any
) -> _Target:
    """Resolve what the user passed into the function the fit measures: a converted
    model's (one-channel) RF copy, restricted to ``outputs``, with global branches held;
    or a plain function, linearised when ``prepare``."""
    converted = resolve_model(fn, input_shape if input_shape is not None else None)
    if converted is None:
        base, params = as_function(fn, params)
        if prepare:
            params = None if params is None else prepare_params(params)
            base = _prepared_fn(base)
        return _Target(base, params, outputs, None, (), frozenset())
    one = channels is None
    view = _view(converted, outputs, prepare, one_channel=one)
    # squeeze-excitation, image pooling: measure the local path (global branches held
    # constant) and say the output is global
    held = _global_outputs(converted, view)
    if held:
        view = _view(converted, view.output_names, prepare, held=True, one_channel=one)
    return _Target(view.apply, view.params, None, converted, tuple(view.output_names), held)


def _measure(target: _Target, x: Any, method: str, channels: Any, strict: bool) -> Any:
    """One fit at the size of ``x``; a global output with no local path is
    :class:`RFGlobal`. Raises ``_TooSmall`` when the RF reaches past the input."""
    try:
        return _fit_all(target.fn, target.params, x, method, target.outputs, channels, strict=strict)
    except RFZeroGradient as e:
        if not target.held:
            raise
        raise RFGlobal(
            f"{', '.join(map(repr, sorted(target.held)))} depends on the whole input only (global pooling with no "
            "convolutional path to the input); it has no finite RF.",
            "h",
            True,
            tuple(np.shape(x))[-3:-1],
        ) from e


def _measure_grown(
    target: _Target, given: tuple[int, int, int], method: str, channels: Any, max_input: int
) -> Any:
    """The fit at the requested size, or at the first larger size that keeps its
    padding at every layer (:mod:`rfjax.growth`); results describe the requested size
    and say where they were measured (``measured_shape``)."""
    if not isinstance(max_input, (int, np.integer)) or max_input < 1:
        raise RFError(f"max_input={max_input!r} must be a positive number of pixels, e.g. 4096.")
    start, step = given[:2], None
    if target.model is not None:
        start, step = _first_size(target.model, target.names, given, max_input)
    grower = growth.Grower(_forward_geometry(target), given, step)
    last: Exception | None = None
    shape = given
    for shape, final in grower.sizes(start, max_input):
        try:
            result = _measure(target, constant_input(shape), method, channels, strict=not final)
        except (_TooSmall, RFCallError) as e:
            last = e
            continue
        return _at_requested(result, given, shape, grower)
    if isinstance(last, _TooSmall) and grower.step is None and not last.everywhere:
        raise RFTooLarge(
            f"the RF is larger than the {given[0]}x{given[1]} input and no larger input keeps the padding of "
            "every layer as at that size (the network resizes, or its total stride does not divide 1024); "
            "pass a larger input_shape to measure the RF of that size.",
            last.axis,
            False,
            (given[0], given[1]),
        ) from last
    if isinstance(last, _TooSmall):
        raise _too_large(last, shape) from last
    if last is not None:
        raise last
    raise RFError(f"max_input={max_input} is smaller than the input {given[0]}x{given[1]}; raise max_input.")


def _forward_geometry(target: _Target) -> Callable[[tuple[int, int, int]], growth.Geometry]:
    """Geometry from the engine's own forward trace at a size (the one a growing
    measurement there compiles from, so proving a size costs no extra trace)."""

    def trace(shape: tuple[int, int, int]) -> growth.Geometry:
        x = engine.as_batch(constant_input(shape))
        fast = shape[0] * shape[1] <= engine.FAST_COMPILE_MAX_PIXELS  # as a growing fit's central pass
        jaxpr, out = engine.forward_trace(
            target.fn, x, params=target.params, outputs=target.outputs, fast=fast
        )
        return growth.geometry(jaxpr, out)

    return trace


def _at_requested(
    result: Any, given: tuple[int, int, int], measured: tuple[int, int, int], grower: growth.Grower
) -> Any:
    """``result`` restated for the requested input: its size and output grid, with the
    size it was measured at (the geometry is the same, see :mod:`rfjax.growth`)."""

    def one(rf: ReceptiveField) -> ReceptiveField:
        grid = grower.grid(rf.name)
        return dataclasses.replace(
            rf,
            input_shape=HW(given[0], given[1]),
            output_shape=HW(*grid) if grid is not None else rf.output_shape,
            measured_shape=HW(measured[0], measured[1]),
        )

    return {k: one(r) for k, r in result.items()} if isinstance(result, dict) else one(result)


def _first_size(
    model: ConvertedModel, names: Sequence[str], shape: tuple[int, int, int], max_input: int
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Where a growing fit of a converted model starts, and its growth step: per axis
    at least the closed-form RF bound plus four strides (room for two unclipped cells
    whatever the padding), at most ``max_input``; the step is the least common multiple
    of the outputs' total strides (``None`` when a bound is unknown). One compiled
    program at the right size instead of a doubling sequence."""
    need, step = [shape[0], shape[1]], [1, 1]
    for name in names:
        bound = model.rf_bound(name)
        if bound is None:
            return (shape[0], shape[1]), None
        for a in (0, 1):
            size, stride = int(bound.size[a]), int(bound.stride[a])
            need[a] = max(need[a], size + 4 * stride)
            step[a] = math.lcm(step[a], stride)
    return (min(need[0], max_input), min(need[1], max_input)), (step[0], step[1])


def _global_outputs(model: Any, view: Any) -> frozenset:
    """The outputs of ``view`` that depend on the whole input through a global node."""
    return frozenset(n for n in view.output_names if model.depends_globally(n))


def _too_large(e: _TooSmall, shape: tuple[int, int, int]) -> RFTooLarge:
    if e.everywhere:
        msg = (
            f"every cell's RF covers the whole {shape[0]}x{shape[1]} input: either the RF is larger than "
            "the input (pass a larger input_shape or grow=True) or the output depends on the whole "
            "input (global pooling, squeeze-and-excitation), which has no finite RF."
        )
    else:
        msg = (
            f"the RF is larger than the {shape[0]}x{shape[1]} input along axis {e.axis} (fewer than two grid "
            f"{'rows' if e.axis == 'h' else 'columns'} have an RF clear of the border); pass a larger "
            "input_shape, or grow=True for a fully convolutional function."
        )
    return RFTooLarge(msg, e.axis, e.everywhere, (shape[0], shape[1]))


def _input_shape(input_shape: Sequence[int] | None, x: Any) -> tuple[int, int, int]:
    if input_shape is None and x is None:
        raise RFError("input_shape is missing: pass input_shape=(H, W, C) or an input x.")
    return check_input_shape(tuple(np.shape(x))[-3:] if input_shape is None else input_shape)


def _fit_all(fn: Callable, params: Any, x: Any, method: str, outputs, channels, strict: bool = False):
    """Fit every requested output of ``fn`` at ``x``: cell by cell (``"cells"``), or
    from grid lines (``"lines"``; a growing fit first tries three central lines)."""
    if method == "cells":
        maps = engine.gradient_maps(fn, x, params=params, outputs=outputs, channels=channels, strategy="auto")
        if isinstance(maps, GradientMaps):
            return fit_maps(maps, strict)
        return {k: fit_maps(m, strict) for k, m in maps.items()}
    hw = engine.as_batch(x).shape[1:3]
    # a growing fit's central-lines pass runs once: compile it fast where that pays
    fast = strict and hw[0] * hw[1] <= engine.FAST_COMPILE_MAX_PIXELS
    plan = engine.plan(fn, x, params=params, outputs=outputs, channels=channels, fast=fast)
    grids = {k: plan.grid(k) for k in plan.selected}
    out: dict = {}
    if strict:  # growing: three central lines per axis, one small pass, no chunking probes
        out = _fit_central_all(plan, grids, fast)
        grids = {k: g for k, g in grids.items() if plan.names[k] not in out}
    for k, rf in _fit_lines(plan, grids, strict).items():
        out[plan.names[k]] = (
            rf if rf is not None else _fit_cells(fn, x, params, plan.names, k, channels, strict)
        )
    return out[None] if plan.names == [None] else out


def _fit_lines(plan: engine.Plan, grids: dict, strict: bool) -> dict:
    """``{k: ReceptiveField}`` from one pass over every grid row and column of each
    output ``k`` (``None`` for an output whose RF is not a product of row and column
    sets: the probe cells say so)."""
    if not grids:
        return {}
    probes = {k: _probe_cells(g) for k, g in grids.items()}
    seen: dict = {}
    hw = (int(plan.input_shape.h), int(plan.input_shape.w))
    lines = line_supports(_with_probes(plan, grids, probes, seen), grids, hw)
    out: dict = {}
    for k, g in grids.items():
        out[k] = None
        if _is_product(np.abs(seen[k]) > 0, probes[k], *lines[k]):
            rows, cols = (np.arange(g[0]), lines[k][0]), (np.arange(g[1]), lines[k][1])
            name = plan.names[k]
            out[k] = fit(rows, cols, plan.input_shape, HW(*g), method="lines", name=name, strict=strict)
    return out


def _fit_cells(fn: Callable, x: Any, params: Any, names: list, k: int, channels: Any, strict: bool):
    """Output ``k`` fitted cell by cell (an RF that is not a product of row and column sets)."""
    maps = engine.gradient_maps(
        fn, x, params=params, outputs=[names[k]] if names != [None] else None, channels=channels
    )
    return fit_maps(maps[names[k]] if isinstance(maps, dict) else maps, strict)


def _fit_central_all(plan: engine.Plan, grids: dict, fast: bool) -> dict:
    """``{name: ReceptiveField}`` for the outputs whose three central lines per axis fit
    (:func:`fit_central`) and whose off-diagonal probe cell shows a product RF;
    the others are left to the full lines pass. Raises ``_TooSmall`` when the middle
    line reaches the input's edge."""
    centre = {k: central_index(g) for k, g in grids.items() if min(g) >= 3}
    probes = {k: np.array([(k0 - 1, k0 + 1)]) for k, k0 in centre.items()}
    seen: dict = {}
    run_lines = _with_probes(plan, grids, probes, seen, fast)
    out = {}
    for k, (index, rows, cols) in central_lines(run_lines, grids).items():
        name = plan.names[k]
        rf = fit_central(index, rows, cols, plan.input_shape, HW(*grids[k]), name=name)
        pos = {i: n for n, i in enumerate(index)}
        full_rows, full_cols = [None] * grids[k][0], [None] * grids[k][1]
        for i in index:
            full_rows[i], full_cols[i] = rows[pos[i]], cols[pos[i]]
        if rf is not None and _is_product(np.abs(seen[k]) > 0, probes[k], full_rows, full_cols):
            out[name] = rf
    return out


def _with_probes(plan: engine.Plan, grids: dict, probes: dict, seen: dict, fast: bool = False) -> Callable:
    """``run_many`` for :mod:`rfjax.lines` (``{k: masks} -> {k: gradients}``, checked for
    NaN and zero maps) on which the ``probes[k]`` cells ride along with the first call
    (one forward pass fewer); their maps land in ``seen[k]``."""

    def run_lines(per_output: dict) -> dict:
        extra = {} if seen else {k: engine.one_hot(c, grids[k]) for k, c in probes.items()}
        both = {k: np.concatenate([per_output[k], extra[k]]) if k in per_output else extra[k] for k in extra}
        both.update({k: m for k, m in per_output.items() if k not in extra})
        got = plan.run_many(both, fast=fast)
        for k, g in got.items():
            _check_maps(g, np.abs(g) > 0, plan.names[k])
        seen.update({k: got[k][len(got[k]) - len(extra[k]) :] for k in extra})
        return {k: got[k][: len(per_output[k])] for k in per_output}

    return run_lines


def _probe_cells(grid: tuple[int, int]) -> np.ndarray:
    """First, centre and last cell: where a non-product RF would show."""
    return np.unique(np.array([(0, 0), (grid[0] // 2, grid[1] // 2), (grid[0] - 1, grid[1] - 1)]), axis=0)


def _is_product(nz: np.ndarray, cells: np.ndarray, rows: list, cols: list) -> bool:
    """Whether each probe cell's support spans exactly its grid row's and column's lines."""
    for m, (i, j) in zip(nz, cells):
        r, c = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if (r[0], r[-1], c[0], c[-1]) != (rows[i][0], rows[i][-1], cols[j][0], cols[j][-1]):
            return False
    return True
