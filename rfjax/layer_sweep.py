"""Layer sweeps: the RF of every spatial layer of one model, as a table and a plot.

One model serves every layer: a converted Keras model is prepared once and asked for
one layer at a time (each request compiles only the sub-graph that layer needs); a
JAX function returning a dict of feature maps is restricted to one key at a time.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from rfjax._types import HW
from rfjax.contract import ConvertedModel, resolve_model
from rfjax.errors import RFCallError, RFError, RFGlobal, RFTooLarge, cause
from rfjax.fit import receptive_field
from rfjax.growth import MAX_INPUT
from rfjax.prepare import constant_input


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
    :mod:`rfjax.growth`).
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
        names = _converted_layers(converted, layers, shape)
    else:
        names = _function_layers(model, params, layers, shape)
    rows = []
    for depth, name in enumerate(names):
        if (
            converted is not None
        ):  # receptive_field picks the one-channel prepared view and spots global branches
            one = {"fn": model, "params": None, "prepare": True, "layer": name}
        else:
            one = {"fn": model, "params": params, "prepare": True, "outputs": [name]}
        row = _measure(name, depth, shape, grow, max_input, **one)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _converted_layers(
    model: ConvertedModel, layers: Sequence[str] | None, shape: tuple[int, ...]
) -> list[str]:
    """The requested (default: all but the input) layers of a converted model that are
    feature maps at ``shape``; an unknown name raises with near-name suggestions."""
    names = [n for n in model.layer_names if n != model.input_name] if layers is None else list(layers)
    unknown = [n for n in names if n not in model.layer_names]
    if unknown:
        model.with_outputs(unknown[:1])  # raises with near-name suggestions
    return _spatial_layers(model, names, (int(shape[0]), int(shape[1]), int(shape[2])))


def _function_layers(
    fn: Callable, params: Any, layers: Sequence[str] | None, shape: tuple[int, ...]
) -> list[str]:
    """The requested (default: all, in the order ``fn`` builds its dict) outputs of a
    function ``x -> {name: map}`` that are 4-D feature maps at ``shape``."""
    order: list = []

    def traced(x):  # the dict as built, before pytree flattening sorts its keys
        out = fn(x) if params is None else fn(params, x)
        order.extend(out.keys() if isinstance(out, dict) else [])
        return out

    out = jax.eval_shape(traced, constant_input(shape))
    if not isinstance(out, dict):
        raise RFError("model must return a dict {layer name: feature map} for a layer sweep.")
    return [n for n in (layers or order) if len(getattr(out.get(n), "shape", ())) == 4]


def _measure(
    name: str, depth: int, shape, grow: bool, max_input: int, *, fn, params, prepare, outputs=None, layer=None
) -> LayerRF:
    try:
        rf = receptive_field(
            fn,
            shape,
            params=params,
            prepare=prepare,
            grow=grow,
            max_input=max_input,
            outputs=outputs,
            layer=layer,
        )
    except RFGlobal as e:
        return LayerRF(name, depth, "global", None, None, None, None, HW(*e.input_shape), HW(0, 0), True)
    except RFTooLarge as e:
        h, w = e.input_shape
        return LayerRF(
            name,
            depth,
            "global" if (e.everywhere and grow) else "larger",
            None,
            None,
            None,
            None,
            HW(h, w),
            HW(0, 0),
        )
    except RFError as e:  # one layer's failure must not end the sweep
        return LayerRF(name, depth, "error", None, None, None, None, HW(*shape[:2]), HW(0, 0), error=str(e))
    if isinstance(rf, dict):
        rf = rf[name]
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


def plot_layers(rows: Sequence[LayerRF], *, save: str | os.PathLike | None = None):
    """RF size (h and w) against layer depth, with the input size marked.

    Layers whose RF reaches past the input are drawn at the input size with an open
    marker (a lower bound). Returns a matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    if not rows:
        raise RFError("rows is empty: nothing to plot.")
    fig = Figure(figsize=(max(6.4, 0.28 * len(rows)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    depth = np.array([r.depth for r in rows])
    for axis, marker in (("h", "o"), ("w", "s")):
        ok = np.array([r.status == "ok" for r in rows])
        sizes = np.array([getattr(r.size, axis) if r.size is not None else math.nan for r in rows])
        ax.plot(
            depth[ok], sizes[ok], marker=marker, ms=4, lw=1, label=f"RF size ({axis})", gid=f"size-{axis}"
        )
        bound = np.array([getattr(r.input_shape, axis) for r in rows], float)
        past = np.array([r.status in ("larger", "global") for r in rows])
        if past.any():
            ax.plot(
                depth[past],
                bound[past],
                ls="none",
                marker=marker,
                mfc="none",
                label=f"> input ({axis})",
                gid=f"bound-{axis}",
            )
    size_in = (
        max(max(r.input_shape) for r in rows if r.status == "ok")
        if any(r.status == "ok" for r in rows)
        else None
    )
    if size_in:
        ax.axhline(size_in, color="0.4", ls="--", lw=1, label=f"input size {size_in:g}", gid="input-size")
    ax.set_xticks(depth, [r.layer for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("RF size (pixels)")
    ax.set_title("Receptive field size by layer")
    ax.legend(fontsize=8)
    if save is not None:
        try:
            fig.savefig(save, dpi=100)
        except OSError as e:
            raise RFError(
                f"save={os.fspath(save)!r} cannot be written ({e.strerror}); pass a writable path."
            ) from e
    return fig
