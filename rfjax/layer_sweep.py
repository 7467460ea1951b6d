"""Layer sweeps: the RF of every spatial layer of one model, as a table and a plot.

One model serves every layer: a converted Keras model is prepared once and asked for
one layer at a time (each request compiles only the sub-graph that layer needs); a
JAX function returning a dict of feature maps is restricted to one key at a time.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax

from rfjax._types import HW, ReceptiveField
from rfjax.contract import ConvertedModel, resolve_model
from rfjax.errors import RFCallError, RFError, RFGlobal, RFTooLarge, cause
from rfjax.fit import receptive_field
from rfjax.growth import MAX_INPUT
from rfjax.layer_fit import measure_layers
from rfjax.layer_plot import plot_layers
from rfjax.prepare import constant_input

__all__ = ["LayerRF", "plot_layers", "save_rows", "sweep_layers"]


@dataclasses.dataclass(frozen=True)
class LayerRF:
    """One row of a layer sweep.

    ``status`` is ``"ok"`` (size/stride/offset/padding measured), ``"larger"`` (the RF
    reaches past the input at this input size, so only a lower bound ``input`` is
    known), ``"global"`` (every cell sees the whole input at every size tried) or
    ``"error"`` (the layer could not be measured, ``error`` says why: e.g. a
    zero-padding layer whose border cells see no input at all).
    Measured quantities are ``None`` unless ``status == "ok"``.

    ``global_`` is ``True`` when the layer also depends on the whole input through a
    global branch (squeeze-and-excitation, image pooling) of a converted model; the
    measured quantities are then those of its local, convolutional path (see
    :attr:`rfjax.ReceptiveField.global_`).

    ``input_shape`` is the requested input the row describes; ``measured_shape`` the
    input a growing fit measured on (same padding at every layer, see
    :mod:`rfjax.growth`). ``method`` is the fit's (``"central"``, ``"lines"``,
    ``"cells"``), or ``"as <layer>"`` for a per-pixel layer (activation, batch norm,
    1x1 stride-1 convolution) that took the row of its input ``<layer>`` unmeasured.
    """

    layer: str
    depth: int
    status: str
    size: HW | None
    stride: HW | None
    offset: HW | None
    padding: HW | None
    input_shape: HW
    output_shape: HW
    global_: bool = False
    error: str | None = None
    measured_shape: HW | None = None
    method: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready: pairs become ``size_h``, ``size_w``, ..."""
        out: dict[str, Any] = {
            "layer": self.layer,
            "depth": self.depth,
            "status": self.status,
            "global": self.global_,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.method is not None:
            out["method"] = self.method
        for field in ("size", "stride", "offset", "padding", "input_shape", "output_shape", "measured_shape"):
            pair = getattr(self, field)
            out[f"{field}_h"] = None if pair is None else float(pair.h)
            out[f"{field}_w"] = None if pair is None else float(pair.w)
        return out


def _spatial_layers(model: Any, names: Sequence[str], shape: tuple[int, int, int]) -> list[str]:
    """The ``names`` whose outputs are non-empty NHWC feature maps at ``shape``."""
    if isinstance(model, ConvertedModel):  # its own (for Keras: one-channel) shape trace
        try:
            shapes = model.spatial_shapes(shape)
        except Exception as e:  # any failure of the model at this size
            raise RFCallError(
                f"the model cannot run on a {shape[0]}x{shape[1]} input ({cause(e)}); "
                "check input_shape against the model."
            ) from e
        dims = {n: shapes[n] for n in names}
    else:
        out = jax.eval_shape(model.with_outputs(list(names)), constant_input(shape))
        dims = {n: tuple(getattr(out[n], "shape", ())) for n in names}
    return [n for n in names if isinstance(dims[n], tuple) and len(dims[n]) == 4 and min(dims[n][1:3]) >= 1]


def sweep_layers(
    model: Any,
    input_shape: Sequence[int] | None = None,
    *,
    layers: Sequence[str] | None = None,
    params: Any = None,
    grow: bool = False,
    max_input: int = MAX_INPUT,
    on_row: Callable[[LayerRF], None] | None = None,
) -> list[LayerRF]:
    """RF size, stride, offset and padding of every spatial layer.

    Args:
      model: a converted Keras model (``converters.from_keras``), or a JAX function
        ``x -> {layer name: feature map}`` (``fn(params, x)`` with ``params``).
      input_shape: ``(H, W, C)``; a converted model's own input shape by default.
      layers: which layers (default: every layer whose output is a 4-D feature map).
      grow: grow the input for layers whose RF reaches past it (up to ``max_input``).
      on_row: called with each row as soon as it is measured.

    Returns:
      One :class:`LayerRF` per layer, in graph order.
    """
    converted = resolve_model(model, input_shape)
    if converted is not None:
        model = converted
        if input_shape is None:
            input_shape = model.input_shape
    if input_shape is None or any(v is None for v in input_shape):
        raise RFError("input_shape is missing: pass input_shape=(H, W, C) for the sweep.")
    shape = tuple(int(v) for v in input_shape)
    if converted is not None:
        if layers is None:
            names = [n for n in model.layer_names if n != model.input_name]
        else:
            names = list(layers)
        unknown = [n for n in names if n not in model.layer_names]
        if unknown:
            model.with_outputs(unknown[:1])  # raises with near-name suggestions
        names = _spatial_layers(model, names, (int(shape[0]), int(shape[1]), int(shape[2])))
    else:
        order: list = []

        def traced(x):  # the dict as built, before pytree flattening sorts its keys
            out = model(x) if params is None else model(params, x)
            order.extend(out.keys() if isinstance(out, dict) else [])
            return out

        out = jax.eval_shape(traced, constant_input(shape))
        if not isinstance(out, dict):
            raise RFError("model must return a dict {layer name: feature map} for a layer sweep.")
        names = [n for n in (layers or order) if len(getattr(out.get(n), "shape", ())) == 4]
    if converted is not None:
        return _sweep_converted(model, names, (shape[0], shape[1], shape[2]), grow, max_input, on_row)
    rows = []
    for depth, name in enumerate(names):
        row = _row(name, depth, shape, grow, _fit_one(model, params, name, shape, grow, max_input))
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _fit_one(fn: Any, params: Any, name: str, shape, grow: bool, max_input: int) -> ReceptiveField | RFError:
    """One layer of a JAX function measured alone: its RF, or the RFError that says why not."""
    try:
        rf = receptive_field(fn, shape, params=params, grow=grow, max_input=max_input, outputs=[name])
    except RFError as e:  # one layer's failure must not end the sweep
        return e
    return rf[name] if isinstance(rf, dict) else rf


def _sources(model: ConvertedModel, names: Sequence[str], shape: tuple[int, ...]) -> dict[str, str]:
    """``{layer: measured layer}`` for the layers whose RF is their input's by construction
    (:meth:`~rfjax.contract.ConvertedModel.rf_source`, same grid), followed back to a
    layer of ``names`` that is measured."""
    shapes = model.spatial_shapes(shape)
    wanted = set(names)
    direct = {}
    for name in names:
        src = model.rf_source(name)
        if src in wanted and shapes[src][1:3] == shapes[name][1:3]:
            direct[name] = src
    out = {}
    for name, src in direct.items():
        while src in direct:
            src = direct[src]
        out[name] = src
    return out


def _sweep_converted(
    model: ConvertedModel,
    names: list[str],
    shape: tuple[int, int, int],
    grow: bool,
    max_input: int,
    on_row: Callable[[LayerRF], None] | None,
) -> list[LayerRF]:
    """Every layer of a converted model from a few grouped programs (:mod:`rfjax.layer_fit`);
    per-pixel layers take their input's row (``method="as <layer>"``), unless that row is
    an error (then they are measured themselves)."""
    depth = {n: d for d, n in enumerate(names)}
    sources = _sources(model, names, shape)
    waiting: dict[str, list[str]] = {}
    for name, src in sources.items():
        waiting.setdefault(src, []).append(name)
    rows: dict[str, LayerRF] = {}
    again: list[str] = []

    def emit(row: LayerRF) -> None:
        rows[row.layer] = row
        if on_row is not None:
            on_row(row)

    def done(part: dict) -> None:
        for name, outcome in part.items():
            row = _row(name, depth[name], shape, grow, outcome)
            emit(row)
            for follower in waiting.get(name, []):
                if row.status == "error":
                    again.append(follower)
                else:
                    emit(dataclasses.replace(row, layer=follower, depth=depth[follower], method=f"as {name}"))

    measured = [n for n in names if n not in sources]
    measure_layers(model, measured, shape, grow=grow, max_input=max_input, on_done=done)
    if again:
        measure_layers(model, again, shape, grow=grow, max_input=max_input, on_done=done)
    return sorted(rows.values(), key=lambda r: r.depth)


def _row(name: str, depth: int, shape, grow: bool, outcome: ReceptiveField | RFError) -> LayerRF:
    """The sweep row of one layer from its fit's outcome (an RF covering every input a
    growing fit tried is ``"global"``)."""
    if isinstance(outcome, RFGlobal):
        return LayerRF(
            name, depth, "global", None, None, None, None, HW(*outcome.input_shape), HW(0, 0), True
        )
    if isinstance(outcome, RFTooLarge):
        h, w = outcome.input_shape
        status = "global" if (outcome.everywhere and grow) else "larger"
        return LayerRF(name, depth, status, None, None, None, None, HW(h, w), HW(0, 0))
    if isinstance(outcome, RFError):
        return LayerRF(
            name, depth, "error", None, None, None, None, HW(*shape[:2]), HW(0, 0), error=str(outcome)
        )
    rf = outcome
    return LayerRF(
        name,
        depth,
        "ok",
        rf.size,
        rf.stride,
        rf.offset,
        rf.padding,
        rf.input_shape,
        rf.output_shape,
        rf.global_,
        measured_shape=rf.measured_shape,
        method=rf.method,
    )


def save_rows(rows: Sequence[LayerRF], path: str | os.PathLike) -> None:
    """Write rows as CSV (``.csv``) or JSON (``.json``); no pandas needed."""
    path = os.fspath(path)
    records = [r.as_dict() for r in rows]
    try:
        if path.endswith(".csv"):
            with open(path, "w", newline="") as f:
                fields = list(dict.fromkeys(k for r in records for k in r)) or ["layer"]
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(records)
        elif path.endswith(".json"):
            with open(path, "w") as f:
                json.dump(records, f, indent=1)
        else:
            raise RFError(f"path={path!r} must end in .csv or .json.")
    except OSError as e:
        raise RFError(f"path={path!r} cannot be written ({e.strerror}); pass a writable file.") from e
