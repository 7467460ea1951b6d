"""Growing fits keep the geometry of the requested input (issue 11, point 2).

With 'same' padding a layer pads according to its input size modulo its stride, so the
RF offset depends on the input size. A growing fit (``grow=True``) measures on a larger
input only when that input has the same padding at every layer, so size, stride and
offset equal the closed form *at the requested size*; the result says where it measured.
Expected values come from the closed-form calculator (:mod:`rfjax.analytic`) at the
requested size, and for Xception from its main path read off the Keras configs.
"""

from __future__ import annotations

import pytest
from chains import chain_fn
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import rfjax
from rfjax import HW
from rfjax.analytic import Layer, analytic_rf, analytic_sweep
from rfjax.errors import RFCallError, RFTooLarge


@st.composite
def same_chains(draw) -> tuple[list[Layer], tuple[int, int, int]]:
    """'same' conv/pool chains with strides 1-2 and an odd input smaller than the RF."""
    layers, size, jump = [], 1, 1
    for _ in range(draw(st.integers(2, 5))):
        k, s = draw(st.integers(2, 5)), draw(st.integers(1, 2))
        pool = draw(st.booleans())
        layers.append(Layer.pool(k, s, padding="same") if pool else Layer.conv(k, s, padding="same"))
        size += (k - 1) * jump
        jump *= s
    n = draw(st.integers(max(5, size // 3), max(6, size - 1)))
    return layers, (n | 1, (n + 2) | 1, 1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=same_chains())
@example(
    case=(
        [Layer.conv(3, 2, padding="same"), Layer.pool(3, 2, padding="same"), Layer.conv(4, padding="same")],
        (9, 11, 1),
    )
)
def test_growing_same_chain_gives_the_closed_form_of_the_requested_size(case):
    layers, shape = case
    want = analytic_rf(layers, shape[:2])
    assume(want.size.h > shape[0] - 2 or want.size.w > shape[1] - 2)  # it has to grow
    got = rfjax.receptive_field(chain_fn(layers), input_shape=shape, grow=True, max_input=512)
    assert (got.size, got.stride, got.offset, got.padding) == (
        want.size,
        want.stride,
        want.offset,
        want.padding,
    )
    assert got.input_shape == HW(*shape[:2])
    assert got.output_shape == want.output_shape
    assert got.measured_shape is not None and got.measured_shape != got.input_shape
    # the measured size is the requested one plus whole total strides
    for a in (0, 1):
        assert (got.measured_shape[a] - shape[a]) % int(want.stride[a]) == 0


def test_growth_does_not_take_the_offset_of_another_size():
    # stride 4 overall, 'same' everywhere: at 37 px the offset differs from the one at 64
    layers = [
        Layer.conv(7, 2, padding="same"),
        Layer.conv(5, 2, padding="same"),
        Layer.conv(9, padding="same"),
    ]
    shape = (37, 37, 1)
    at_37, at_64 = analytic_rf(layers, (37, 37)), analytic_rf(layers, (64, 64))
    assert at_37.offset != at_64.offset  # the premise: the offset depends on the size
    got = rfjax.receptive_field(chain_fn(layers), input_shape=shape, grow=True)
    assert got.offset == at_37.offset and got.size == at_37.size
    assert got.measured_shape != HW(37, 37)


def test_a_function_that_fails_at_grown_sizes_ends_with_one_error():
    calls = []

    def small_only(x):
        calls.append(x.shape[1])
        if x.shape[1] > 40:
            raise ValueError("this function only takes inputs up to 40 px")
        return chain_fn([Layer.conv(9, padding="same"), Layer.conv(9, padding="same")])(x)

    with pytest.raises((RFCallError, RFTooLarge)):
        rfjax.receptive_field(small_only, input_shape=(15, 15, 1), grow=True, max_input=4096)
    assert len(calls) < 40  # bounded: no size is tried over and over


def test_no_growth_needed_keeps_measured_equal_to_requested():
    layers = [Layer.conv(3), Layer.conv(3)]
    got = rfjax.receptive_field(chain_fn(layers), input_shape=(24, 24, 1), grow=True)
    assert got.measured_shape == HW(24, 24) == got.input_shape


# --------------------------------------------------------------------------- Xception


def _xception_main_path(model) -> list[Layer]:
    """Xception's deepest path from its Keras configs: the two stem convolutions, then
    every separable convolution and max pool (the 1x1 stride-2 residual convolutions
    are centred on the same grid and do not widen the RF)."""
    chain = []
    for layer in model.layers:
        cfg, cls = layer.get_config(), type(layer).__name__
        if cls == "Conv2D" and layer.name.startswith("block1_conv") or cls == "SeparableConv2D":
            chain.append(Layer.conv(cfg["kernel_size"], cfg["strides"], padding=cfg["padding"]))
        elif cls == "MaxPooling2D":
            chain.append(Layer.pool(cfg["pool_size"], cfg["strides"], padding=cfg["padding"]))
    return chain


@pytest.mark.slow
@pytest.mark.parametrize("side", [299, 331])
def test_xception_grows_but_reports_the_offset_of_the_requested_size(side):
    import keras

    model = keras.applications.Xception(weights=None, include_top=False, input_shape=(None, None, 3))
    want = analytic_sweep(_xception_main_path(model), (side, side))[-1]
    got = rfjax.receptive_field(model, layer=model.layers[-1].name, input_shape=(side, side, 3), grow=True)
    assert got.input_shape == HW(side, side)
    assert got.measured_shape is not None and got.measured_shape.h > side
    assert (got.size, got.stride, got.offset, got.padding) == (
        want.size,
        want.stride,
        want.offset,
        want.padding,
    )
    assert got.output_shape == want.output_shape


def test_geometry_signature_sees_same_padding_change():
    from rfjax.growth import trace_function

    fn = chain_fn([Layer.conv(3, 2, padding="same")], padding_mode="strings")
    a, b, c = (trace_function(fn, None)((n, n, 1)) for n in (9, 10, 11))
    assert a.signature == c.signature  # 9 and 11 pad alike for a 3x3 stride-2 'same' conv
    assert a.signature != b.signature  # 10 does not
    assert a.grids == {None: (5, 5)}
