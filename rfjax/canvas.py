"""Figure helpers shared by :mod:`rfjax.plot` and :mod:`rfjax.plot_cam`.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state);
images are drawn in continuous input coordinates (pixel ``i`` spans ``[i, i + 1)``,
origin upper left); ``save=`` paths are checked before anything is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rfjax.errors import RFError

#: Resolution of the PNG files written by ``save=``.
DPI = 100
#: Default figure size in inches (640 x 480 pixels at :data:`DPI`).
FIGSIZE = (6.4, 4.8)
#: Fraction of the larger image side added around the image so clipped rectangles show.
MARGIN = 0.05


def check_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The image as ``(H, W)`` or ``(H, W, 3|4)`` ready for imshow, else RFError naming ``image``."""
    a = np.asarray(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.shape[:2] != hw:
        raise RFError(
            f"image has shape {a.shape} but an (H, W), (H, W, C) or (1, H, W, C) image with (H, W) = {hw} "
            "(the input the RF was measured on) is needed; resize or crop it to that size."
        )
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        lo, hi = finite.min(), finite.max()
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.nan_to_num(a), 0.0, 1.0)


def check_save(save: str | os.PathLike | None) -> Path | None:
    """Fail before drawing if ``save`` cannot be written."""
    if save is None:
        return None
    path = Path(os.fspath(save))
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise RFError(f"save={str(path)!r} is a folder; pass the path of a .png file to write.")
    if not folder.is_dir():
        raise RFError(
            f"save={str(path)!r} is in folder {str(folder)!r}, which does not exist; create it first."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RFError(
            f"save={str(path)!r} is in folder {str(folder)!r}, which is not writable; pass another path."
        )
    return path


def new_figure(ax: Axes | None) -> tuple[Figure, Axes]:
    if ax is None:
        fig = Figure(figsize=FIGSIZE, layout="constrained")
        return fig, fig.add_subplot()
    return ax.figure.figure, ax  # the root figure, also when ax is in a SubFigure


def frame(ax: Axes, h: int, w: int) -> None:
    """Draw the image border and set limits to the image plus a small margin (origin upper)."""
    ax.add_patch(
        Rectangle(
            (0, 0),
            w,
            h,
            fill=False,
            edgecolor="black",
            linewidth=1.0,
            gid="image-border",
            label="_image border",
            zorder=4,
        )
    )
    m = MARGIN * max(h, w)
    ax.set_xlim(-m, w + m)
    ax.set_ylim(h + m, -m)
    ax.set_aspect("equal")


def box(
    rect: Sequence[float], colour: str, gid: str, label: str, linewidth: float = 2, linestyle: str = "-"
) -> Rectangle:
    """An unfilled rectangle for ``rect = (top, left, bottom, right)`` in image coordinates
    (x = column, y = row)."""
    t, l, b, r = (float(v) for v in rect)
    line: dict[str, Any] = {"edgecolor": colour, "linewidth": linewidth, "linestyle": linestyle}
    return Rectangle((l, t), r - l, b - t, fill=False, gid=gid, label=label, **line)


def titled(ax: Axes, title: str) -> None:
    """Set the title and name the image axes (x = w, the column; y = h, the row)."""
    ax.set_title(title)
    ax.set_xlabel("w (column)")
    ax.set_ylabel("h (row)")


def legend_below(ax: Axes) -> None:
    """Legend under the axes (below the x label), so it hides nothing that was drawn."""
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncols=2,
        fontsize="small",
        facecolor="0.85",
        edgecolor="none",
    )


def finish(fig: Figure, path: Path | None) -> Figure:
    if path is not None:
        try:
            fig.savefig(path, dpi=DPI, format="png")
        except OSError as e:
            raise RFError(
                f"save={str(path)!r} could not be written ({e.strerror or e}); pass another path."
            ) from e
    return fig
