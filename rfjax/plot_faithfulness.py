"""The deletion and insertion curves of :func:`rfjax.cam_metrics` (matplotlib, imported lazily)."""

from __future__ import annotations

import os

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rfjax.activation_maps.faithfulness import CAMMetrics
from rfjax.canvas import check_save, finish, legend_below, new_figure
from rfjax.errors import RFError


def plot_deletion_insertion(
    metrics: CAMMetrics,
    *,
    image: int | None = None,
    ax: Axes | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """Score against the fraction of pixels deleted (most relevant first) and inserted.

    Args:
      metrics: from :func:`rfjax.cam_metrics`.
      image: which image's curves; ``None`` (default): the mean over the images.
      ax: draw into these axes (default: a new figure).
      save: write the figure to this ``.png`` path.

    Returns:
      The figure: two lines, gid ``"deletion"`` and ``"insertion"``, x = ``metrics.fractions``,
      y = the scores, labelled with their AUC.
    """
    if not isinstance(metrics, CAMMetrics):
        raise RFError(f"metrics must be a CAMMetrics (from rfjax.cam_metrics), not {type(metrics).__name__}.")
    n = len(metrics.classes)
    if image is not None and (isinstance(image, bool) or not isinstance(image, int) or not 0 <= image < n):
        raise RFError(f"image={image!r} must be None (the mean) or an index 0 <= image < {n}.")
    path = check_save(save)
    fig, ax = new_figure(ax)
    pick = (lambda a: a.mean(axis=0)) if image is None else (lambda a: a[image])
    for name, colour in (("deletion", "tab:red"), ("insertion", "tab:blue")):
        curve, auc = pick(getattr(metrics, name)), float(pick(getattr(metrics, f"{name}_auc")))
        ax.plot(metrics.fractions, curve, color=colour, gid=name, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel("fraction of pixels deleted / inserted")
    ax.set_ylabel(f"class {metrics.score_kind}")
    ax.set_xlim(0, 1)
    which = "mean over images" if image is None else f"image {image}, class {int(metrics.classes[image])}"
    ax.set_title(f"Deletion and insertion ({which})")
    legend_below(ax)
    return finish(fig, path)
