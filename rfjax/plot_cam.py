"""Figures of class activation maps and effective receptive fields.

Same conventions as :mod:`rfjax.plot`: :class:`matplotlib.figure.Figure` built directly (no
pyplot), images drawn with ``imshow(..., extent=(0, W, H, 0))`` so data coordinates are
continuous input coordinates (x = column, y = row, pixel ``i`` spans ``[i, i + 1)``), and
``save=`` writes a PNG at 100 dpi.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Ellipse

from rfjax import canvas
from rfjax.activation_maps import CAMResult, cam_box
from rfjax.canvas import check_image, check_save, finish, frame, legend_below, new_figure, titled
from rfjax.erf import EffectiveRF
from rfjax.errors import RFError

__all__ = ["cam_overlay", "erf_map"]

#: Size of one panel of :func:`cam_overlay`, inches.
PANEL = 3.2


def cam_overlay(
    result: CAMResult,
    images: np.ndarray,
    *,
    image: int = 0,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.3,
    cmap: str = "jet",
    alpha: float = 0.5,
    box: Sequence[float] | None = None,
    save: str | os.PathLike | None = None,
) -> Figure:
    """The image, then one panel per explained class with its CAM over the image.

    Each map is normalised by the maximum of the image's first (best) class map (Zhou et al.);
    values below ``threshold`` are not drawn. Titles read ``"<class> p=<probability>"``.

    Args:
      result: a :class:`CAMResult`.
      images: the images the result was computed on, ``(N, H, W, C)`` (or ``(H, W, C)``).
      image: which image of the batch to draw.
      class_names: names of the classes (default ``"class <index>"``).
      threshold: fraction of the maximum below which the map is transparent, in ``[0, 1)``.
      cmap, alpha: colormap and opacity of the map.
      box: a ground-truth ``(top, left, bottom, right)`` box to draw on every panel (gid
        ``"box"``).
      save: path of a PNG file to write.

    Returns:
      The figure: axes 0 shows the image; axes ``j + 1`` the image and the thresholded map of
      class ``result.classes[image, j]`` (a masked array, gid ``"cam"``), the map's peak
      (:meth:`CAMResult.peaks`, gid ``"peak"``) and the box of its largest region above the
      threshold (:func:`rfjax.activation_maps.cam_box`, gid ``"cam-box"``).
    """
    path = check_save(save)
    n, k = result.classes.shape
    if not isinstance(image, (int, np.integer)) or not 0 <= image < n:
        raise RFError(f"image={image!r} is outside the batch of {n}; pass an index 0..{n - 1}.")
    if not 0 <= threshold < 1:
        raise RFError(f"threshold={threshold!r} must be a fraction of the maximum in [0, 1), e.g. 0.3.")
    img = _batch_image(result, images, image)
    h, w = img.shape[:2]
    fig = Figure(figsize=(PANEL * (k + 1), PANEL + 0.4), layout="constrained")
    axes = fig.subplots(1, k + 1, squeeze=False)[0]
    _show(axes[0], img)
    axes[0].set_title(f"image {image}")
    maps, peaks = result.normalised()[image], result.peaks()[image]
    for j in range(k):
        c = int(result.classes[image, j])
        name = class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"
        found = cam_box(result.upsampled[image, j], threshold)
        _cam_panel(axes[j + 1], img, maps[j], peaks[j], found, threshold, cmap, alpha)
        axes[j + 1].set_title(f"{name} p={float(result.probabilities[image, j]):.2f}")
    for ax in axes:
        if box is not None:
            ax.add_patch(canvas.box(box, "lime", "box", "ground truth"))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{result.method} of layer {result.layer!r}, {result.placement} placement")
    return finish(fig, path)


def _batch_image(result: CAMResult, images: np.ndarray, image: int) -> np.ndarray:
    """Image ``image`` of the batch the CAMs were computed on, ready for imshow."""
    n = result.classes.shape[0]
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    if imgs.ndim != 4 or len(imgs) != n:
        raise RFError(f"images has shape {np.shape(images)}; pass the {n} images the CAMs were computed on.")
    return check_image(imgs[image], (int(result.input_shape.h), int(result.input_shape.w)))


def _cam_panel(
    ax: Axes,
    img: np.ndarray,
    cam: np.ndarray,
    peak: np.ndarray,
    found,
    threshold: float,
    cmap: str,
    alpha: float,
) -> None:
    """The image, the normalised ``cam`` above ``threshold``, its ``peak`` ``(row, column)``
    and the box ``found`` of its largest region (``None``: no region)."""
    h, w = img.shape[:2]
    _show(ax, img)
    shown = np.ma.masked_less(cam, threshold)
    ax.imshow(
        shown,
        extent=(0, w, h, 0),
        cmap=cmap,
        alpha=alpha,
        vmin=0.0,
        vmax=1.0,
        interpolation="bilinear",
        gid="cam",
    )
    ax.scatter([peak[1]], [peak[0]], marker="+", s=120, c="white", linewidths=2, gid="peak", zorder=5)
    if found is not None:
        ax.add_patch(canvas.box(found, "white", "cam-box", f"CAM >= {threshold:g} max"))


def _show(ax: Axes, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    shown: dict[str, Any] = {"cmap": "gray"} if img.ndim == 2 else {}
    ax.imshow(img, extent=(0, w, h, 0), interpolation="nearest", **shown)


def erf_map(erf: EffectiveRF, *, ax: Axes | None = None, save: str | os.PathLike | None = None) -> Figure:
    """The effective RF map with the theoretical RF box, the mass radius and the Gaussian fit.

    Returns:
      The figure: the map (``extent=(0, W, H, 0)``), the theoretical RF rectangle
      ``erf.rf_rect`` (gid ``"rf"``, when known), the circle of radius ``erf.radius`` around
      ``erf.centre`` (gid ``"erf-radius"``) and the 2-sigma ellipse of the fitted Gaussian
      (gid ``"sigma"``).
    """
    path = check_save(save)
    h, w = erf.map.shape
    fig, ax = new_figure(ax)
    im = ax.imshow(erf.map, cmap="viridis", extent=(0, w, h, 0), interpolation="nearest", vmin=0.0)
    ax.figure.colorbar(im, ax=ax, label="mean |input gradient|")
    if erf.rf_rect is not None and erf.rf is not None:
        label = f"theoretical RF {erf.rf.size.h:g}x{erf.rf.size.w:g} px"
        ax.add_patch(canvas.box(erf.rf_rect, "tab:red", "rf", label, linewidth=1.5))
    ax.add_patch(
        Circle(
            (erf.centre.w, erf.centre.h),
            erf.radius,
            fill=False,
            edgecolor="white",
            linewidth=1.5,
            linestyle="--",
            gid="erf-radius",
            label=f"{erf.mass:.0%} of the gradient (r={erf.radius:.1f} px)",
        )
    )
    ax.add_patch(
        Ellipse(
            (erf.gaussian_centre.w, erf.gaussian_centre.h),
            4 * erf.sigma.w,
            4 * erf.sigma.h,
            fill=False,
            edgecolor="tab:orange",
            linewidth=1.5,
            gid="sigma",
            label=f"Gaussian 2 sigma ({erf.sigma.h:.1f}, {erf.sigma.w:.1f}) px",
        )
    )
    frame(ax, h, w)
    legend_below(ax)
    name = "the output" if erf.name is None else f"{erf.name!r}"
    titled(ax, f"effective RF of cell {erf.cell} of {name}\nover {erf.n_inputs} input(s)")
    return finish(fig, path)
