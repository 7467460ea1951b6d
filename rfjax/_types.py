"""Result types shared by the engine, the fit, the analytic calculator and the plots, and the
one check of an ``input_shape`` argument.

Conventions (everywhere in rfjax):

* Arrays are NHWC. Pairs are ``(h, w)`` in array order, as :class:`HW` named tuples.
* Input coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``. The receptive
  field (RF) *offset* is the centre of output cell ``(0, 0)``'s RF in those
  coordinates, so cell ``(i, j)`` is centred at ``offset + (i, j) * stride``.
* The effective padding ``P`` of Araujo et al. (Distill 2019) satisfies
  ``offset = size / 2 - P``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rfjax.errors import RFError


class HW(NamedTuple):
    """A pair of numbers in array order: ``h`` (rows, axis 1 of NHWC), ``w`` (columns)."""

    h: float
    w: float


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``input_shape`` as ``(H, W, C)`` Python ints, else an RFError naming it."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape
    ):
        raise RFError(f"input_shape={shape!r} must be three positive integers (H, W, C).")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


@dataclasses.dataclass(frozen=True)
class GradientMaps:
    """Input gradients of output cells of one feature map.

    Attributes:
      maps: ``(Ho, Wo, H, W)`` when every cell was asked for (``maps[i, j]`` is the
        input gradient of cell ``(i, j)``), else ``(n, H, W)`` in the order of
        ``cells``. A trailing ``C`` axis is present when input channels were kept.
      cells: ``(n, 2)`` int array of the ``(i, j)`` grid index of each map, row-major.
      input_shape: ``(H, W)`` of the input.
      output_shape: ``(Ho, Wo)`` of the feature map.
      name: the feature map's name (its dict key or list index), ``None`` for a
        function with a single output.
    """

    maps: np.ndarray
    cells: np.ndarray
    input_shape: HW
    output_shape: HW
    name: str | int | None = None

    @property
    def full_grid(self) -> bool:
        """Whether every cell was computed (``maps`` is then laid out on the grid)."""
        return (
            len(self.cells) == self.output_shape[0] * self.output_shape[1]
            and self.maps.shape[:2] == tuple(self.output_shape)
            and self.maps.ndim >= 4
        )

    @property
    def flat(self) -> np.ndarray:
        """The maps as ``(n, H, W[, C])``, one per row of :attr:`cells`."""
        return self.maps.reshape((len(self.cells),) + self.maps.shape[2:]) if self.full_grid else self.maps

    def at(self, cell: tuple[int, int]) -> np.ndarray:
        """The input gradient of grid cell ``(i, j)``, ``(H, W[, C])``."""
        rows = np.flatnonzero((self.cells[:, 0] == cell[0]) & (self.cells[:, 1] == cell[1]))
        if rows.size == 0:
            raise KeyError(
                f"cell {tuple(cell)} was not computed; pass it in cells= (the grid is {tuple(self.output_shape)})"
            )
        return self.flat[rows[0]]


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the cells of one feature map, per axis.

    Attributes:
      size: RF extent in input pixels (max - min + 1 of the gradient support of the
        cells whose RF is not clipped by the image border), ``HW``.
      stride: distance in input pixels between the RF centres of neighbouring cells.
      offset: centre of cell ``(0, 0)``'s RF, continuous coordinates (pixel ``i``
        spans ``[i, i + 1)``); cell ``(i, j)`` is centred at ``offset + (i, j) * stride``.
      padding: effective padding ``P`` (Araujo et al.): ``offset = size / 2 - P``.
      input_shape: ``(H, W)`` of the input the RF describes (the requested one).
      output_shape: ``(Ho, Wo)`` of the feature map at ``input_shape``.
      cells_used: how many cells (or grid lines, see ``method``) entered the fit.
      cells_clipped: how many were left out because their RF touches the border.
      residual: RMS of the least-squares fit of RF centres against the grid index,
        in pixels; 0 for networks with a uniform grid.
      method: ``"cells"`` (one gradient map per cell) or ``"lines"`` (one per grid
        row and column; exact for RFs that are products of row and column sets, which
        every convolution/pooling network has), or ``"central"`` (growing fits: the
        three grid rows and columns around the centre, once the input is large enough
        that they are unclipped translated copies of one RF).
      global_: True when every cell also depends on the whole input through a global
        branch (squeeze-and-excitation gates, image-pooling branches of converted
        models). ``size``, ``stride``, ``offset`` and ``padding`` then describe the
        local, convolutional path, measured with the global branches held constant.
      name: the feature map's name, ``None`` for a single output.
      measured_shape: ``(H, W)`` of the input the gradients were taken at, when a
        growing fit (``grow=True``) measured on a larger input than ``input_shape``:
        one with the same padding at every layer, so size, stride and offset are
        those of ``input_shape`` (see :mod:`rfjax.growth`); ``None`` otherwise.
    """

    size: HW
    stride: HW
    offset: HW
    padding: HW
    input_shape: HW
    output_shape: HW
    cells_used: int = 0
    cells_clipped: int = 0
    residual: HW = HW(0.0, 0.0)  # noqa: RUF009 - an immutable NamedTuple
    method: str = "cells"
    global_: bool = False
    name: str | int | None = None
    measured_shape: HW | None = None

    def rect(self, cell: tuple[int, int]) -> tuple[float, float, float, float]:
        """``(top, left, bottom, right)`` of cell ``(i, j)``'s RF, continuous coordinates."""
        ch = self.offset.h + cell[0] * self.stride.h
        cw = self.offset.w + cell[1] * self.stride.w
        return (ch - self.size.h / 2, cw - self.size.w / 2, ch + self.size.h / 2, cw + self.size.w / 2)

    def centre(self, cell: tuple[int, int]) -> HW:
        """RF centre of cell ``(i, j)``, continuous coordinates."""
        return HW(self.offset.h + cell[0] * self.stride.h, self.offset.w + cell[1] * self.stride.w)

    def __str__(self) -> str:
        def f(p: HW) -> str:
            return f"({p.h:g}, {p.w:g})"

        head = f"{self.name}: " if self.name is not None else ""
        note = "  [global: also depends on the whole input; size is the local path's]" if self.global_ else ""
        if self.measured_shape is not None and tuple(self.measured_shape) != tuple(self.input_shape):
            note = f" (measured at {self.measured_shape.h}x{self.measured_shape.w}){note}"
        return (
            f"{head}size={f(self.size)} stride={f(self.stride)} offset={f(self.offset)} "
            f"padding={f(self.padding)} grid={self.output_shape.h}x{self.output_shape.w} "
            f"input={self.input_shape.h}x{self.input_shape.w}{note}"
        )
