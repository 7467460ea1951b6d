"""The zoo layer sweep's closed form (benchmarks/zoo_layers.py) on small Keras graphs,
against RF sizes and paddings worked out by hand (Araujo et al.'s arithmetic)."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from benchmarks.zoo_layers import GLOBAL, closed_form


def _size_stride_padding(state):
    (_, j, lo, hi) = state[0]
    return hi - lo, j, -lo


def test_chain_same_stride_dilation():
    x = keras.Input((32, 32, 1))
    a = keras.layers.Conv2D(1, 3, strides=2, padding="same", name="a")(x)
    b = keras.layers.MaxPooling2D(2, name="b")(a)
    c = keras.layers.Conv2D(1, 3, dilation_rate=2, padding="same", name="c")(b)
    form = closed_form(keras.Model(x, c).get_config(), (32, 32))
    # a: 32 -> 16, 'same' pads 1 in total, 0 before: size 3, stride 2, padding 0
    assert _size_stride_padding(form["a"]) == (3, 2, 0)
    # b: 3 + 1 * 2 = 5, stride 4
    assert _size_stride_padding(form["b"]) == (5, 4, 0)
    # c: effective kernel 5 on 8 cells pads 4, 2 before: 5 + 4 * 4 = 21, padding 2 * 4 = 8
    assert _size_stride_padding(form["c"]) == (21, 4, 8)
    assert form["c"][2] is False  # a chain


def test_paths_centred_differently_take_the_hull():
    x = keras.Input((32, 32, 1))
    a = keras.layers.Conv2D(1, 3, name="a")(keras.layers.ZeroPadding2D(((0, 2), (0, 2)))(x))
    b = keras.layers.Conv2D(1, 3, name="b")(keras.layers.ZeroPadding2D(((2, 0), (2, 0)))(x))
    y = keras.layers.Add(name="y")([a, b])
    form = closed_form(keras.Model(x, y).get_config(), (32, 32))
    # cell i: a sees [i, i + 3), b sees [i - 2, i + 1); together [i - 2, i + 3)
    assert _size_stride_padding(form["y"]) == (5, 1, 2)
    assert form["y"][2] is True


def test_global_branch_left_out_and_unknown_geometry():
    x = keras.Input((16, 16, 4))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    g = keras.layers.GlobalAveragePooling2D(keepdims=True, name="g")(a)
    s = keras.layers.Dense(4, name="s")(g)
    y = keras.layers.Multiply(name="y")([a, s])
    r = keras.layers.UpSampling2D(name="r")(y)
    form = closed_form(keras.Model(x, r).get_config(), (16, 16))
    assert form["g"] == GLOBAL and form["s"] == GLOBAL
    assert _size_stride_padding(form["y"]) == (3, 1, 1)
    assert form["r"] is None
