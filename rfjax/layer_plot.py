"""The layer-sweep figure: RF size and stride against depth, readable at any depth.

One figure of fixed size whatever the number of layers: depth on x with ticks only
where the stride changes (the stage boundaries of a CNN, labelled with the first
layer of the stage), RF size on a log axis, the stride as a step line on a second
(log 2) axis, h and w drawn apart only when some layer's differ, the requested input
size as a dashed line, layers whose RF reaches past the largest input tried as open
markers at that size, and layers that also depend on the whole input (global pooling
branches) as crosses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rfjax.errors import RFError

if TYPE_CHECKING:
    from rfjax.layer_sweep import LayerRF

#: inches; the same for 10 layers and for 300
FIGSIZE = (9.0, 4.8)
#: at most this many labelled ticks on the depth axis
MAX_TICKS = 10


def _pairs(rows: Sequence[LayerRF], field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(h, w)`` arrays of ``field`` per row (NaN where the row has none)."""
    h = np.array(
        [getattr(getattr(r, field), "h", np.nan) if getattr(r, field) else np.nan for r in rows], float
    )
    w = np.array(
        [getattr(getattr(r, field), "w", np.nan) if getattr(r, field) else np.nan for r in rows], float
    )
    return h, w


def _axes_to_draw(h: np.ndarray, w: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``[("", values)]`` when h and w agree wherever known, else both, suffixed."""
    if np.array_equal(h, w, equal_nan=True):
        return [("", h)]
    return [("-h", h), ("-w", w)]


def stage_ticks(rows: Sequence[LayerRF]) -> list[int]:
    """Indices of the rows where the measured stride changes (a new stage), the first
    row always included; a change within 1/20 of the depth of the last tick is left
    out (labels would overlap), and the rest thinned evenly to at most :data:`MAX_TICKS`."""
    h, w = _pairs(rows, "stride")
    stride = np.fmax(h, w)
    gap = max(1.0, len(rows) / 20)
    ticks, last = [0], np.nan
    for i, s in enumerate(stride):
        if np.isnan(s):
            continue
        if not np.isnan(last) and s != last and i - ticks[-1] >= gap:
            ticks.append(i)
        last = s
    if len(ticks) > MAX_TICKS:
        keep = np.unique(np.linspace(0, len(ticks) - 1, MAX_TICKS).round().astype(int))
        ticks = [ticks[k] for k in keep]
    return ticks


def plot_layers(rows: Sequence[LayerRF], *, save: str | os.PathLike | None = None) -> Any:
    """RF size (log) and stride (step line, second axis) against layer depth.

    Args:
      rows: a layer sweep (:func:`rfjax.sweep_layers`), in depth order.
      save: a file to write (PNG, PDF, SVG, ...), optional.

    Returns:
      A matplotlib ``Figure`` of :data:`FIGSIZE`; its artists carry ``gid`` names:
      ``size`` (or ``size-h`` / ``size-w``), ``stride`` (or ``stride-h`` / ``stride-w``),
      ``input-size`` (or ``input-size-h`` / ``-w``), ``larger`` and ``global``.
    """
    from matplotlib.figure import Figure

    if not rows:
        raise RFError("rows is empty: nothing to plot.")
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    depth = np.array([r.depth for r in rows])
    size_h, size_w = _pairs(rows, "size")
    for suffix, values in _axes_to_draw(size_h, size_w):
        label = "RF size" + (f" ({suffix[1:]})" if suffix else "")
        ax.plot(depth, values, marker="o", ms=2.5, lw=1.2, label=label, gid="size" + suffix)
    _mark_bounds(ax, rows, depth)
    measured = [r for r in rows if r.status == "ok"] or list(rows)  # others carry the last size tried
    for suffix, values in _axes_to_draw(*_pairs(measured[:1], "input_shape")):
        ax.axhline(
            values[0], color="0.4", ls="--", lw=1, label=f"input {values[0]:g}", gid="input-size" + suffix
        )
    ax.set_yscale("log")
    ax.set_ylabel("RF size (pixels, log)")
    ax.set_xlabel("layer depth")
    ticks = stage_ticks(rows)
    ax.set_xticks(depth[ticks], [rows[i].layer for i in ticks], rotation=30, ha="right", fontsize=7)
    ax.set_xlim(depth[0] - 0.5, depth[-1] + 0.5)
    right = ax.twinx()
    for suffix, values in _axes_to_draw(*_pairs(rows, "stride")):
        label = "stride" + (f" ({suffix[1:]})" if suffix else "")
        right.step(
            depth, values, where="post", color="tab:gray", lw=1, alpha=0.8, label=label, gid="stride" + suffix
        )
    right.set_yscale("log", base=2)
    right.set_ylabel("stride (pixels, log 2)")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left")
    ax.set_title(f"Receptive field by layer ({len(rows)} layers)")
    return _save(fig, save)


def _mark_bounds(ax: Any, rows: Sequence[LayerRF], depth: np.ndarray) -> None:
    """Open markers at the input size for RFs past it; crosses on global layers."""
    past = np.array([r.status in ("larger", "global") for r in rows])
    if past.any():
        bound = np.array([max(r.input_shape) for r in rows], float)
        ax.plot(depth[past], bound[past], ls="none", marker="^", mfc="none", label="RF > input", gid="larger")
    glob = np.array([r.global_ or r.status == "global" for r in rows])
    if glob.any():
        at = np.array([max(r.size) if r.size is not None else max(r.input_shape) for r in rows], float)
        ax.plot(
            depth[glob], at[glob], ls="none", marker="x", color="tab:red", label="global branch", gid="global"
        )


def _arch_curves(rows: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """Per architecture and input (``"VGG16 224x224x3"``, or the name alone when every
    entry has one input): ``(depth, RF size, marked global)`` of its measured layers in
    depth order; the size is the larger of h and w."""
    per: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("size_h") is not None and "layer" in r:
            per.setdefault((r["arch"], "x".join(map(str, r["input"]))), []).append(r)
    inputs: dict[str, set[str]] = {}
    for arch, shape in per:
        inputs.setdefault(arch, set()).add(shape)
    curves = {}
    for (arch, shape), got in per.items():
        got.sort(key=lambda r: r.get("depth", 0))
        label = arch if len(inputs[arch]) == 1 else f"{arch} {shape}"
        depth = np.array([r.get("depth", 0) for r in got], float)
        size = np.array([max(r["size_h"], r["size_w"]) for r in got], float)
        curves[label] = (depth, size, bool(got[-1].get("global")))
    return curves


def plot_sweep(rows: Sequence[dict] | str | os.PathLike, *, save: str | os.PathLike | None = None) -> Any:
    """RF size against depth, one line per architecture, from an ``rfjax sweep`` file.

    Args:
      rows: the sweep's rows (:func:`rfjax.arch_sweep.read_rows`) or the path of its
        ``--out`` file. Rows that are not measured (``larger``, ``global``, errors) are left out.
      save: a file to write (PNG, PDF, SVG, ...), optional.

    Returns:
      A matplotlib ``Figure`` of :data:`FIGSIZE`: x is the layer depth (the layer's index
      in the swept order), y the RF size (larger of h and w, log axis). Each architecture's
      line has ``gid`` ``"arch:<label>"`` and ends in a marker at its final (deepest)
      layer, labelled with its RF size in the legend; a sweep of final layers only gives
      one marker per architecture.
    """
    from matplotlib.figure import Figure

    from rfjax.arch_sweep import read_rows

    if isinstance(rows, (str, os.PathLike)):
        rows = read_rows(rows)
    curves = _arch_curves(rows)
    if not curves:
        raise RFError("the sweep has no measured layer rows to plot (status 'ok').")
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    for label, (depth, size, glob) in sorted(curves.items(), key=lambda kv: -kv[1][1][-1]):
        (line,) = ax.plot(depth, size, lw=1.2, gid=f"arch:{label}")
        end = f"{size[-1]:g}" + (" (global)" if glob else "")
        ax.plot(depth[-1:], size[-1:], marker="o", color=line.get_color(), ls="none", label=f"{label}: {end}")
    ax.set_yscale("log")
    ax.set_xlabel("layer depth")
    ax.set_ylabel("RF size (pixels, log)")
    ax.set_title(f"Receptive field by depth ({len(curves)} architectures)")
    ax.legend(fontsize=7, ncols=2 if len(curves) > 8 else 1, loc="upper left")
    return _save(fig, save)


def _save(fig: Any, save: str | os.PathLike | None) -> Any:
    """Write ``fig`` to ``save`` (format from its suffix) when given; ``fig``."""
    if save is not None:
        try:
            fig.savefig(save, dpi=100)
        except OSError as e:
            raise RFError(
                f"save={os.fspath(save)!r} cannot be written ({e.strerror}); pass a writable path."
            ) from e
    return fig
