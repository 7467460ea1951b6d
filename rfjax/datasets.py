"""Generated data with a known answer, for examples and tests (no downloads).

:func:`shapes` draws one filled shape (square, disc, triangle, cross) per image at a random
position and scale over random clutter (a smooth coloured background and thin line
segments), and returns the class of the shape and its bounding box, so localisation
methods such as CAM can be scored against ground truth.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rfjax.errors import RFError

__all__ = ["SHAPE_NAMES", "Shapes", "shapes"]

#: The classes of :func:`shapes`, in label order.
SHAPE_NAMES = ("square", "disc", "triangle", "cross")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """A generated data set.

    Attributes:
      images: ``(n, size, size, 3)`` float32 in ``[0, 1]``, NHWC.
      labels: ``(n,)`` int class index into ``class_names``.
      boxes: ``(n, 4)`` float ``(top, left, bottom, right)`` of each shape, continuous
        coordinates (pixel ``i`` spans ``[i, i + 1)``): the tight box of its pixels.
      class_names: the names of the classes.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    class_names: tuple[str, ...] = SHAPE_NAMES

    def __len__(self) -> int:
        return len(self.labels)


def _shape_masks(
    kinds: np.ndarray, cy: np.ndarray, cx: np.ndarray, side: np.ndarray, size: int
) -> np.ndarray:
    """``(n, size, size)`` pixels (by centre) inside shape ``kinds[i]`` of side ``side[i]``
    centred at ``(cy[i], cx[i])``."""
    centres = np.arange(size) + 0.5
    dy = centres[None, :, None] - cy[:, None, None]
    dx = centres[None, None, :] - cx[:, None, None]
    half = (side / 2)[:, None, None]
    kinds = kinds[:, None, None]
    square = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    disc = dy**2 + dx**2 <= half**2
    t = (dy + half) / (2 * half)  # triangle, apex up: 0 at the apex, 1 at the base
    triangle = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * half)
    arm = half / 3  # cross: two bars of width side / 3
    cross = ((np.abs(dy) <= half) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= half) & (np.abs(dy) <= arm))
    return np.where(kinds == 0, square, np.where(kinds == 1, disc, np.where(kinds == 2, triangle, cross)))


def _clutter(rng: np.random.Generator, n: int, size: int, lines: int) -> np.ndarray:
    """``(n, size, size, 3)``: a smooth random colour field, pixel noise and thin line segments."""
    coarse = rng.uniform(0.0, 0.45, size=(n, 5, 5, 3))
    u = np.linspace(0, 4, size)
    hat = np.maximum(0.0, 1.0 - np.abs(u[:, None] - np.arange(5)[None, :]))  # (size, 5) bilinear weights
    img = np.einsum("Hh,nhwc,Ww->nHWc", hat, coarse, hat, optimize=True)
    img += rng.normal(0.0, 0.04, size=img.shape)
    if lines:
        start = rng.uniform(0, size, size=(n, lines, 2, 1))
        angle = rng.uniform(0, np.pi, size=(n, lines, 1))
        length = rng.uniform(4, size / 4, size=(n, lines, 1))
        t = np.linspace(0.0, 1.0, size) * length  # (n, lines, size) points along each segment
        ys = np.clip(start[:, :, 0] + t * np.sin(angle), 0, size - 1).astype(int)
        xs = np.clip(start[:, :, 1] + t * np.cos(angle), 0, size - 1).astype(int)
        colour = rng.uniform(0.3, 1.0, size=(n, lines, 1, 3))
        img[np.arange(n)[:, None, None], ys, xs] = np.broadcast_to(colour, ys.shape + (3,))
    return img


def shapes(
    n: int,
    size: int = 64,
    *,
    seed: int = 0,
    scale: tuple[float, float] = (0.25, 0.45),
    lines: int = 6,
) -> Shapes:
    """``n`` images of one shape each (square, disc, triangle, cross) on random clutter.

    Args:
      n: number of images; the classes are balanced (``label = i mod 4`` before shuffling).
      size: image height and width in pixels (at least 16).
      seed: seed of the generator; the same arguments give the same data.
      scale: range of the shape's side as a fraction of ``size``.
      lines: number of thin random line segments of clutter per image.

    Returns:
      A :class:`Shapes` with images, labels and bounding boxes.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise RFError(f"n={n!r} must be a positive number of images.")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise RFError(f"size={size!r} must be an integer of at least 16 pixels.")
    lo, hi = scale
    if not 0 < lo <= hi < 0.9:
        raise RFError(
            f"scale={scale!r} must be (low, high) fractions of the image with 0 < low <= high < 0.9."
        )
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPE_NAMES))
    images = _clutter(rng, n, size, lines)
    side = rng.uniform(lo, hi, size=n) * size
    cy, cx = rng.uniform(side / 2 + 1, size - side / 2 - 1, size=(2, n))
    masks = _shape_masks(labels, cy, cx, side, size)
    colour = rng.uniform(0.0, 0.5, size=(n, 3))
    colour[np.arange(n), rng.integers(3, size=n)] = rng.uniform(0.8, 1.0, size=n)
    images = np.where(masks[..., None], colour[:, None, None, :], images)
    rows, cols = np.asarray(masks.any(axis=2)), np.asarray(masks.any(axis=1))
    boxes = np.stack(
        [rows.argmax(1), cols.argmax(1), size - rows[:, ::-1].argmax(1), size - cols[:, ::-1].argmax(1)],
        axis=1,
    ).astype(np.float64)
    return Shapes(
        images=np.clip(images, 0.0, 1.0).astype(np.float32), labels=labels.astype(np.int64), boxes=boxes
    )
