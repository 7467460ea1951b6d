"""Per-axis supports of every grid row and column, from few backward passes.

The RF along ``h`` of grid row ``i`` is the set ``Y_i`` of input rows that the row's
cells reach; along ``w``, ``X_j`` for grid column ``j``. With a positive (prepared)
network the support of a sum of cotangents is the union of their supports, so one
backward pass over a whole grid row gives ``Y_i``, and a *cross* (grid row ``i`` plus
grid column ``j`` in one cotangent) gives both: its support is
``Y_i x X_all  U  Y_all x X_j``, so input columns outside the column band show ``Y_i``
alone (they are the columns with the fewest non-zero rows).

Lines far enough apart have disjoint supports and can share a cross: two probe crosses
near the centre give the RF extent ``e`` and stride ``s`` per axis; lines
``d = floor(e / s) + 1`` apart never overlap, so ``max(d_h, d_w)`` crosses cover the
grid, and each union is cut apart at the predicted centres. Every piece is checked
(non-empty, no wider than ``e``, at least one empty pixel between neighbours); lines
that fail, or that a cross could not show, are run again alone. The README network
needs 2 + 9 passes instead of 16; an early VGG layer (RF 5 on a 224 grid) 2 + 6
instead of 224.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Sets = list  # list[np.ndarray | None]: one index array (or None: unknown) per grid line
#: Grids shorter than this on both sides are not worth the two probe passes of packing
#: (the line pass costs about ``Ho + Wo`` slots there, as much as packing could save).
MIN_PACK_GRID = 8


def _cross_masks(grid: tuple[int, int], row_sets: list[list[int]], col_sets: list[list[int]]) -> np.ndarray:
    """Slot ``r`` covers grid rows ``row_sets[r]`` and grid columns ``col_sets[r]``."""
    m = np.zeros((len(row_sets),) + tuple(grid) + (1,), np.float32)
    for r, (rows, cols) in enumerate(zip(row_sets, col_sets)):
        m[r, rows, :, 0] = 1.0
        m[r, :, cols, 0] = 1.0
    return m


def _union(nz: np.ndarray, other_band: bool) -> np.ndarray | None:
    """Rows of ``nz`` (H, W) reached by the slot's grid rows: the support shared by the
    input columns with the fewest non-zero rows, when the slot also has grid columns
    (``other_band``); ``None`` when no column is free of the column band."""
    col_any = nz.any(axis=0)
    if not other_band:
        return np.flatnonzero(nz.any(axis=1))
    counts = nz[:, col_any].sum(axis=0)
    if counts.size == 0 or counts.min() == counts.max():
        return None
    free = nz[:, col_any][:, counts == counts.min()]
    if not np.all(free == free[:, :1]):
        return None
    return np.flatnonzero(free[:, 0])


def _split(union: np.ndarray, lines: list[int], centre0: float, k0: int, stride: float, extent: float):
    """Cut ``union`` (input indices) among grid ``lines`` by nearest predicted centre
    ``centre0 + (i - k0) * stride``; ``None`` if the pieces fail the checks."""
    if len(lines) == 1:
        return {lines[0]: union}
    centres = centre0 + (np.asarray(lines) - k0) * stride
    owner = np.argmin(np.abs((union + 0.5)[:, None] - centres[None, :]), axis=1)
    pieces = {i: union[owner == n] for n, i in enumerate(lines)}
    prev_hi = None
    for i in lines:
        p = pieces[i]
        if p.size == 0 or p[-1] - p[0] + 1 > extent:
            return None
        if prev_hi is not None and p[0] <= prev_hi + 1:
            return None
        prev_hi = p[-1]
    return pieces


def _spacing(sets: Sets, k0: int, n: int, length: int):
    """``(d, centre0, stride, extent)`` from the probe lines ``k0``, ``k0 + 1``; ``d = n``
    (no packing) when they are unknown, empty, clipped or not increasing."""
    a, b = sets[k0], sets[k0 + 1] if k0 + 1 < n else None
    if a is None or b is None or a.size == 0 or b.size == 0:
        return n, 0.0, 0.0, 0.0
    if a[0] == 0 or b[0] == 0 or a[-1] == length - 1 or b[-1] == length - 1:
        return n, 0.0, 0.0, 0.0
    ca, cb = (a[0] + a[-1] + 1) / 2, (b[0] + b[-1] + 1) / 2
    stride = cb - ca
    extent = float(max(a[-1] - a[0] + 1, b[-1] - b[0] + 1))
    if stride <= 0:
        return n, 0.0, 0.0, 0.0
    return min(n, int(extent // stride) + 1), ca, stride, extent


def _read_slots(nz: np.ndarray, row_sets, col_sets, rows: Sets, cols: Sets, geo_h, geo_w) -> None:
    """Fill ``rows``/``cols`` from slot supports ``nz`` (S, H, W); leave ``None`` where
    a slot could not be read or cut."""
    for s, (rs, cs) in enumerate(zip(row_sets, col_sets)):
        if rs:
            u = _union(nz[s], bool(cs))
            pieces = None if u is None else _split(u, rs, *geo_h)
            for i in rs:
                rows[i] = None if pieces is None else pieces[i]
        if cs:
            u = _union(nz[s].T, bool(rs))
            pieces = None if u is None else _split(u, cs, *geo_w)
            for j in cs:
                cols[j] = None if pieces is None else pieces[j]


def line_supports(run_many: Callable[[dict], dict], grids: dict, input_hw: tuple[int, int]) -> dict:
    """Input rows reached by each grid row and input columns reached by each grid column.

    Args:
      run_many: ``{k: masks (S, Ho, Wo, 1)} -> {k: gradients (S, H, W)}``, one compiled
        call for all outputs ``k``.
      grids: ``{k: (Ho, Wo)}`` per output.
      input_hw: ``(H, W)`` of the input.

    Returns:
      ``{k: (rows, cols)}``: ``rows[i]`` is the sorted index array of input rows reached
      by grid row ``i``, ``cols[j]`` the input columns reached by grid column ``j``.
    """
    state = {k: ([None] * g[0], [None] * g[1]) for k, g in grids.items()}
    geo = {k: ((0.0, 0, 0.0, 0.0), (0.0, 0, 0.0, 0.0)) for k in grids}
    plans = {}

    probe = {k: max(0, min(g) // 2 - 1) for k, g in grids.items() if min(g) >= 2 and max(g) >= MIN_PACK_GRID}
    if probe:
        sets = {k: ([[k0], [k0 + 1]], [[k0], [k0 + 1]]) for k, k0 in probe.items()}
        out = run_many({k: _cross_masks(grids[k], *sets[k]) for k in probe})
        for k, k0 in probe.items():
            _read_slots(np.abs(out[k]) > 0, *sets[k], *state[k], geo[k][0], geo[k][1])
    for k, (ho, wo) in grids.items():
        rows, cols = state[k]
        if k in probe:
            k0 = probe[k]
            dh, ch, sh, eh = _spacing(rows, k0, ho, input_hw[0])
            dw, cw, sw, ew = _spacing(cols, k0, wo, input_hw[1])
            geo[k] = ((ch, k0, sh, eh), (cw, k0, sw, ew))
        else:
            dh, dw = ho, wo
        n = max(dh, dw)
        row_sets = [[i for i in range(r, ho, dh) if rows[i] is None] if r < dh else [] for r in range(n)]
        col_sets = [[j for j in range(r, wo, dw) if cols[j] is None] if r < dw else [] for r in range(n)]
        keep = [r for r in range(n) if row_sets[r] or col_sets[r]]
        plans[k] = ([row_sets[r] for r in keep], [col_sets[r] for r in keep])
    todo = {k: p for k, p in plans.items() if p[0]}
    if todo:
        out = run_many({k: _cross_masks(grids[k], *p) for k, p in todo.items()})
        for k, p in todo.items():
            _read_slots(np.abs(out[k]) > 0, p[0], p[1], state[k][0], state[k][1], geo[k][0], geo[k][1])

    singles: dict[Any, tuple[list, list]] = {}
    for k, (rows, cols) in state.items():
        rs = [[i] for i, r in enumerate(rows) if r is None]
        cs = [[j] for j, c in enumerate(cols) if c is None]
        if rs or cs:
            singles[k] = (rs + [[] for _ in cs], [[] for _ in rs] + cs)
    if singles:
        out = run_many({k: _cross_masks(grids[k], *p) for k, p in singles.items()})
        for k, p in singles.items():
            _read_slots(np.abs(out[k]) > 0, p[0], p[1], state[k][0], state[k][1], geo[k][0], geo[k][1])
    return state


def central_index(grid: tuple[int, int]) -> int:
    """The middle one of the three central lines of a grid (at least 3x3)."""
    return max(1, (min(grid) - 1) // 2)


def central_lines(run_many: Callable[[dict], dict], grids: dict) -> dict:
    """Supports of the three grid rows and columns around the centre only, from one
    backward pass of three crosses (grid row ``i`` with grid column ``i``).

    What a growing fit needs once the input is large enough: away from the border every
    cell of a convolutional network sees a translated copy of the same RF, so three
    adjacent unclipped lines give size, stride and offset (and show the translation:
    equal extents, equal spacing). On a 98x98 grid that is 3 slots instead of about 100.

    Returns ``{k: (index, rows, cols)}``: the grid indices ``index`` (three, ascending)
    and per index the input rows (columns) it reaches, ``None`` where a cross could not
    be read. Grids shorter than 3 on a side are left out.
    """
    picks = {k: central_index(g) for k, g in grids.items() if min(g) >= 3}
    if not picks:
        return {}
    plans = {k: ([[k0 - 1], [k0], [k0 + 1]], [[k0 - 1], [k0], [k0 + 1]]) for k, k0 in picks.items()}
    out = run_many({k: _cross_masks(grids[k], *p) for k, p in plans.items()})
    result = {}
    for k, k0 in picks.items():
        rows: Sets = [None] * grids[k][0]
        cols: Sets = [None] * grids[k][1]
        _read_slots(np.abs(out[k]) > 0, *plans[k], rows, cols, (0.0, 0, 0.0, 0.0), (0.0, 0, 0.0, 0.0))
        index = np.arange(k0 - 1, k0 + 2)
        result[k] = (index, [rows[i] for i in index], [cols[j] for j in index])
    return result
