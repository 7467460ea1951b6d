"""Localisation metrics of class activation maps: boxes, IoU, the pointing game."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rfjax.errors import RFError


def cam_box(heatmap: Any, threshold: float = 0.3) -> tuple[float, float, float, float] | None:
    """Bounding box ``(top, left, bottom, right)`` (continuous coordinates) of the largest
    connected region where ``heatmap (H, W) >= threshold * max`` (Zhou et al.'s localisation);
    ``None`` when the map has no positive value."""
    from scipy import ndimage

    m = np.asarray(heatmap, np.float64)
    top = m.max()
    if not top > 0:
        return None
    labels, n = ndimage.label(m >= threshold * top)
    sizes = ndimage.sum_labels(np.ones_like(m), labels, index=np.arange(1, n + 1))
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return (float(rows.start), float(cols.start), float(rows.stop), float(cols.stop))


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """Intersection over union of two ``(top, left, bottom, right)`` boxes (0 if either is ``None``)."""
    if a is None or b is None:
        return 0.0
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def pointing_game(points: Any, boxes: Any) -> float:
    """Fraction of points inside their box (the pointing game of Zhang et al. 2016, without
    tolerance): ``points (N, 2)`` ``(row, column)``, e.g. ``result.peaks()[:, 0]``, and
    ``boxes (N, 4)`` ``(top, left, bottom, right)``, continuous coordinates."""
    p = np.asarray(points, np.float64)
    b = np.asarray(boxes, np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or b.shape != (len(p), 4):
        raise RFError(
            f"points {p.shape} and boxes {b.shape} must be (N, 2) and (N, 4); pass one box per point."
        )
    hit = (p[:, 0] >= b[:, 0]) & (p[:, 0] < b[:, 2]) & (p[:, 1] >= b[:, 1]) & (p[:, 1] < b[:, 3])
    return float(hit.mean())
