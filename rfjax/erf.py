"""The effective receptive field (Luo, Li, Urtasun, Zemel, "Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks", NeurIPS 2016).

With the real weights, the input gradient of one output cell is not spread evenly over its
theoretical receptive field (RF): it is roughly Gaussian around the RF centre, with a
standard deviation that grows like the square root of the depth while the RF grows linearly,
so the *effective* RF is a shrinking fraction of the theoretical one.

:func:`effective_rf` takes the input gradient of one cell (the centre one by default) for
every input of a batch in one compiled program (``jax.vmap`` over the batch), averages its
magnitude, fits an axis-aligned 2-D Gaussian (``scipy.optimize.curve_fit``) and measures the
radius that holds a given fraction of the gradient mass.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfjax import memory
from rfjax._types import HW, ReceptiveField
from rfjax.contract import as_function, on_clear
from rfjax.errors import RFError, cause, output_label

__all__ = ["EffectiveRF", "effective_rf"]


@dataclasses.dataclass(frozen=True)
class EffectiveRF:
    """The effective RF of one output cell.

    Attributes:
      map: ``(H, W)`` mean over the inputs of ``sum_c |d out[cell] / d x[..., c]|`` (or of
        its square with ``squared=True``).
      cell: the ``(i, j)`` grid index of the output cell.
      centre: centre of mass of ``map``, continuous coordinates (pixel ``i`` spans ``[i, i + 1)``).
      sigma: standard deviations ``(h, w)`` of the fitted Gaussian, pixels.
      gaussian_centre: centre of the fitted Gaussian.
      amplitude: peak of the fitted Gaussian.
      fit_residual: RMS of the fit relative to the map's maximum.
      radius: radius around ``centre`` of the smallest disc (of pixel centres) holding
        ``mass`` of the map's total.
      mass: the fraction used for ``radius``.
      rf: the theoretical RF of the same output (:func:`rfjax.receptive_field`), or ``None``
        when it was not asked for or could not be measured on this input.
      n_inputs: how many inputs were averaged.
      input_shape: ``(H, W)``.
      output_shape: ``(Ho, Wo)`` of the feature map.
      name: the output's name, ``None`` for a single output.
    """

    map: np.ndarray
    cell: tuple[int, int]
    centre: HW
    sigma: HW
    gaussian_centre: HW
    amplitude: float
    fit_residual: float
    radius: float
    mass: float
    rf: ReceptiveField | None
    n_inputs: int
    input_shape: HW
    output_shape: HW
    name: str | int | None = None

    @property
    def rf_rect(self) -> tuple[float, float, float, float] | None:
        """``(top, left, bottom, right)`` of the cell's theoretical RF, or ``None``."""
        return None if self.rf is None else self.rf.rect(self.cell)

    @property
    def radius_fraction(self) -> float | None:
        """``radius`` over half the theoretical RF's smaller side: how far out the effective
        RF reaches, 1 being the theoretical RF's edge."""
        return None if self.rf is None else self.radius / (min(self.rf.size) / 2)

    def __str__(self) -> str:
        theo = "" if self.rf is None else f", theoretical RF {self.rf.size.h:g}x{self.rf.size.w:g}"
        return (
            f"effective RF of cell {self.cell}: sigma=({self.sigma.h:.2f}, {self.sigma.w:.2f}) px, "
            f"{self.mass:.0%} of the gradient within r={self.radius:.2f} px of "
            f"({self.centre.h:.2f}, {self.centre.w:.2f}){theo}"
        )


@functools.lru_cache(maxsize=64)
def _program(fn: Callable, with_params: bool, squared: bool) -> Callable:
    """``(params, xs (N, H, W, C), weights (N,), cotangent (Ho, Wo, Co)) -> (H, W)``, the
    weighted sum of the inputs' gradient maps; one compiled program."""

    def one(params, x, ct):
        f = (lambda v: fn(params, v)) if with_params else fn
        out, vjp = jax.vjp(f, x[None])
        (g,) = vjp(ct[None].astype(out.dtype))
        g = g[0].astype(jnp.float32)
        return (g * g).sum(-1) if squared else jnp.abs(g).sum(-1)

    def run(params, xs, weights, ct):
        return jnp.tensordot(weights, jax.vmap(one, in_axes=(None, 0, None))(params, xs, ct), axes=1)

    return jax.jit(run)


on_clear(_program.cache_clear)


