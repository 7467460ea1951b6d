"""Property tests: the gradient-based RF of random conv/pool chains equals the closed form.

Chains have 1-5 layers with independent per-axis kernels (1-7), strides (1-3) and
dilations (1-3), 'valid' or 'same' padding, and average pooling. The input size is
drawn after the chain: RF size + stride * k + extra with k >= 3, with odd and even
lengths so that 'same' padding is sometimes asymmetric. The fit must match the
analytic answer exactly (size, stride, offset, padding, output grid), by both the
per-cell and the per-line method.
"""

from __future__ import annotations

import pytest
from chains import chain_fn
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rfjax._types import HW
from rfjax.analytic import Layer, analytic_rf

try:
    from rfjax import receptive_field
except ImportError:  # the engine's public export may land later than the fit module
    from rfjax.fit import receptive_field

MAX_SIZE = 34  # RF size budget per axis, so inputs stay under ~80 px
MAX_STRIDE = 6  # total stride budget per axis


@st.composite
def chains(draw) -> tuple[list[Layer], tuple[int, int, int], int]:
    """``(layers, (H, W, C), out_channels)`` with an RF well inside the input."""
    n_layers = draw(st.integers(1, 5))
    jump = [1, 1]
    size = [1, 1]
    layers = []
    for _ in range(n_layers):
        pool = draw(st.integers(0, 4)) == 0
        kernel, stride, dilation = [], [], []
        for a in (0, 1):
            s = draw(st.integers(1, max(1, min(3, MAX_STRIDE // jump[a]))))
            d = 1 if pool else draw(st.integers(1, 3))
            room = (MAX_SIZE - size[a]) // (jump[a] * d)
            k = draw(st.integers(1, max(1, min(7, 1 + room))))
            kernel.append(k)
            stride.append(s)
            dilation.append(d)
            size[a] += d * (k - 1) * jump[a]
            jump[a] *= s
        padding = draw(st.sampled_from(["valid", "same"]))
        if pool:
            layers.append(Layer.pool(tuple(kernel), tuple(stride), padding=padding))
        else:
            layers.append(Layer.conv(tuple(kernel), tuple(stride), dilation=tuple(dilation), padding=padding))
    hw = []
    for a in (0, 1):
        k = draw(st.integers(3, 5))
        extra = draw(st.integers(0, jump[a] + 1))
        hw.append(size[a] + jump[a] * k + extra + 2)
    channels = draw(st.integers(1, 2))
    return layers, (hw[0], hw[1], channels), draw(st.integers(1, 2))


def _interior_cells(rf, n: int, axis: int) -> int:
    """Grid indices along ``axis`` whose analytic RF lies strictly inside ``[1, n - 1)``."""
    count = 0
    for i in range(rf.output_shape[axis]):
        lo = i * rf.stride[axis] - rf.padding[axis]
        if lo >= 1 and lo + rf.size[axis] - 1 <= n - 2:
            count += 1
    return count


def _well_posed(layers: list[Layer], shape: tuple[int, int, int]) -> bool:
    """A grid of at least 4x4 with at least two cells per axis whose RF is clear of the border."""
    rf = analytic_rf(layers, shape[:2])
    return min(rf.output_shape) >= 4 and min(_interior_cells(rf, shape[a], a) for a in (0, 1)) >= 2


def _check(layers: list[Layer], shape: tuple[int, int, int], out_channels: int, method: str) -> None:
    expected = analytic_rf(layers, shape[:2])
    got = receptive_field(chain_fn(layers, channels=out_channels), input_shape=shape, method=method)
    summary = f"\nchain={layers}\ninput_shape={shape}\nanalytic={expected}\nengine  ={got} (residual {got.residual})"
    assert got.method == method
    assert got.output_shape == expected.output_shape, summary
    assert got.size == expected.size, summary
    assert got.stride == expected.stride, summary
    assert got.offset == expected.offset, summary
    assert got.padding == expected.padding, summary
    assert got.input_shape == HW(*shape[:2]), summary


@pytest.mark.parametrize("method", ["cells", "lines"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=chains())
# The README net of the `receptivefield` package and an asymmetric 'same' stride-2 chain.
@example(
    case=(
        [
            Layer.conv(5),
            Layer.conv(3),
            Layer.pool(2),
            Layer.conv(3),
            Layer.conv(3),
            Layer.pool(2),
            Layer.conv(3),
            Layer.conv(3),
        ],
        (96, 96, 1),
        1,
    )
)
@example(case=([Layer.conv(3, 2, padding="same"), Layer.conv((2, 5), padding="same")], (31, 30, 2), 1))
def test_engine_matches_analytic(method, case):
    assume(_well_posed(case[0], case[1]))
    _check(*case, method)


BORDER_CASES = {
    # A dilated 'same' conv: the cell whose RF hangs one pixel over the border has taps
    # on pixels -1 (padding) and 1, so its gradient support starts at pixel 1, clear of
    # the border, yet it is clipped.
    "dilated-same": ([Layer.conv((2, 1), dilation=(2, 1), padding="same")], (8, 6, 1)),
    # An Inception-style stem: a 'valid' stride-2 conv never reads input pixel 31, so
    # the last cell of the following 'same' conv, whose RF reaches into padding, has a
    # support ending at pixel 30, clear of the border, yet it is clipped.
    "strided-valid-then-same": ([Layer.conv(3, 2), Layer.conv(3, padding="same")], (32, 32, 1)),
}


@pytest.mark.parametrize("method", ["cells", "lines"])
@pytest.mark.parametrize("case", list(BORDER_CASES), ids=list(BORDER_CASES))
def test_padding_clipped_cells_clear_of_border(case, method):
    """Cells whose RF reaches into padding but whose gradient support does not touch
    the input border (dilation holes, input pixels a strided layer never reads)."""
    layers, shape = BORDER_CASES[case]
    assert _well_posed(layers, shape)
    _check(layers, shape, 1, method)
