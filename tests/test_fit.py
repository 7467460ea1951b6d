"""The RF fit against hand-worked closed-form values (MISSION.md, Araujo et al.)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

import rfjax
from rfjax import HW, RFError, RFTooLarge
from rfjax.models import readme_net

DN = ("NHWC", "HWIO", "NHWC")
METHODS = ["lines", "cells"]


def conv(x, k, stride=(1, 1), dilation=(1, 1), padding="VALID", cout=2):
    w = jnp.ones(tuple(k) + (x.shape[-1], cout), jnp.float32)
    return lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation, dimension_numbers=DN)


@pytest.mark.parametrize("method", METHODS)
def test_readme_network_of_receptivefield(method):
    # MISSION.md: the receptivefield README network on 96x96x3 gives offset (17, 17),
    # stride (4, 4), size 34x34 on a 16x16 grid.
    rf = rfjax.receptive_field(readme_net(), (96, 96, 3), method=method)
    assert rf.size == HW(34, 34) and rf.stride == HW(4, 4) and rf.offset == HW(17.0, 17.0)
    assert rf.padding == HW(0, 0) and rf.output_shape == HW(16, 16) and rf.input_shape == HW(96, 96)
    assert rf.residual == HW(0, 0) and rf.method == method
    # 'valid' layers only: no cell's RF is clipped (16 + 16 grid lines, or 256 cells)
    assert rf.cells_used == (32 if method == "lines" else 256) and rf.cells_clipped == 0


@pytest.mark.parametrize("method", METHODS)
def test_non_square_kernel_and_per_axis_stride(method):
    # one 5x3 valid conv with stride (2, 3): size (5, 3), stride (2, 3), cell 0 spans
    # rows [0, 5) and columns [0, 3): offset (2.5, 1.5), padding 0.
    rf = rfjax.receptive_field(lambda x: conv(x, (5, 3), (2, 3)), (21, 31, 1), method=method)
    assert (
        rf.size == HW(5, 3) and rf.stride == HW(2, 3) and rf.offset == HW(2.5, 1.5) and rf.padding == HW(0, 0)
    )
    assert rf.output_shape == HW(9, 10)


@pytest.mark.parametrize("method", METHODS)
def test_same_padding(method):
    # 3x3 'same', stride 1: cell 0 is centred on pixel 0 -> offset 0.5, P = 1.
    rf = rfjax.receptive_field(lambda x: conv(x, (3, 3), padding="SAME"), (10, 12, 1), method=method)
    assert (
        rf.size == HW(3, 3) and rf.stride == HW(1, 1) and rf.offset == HW(0.5, 0.5) and rf.padding == HW(1, 1)
    )


@pytest.mark.parametrize("method", METHODS)
def test_asymmetric_same_padding_with_even_kernel_and_stride(method):
    # TF/JAX 'same' on n=10, k=4, s=2: out 5, total pad (5-1)*2+4-10 = 2, top pad 1.
    # Cell 0 covers pixels [-1, 3) -> centre 1.0, size 4, P = 1.
    rf = rfjax.receptive_field(lambda x: conv(x, (4, 4), (2, 2), padding="SAME"), (10, 10, 1), method=method)
    assert (
        rf.size == HW(4, 4) and rf.stride == HW(2, 2) and rf.offset == HW(1.0, 1.0) and rf.padding == HW(1, 1)
    )


@pytest.mark.parametrize("method", METHODS)
def test_dilation_gives_an_extent_not_a_count(method):
    # 3x3 kernel with dilation 3: taps at 0, 3, 6 -> extent 7 (only 3 rows are non-zero).
    rf = rfjax.receptive_field(lambda x: conv(x, (3, 3), dilation=(3, 2)), (20, 20, 1), method=method)
    assert rf.size == HW(7, 5) and rf.offset == HW(3.5, 2.5)


def test_rf_larger_than_input_is_reported_and_grow_fixes_it():
    def fn(x):  # five 7x7 'same' convs: RF 31, P = 15, offset 0.5
        for _ in range(5):
            x = conv(x, (7, 7), padding="SAME", cout=1)
        return x

    with pytest.raises(RFTooLarge, match=r"RF is larger than the 24x24 input along axis h.*grow=True"):
        rfjax.receptive_field(fn, (24, 24, 1))
    rf = rfjax.receptive_field(fn, (24, 24, 1), grow=True)
    assert rf.size == HW(31, 31) and rf.offset == HW(0.5, 0.5) and rf.input_shape == HW(24, 24)
    assert rf.measured_shape.h > 24 and rf.measured_shape.w > 24  # grown to measure, same geometry


def test_growing_fit_reads_three_central_lines_and_agrees_with_the_closed_form():
    # stride-2 valid 3x3, then two 5x5 'same' convs: size 3 + 2*4*2 = 19, stride 2;
    # offset from cell 0's virtual span [-8, 11): 1.5, so P = 19/2 - 1.5 = 8
    def fn(x):
        x = conv(x, (3, 3), (2, 2), cout=1)
        return conv(conv(x, (5, 5), padding="SAME", cout=1), (5, 5), padding="SAME", cout=1)

    grown = rfjax.receptive_field(fn, (20, 20, 1), grow=True)
    assert grown.method == "central" and grown.cells_used == 6 and grown.input_shape == HW(20, 20)
    assert (grown.measured_shape.h - 20) % 2 == 0 and grown.measured_shape.h > 20
    assert grown.size == HW(19, 19) and grown.stride == HW(2, 2) and grown.offset == HW(1.5, 1.5)
    assert grown.padding == HW(8, 8)
    full = rfjax.receptive_field(fn, (40, 40, 1), method="lines")  # every grid line, same input
    assert (full.size, full.stride, full.offset) == (grown.size, grown.stride, grown.offset)


def test_central_lines_that_are_not_translated_copies_are_left_to_the_full_pass():
    from rfjax.fit import _TooSmall, fit_central

    idx = np.array([4, 5, 6])
    ok = [np.arange(10, 19), np.arange(12, 21), np.arange(14, 23)]  # extent 9, stride 2
    rf = fit_central(idx, ok, ok, HW(40, 40), HW(8, 8))
    assert rf.size == HW(9, 9) and rf.stride == HW(2, 2) and rf.offset == HW(14.5 - 8, 14.5 - 8)
    uneven = [np.arange(10, 19), np.arange(12, 21), np.arange(14, 22)]  # one clipped inside the border
    assert fit_central(idx, uneven, ok, HW(40, 40), HW(8, 8)) is None
    bent = [np.arange(10, 19), np.arange(12, 21), np.arange(15, 24)]  # unequal spacing
    assert fit_central(idx, ok, bent, HW(40, 40), HW(8, 8)) is None
    edge = [np.arange(0, 19), np.arange(0, 21), np.arange(2, 23)]  # the middle line reaches the edge
    with pytest.raises(_TooSmall):
        fit_central(idx, edge, ok, HW(40, 40), HW(8, 8))


def test_rf_reaching_the_border_from_valid_layers_is_still_measured():
    def fn(x):  # five 7x7 valid convs on 32: two cells, RFs [0, 31) and [1, 32), both whole
        for _ in range(5):
            x = conv(x, (7, 7), cout=1)
        return x

    rf = rfjax.receptive_field(fn, (32, 32, 1))
    assert rf.size == HW(31, 31) and rf.stride == HW(1, 1) and rf.offset == HW(15.5, 15.5)


def test_cells_clipped_inside_the_border_are_not_fitted():
    # stride-2 valid conv then 'same' conv: the last cells read padding but their
    # support stops short of the border (Inception-stem pattern): size 7, stride 2,
    # P = 2, offset 1.5 (found by the property tests)
    rf = rfjax.receptive_field(lambda x: conv(conv(x, (3, 3), (2, 2)), (3, 3), padding="SAME"), (32, 32, 1))
    assert (
        rf.size == HW(7, 7) and rf.stride == HW(2, 2) and rf.offset == HW(1.5, 1.5) and rf.padding == HW(2, 2)
    )


def relu_maxpool_net(params, x):
    x = jax.nn.relu(conv(x, (3, 3)) @ params["c1"]["kernel"] + params["c1"]["bias"])
    x = nn.max_pool(x, (2, 2), (2, 2))
    return conv(x, (3, 3)) @ params["c2"]["kernel"]


PARAMS = {
    "c1": {"kernel": -np.eye(2, dtype=np.float32), "bias": -np.ones(2, np.float32)},
    "c2": {"kernel": np.eye(2, dtype=np.float32)},
}


def test_preparation_recovers_the_rf_of_a_relu_maxpool_network():
    # conv3 -> maxpool2 -> conv3: size 1 + 2 + 1 + 2*2 = 8, stride 2, offset 4.
    # The real weights make every ReLU dead; the preparation must not care.
    rf = rfjax.receptive_field(relu_maxpool_net, (20, 20, 1), params=PARAMS)
    assert rf.size == HW(8, 8) and rf.stride == HW(2, 2) and rf.offset == HW(4.0, 4.0)


def test_zero_gradient_without_preparation_names_the_fix():
    with pytest.raises(RFError, match=r"gradient of the output is zero for 49 of 49 cells.*prepare=True"):
        rfjax.receptive_field(relu_maxpool_net, (20, 20, 1), params=PARAMS, prepare=False)


def test_nan_gradient_names_the_fix():
    with pytest.raises(RFError, match=r"gradient of the output is NaN.*prepare=True"):
        rfjax.receptive_field(lambda x: conv(x * jnp.nan, (3, 3)), (8, 8, 1), prepare=False)


def test_linen_module_needs_its_variables():
    model = nn.Conv(2, (3, 3), padding="VALID")
    with pytest.raises(RFError, match="params is missing"):
        rfjax.receptive_field(model, (8, 8, 1))
    variables = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    rf = rfjax.receptive_field(model, (8, 8, 1), params=variables)
    assert rf.size == HW(3, 3) and rf.offset == HW(1.5, 1.5)


def test_bad_input_shape_is_named():
    with pytest.raises(RFError, match=r"input_shape=\(96, 96\) must be three positive integers"):
        rfjax.receptive_field(readme_net(), (96, 96))
    with pytest.raises(RFError, match="too small for the network"):
        rfjax.receptive_field(readme_net(), (20, 20, 3))


def test_several_outputs_each_get_their_rf():
    def fn(x):
        a = conv(x, (3, 3))
        return {"a": a, "b": conv(a, (5, 5), (2, 2))}

    rfs = rfjax.receptive_field(fn, (30, 30, 1))
    assert rfs["a"].size == HW(3, 3) and rfs["a"].name == "a"
    assert rfs["b"].size == HW(7, 7) and rfs["b"].stride == HW(2, 2) and rfs["b"].offset == HW(3.5, 3.5)