def _mean_map(
    prog: Callable, params: Any, xs: np.ndarray, ct: np.ndarray, max_memory: int | None
) -> np.ndarray:
    """The mean gradient map over ``xs``, in equal chunks of inputs sized by
    :mod:`rfjax.memory` (padding inputs get weight 0)."""
    budget = memory.check_budget(max_memory)
    given = budget is not None
    budget = budget if given else memory.default_budget()
    n = xs.shape[0]

    def args(size: int, start: int = 0) -> tuple:
        idx = np.arange(start, start + size)
        weights = (idx < n).astype(np.float32)
        return xs[np.minimum(idx, n - 1)], weights, ct

    def compile_for(size: int) -> Any:
        structs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args(size)]
        return memory.compiled(prog, params, *structs)

    size, exe = memory.plan_chunks(
        compile_for, n, budget, what="one input's gradient", fix="pass smaller inputs", given=given
    )
    total = sum(np.asarray(exe(params, *args(size, start)), np.float64) for start in range(0, n, size))
    return total / n


def _gaussian(coords, amp, my, mx, sy, sx):
    y, x = coords
    return amp * np.exp(-0.5 * (((y - my) / sy) ** 2 + ((x - mx) / sx) ** 2))


def _fit_gaussian(m: np.ndarray, centre: HW) -> tuple[float, HW, HW, float]:
    from scipy.optimize import curve_fit

    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    total = m.sum()
    sy0 = math.sqrt(max((m * (yy - centre.h) ** 2).sum() / total, 0.25))
    sx0 = math.sqrt(max((m * (xx - centre.w) ** 2).sum() / total, 0.25))
    p0 = (float(m.max()), centre.h, centre.w, sy0, sx0)
    bounds = ([0, 0, 0, 0.05, 0.05], [np.inf, h, w, 10 * h, 10 * w])
    try:
        popt, _ = curve_fit(_gaussian, (yy.ravel(), xx.ravel()), m.ravel(), p0=p0, bounds=bounds, maxfev=5000)
    except RuntimeError:  # no convergence: report the moments
        popt = np.array(p0)
    resid = _gaussian((yy, xx), *popt) - m
    return (
        float(popt[0]),
        HW(float(popt[1]), float(popt[2])),
        HW(float(popt[3]), float(popt[4])),
        float(np.sqrt(np.mean(resid**2)) / m.max()),
    )


def _mass_radius(m: np.ndarray, centre: HW, mass: float) -> float:
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    d = np.hypot(yy - centre.h, xx - centre.w).ravel()
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(m.ravel()[order])
    k = int(np.searchsorted(cum, mass * cum[-1]))
    return float(d[order][min(k, len(d) - 1)])


def effective_rf(
    fn: Any,
    inputs: Any,
    *,
    params: Any = None,
    output: str | int | None = None,
    cell: Sequence[int] | None = None,
    channels: Any = None,
    mass: float = 0.9,
    squared: bool = False,
    rf: ReceptiveField | str | None = "auto",
    max_memory: int | None = None,
) -> EffectiveRF:
    """Effective RF of one output cell, averaged over a batch of inputs (Luo et al. 2016).

    Args:
      fn: a JAX function ``x (1, H, W, C) -> (1, Ho, Wo, Co)`` (or a dict/tuple of feature maps,
        with ``output`` naming one), ``fn(params, x)`` with ``params``, a Flax module or a
        converted Keras model, as in :func:`rfjax.receptive_field`. The real weights are used.
      inputs: ``(N, H, W, C)`` inputs to average over (``(H, W, C)`` for one).
      params: parameter pytree for ``fn(params, x)``.
      output: key or index of the feature map when ``fn`` returns several.
      cell: ``(i, j)`` grid cell; default the centre ``(Ho // 2, Wo // 2)``.
      channels: output channels of the cell whose gradient is taken: ``None`` (all, summed),
        an int or a list of ints.
      mass: fraction of the gradient mass the reported ``radius`` holds, in ``(0, 1)``.
      squared: average the squared gradient (the variance Luo et al. analyse for random
        weights) instead of its magnitude.
      rf: ``"auto"`` measures the theoretical RF of the same output with
        :func:`rfjax.receptive_field` (``None`` in the result if the RF exceeds the input);
        a :class:`ReceptiveField` to use; or ``None`` to skip it.

      max_memory: bytes one compiled call may take; the inputs are split into equal
        chunks that fit (XLA's own memory analysis). Default: half the free memory.

    Returns:
      An :class:`EffectiveRF`.
    """
    from rfjax.activation_maps.inputs import check_images, layer_only
    from rfjax.engine import channel_vector

    if not isinstance(mass, (int, float)) or not 0 < mass < 1:
        raise RFError(f"mass={mass!r} must be a fraction strictly between 0 and 1, e.g. 0.9.")
    base, params = as_function(fn, params)
    xs = check_images(inputs)
    index, (ho, wo, co) = _output_map(base, params, xs, output)
    c = _grid_cell(cell, ho, wo)
    one = layer_only(base, params is not None, index)
    ct = np.zeros((ho, wo, co), np.float32)
    ct[c] = channel_vector(channels, co, output_label(output))
    m = _mean_map(_program(one, params is not None, bool(squared)), params, xs, ct, max_memory)
    centre = _centre_of_mass(m, c)
    amp, gc, sigma, resid = _fit_gaussian(m, centre)
    return EffectiveRF(
        map=m,
        cell=(int(c[0]), int(c[1])),
        centre=centre,
        sigma=sigma,
        gaussian_centre=gc,
        amplitude=amp,
        fit_residual=resid,
        radius=_mass_radius(m, centre, mass),
        mass=float(mass),
        rf=_theoretical_rf(rf, one, params, xs.shape[1:]),
        n_inputs=len(xs),
        input_shape=HW(xs.shape[1], xs.shape[2]),
        output_shape=HW(ho, wo),
        name=output,
    )


