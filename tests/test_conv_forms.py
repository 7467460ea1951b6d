"""The converters' fast forms of convolution and max pooling equal XLA's own ops.

``converters._conv`` lowers 1x1 convolutions to matrix products, depthwise convolutions
to sums over kernel taps, strided ones to space-to-depth and max pooling to maxima over taps (XLA:CPU runs its own
forms of these several times slower). The references here are ``lax.conv_general_dilated``
and ``lax.reduce_window`` (values and input gradients) and, for the tie-breaking of
max pooling's gradient, TensorFlow's ``tf.nn.max_pool2d``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from converters._conv import conv, max_pool

CASES = [
    # (H, W, C_in, kh, kw, C_out, groups, strides, dilation, padding)
    (9, 7, 5, 1, 1, 6, 1, (1, 1), (1, 1), "SAME"),
    (9, 8, 5, 1, 1, 6, 1, (2, 3), (1, 1), "VALID"),
    (10, 9, 4, 3, 3, 4, 4, (1, 1), (1, 1), "SAME"),  # depthwise
    (11, 8, 3, 3, 2, 6, 3, (2, 2), (1, 1), "SAME"),  # depthwise, multiplier 2, even kernel
    (12, 13, 4, 3, 3, 4, 4, (1, 2), (2, 1), "VALID"),  # depthwise, dilated
    (12, 12, 4, 5, 5, 4, 4, (2, 2), (1, 1), "SAME"),
    (8, 8, 4, 3, 3, 6, 2, (1, 1), (1, 1), "SAME"),  # grouped (not depthwise): XLA's own op
    (9, 9, 3, 3, 3, 5, 1, (2, 2), (1, 1), "SAME"),  # strided: space-to-depth
    (16, 15, 3, 7, 7, 5, 1, (2, 2), (1, 1), "VALID"),  # ResNet's stem shape
    (11, 13, 2, 4, 3, 3, 1, (3, 2), (1, 1), "SAME"),  # even kernel, strides differ per axis
    (10, 9, 3, 3, 3, 5, 1, (2, 2), (2, 2), "SAME"),  # strided and dilated: XLA's own op
    (9, 9, 3, 3, 3, 5, 1, (1, 1), (1, 1), "SAME"),  # plain: XLA's own op
]


def _reference(x, k, strides, dilation, padding, groups, channels_first):
    layout = ("NCHW", "HWIO", "NCHW") if channels_first else ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(
        x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=layout, feature_group_count=groups
    )


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_conv_equals_xla_convolution_values_and_input_gradients(case, channels_first):
    h, w, c, kh, kw, co, groups, strides, dilation, padding = case
    rng = np.random.default_rng(0)
    shape = (2, c, h, w) if channels_first else (2, h, w, c)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, c // groups, co)), jnp.float32)
    ours = lambda x: conv(x, k, strides, padding, dilation, groups, channels_first)
    ref = lambda x: _reference(x, k, strides, dilation, padding, groups, channels_first)
    y, y_ref = ours(x), ref(x)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    ct = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    np.testing.assert_allclose(jax.vjp(ours, x)[1](ct)[0], jax.vjp(ref, x)[1](ct)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_conv_input_gradient_of_one_cell_has_exactly_xlas_support(case, channels_first):
    """Exact zeros stay zero: rfjax finds receptive fields by ``|g| > 0``, so a fast form
    must not turn the zeros outside a cell's window into rounding noise."""
    h, w, c, kh, kw, co, groups, strides, dilation, padding = case
    rng = np.random.default_rng(4)
    shape = (1, c, h, w) if channels_first else (1, h, w, c)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, c // groups, co)), jnp.float32)
    ours = lambda x: conv(x, k, strides, padding, dilation, groups, channels_first)
    ref = lambda x: _reference(x, k, strides, dilation, padding, groups, channels_first)
    y = ours(x)
    spatial = (2, 3) if channels_first else (1, 2)
    for cell in [(0, 0), tuple(n // 2 for n in np.take(y.shape, spatial))]:
        ct = np.zeros(y.shape, np.float32)
        index = [0, slice(None), slice(None), slice(None)]
        index[spatial[0]], index[spatial[1]] = cell
        ct[tuple(index)] = 1.0
        got = np.asarray(jax.vjp(ours, x)[1](jnp.asarray(ct))[0])
        want = np.asarray(jax.vjp(ref, x)[1](jnp.asarray(ct))[0])
        np.testing.assert_array_equal(got != 0, want != 0)


POOLS = [
    ((2, 2), (2, 2), "VALID"),
    ((3, 3), (2, 2), "SAME"),
    ((3, 2), (1, 2), "SAME"),
    ((3, 3), (2, 1), "VALID"),
]


def _window(hw, channels_first):
    return (1, 1, *hw) if channels_first else (1, *hw, 1)


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize("size,strides,padding", POOLS)
def test_max_pool_equals_reduce_window_without_ties(size, strides, padding, channels_first):
    rng = np.random.default_rng(1)
    x = jnp.asarray(
        rng.permutation(2 * 3 * 9 * 10).reshape((2, 3, 9, 10) if channels_first else (2, 9, 10, 3)),
        jnp.float32,
    )
    win, st = _window(size, channels_first), _window(strides, channels_first)
    ours = lambda x: max_pool(x, win, st, padding)
    ref = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, win, st, padding)
    y = ours(x)
    np.testing.assert_array_equal(y, ref(x))
    ct = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    np.testing.assert_allclose(jax.vjp(ours, x)[1](ct)[0], jax.vjp(ref, x)[1](ct)[0], rtol=1e-6)


@pytest.mark.parametrize("size,strides,padding", POOLS)
def test_max_pool_routes_ties_like_tensorflow(size, strides, padding):
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(2).integers(0, 3, size=(1, 9, 10, 2)).astype(np.float32)  # many ties
    win, st = _window(size, False), _window(strides, False)
    y, pull = jax.vjp(lambda x: max_pool(x, win, st, padding), jnp.asarray(x))
    ct = np.random.default_rng(3).normal(size=y.shape).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        yt = tf.nn.max_pool2d(xt, size, strides, padding)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_allclose(
        pull(jnp.asarray(ct))[0], tape.gradient(yt, xt, output_gradients=tf.constant(ct)).numpy(), rtol=1e-6
    )


@pytest.mark.parametrize("size,strides,padding", POOLS)
def test_max_pool_becomes_average_pooling_under_the_rf_preparation(size, strides, padding):
    from rfjax.prepare import linearize

    x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 9, 10, 2)), jnp.float32)
    win, st = _window(size, False), _window(strides, False)
    prepared = linearize(lambda x: max_pool(x, win, st, padding))
    y, pull = jax.vjp(prepared, x)
    assert np.isfinite(np.asarray(y)).all()
    got = np.asarray(pull(jnp.ones_like(y))[0]) > 0
    ref = lax.reduce_window(x, 0.0, lax.add, win, st, padding)  # same windows, every tap
    want = (
        np.asarray(
            jax.vjp(lambda x: lax.reduce_window(x, 0.0, lax.add, win, st, padding), x)[1](jnp.ones_like(ref))[
                0
            ]
        )
        > 0
    )
    np.testing.assert_array_equal(got, want)
