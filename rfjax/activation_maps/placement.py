"""RF-aware placement of feature-resolution maps on the input.

The value of feature cell ``(i, j)`` is put at the centre of its receptive field,
``offset + (i, j) * stride`` (continuous coordinates, pixel ``i`` spans ``[i, i + 1)``),
and interpolated bilinearly between centres (held constant beyond the outermost ones).
A plain bilinear resize is the special case ``offset = H / (2 h)``, ``stride = H / h``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfjax._types import HW, ReceptiveField
from rfjax.activation_maps.inputs import layer_only
from rfjax.errors import RFError

PLACEMENTS = ("auto", "rf", "resize")


def _interp_matrix(n_out: int, n_in: int, offset: jax.Array, stride: jax.Array) -> jax.Array:
    """``(n_out, n_in)`` linear-interpolation weights: output pixel ``p`` (centre ``p + 0.5``)
    reads feature position ``(p + 0.5 - offset) / stride``, clamped to ``[0, n_in - 1]``."""
    u = jnp.clip((jnp.arange(n_out) + 0.5 - offset) / stride, 0.0, n_in - 1)
    return jax.nn.relu(1.0 - jnp.abs(u[:, None] - jnp.arange(n_in)[None, :]))


def place(
    maps: Any, input_shape: Sequence[int], offset: Sequence[float], stride: Sequence[float]
) -> np.ndarray:
    """Put feature-resolution maps on the input: cell ``(i, j)``'s value at
    ``offset + (i, j) * stride`` (continuous coordinates), bilinear in between, constant
    beyond the outermost centres.

    Args:
      maps: ``(..., h, w)``.
      input_shape: ``(H, W)`` of the result.
      offset, stride: ``(h, w)`` pairs, e.g. from a :class:`ReceptiveField`.

    Returns:
      ``(..., H, W)`` float32.
    """
    m = jnp.asarray(maps, jnp.float32)
    return np.asarray(
        place_jax(
            m,
            (int(input_shape[0]), int(input_shape[1])),
            jnp.asarray(offset, jnp.float32),
            jnp.asarray(stride, jnp.float32),
        )
    )


def place_jax(maps: jax.Array, hw: tuple[int, int], offset: jax.Array, stride: jax.Array) -> jax.Array:
    rh = _interp_matrix(hw[0], maps.shape[-2], offset[0], stride[0])
    rw = _interp_matrix(hw[1], maps.shape[-1], offset[1], stride[1])
    return jnp.einsum("Hh,...hw,Ww->...HW", rh, maps, rw)


def layer_rf(
    fn: Callable, params: Any, index: int, shape: tuple[int, int, int], name: Any, model: Any = None
) -> ReceptiveField:
    """The RF of output leaf ``index`` of ``fn`` (named ``name``) for an ``(H, W, C)``
    input, grown until it fits. A converted ``model`` is measured by name on its own RF
    copy (one channel per layer where it has one, far cheaper than the function's)."""
    from rfjax.contract import ConvertedModel
    from rfjax.fit import receptive_field

    try:
        if isinstance(model, ConvertedModel) and isinstance(name, str):
            rf = receptive_field(model, shape, layer=name, grow=True)
        else:
            rf = receptive_field(layer_only(fn, params is not None, index), shape, params=params, grow=True)
    except RFError as e:
        raise RFError(
            f"the RF of layer {name!r} could not be measured ({str(e).rstrip('.')}); use placement='resize'."
        ) from e
    assert isinstance(rf, ReceptiveField)  # a single-output function gives one result
    if rf.global_:
        raise RFError(
            f"every cell of layer {name!r} sees the whole input, so it has no RF centre; use placement='resize'."
        )
    return dataclasses.replace(rf, name=name)


def choose(
    placement: str, rf: ReceptiveField | None, measure: Callable[[], ReceptiveField], hw: HW, grid: HW
):
    if placement not in PLACEMENTS:
        raise RFError(f"placement={placement!r} is not one of {PLACEMENTS}.")
    if placement == "resize":
        return "resize", HW(hw.h / (2 * grid.h), hw.w / (2 * grid.w)), HW(hw.h / grid.h, hw.w / grid.w), None
    if rf is None:
        try:
            rf = measure()
        except RFError:
            if placement == "rf":
                raise
            return choose("resize", None, measure, hw, grid)
    if not isinstance(rf, ReceptiveField):
        raise RFError(f"rf must be a ReceptiveField (from rfjax.receptive_field), not {type(rf).__name__}.")
    return "rf", HW(float(rf.offset.h), float(rf.offset.w)), HW(float(rf.stride.h), float(rf.stride.w)), rf
