"""Plots of gradient maps and receptive fields (RF), in the style of the ``receptivefield`` package.

Conventions (the same as the rest of rfjax):

* Arrays are NHWC; pairs are ``(h, w)`` in array order.
* Input coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``. Images are drawn with
  ``imshow(..., extent=(0, W, H, 0))`` (origin upper left), so a data point ``(x, y)`` on the
  axes is column ``x`` (the ``w`` axis) and row ``y`` (the ``h`` axis), and RF rectangles from
  :meth:`ReceptiveField.rect` are drawn in the same coordinates without any half-pixel shift.

Every function builds its figure with :class:`matplotlib.figure.Figure` directly (no pyplot
state), so it works headless, leaks no global figures and never changes the backend. Each
returns the figure; ``save=`` also writes it as a PNG at 100 dpi (pixel size = figure size in
inches x 100).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rfjax._types import GradientMaps, ReceptiveField
from rfjax.canvas import box, check_image, check_save, finish, frame, legend_below, new_figure, titled
from rfjax.errors import RFError

__all__ = ["gradient_at", "rf_grid"]

from rfjax.canvas import DPI, FIGSIZE, MARGIN  # noqa: F401 - re-exported figure constants

_CELL_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink")


def gradient_at(
    maps: GradientMaps,
    cell: tuple[int, int],
    rf: ReceptiveField | None = None,
    *,
    ax: Axes | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Draw the input gradient of one output cell, its support box and optionally the fitted RF.

    Args:
      maps: gradient maps of one feature map (``maps.at(cell)`` is ``(H, W)`` or ``(H, W, C)``;
        with a channel axis the heatmap is ``sum_c |g[..., c]|``).
      cell: ``(i, j)`` grid index of the output cell, ``0 <= i < Ho``, ``0 <= j < Wo``; it must be
        one of ``maps.cells``.
      rf: if given, the fitted RF of the same feature map; the rectangle ``rf.rect(cell)`` is drawn
        in another colour with a legend.
      ax: axes to draw into (a colorbar is added next to it); a new figure when ``None``.
      save: path of a PNG file to write (100 dpi); its folder must exist and be writable.

    Returns:
      The figure. The heatmap is drawn with ``extent=(0, W, H, 0)``; the support box (the bounding
      box of ``g != 0``, NaN counting as reached) is the rectangle from column ``left`` / row
      ``top`` to ``right + 1`` / ``bottom + 1``, labelled ``"gradient support"`` (gid
      ``"support"``); the fitted RF rectangle has gid ``"rf"``.

    Raises:
      RFError: ``cell`` outside the grid or not computed, ``rf`` of another grid or input size,
        or ``save`` not in an existing, writable folder.
    """
    path = check_save(save)
    grid = _hw_int(maps.output_shape)
    cell = _check_cell(cell, grid, "cell")
    g, summed = _cell_gradient(maps, cell, grid)
    h, w = g.shape
    if rf is not None and (_hw_int(rf.output_shape) != grid or _hw_int(rf.input_shape) != (h, w)):
        raise RFError(
            f"rf is for a {_fmt(rf.output_shape)} grid on a {_fmt(rf.input_shape)} input but maps are "
            f"for a {grid} grid on a {(h, w)} input; pass the RF fitted from these maps."
        )
    fig, ax = new_figure(ax)
    box_colour, rf_colour = _heatmap(ax, g, summed)
    note = _support_box(ax, g, box_colour)
    if rf is not None:
        t, l, b, r = rect = rf.rect(cell)
        ax.add_patch(box(rect, rf_colour, "rf", f"fitted RF {b - t:g}x{r - l:g} px", linewidth=1.5))
    frame(ax, h, w)
    if ax.get_legend_handles_labels()[0]:
        legend_below(ax)
    titled(ax, f"input gradient of cell {cell}\nof {_name(maps.name)}{note}")
    return finish(fig, path)


