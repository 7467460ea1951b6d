"""The engine: input gradients of many output cells in one jit-compiled XLA program.

A *slot* is one cotangent fed to the model's VJP. The forward pass runs once per
compiled call and ``jax.vmap`` maps the VJP over a batch of slots, so every slot of a
chunk shares the forward pass. Slots are described on the host by small masks over
the output grid (one-hot for a cell, a whole row for a grid line, several far-apart
cells for a packed slot) and expanded to full cotangents inside the program, so the
transfer is a few kilobytes whatever the channel count.

Packing (``strategy="packed"``) is the sparse-Jacobian trick of Curtis, Powell and
Reid: cells whose gradient supports cannot overlap share one slot, and their maps are
cut apart afterwards by their support rectangles. The rectangles come from one cheap
pass over grid lines (the support of a sum of cotangents is the union of supports).
On the README network that turns 256 backward passes into 81 + 32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rfjax import memory, sharding
from rfjax._types import HW, GradientMaps
from rfjax.contract import on_clear
from rfjax.errors import RFCallError, RFError, cause, output_label
from rfjax.lines import MIN_PACK_GRID, line_supports

InputChannels = str  # "abs_sum" | "sum" | "keep"
_INPUT_CHANNELS = ("abs_sum", "sum", "keep")


# --------------------------------------------------------------------------- outputs


def _flatten_outputs(out: Any) -> tuple[list[str | int | None], list[Any]]:
    """Names and leaves of a function's output: one array, a dict or a list/tuple."""
    if isinstance(out, Mapping):
        return list(out.keys()), list(out.values())
    if isinstance(out, (list, tuple)):
        return list(range(len(out))), list(out)
    return [None], [out]


def _rebuild(like: Any, leaves: list[Any]) -> Any:
    if isinstance(like, Mapping):
        return dict(zip(like.keys(), leaves))
    if isinstance(like, (list, tuple)):
        return type(like)(leaves)
    return leaves[0]


def as_batch(x: Any) -> jax.Array:
    try:
        arr = jnp.asarray(x, dtype=jnp.float32)
    except (TypeError, ValueError) as e:
        raise RFError(
            f"x must be a numeric array of shape (H, W, C) or (1, H, W, C), not {type(x).__name__}."
        ) from e
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[0] != 1:
        raise RFError(
            f"x has shape {tuple(arr.shape)}; pass one NHWC image of shape (H, W, C) or (1, H, W, C)."
        )
    return arr


# XLA:CPU's LLVM back end at its lowest optimisation level compiles about twice as fast
# and runs about 1.5x slower (measured on the RF copies of keras.applications models,
# 2-core EPYC): the better trade for programs that run a handful of slots once, such as
# a growing fit's central-lines pass, where compilation is most of the time.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
# Up to this many input pixels the saving wins: DenseNet121 at 2208^2 took 4.4 s instead
# of 5.0 s, NASNetMobile at 2560^2 10.9 s instead of 10.2 s (central-lines pass).
FAST_COMPILE_MAX_PIXELS = 2400 * 2400


def _jit(f: Callable, fast: bool, **kw: Any) -> Any:  # a jax.stages.Wrapped: .trace, .lower, .eval_shape
    return jax.jit(f, compiler_options=_FAST_COMPILE, **kw) if fast else jax.jit(f, **kw)


