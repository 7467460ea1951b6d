"""Grouped layer sweeps (rfjax.layer_fit): every row equals the per-layer fit's answer.

The reference is :func:`rfjax.receptive_field` asked for one layer at a time (the way
layer sweeps measured before grouping); the models are small residual and Inception-style
Keras networks with 'same' padding at odd input sizes, strided reductions, zero padding,
batch norms, activations and 1x1 convolutions.
"""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

import converters
import rfjax
from rfjax import layer_fit
from rfjax.errors import RFError, RFGlobal, RFTooLarge
from rfjax.layer_sweep import sweep_layers

L = keras.layers


def _conv_bn(x, filters, k, name, strides=1, padding="same"):
    x = L.Conv2D(filters, k, strides=strides, padding=padding, name=f"{name}_conv")(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.Activation("relu", name=f"{name}_relu")(x)


def resnet_like() -> keras.Model:
    inp = keras.Input((None, None, 3))
    x = L.ZeroPadding2D(3, name="stem_pad")(inp)
    x = _conv_bn(x, 4, 7, "stem", strides=2, padding="valid")
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool")(x)
    for b, stride in enumerate((1, 2)):
        short = _conv_bn(x, 8, 1, f"b{b}_short", strides=stride)
        y = _conv_bn(x, 4, 1, f"b{b}_1")
        y = _conv_bn(y, 4, 3, f"b{b}_2", strides=stride)
        y = L.Conv2D(8, 1, name=f"b{b}_3_conv")(y)
        x = L.Activation("relu", name=f"b{b}_out")(L.Add(name=f"b{b}_add")([short, y]))
    return keras.Model(inp, x)


def inception_like() -> keras.Model:
    inp = keras.Input((None, None, 3))
    x = _conv_bn(inp, 4, 3, "stem", strides=2, padding="valid")
    for b in range(2):
        one = _conv_bn(x, 4, 1, f"m{b}_1x1")
        five = _conv_bn(_conv_bn(x, 4, 1, f"m{b}_5a"), 4, 5, f"m{b}_5b")
        seven = _conv_bn(_conv_bn(x, 4, (1, 7), f"m{b}_7a"), 4, (7, 1), f"m{b}_7b")
        pool = L.AveragePooling2D(3, strides=1, padding="same", name=f"m{b}_pool")(x)
        x = L.Concatenate(name=f"m{b}")([one, five, seven, _conv_bn(pool, 4, 1, f"m{b}_pp")])
        x = L.MaxPooling2D(3, strides=2, name=f"m{b}_reduce")(x)
    return keras.Model(inp, x)


def _per_layer(model, name, shape, grow):
    """The row fields of one layer measured alone, as sweeps did before grouping."""
    try:
        rf = rfjax.receptive_field(model, shape, layer=name, grow=grow)
    except RFGlobal:
        return ("global",)
    except RFTooLarge as e:
        return ("global" if e.everywhere and grow else "larger", tuple(e.input_shape))
    except RFError:
        return ("error",)
    return ("ok", rf.size, rf.stride, rf.offset, rf.padding, rf.input_shape, rf.output_shape, rf.global_)


def _row(row):
    if row.status == "ok":
        return (
            "ok",
            row.size,
            row.stride,
            row.offset,
            row.padding,
            row.input_shape,
            row.output_shape,
            row.global_,
        )
    if row.status == "larger":
        return ("larger", tuple(row.input_shape))
    return (row.status,)


CASES = [
    (resnet_like, (45, 37, 3), True),
    pytest.param(resnet_like, (45, 37, 3), False, marks=pytest.mark.slow),
    (inception_like, (41, 53, 3), True),
]


@pytest.mark.parametrize(("build", "shape", "grow"), CASES, ids=["resnet-grow", "resnet", "inception-grow"])
def test_grouped_sweep_equals_the_per_layer_fit(build, shape, grow):
    model = converters.from_keras(build(), input_shape=shape)
    rows = sweep_layers(model, shape, grow=grow)
    names = [r.layer for r in rows]
    assert names == [n for n in model.layer_names if n in set(names)]  # graph order
    assert len(names) == len(model.layer_names) - 1  # every layer but the input is spatial here
    by_name = {r.layer: r for r in rows}
    derived = [r for r in rows if (r.method or "").startswith("as ")]
    checked = [r for r in rows if r not in derived] + derived[:: max(1, len(derived) // 4)]
    for row in checked:  # every measured layer and a few per-pixel ones: measured alone
        assert _row(row) == _per_layer(model, row.layer, shape, grow), row.layer
    for row in derived:  # the others carry their source's (checked) row
        src = by_name[row.method[3:]]
        assert _row(row) == _row(src) and (src.method in ("central", "lines", "cells") or src.status != "ok")
    if grow:
        assert {r.status for r in rows} == {"ok"}


def test_per_pixel_layers_take_their_inputs_row_unmeasured():
    model = converters.from_keras(resnet_like(), input_shape=(45, 37, 3))
    rows = {r.layer: r for r in sweep_layers(model, (45, 37, 3), grow=True)}
    # batch norm, activation and a 1x1 stride-1 convolution: the nearest measured ancestor's row
    assert rows["stem_bn"].method == rows["stem_relu"].method == "as stem_conv"
    assert rows["b0_1_conv"].method == "as pool"
    assert rows["b0_out"].method == "as b0_add"
    for name in ("stem_conv", "pool", "b0_add", "b1_2_conv", "b1_short_conv"):  # spreading or strided
        assert rows[name].method in ("central", "lines"), name
    assert rows["b0_out"].as_dict()["method"] == "as b0_add"


def test_rf_source_is_the_single_input_of_a_per_pixel_layer_only():
    inp = keras.Input((16, 16, 3))  # a LayerNormalization over h and w needs fixed sizes
    a = L.Conv2D(2, 3, name="a")(inp)
    one = L.Conv2D(2, 1, name="one")(a)
    strided = L.Conv2D(2, 1, strides=2, name="strided")(a)
    spatial_softmax = L.Softmax(axis=1, name="smax_h")(a)
    channel_softmax = L.Softmax(name="smax_c")(a)
    norm_hw = L.LayerNormalization(axis=[1, 2], name="ln_hw")(a)
    add = L.Add(name="add")([a, one])
    model = converters.from_keras(
        keras.Model(inp, [strided, spatial_softmax, channel_softmax, norm_hw, add]), input_shape=(16, 16, 3)
    )
    got = {n: model.rf_source(n) for n in ("a", "one", "strided", "smax_h", "smax_c", "ln_hw", "add")}
    assert got == {
        "a": None,
        "one": "a",
        "strided": None,
        "smax_h": None,
        "smax_c": "a",
        "ln_hw": None,
        "add": None,
    }


def test_layers_are_grouped_by_the_input_they_need():
    model = converters.from_keras(resnet_like(), input_shape=(45, 37, 3))
    names = ["stem_conv", "pool", "b0_2_conv", "b1_2_conv", "b1_add"]
    groups = layer_fit.group_layers(model, names, (45, 37, 3), grow=True, max_input=4096)
    assert sorted(n for g in groups for n in g) == sorted(names)
    assert len(groups) < len(names)
    for group in groups:  # graph order inside a group
        assert group == [n for n in names if n in group]

    # the closed-form need (bound + 4 strides) grows from group to group
    def need(name):
        bound = model.rf_bound(name)
        return max(bound.size[a] / (45, 37)[a] + 4 * bound.stride[a] / (45, 37)[a] for a in (0, 1))

    assert [max(map(need, g)) for g in groups] == sorted(max(map(need, g)) for g in groups)


def test_a_group_with_a_layer_that_fails_is_split_and_the_others_are_measured():
    model = converters.from_keras(resnet_like(), input_shape=(45, 37, 3))
    names = ["stem_pad", "stem_conv", "pool"]  # the padding layer's border cells see no input
    parts = list(layer_fit.measure_group(model, names, (45, 37, 3), False, 4096))
    outcomes = {k: v for part in parts for k, v in part.items()}
    assert isinstance(outcomes["stem_pad"], RFError)
    assert outcomes["stem_conv"].size == rfjax.receptive_field(model, (45, 37, 3), layer="stem_conv").size
    assert len(parts) > 1