def _centre_of_mass(m: np.ndarray, cell: tuple[int, ...]) -> HW:
    """The centre of mass of the gradient map ``m`` of ``cell`` (pixel ``i`` spans ``[i, i + 1)``)."""
    if not np.isfinite(m).all():
        raise RFError(f"the input gradient of cell {cell} is not finite; check the model and its inputs.")
    total = m.sum()
    if not total > 0:
        raise RFError(
            f"the input gradient of cell {cell} is zero for every input (dead ReLUs or max pooling); "
            "pass other inputs or cell=."
        )
    yy, xx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]] + 0.5
    return HW(float((m * yy).sum() / total), float((m * xx).sum() / total))


def _output_map(
    base: Callable, params: Any, xs: np.ndarray, output: str | int | None
) -> tuple[int, tuple[int, ...]]:
    """``(leaf index, (Ho, Wo, Co))`` of the feature map ``output`` names among ``base``'s outputs."""
    from rfjax.activation_maps.inputs import output_index

    bound = base if params is None else functools.partial(base, params)
    try:
        struct = jax.eval_shape(bound, jnp.asarray(xs[:1]))
    except Exception as e:  # any failure inside the user's function
        raise RFError(
            f"fn failed on inputs of shape {xs.shape[1:]} ({cause(e)}); pass inputs of the shape it expects."
        ) from e
    leaves = jax.tree_util.tree_leaves(struct)
    if output is None:
        if len(leaves) != 1:
            raise RFError(
                f"fn returns {len(leaves)} arrays; pass output= the key or index of the feature map to use."
            )
        index = 0
    else:
        index = output_index(struct, output, "output")
    shape = tuple(leaves[index].shape)
    if len(shape) != 4:
        raise RFError(
            f"output {output!r} has shape {shape}, which is not a spatial feature map (1, Ho, Wo, Co); "
            "pass a convolutional layer's output."
        )
    return index, shape[1:]


def _grid_cell(cell: Sequence[int] | None, ho: int, wo: int) -> tuple[int, ...]:
    """``cell`` (default the centre ``(Ho // 2, Wo // 2)``) checked against the grid."""
    c = (ho // 2, wo // 2) if cell is None else tuple(int(v) for v in np.asarray(cell).reshape(-1))
    if len(c) != 2 or not (0 <= c[0] < ho and 0 <= c[1] < wo):
        raise RFError(
            f"cell={cell!r} is outside the {ho}x{wo} grid; pass (i, j) with 0 <= i < {ho} and 0 <= j < {wo}."
        )
    return c


def _theoretical_rf(
    rf: ReceptiveField | str | None, one: Callable, params: Any, shape: tuple[int, ...]
) -> ReceptiveField | None:
    """The ``rf`` argument resolved: given, measured (``"auto"``; ``None`` where the RF
    cannot be measured on this input) or skipped (``None``)."""
    from rfjax.fit import receptive_field

    if isinstance(rf, ReceptiveField):
        return rf
    if rf == "auto":
        try:
            found = receptive_field(one, shape, params=params)
            return found if isinstance(found, ReceptiveField) else None
        except RFError:
            return None
    if rf is not None:
        raise RFError(f"rf={rf!r} must be 'auto', a ReceptiveField or None.")
    return None