@functools.lru_cache(maxsize=256)
def _forward(fn: Callable, with_params: bool, n_devices: int, fast: bool = False) -> Any:
    """The engine's compiled forward pass ``(params, x) -> (out, vjp)``. One jitted
    function per ``fn``: :func:`output_shapes` traces it with ``eval_shape`` and the
    run that follows compiles from that same trace (a deep model's Python runs once).
    ``fast``: compile for a short run (:data:`_FAST_COMPILE`)."""

    def forward(params, x):
        return jax.vjp((lambda x: fn(params, x)) if with_params else fn, x)

    if n_devices <= 1:
        return _jit(forward, fast)
    mesh = sharding.mesh(n_devices)
    return _jit(forward, fast, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def output_shapes(
    fn: Callable, x: jax.Array, params: Any = None, fast: bool = False
) -> tuple[Any, list[str | int | None], list[tuple[int, ...]]]:
    """Trace ``fn`` (``fn(params, x)`` when ``params`` is given, else ``fn(x)``)
    abstractly on ``x`` and check every output is a 4-D NHWC batch of one.

    Returns ``(structure, names, shapes)``; raises :class:`RFError` otherwise.
    """
    try:
        struct, _ = _forward(fn, params is not None, sharding.count(None), fast).eval_shape(params, x)
    except RFError:
        raise
    except Exception as e:  # any failure inside the user's function
        raise RFCallError(
            f"fn failed on an input of shape {tuple(x.shape)} ({cause(e)}); "
            "check input_shape against the model (too-small inputs break 'valid' layers)."
        ) from e
    names, leaves = _flatten_outputs(struct)
    shapes: list[tuple[int, ...]] = []
    for name, leaf in zip(names, leaves):
        shape = tuple(getattr(leaf, "shape", ()))
        label = "fn's output" if name is None else f"fn's output {name!r}"
        if len(shape) != 4 or shape[0] != 1:
            raise RFError(
                f"{label} has shape {shape}; rfjax needs NHWC feature maps of shape (1, Ho, Wo, Co), "
                "so request a spatial layer (not a pooled/flattened one)."
            )
        if shape[1] < 1 or shape[2] < 1:
            raise RFError(
                f"{label} is empty ({shape[1]}x{shape[2]} cells) for a {x.shape[1]}x{x.shape[2]} input; "
                "the input is too small for the network: pass a larger input_shape."
            )
        shapes.append(shape)
    return struct, names, shapes


def forward_trace(
    fn: Callable, x: jax.Array, *, params: Any = None, outputs: Any = None, fast: bool = False
) -> tuple[Any, Any]:
    """``(jaxpr, output shapes)`` of the engine's forward program for ``fn`` (restricted
    to ``outputs``) at ``x``: traced once and cached by JAX, so the run that follows at
    the same size compiles from this trace. Raises :class:`RFCallError` when ``fn``
    fails there."""
    fn = restrict(fn, outputs, params is not None)
    forward = _forward(fn, params is not None, sharding.count(None), fast)
    try:
        traced = forward.trace(params, x)
        out, _ = forward.eval_shape(params, x)
    except RFError:
        raise
    except Exception as e:  # any failure inside the user's function
        raise RFCallError(f"fn failed on an input of shape {tuple(x.shape)} ({cause(e)}).") from e
    return traced.jaxpr, out


# --------------------------------------------------------------------------- program


class Program(NamedTuple):
    """The two compiled halves of the engine for one function.

    ``forward(params, x) -> (out, vjp)`` runs the model once and returns its outputs and
    the VJP with its residuals; ``backward(out, vjp, masks, chans) -> (B, H, W[, C])``
    maps the VJP over a chunk of slots. Two programs, not one, so the residuals are
    materialised once: in one program XLA may fuse forward ops into the vmapped backward
    and recompute them for every slot (MobileNetV2's depthwise blocks ran 49 times), and
    a chunked run would repeat the forward pass per chunk.
    """

    forward: Any  # jitted (jax.stages.Wrapped): callable, .trace, .lower, .eval_shape
    backward: Any


@functools.lru_cache(maxsize=64)
def _program(
    fn: Callable, with_params: bool, input_channels: InputChannels, n_devices: int, fast: bool = False
) -> Program:
    """The compiled :class:`Program` of ``fn``.

    ``fn`` is called as ``fn(params, x)`` when ``with_params``, else ``fn(x)``; passing
    the parameters as an argument (not a closure) lets one compiled program serve
    every call with new weights.

    ``masks[o]`` is ``(B, Ho, Wo, 1 or Co)`` for output ``o`` and ``chans[o]`` is
    ``(Co,)``; slot ``b``'s cotangent for output ``o`` is ``masks[o][b] * chans[o]``.
    With ``n_devices > 1`` the forward pass is replicated and the slot axis sharded
    over the first ``n_devices`` local devices.
    """

    def backward(out, vjp_fn, masks, chans):
        _, leaves = _flatten_outputs(out)

        def one(slot_masks):
            cts = [(m[None] * c).astype(leaf.dtype) for m, c, leaf in zip(slot_masks, chans, leaves)]
            (g,) = vjp_fn(_rebuild(out, cts))
            g = g[0]
            if input_channels == "abs_sum":
                return jnp.abs(g).sum(-1)
            if input_channels == "sum":
                return g.sum(-1)
            return g

        return jax.vmap(one)(masks)

    forward = _forward(fn, with_params, n_devices, fast)
    if n_devices <= 1:
        return Program(forward, _jit(backward, fast))
    mesh = sharding.mesh(n_devices)
    spec = jax.sharding.PartitionSpec

    def sharded(out, vjp_fn, masks, chans):
        return jax.shard_map(
            backward,
            mesh=mesh,
            in_specs=(spec(), spec(), spec(sharding.AXIS), spec()),
            out_specs=spec(sharding.AXIS),
            check_vma=False,  # the VJP was traced outside the map, with invariant types
        )(out, vjp_fn, masks, chans)

    return Program(forward, _jit(sharded, fast))


_MEMORY_FIX = (
    "pass a smaller input_shape, or convert the model (converters.from_keras, from_torch, from_onnx) "
    "so that its RF copy runs with one channel per layer"
)


def _run_slots(
    fn: Callable,
    params: Any,
    x: jax.Array,
    masks: list[np.ndarray],
    chans: list[np.ndarray],
    *,
    input_channels: InputChannels,
    chunk: int | None = None,
    n_devices: int,
    fast: bool = False,
    max_memory: int | None = None,
) -> np.ndarray:
    """Run all slots (``masks[o]``: ``(S, Ho, Wo, k)``): one forward pass, then the
    backward program over equal chunks.

    Both programs are sized before they run (:mod:`rfjax.memory`): against
    ``max_memory`` bytes when given, else against half the memory free at the call.
    ``chunk`` forces a chunk size instead. Raises :class:`~rfjax.errors.RFMemoryError`
    when one slot does not fit."""
    n_slots = masks[0].shape[0]
    given = max_memory is not None
    budget = max_memory if given else memory.default_budget()
    prog = _program(fn, params is not None, input_channels, n_devices, fast)
    hw = f"{x.shape[1]}x{x.shape[2]}"
    forward = memory.check_fits(
        memory.compiled(prog.forward, params, x),
        budget,
        what=f"the forward pass at {hw}",
        fix=_MEMORY_FIX,
        given=given,
    )
    out, vjp_fn = forward(params, x)
    chans_dev = [jnp.asarray(c) for c in chans]

    def compile_for(size: int) -> Any:
        structs = [jax.ShapeDtypeStruct((size,) + m.shape[1:], jnp.asarray(m[:0]).dtype) for m in masks]
        return memory.compiled(prog.backward, out, vjp_fn, structs, chans_dev)

    if chunk is not None:
        size = memory.equal_chunk(n_slots, chunk, n_devices)
        backward = compile_for(size)
    else:
        size, backward = memory.plan_chunks(
            compile_for,
            n_slots,
            budget,
            what=f"one cell's input gradient at {hw}",
            fix=_MEMORY_FIX,
            given=given,
            multiple=n_devices,
        )
    n_chunks = math.ceil(n_slots / size)
    pad = n_chunks * size - n_slots
    if pad:
        masks = [np.concatenate([m, np.zeros((pad,) + m.shape[1:], m.dtype)]) for m in masks]
    parts = [
        backward(out, vjp_fn, [jnp.asarray(m[k * size : (k + 1) * size]) for m in masks], chans_dev)
        for k in range(n_chunks)
    ]
    result = np.concatenate([np.asarray(p) for p in parts]) if n_chunks > 1 else np.asarray(parts[0])
    return result[:n_slots]


def memory_per_chunk(
    fn: Callable,
    params: Any,
    x: jax.Array,
    shapes: list[tuple[int, ...]],
    chunk: int,
    input_channels: InputChannels = "abs_sum",
) -> int:
    """Bytes XLA reserves for one backward call over ``chunk`` one-hot slots: its
    arguments (the forward pass's outputs and residuals, held for all chunks), outputs
    and temporaries, from the compiled program's own memory analysis."""
    masks = [jax.ShapeDtypeStruct((chunk, s[1], s[2], 1), jnp.float32) for s in shapes]
    chans = [jax.ShapeDtypeStruct((s[3],), jnp.float32) for s in shapes]
    prog = _program(fn, params is not None, input_channels, 1)
    out, vjp_fn = prog.forward.eval_shape(params, x)
    compiled = prog.backward.lower(out, vjp_fn, masks, chans).compile()
    mem = compiled.memory_analysis()
    if mem is None:  # pragma: no cover - backends without memory analysis
        return 0
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


def chunk_for_budget(
    fn: Callable,
    params: Any,
    x: jax.Array,
    shapes: list[tuple[int, ...]],
    max_memory: int,
    input_channels: InputChannels,
) -> int:
    """Largest chunk of slots whose compiled program fits in ``max_memory`` bytes.

    Memory is affine in the chunk size, so two compiled probes (1 and 8 slots) fix it.
    """
    m1 = memory_per_chunk(fn, params, x, shapes, 1, input_channels)
    m8 = memory_per_chunk(fn, params, x, shapes, 8, input_channels)
    per_slot = max((m8 - m1) / 7, 1.0)
    base = m1 - per_slot
    if m1 > max_memory:
        raise RFError(
            f"max_memory={max_memory:,} bytes is too small for one cell (one cell needs about {m1:,} bytes); "
            f"raise max_memory to at least {math.ceil(m1 / 2**20)} MiB or use a smaller input."
        )
    return max(1, int((max_memory - base) // per_slot))


# --------------------------------------------------------------------------- requests


def channel_vector(channels: Any, co: int, label: str) -> np.ndarray:
    """``(Co,)`` channel weights of a one-hot mask: ones for ``channels=None``, else ones
    at the given channel indices; ``label`` names the output in the refusal."""
    vec = np.zeros((co,), np.float32)
    if channels is None:
        vec[:] = 1.0
        return vec
    idx = np.atleast_1d(np.asarray(channels))
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise RFError(f"channels must be None, a channel index or a list of indices, not {channels!r}.")
    bad = idx[(idx < 0) | (idx >= co)]
    if bad.size:
        raise RFError(f"channels={channels!r} is outside {label}'s {co} channels; use indices 0..{co - 1}.")
    vec[idx] = 1.0
    return vec


def _cell_array(cells: Any, grid: tuple[int, int], label: str) -> np.ndarray:
    ho, wo = grid
    if cells is None:
        ii, jj = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
        return np.stack([ii.ravel(), jj.ravel()], axis=1)
    arr = np.asarray(cells)
    if arr.ndim == 1 and arr.shape == (2,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        raise RFError(f"cells must be integer (i, j) pairs, shape (n, 2); got {arr.shape} of {arr.dtype}.")
    bad = arr[(arr[:, 0] < 0) | (arr[:, 0] >= ho) | (arr[:, 1] < 0) | (arr[:, 1] >= wo)]
    if bad.size:
        raise RFError(
            f"cells contains {tuple(int(v) for v in bad[0])}, outside {label}'s {ho}x{wo} grid; "
            f"use 0 <= i < {ho} and 0 <= j < {wo}."
        )
    return arr.astype(np.int64)


def _one_hot(cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    m = np.zeros((len(cells),) + tuple(grid) + (1,), np.float32)
    m[np.arange(len(cells)), cells[:, 0], cells[:, 1], 0] = 1.0
    return m


def _interval_groups(spans: list[tuple[int, int]]) -> list[list[int]]:
    """Colour intervals (inclusive ``(lo, hi)``, or ``(1, 0)`` for empty) so that those
    sharing a colour are disjoint; greedy by left end is optimal for intervals."""
    order = sorted(range(len(spans)), key=lambda k: spans[k][0])
    groups: list[list[int]] = []
    ends: list[int] = []
    for k in order:
        lo, hi = spans[k]
        for g, end in enumerate(ends):
            if end < lo:
                groups[g].append(k)
                ends[g] = hi
                break
        else:
            groups.append([k])
            ends.append(hi)
    return groups


def _span(idx: np.ndarray) -> tuple[int, int]:
    return (int(idx[0]), int(idx[-1])) if idx.size else (1, 0)


# --------------------------------------------------------------------------- public


class Plan(NamedTuple):
    """One function's outputs at one input, ready to run slots through the engine.

    Attributes:
      fn, params, x: the function (restricted to the requested outputs), its
        parameters (``None``: ``fn(x)``) and the ``(1, H, W, C)`` input.
      names: every output's name (dict key, list index, ``None`` for one array).
      shapes: every output's ``(1, Ho, Wo, Co)``.
      selected: indices into ``names`` of the requested outputs.
      chans: per output, the ``(Co,)`` channel weights of its one-hot masks.
      input_channels, n_devices, max_memory: as for :func:`gradient_maps`.
    """

    fn: Callable
    params: Any
    x: jax.Array
    names: list
    shapes: list
    selected: list
    chans: list
    input_channels: InputChannels
    n_devices: int
    max_memory: int | None

    @property
    def input_shape(self) -> HW:
        """``(H, W)`` of the input."""
        return HW(int(self.x.shape[1]), int(self.x.shape[2]))

    def grid(self, k: int) -> tuple[int, int]:
        """``(Ho, Wo)`` of output ``k``."""
        return (int(self.shapes[k][1]), int(self.shapes[k][2]))

    def run_slots(self, masks: list[np.ndarray], chans: list[np.ndarray] | None = None, fast: bool = False):
        """Gradients ``(S, H, W[, C])`` of ``S`` slots, ``masks[o]``: ``(S, Ho, Wo, k)``
        for every output ``o`` (one forward pass, equal chunks under the memory budget)."""
        return _run_slots(
            self.fn,
            self.params,
            self.x,
            masks,
            self.chans if chans is None else chans,
            input_channels=self.input_channels,
            n_devices=self.n_devices,
            fast=fast,
            max_memory=self.max_memory,
        )

    def run_many(self, per_output: dict[int, np.ndarray], fast: bool = False) -> dict[int, np.ndarray]:
        """Slots of several outputs in one call: ``{k: masks (S_k, Ho_k, Wo_k, 1)}`` ->
        ``{k: gradients (S_k, H, W[, C])}``; each slot feeds only its own output."""
        return _run_many(lambda m, c: self.run_slots(m, c, fast), self.shapes, self.chans, per_output)


def plan(
    fn: Callable,
    x: Any,
    *,
    params: Any = None,
    outputs: Sequence[str | int] | None = None,
    channels: Any = None,
    input_channels: InputChannels = "abs_sum",
    max_memory: int | None = None,
    devices: int | None = None,
    fast: bool = False,
) -> Plan:
    """Trace ``fn`` on ``x`` once and return the :class:`Plan` that runs its slots.

    Arguments as for :func:`gradient_maps`; ``fast`` traces the forward program that
    compiles at XLA:CPU's lowest optimisation level (for one short run). Raises
    :class:`~rfjax.errors.RFError` for outputs that are not NHWC feature maps, unknown
    output names, channels outside an output and bad budgets or device counts.
    """
    if input_channels not in _INPUT_CHANNELS:
        raise RFError(f"input_channels={input_channels!r} is not one of {_INPUT_CHANNELS}.")
    xb = as_batch(x)
    fn = restrict(fn, outputs, params is not None)
    _, names, shapes = output_shapes(fn, xb, params, fast=fast)
    selected = _select_outputs(names, outputs)
    chans = [
        channel_vector(channels if k in selected else None, s[3], output_label(names[k]))
        for k, s in enumerate(shapes)
    ]
    budget = memory.check_budget(max_memory)
    return Plan(
        fn, params, xb, names, shapes, selected, chans, input_channels, sharding.count(devices), budget
    )


def one_hot(cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One-hot slot masks ``(n, Ho, Wo, 1)`` for ``(n, 2)`` grid cells."""
    return _one_hot(np.asarray(cells), grid)


def gradient_maps(
    fn: Callable,
    x: Any,
    *,
    params: Any = None,
    cells: Any = None,
    channels: Any = None,
    cotangents: Any = None,
    outputs: Sequence[str | int] | None = None,
    input_channels: InputChannels = "abs_sum",
    max_memory: int | None = None,
    strategy: str = "auto",
    devices: int | None = None,
) -> GradientMaps | dict[str | int, GradientMaps]:
    """Input gradient of every requested output cell, in one compiled XLA program.

    Args:
      fn: any JAX function ``x (1, H, W, C) -> feature map (1, Ho, Wo, Co)``, or a dict
        or list of such feature maps (several outputs share one forward pass).
      x: the input, ``(H, W, C)`` or ``(1, H, W, C)``.
      params: optional parameter pytree; ``fn`` is then called as ``fn(params, x)``.
        Passing weights here rather than in a closure lets new weights reuse the
        compiled program.
      cells: ``(n, 2)`` integer ``(i, j)`` grid cells; ``None`` (default) for all.
      channels: which output channels the one-hot mask covers: ``None`` (default) sums
        over all, an int (e.g. a class index) or a list of ints.
      cotangents: instead of one-hot masks, arbitrary cotangent weights
        ``(n, Ho, Wo, Co)`` or ``(Ho, Wo[, Co])`` (e.g. a score map); one map each.
        Single-output functions only.
      outputs: names (dict keys or list indices) of the outputs to use; default all.
      input_channels: ``"abs_sum"`` (default) sums ``|g|`` over input channels,
        ``"sum"`` sums ``g``, ``"keep"`` keeps a trailing ``C`` axis.
      max_memory: budget in bytes for one compiled call; the slots are split into
        equal chunks that fit it (measured from XLA's own memory analysis) and run by a
        host loop over one compiled function. ``None``: half the memory free at the
        call (:mod:`rfjax.memory`). One slot over the budget is an
        :class:`~rfjax.errors.RFMemoryError` that says how much it needs.
      strategy: ``"dense"`` (one backward pass per cell), ``"packed"`` (cells whose
        supports cannot overlap share a pass, see module docs), or ``"auto"``
        (packed when it saves at least a third of the passes, dense on grids under 8x8).
      devices: number of local devices to shard the slot axis over; default all.

    Returns:
      A :class:`GradientMaps` (``maps``: ``(Ho, Wo, H, W[, C])`` for all cells, else
      ``(n, H, W[, C])``), or a dict ``{output name: GradientMaps}`` for dict/list
      outputs.
    """
    if strategy not in ("auto", "dense", "packed"):
        raise RFError(f"strategy={strategy!r} is not one of ('auto', 'dense', 'packed').")
    p = plan(
        fn,
        x,
        params=params,
        outputs=outputs,
        channels=channels,
        input_channels=input_channels,
        max_memory=max_memory,
        devices=devices,
    )
    names, shapes, selected, chans, hw = p.names, p.shapes, p.selected, p.chans, p.input_shape
    run = p.run_slots

    if cotangents is not None:
        return _custom_cotangents(run, names, shapes, selected, cotangents, hw)

    cell_arrs = {
        k: _cell_array(cells, (shapes[k][1], shapes[k][2]), output_label(names[k])) for k in selected
    }
    flats = _all_maps(run, shapes, chans, cell_arrs, strategy, (int(hw.h), int(hw.w)))
    results: dict[Any, GradientMaps] = {}
    for k in selected:
        grid = (shapes[k][1], shapes[k][2])
        flat = flats[k]
        maps = flat.reshape(grid + flat.shape[1:]) if cells is None else flat
        results[names[k]] = GradientMaps(maps, cell_arrs[k], hw, HW(*grid), names[k])
    if names == [None]:
        return results[None]
    return results


def restrict(fn: Callable, outputs: Any, with_params: bool) -> Callable:
    """``fn`` returning only the dict outputs named in ``outputs`` (so XLA drops the
    rest of the graph), cached so the compiled program is reused; ``fn`` itself when
    ``outputs`` is ``None`` or not a list of dict keys."""
    if outputs is None or isinstance(outputs, (str, int)):
        outputs = None if outputs is None else [outputs]
    if outputs is None or not all(isinstance(o, str) for o in outputs):
        return fn
    return _restricted(fn, tuple(outputs), with_params)


@functools.lru_cache(maxsize=256)
def _restricted(fn: Callable, keys: tuple[str, ...], with_params: bool) -> Callable:
    def pick(out: Any) -> Any:
        if not isinstance(out, Mapping):
            return out
        missing = [k for k in keys if k not in out]
        if missing:
            raise RFError(f"outputs names {missing[0]!r}, which fn does not return; fn returns {list(out)}.")
        return {k: out[k] for k in keys}

    if with_params:
        return lambda params, x: pick(fn(params, x))
    return lambda x: pick(fn(x))


on_clear(_forward.cache_clear)
on_clear(_program.cache_clear)
on_clear(_restricted.cache_clear)


def _select_outputs(names: list, outputs: Sequence | None) -> list[int]:
    if outputs is None:
        return list(range(len(names)))
    if isinstance(outputs, (str, int)):
        outputs = [outputs]
    idx = []
    for o in outputs:
        if o not in names:
            raise RFError(f"outputs names {o!r}, which fn does not return; fn returns {names}.")
        idx.append(names.index(o))
    return idx


def _run_many(run: Callable, shapes: list, chans: list, per_output: dict) -> dict:
    """Slots of several outputs in one compiled call: ``{k: masks (S_k, Ho_k, Wo_k, 1)}``
    -> ``{k: gradients (S_k, H, W[, C])}``. Each slot feeds only its own output."""
    order = list(per_output)
    total = sum(len(per_output[k]) for k in order)
    masks = [np.zeros((total, s[1], s[2], 1), np.float32) for s in shapes]
    start = 0
    bounds = {}
    for k in order:
        n = len(per_output[k])
        masks[k][start : start + n] = per_output[k]
        bounds[k] = (start, start + n)
        start += n
    g = run(masks, chans)
    return {k: g[a:b] for k, (a, b) in bounds.items()}


def _all_maps(
    run: Callable, shapes: list, chans: list, cells: dict, strategy: str, hw: tuple[int, int]
) -> dict:
    """``{k: (n_k, H, W[, C])}`` for the requested ``cells[k]`` of every output ``k``."""
    grids = {k: (shapes[k][1], shapes[k][2]) for k in cells}
    # "auto" skips packing on small grids: the line pass would cost about Ho + Wo slots,
    # as much as packing could save there (a 7x7 grid: 14 slots against at most 49).
    small = all(max(g) < MIN_PACK_GRID for g in grids.values())
    many = all(len(c) > 1 for c in cells.values())
    if many and (strategy == "packed" or (strategy == "auto" and not small)):
        packed = _packed(run, shapes, chans, cells, grids, hw, strategy == "packed")
        if packed is not None:
            return packed
    return _run_many(run, shapes, chans, {k: _one_hot(cells[k], grids[k]) for k in cells})


def _packing(rows: list, cols: list, grid: tuple[int, int], cells: np.ndarray):
    """Slot of each cell (cells in one slot have disjoint RF rectangles) and the
    rectangles ``(n, H, W)`` as boolean masks."""
    row_groups = _interval_groups([_span(r) for r in rows])
    col_groups = _interval_groups([_span(c) for c in cols])
    row_color = np.empty(grid[0], np.int64)
    col_color = np.empty(grid[1], np.int64)
    for g, members in enumerate(row_groups):
        row_color[members] = g
    for g, members in enumerate(col_groups):
        col_color[members] = g
    slot = row_color[cells[:, 0]] * len(col_groups) + col_color[cells[:, 1]]
    used, slot = np.unique(slot, return_inverse=True)
    return len(used), slot


def _rects(
    rows: list, cols: list, grid: tuple[int, int], cells: np.ndarray, hw: tuple[int, int]
) -> np.ndarray:
    row_in = np.zeros((grid[0], hw[0]), bool)
    col_in = np.zeros((grid[1], hw[1]), bool)
    for i, r in enumerate(rows):
        lo, hi = _span(r)
        row_in[i, lo : hi + 1] = True
    for j, c in enumerate(cols):
        lo, hi = _span(c)
        col_in[j, lo : hi + 1] = True
    return row_in[cells[:, 0]][:, :, None] & col_in[cells[:, 1]][:, None, :]


def _packed(
    run: Callable, shapes: list, chans: list, cells: dict, grids: dict, hw: tuple[int, int], force: bool
) -> dict | None:
    """Maps with far-apart cells sharing a backward pass; ``None`` when packing would
    not pay (and ``force`` is False), or when a gradient is not finite or escaped its
    rectangle (then the caller runs one pass per cell)."""
    finite: list[bool] = []

    def run_lines(per_output: dict) -> dict:
        out = _run_many(run, shapes, chans, per_output)
        finite.extend(bool(np.isfinite(g).all()) for g in out.values())
        return {k: g if g.ndim == 3 else np.abs(g).sum(-1) for k, g in out.items()}

    lines = line_supports(run_lines, grids, hw)
    if not all(finite):
        return None
    plans = {k: _packing(lines[k][0], lines[k][1], grids[k], cells[k]) for k in cells}
    n_slots = sum(p[0] for p in plans.values())
    if not force and n_slots + sum(max(g) for g in grids.values()) > (2 * sum(map(len, cells.values()))) // 3:
        return None
    masks = {}
    for k, (n, slot) in plans.items():
        m = np.zeros((n,) + grids[k] + (1,), np.float32)
        m[slot, cells[k][:, 0], cells[k][:, 1], 0] = 1.0
        masks[k] = m
    grads = _run_many(run, shapes, chans, masks)
    out = {}
    for k, g in grads.items():
        n, slot = plans[k]
        rect = _rects(lines[k][0], lines[k][1], grids[k], cells[k], (int(g.shape[1]), int(g.shape[2])))
        covered = np.zeros((n,) + g.shape[1:3], bool)
        np.logical_or.at(covered, slot, rect)
        support = np.abs(g) > 0 if g.ndim == 3 else (np.abs(g) > 0).any(-1)
        if np.any(support & ~covered):
            return None
        out[k] = np.where(rect if g.ndim == 3 else rect[..., None], g[slot], 0).astype(g.dtype)
    return out


def _custom_cotangents(
    run: Callable, names: list, shapes: list, selected: list[int], cotangents: Any, hw: HW
):
    if len(selected) != 1:
        raise RFError("cotangents works with one output at a time; pass outputs=[name] to pick it.")
    k = selected[0]
    _, ho, wo, co = shapes[k]
    ct = np.asarray(cotangents, np.float32)
    if ct.shape in ((ho, wo), (ho, wo, co)):
        ct = ct[None]
    if ct.ndim == 3 and ct.shape[1:] == (ho, wo):
        ct = ct[..., None]
    if ct.ndim != 4 or ct.shape[1:3] != (ho, wo) or ct.shape[3] not in (1, co):
        raise RFError(
            f"cotangents has shape {np.shape(cotangents)}; {output_label(names[k])} needs (n, {ho}, {wo}, {co}), "
            f"({ho}, {wo}, {co}) or ({ho}, {wo})."
        )
    if ct.shape[3] != co:
        ct = np.broadcast_to(ct, ct.shape[:3] + (co,))
    chans = [np.ones((s[3],), np.float32) for s in shapes]
    masks = [
        ct if o == k else np.zeros((len(ct), s[1], s[2], s[3]), np.float32) for o, s in enumerate(shapes)
    ]
    flat = run(masks, chans)
    cells = np.full((len(ct), 2), -1, np.int64)
    return GradientMaps(flat, cells, hw, HW(ho, wo), names[k])
