"""Closed-form receptive fields of chains of convolution and pooling layers.

This is the analytic calculation of Araujo, Norris and Sim ("Computing Receptive
Fields of Convolutional Neural Networks", Distill 2019), used as an independent check
of the gradient-based estimate and for quick what-if sweeps. For a chain of layers
``l = 1..L`` with kernel ``k_l``, stride ``s_l``, dilation ``d_l`` and top/left
padding ``p_l`` (per axis), with ``J_l = prod_{i<l} s_i`` the input-pixel distance
between neighbouring cells of layer ``l``'s input:

* size   ``r = 1 + sum_l d_l (k_l - 1) J_l``
* stride ``S = prod_l s_l``
* effective padding ``P = sum_l p_l J_l``
* offset ``= r / 2 - P``

Coordinates follow :mod:`rfjax._types`: pixel ``i`` spans ``[i, i + 1)``, so the RF of
output cell ``i`` covers input pixels ``i * S - P`` to ``i * S - P + r - 1`` and is
centred at ``offset + i * S``. Pairs are ``(h, w)`` in NHWC array order.

'same' padding follows TensorFlow/JAX/XLA: for input length ``n`` the output length is
``ceil(n / s)`` and the total padding ``max((out - 1) s + (k - 1) d + 1 - n, 0)`` is
split with ``total // 2`` before and the rest after, so the offset of a 'same' chain
depends on the input size.

Pooling layers (average or max) have the same RF arithmetic as convolutions and are
written with :meth:`Layer.pool`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

from rfjax._types import HW, ReceptiveField
from rfjax.errors import RFError

Pair = tuple[int, int]
Padding = str | tuple[Pair, Pair]

_KINDS = ("conv", "avg_pool", "max_pool")


def _pair(value: int | Sequence[int], what: str, minimum: int) -> Pair:
    """``value`` as an ``(h, w)`` pair of ints ``>= minimum`` (an int means square)."""
    if isinstance(value, bool):
        raise RFError(f"{what}={value!r} must be an int or a pair of ints (h, w).")
    pair: tuple[int, ...]
    if isinstance(value, int):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise RFError(f"{what}={value!r} must be an int or a pair of ints (h, w).") from None
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise RFError(f"{what}={value!r} must be an int or a pair of ints (h, w).")
    if min(pair) < minimum:
        raise RFError(f"{what}={value!r} must be at least {minimum} on both axes.")
    return (int(pair[0]), int(pair[1]))


def _padding(value: object) -> Padding:
    """Normalise a padding argument to 'valid', 'same' or ``((top, bottom), (left, right))``."""
    if isinstance(value, str):
        low = value.lower()
        if low not in ("valid", "same"):
            raise RFError(
                f"padding={value!r} must be 'valid', 'same', an int or ((top, bottom), (left, right))."
            )
        return low
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise RFError(f"padding={value!r} must not be negative.")
        return ((value, value), (value, value))
    try:
        (t, b), (left, r) = cast(Any, value)  # any nested pair; checked below
    except (TypeError, ValueError):
        raise RFError(
            f"padding={value!r} must be 'valid', 'same', an int or ((top, bottom), (left, right))."
        ) from None
    pads = (t, b, left, r)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in pads) or min(pads) < 0:
        raise RFError(f"padding={value!r} must hold non-negative ints ((top, bottom), (left, right)).")
    return ((int(t), int(b)), (int(left), int(r)))


@dataclasses.dataclass(frozen=True)
class Layer:
    """One convolution or pooling layer of a chain, per-axis ``(h, w)`` geometry.

    Ints are accepted for square values and stored as pairs.

    Attributes:
      kernel: window size ``(kh, kw)``.
      stride: ``(sh, sw)``, default ``(1, 1)``.
      dilation: ``(dh, dw)``, default ``(1, 1)``; the window spans ``d (k - 1) + 1`` pixels.
      padding: ``'valid'`` (none), ``'same'`` (TensorFlow/JAX rule, depends on the
        input size) or explicit ``((top, bottom), (left, right))`` in pixels.
      kind: ``'conv'``, ``'avg_pool'`` or ``'max_pool'`` (same RF arithmetic; the
        kind only matters to code that builds the layer, such as the test chains).
      name: an optional label.
    """

    kernel: Pair
    stride: Pair = (1, 1)
    dilation: Pair = (1, 1)
    padding: Padding = "valid"
    kind: str = "conv"
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", _pair(self.kernel, "kernel", 1))
        object.__setattr__(self, "stride", _pair(self.stride, "stride", 1))
        object.__setattr__(self, "dilation", _pair(self.dilation, "dilation", 1))
        object.__setattr__(self, "padding", _padding(self.padding))
        if self.kind not in _KINDS:
            raise RFError(f"kind={self.kind!r} must be one of {_KINDS}.")

    @classmethod
    def conv(
        cls,
        kernel: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        *,
        dilation: int | Sequence[int] = 1,
        padding: Padding | int = "valid",
        name: str | None = None,
    ) -> Layer:
        """A convolution, e.g. ``Layer.conv(3, stride=2, padding='same')``."""
        return cls(kernel, stride, dilation, padding, "conv", name)  # type: ignore[arg-type]

    @classmethod
    def pool(
        cls,
        size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        *,
        padding: Padding | int = "valid",
        kind: str = "avg_pool",
        name: str | None = None,
    ) -> Layer:
        """A pooling window; ``stride`` defaults to ``size`` (as in Keras/Flax)."""
        return cls(size, size if stride is None else stride, 1, padding, kind, name)  # type: ignore[arg-type]

    def span(self, axis: int) -> int:
        """Input pixels covered by one window along ``axis`` (0 = h, 1 = w): ``d (k - 1) + 1``."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1

    def pads(self, n: int, axis: int) -> Pair:
        """``(before, after)`` padding along ``axis`` (0 = h, 1 = w) for an input of length ``n``."""
        axis = _axis(axis)
        if self.padding == "valid":
            return (0, 0)
        if self.padding == "same":
            s = self.stride[axis]
            out = -(-n // s)
            total = max((out - 1) * s + self.span(axis) - n, 0)
            return (total // 2, total - total // 2)
        return self.padding[axis]  # type: ignore[return-value]

    def padding_pairs(self, input_shape: Sequence[int]) -> tuple[Pair, Pair]:
        """Explicit ``((top, bottom), (left, right))`` padding for an ``(H, W)`` input
        (the form ``jax.lax.conv_general_dilated`` and ``reduce_window`` accept)."""
        return (self.pads(int(input_shape[0]), 0), self.pads(int(input_shape[1]), 1))


def _axis(axis: int | str) -> int:
    if axis in (0, "h"):
        return 0
    if axis in (1, "w"):
        return 1
    raise RFError(f"axis={axis!r} must be 0 / 'h' or 1 / 'w'.")


def output_size(n: int, layer: Layer, axis: int | str = 0) -> int:
    """Output length of ``layer`` along ``axis`` (0 / 'h' or 1 / 'w') for input length ``n``:
    ``floor((n + before + after - d (k - 1) - 1) / s) + 1``; may be ``< 1`` when the
    input is too small (no error here; :func:`analytic_rf` raises)."""
    a = _axis(axis)
    before, after = layer.pads(n, a)
    return (n + before + after - layer.span(a)) // layer.stride[a] + 1


def output_shape(input_shape: Sequence[int], layer: Layer) -> HW:
    """Output ``(Ho, Wo)`` of ``layer`` for an ``(H, W)`` input."""
    return HW(output_size(int(input_shape[0]), layer, 0), output_size(int(input_shape[1]), layer, 1))


def _input_hw(input_shape: Sequence[int]) -> Pair:
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = ()
    if len(dims) not in (2, 3) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims
    ):
        raise RFError(f"input_shape={input_shape!r} must be (H, W) or (H, W, C) positive ints.")
    return (int(dims[0]), int(dims[1]))


def analytic_sweep(layers: Sequence[Layer], input_shape: Sequence[int]) -> list[ReceptiveField]:
    """The closed-form RF after every layer of the chain (entry ``l`` is the RF of layer
    ``l``'s output cells in input coordinates), for an ``(H, W)`` or ``(H, W, C)`` input.

    Raises:
      RFError: when a layer's output would be empty (the input is too small), or a
        layer is not a :class:`Layer`.
    """
    hw = _input_hw(input_shape)
    layers = list(layers)
    if not layers:
        raise RFError("layers is empty: pass at least one Layer.")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise RFError(f"layers[{i}]={layer!r} is not an rfjax.analytic.Layer.")
    # Per axis: current length n, jump J (input pixels per step), size r, effective padding P.
    state = [[hw[a], 1, 1, 0] for a in (0, 1)]
    out: list[ReceptiveField] = []
    for i, layer in enumerate(layers):
        for a in (0, 1):
            n, jump, size, pad = state[a]
            before, _ = layer.pads(n, a)
            m = output_size(n, layer, a)
            if m < 1:
                label = f" ({layer.name})" if layer.name else ""
                raise RFError(
                    f"input_shape={tuple(input_shape)!r} is too small for this chain: layers[{i}]{label} gets "
                    f"{n} {'rows' if a == 0 else 'columns'}, fewer than its window of {layer.span(a)}; "
                    "pass a larger input_shape."
                )
            state[a] = [m, jump * layer.stride[a], size + (layer.span(a) - 1) * jump, pad + before * jump]
        size_hw = HW(state[0][2], state[1][2])
        pad_hw = HW(state[0][3], state[1][3])
        out.append(
            ReceptiveField(
                size=size_hw,
                stride=HW(state[0][1], state[1][1]),
                offset=HW(size_hw.h / 2 - pad_hw.h, size_hw.w / 2 - pad_hw.w),
                padding=pad_hw,
                input_shape=HW(*hw),
                output_shape=HW(state[0][0], state[1][0]),
                method="analytic",
                name=layer.name,
            )
        )
    return out


def analytic_rf(layers: Sequence[Layer], input_shape: Sequence[int]) -> ReceptiveField:
    """The closed-form RF of the output cells of a chain of layers (Araujo et al. 2019).

    Args:
      layers: the chain, input side first.
      input_shape: ``(H, W)`` or ``(H, W, C)`` of the input (needed for 'same' padding
        and for the output grid).

    Returns:
      A :class:`~rfjax.ReceptiveField` with ``method="analytic"``: integer ``size``,
      ``stride`` and ``padding`` (effective padding ``P``), ``offset = size / 2 - P``
      (continuous coordinates, pixel ``i`` spans ``[i, i + 1)``), and the output grid
      ``(Ho, Wo)``.

    Raises:
      RFError: when the input is too small for the chain (some layer's output would be
        empty), naming ``input_shape`` and the layer.
    """
    return analytic_sweep(layers, input_shape)[-1]