def _cell_gradient(
    maps: GradientMaps, cell: tuple[int, int], grid: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """``(g, summed)``: the ``(H, W)`` gradient of ``cell`` (``sum_c |g|`` when ``summed``:
    the maps had a channel axis)."""
    try:
        g = np.asarray(maps.at(cell))
    except KeyError as e:
        computed = ", ".join(str(tuple(int(v) for v in c)) for c in np.asarray(maps.cells)[:4])
        more = ", ..." if len(maps.cells) > 4 else ""
        raise RFError(
            f"cell {cell} is inside the {grid[0]}x{grid[1]} grid but its gradient was not computed "
            f"(maps hold {computed}{more}); pass it in cells= when computing the maps."
        ) from e
    summed = g.ndim == 3
    if summed:
        g = np.abs(g).sum(axis=-1)
    if g.ndim != 2:
        raise RFError(
            f"maps.at({cell}) has shape {g.shape} but an (H, W) or (H, W, C) gradient is needed; "
            "pass GradientMaps as the engine returns them."
        )
    return g, summed


def _heatmap(ax: Axes, g: np.ndarray, summed: bool) -> tuple[str, str]:
    """Draw ``g`` with a colorbar (diverging when it has negative values); returns the
    colours ``(support box, fitted RF)`` that read on it."""
    h, w = g.shape
    finite = g[np.isfinite(g)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    shown: dict[str, Any] = {"extent": (0, w, h, 0), "interpolation": "nearest"}
    if lo < 0:
        m = max(-lo, hi) or 1.0
        colours = ("black", "tab:green")
        im = ax.imshow(g, cmap="RdBu_r", vmin=-m, vmax=m, **shown)
    else:
        colours = ("white", "tab:red")
        im = ax.imshow(g, cmap="viridis", vmin=0.0, vmax=hi or 1.0, **shown)
    ax.figure.colorbar(
        im, ax=ax, label="sum over channels of |input gradient|" if summed else "input gradient"
    )
    return colours


def _support_box(ax: Axes, g: np.ndarray, colour: str) -> str:
    """Draw the bounding box of ``g != 0`` (NaN counting as reached); returns a title note
    when there is none."""
    support = g != 0  # NaN != 0, so a NaN gradient counts as reached
    rows = np.flatnonzero(support.any(axis=1))
    cols = np.flatnonzero(support.any(axis=0))
    if not rows.size:
        return " (gradient is zero everywhere)"
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    label = f"gradient support {bottom - top}x{right - left} px"
    ax.add_patch(box((top, left, bottom, right), colour, "support", label, linewidth=1.5, linestyle="--"))
    return ""


def rf_grid(
    rf: ReceptiveField,
    image: np.ndarray | None = None,
    *,
    cells: Iterable[tuple[int, int]] | None = None,
    ax: Axes | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Draw RF rectangles of a few grid cells and the RF centres of all cells over an image.

    Args:
      rf: the receptive field of one feature map.
      image: ``(H, W)``, ``(H, W, C)`` with ``C`` in 1, 3, 4, or NHWC ``(1, H, W, C)``, with
        ``(H, W) == rf.input_shape``; uint8 or floats (rescaled to [0, 1] if outside it). A blank
        white canvas of ``rf.input_shape`` when ``None``.
      cells: grid cells whose RF rectangle to draw; by default the first ``(0, 0)``, centre
        ``(Ho // 2, Wo // 2)`` and last ``(Ho - 1, Wo - 1)`` cells (duplicates dropped).
      ax: axes to draw into; a new figure when ``None``.
      save: path of a PNG file to write (100 dpi); its folder must exist and be writable.

    Returns:
      The figure. The image is drawn with ``extent=(0, W, H, 0)``; each RF rectangle is
      ``rf.rect(cell)`` in those coordinates (x = column, y = row), labelled ``"cell (i, j)"``
      (gid ``"rf-i-j"``); the centres ``offset + (i, j) * stride`` of all ``Ho * Wo`` cells are one
      scatter (gid ``"anchors"``) with x = w centre, y = h centre. Rectangles may extend beyond
      the image (RF larger than the input, 'same' padding): the image border is drawn (gid
      ``"image-border"``) and the axes show a margin of 5% of the larger side around it, so
      clipped rectangles are visible as such.

    Raises:
      RFError: ``image`` of the wrong shape, a cell outside the grid, or ``save`` not in an
        existing, writable folder.
    """
    path = check_save(save)
    h, w = _hw_int(rf.input_shape)
    ho, wo = grid = _hw_int(rf.output_shape)
    if cells is None:
        chosen = list(dict.fromkeys([(0, 0), (ho // 2, wo // 2), (ho - 1, wo - 1)]))
    else:
        chosen = list(dict.fromkeys(_check_cell(c, grid, "cells") for c in cells))
    img = None if image is None else check_image(image, (h, w))

    fig, ax = new_figure(ax)
    _image(ax, img, h, w)
    for k, c in enumerate(chosen):
        colour = _CELL_COLOURS[k % len(_CELL_COLOURS)]
        ax.add_patch(box(rf.rect(c), colour, f"rf-{c[0]}-{c[1]}", f"cell {c}"))
    _anchors(ax, rf)
    frame(ax, h, w)
    legend_below(ax)
    titled(
        ax, f"RF of {_name(rf.name)}\nsize {_fmt(rf.size)} stride {_fmt(rf.stride)} offset {_fmt(rf.offset)}"
    )
    return finish(fig, path)


def _image(ax: Axes, img: np.ndarray | None, h: int, w: int) -> None:
    """Draw ``img`` (grey when 2-D), or a blank white ``h x w`` canvas when ``None``."""
    shown: dict[str, Any] = {"extent": (0, w, h, 0), "interpolation": "nearest"}
    if img is None:
        ax.imshow(np.ones((h, w)), cmap="gray", vmin=0.0, vmax=1.0, **shown)
    elif img.ndim == 2:
        ax.imshow(img, cmap="gray", **shown)
    else:
        ax.imshow(img, **shown)


def _anchors(ax: Axes, rf: ReceptiveField) -> None:
    """One scatter of the RF centres ``offset + (i, j) * stride`` of all grid cells."""
    ho, wo = _hw_int(rf.output_shape)
    ii, jj = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    ys = rf.offset.h + ii.ravel() * rf.stride.h
    xs = rf.offset.w + jj.ravel() * rf.stride.w
    label = f"RF centres ({ho}x{wo})"
    ax.scatter(
        xs, ys, s=10, c="gold", edgecolors="black", linewidths=0.3, zorder=3, gid="anchors", label=label
    )


# ---------------------------------------------------------------------------------------------
# helpers


def _hw_int(p: Sequence[float]) -> tuple[int, int]:
    return int(p[0]), int(p[1])


def _fmt(p: Sequence[float]) -> str:
    return f"({p[0]:g}, {p[1]:g})"


def _name(name: str | int | None) -> str:
    return "the output" if name is None else f"feature map {name!r}"


def _check_cell(cell: object, grid: tuple[int, int], arg: str) -> tuple[int, int]:
    """``cell`` as a pair of Python ints inside ``grid``, else RFError naming ``arg``."""
    try:
        pair = tuple(np.asarray(cell).reshape(-1).tolist())
    except Exception:  # noqa: BLE001 - anything that is not array-like
        pair = ()
    ok = len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    if not ok or not (0 <= pair[0] < grid[0] and 0 <= pair[1] < grid[1]):
        what = f"cell {tuple(pair) if ok else cell!r}"
        raise RFError(
            f"{arg} has {what} outside the {grid[0]}x{grid[1]} grid; pass (i, j) with "
            f"0 <= i < {grid[0]} and 0 <= j < {grid[1]}."
            if arg == "cells"
            else f"{what} is outside the {grid[0]}x{grid[1]} grid; pass (i, j) with "
            f"0 <= i < {grid[0]} and 0 <= j < {grid[1]}."
        )
    return int(pair[0]), int(pair[1])
