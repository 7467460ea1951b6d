"""Receptive fields of keras.applications models against independent values (issue 3, point 4).

* Final-feature RFs against the published table of Araujo, Norris and Sim, "Computing
  Receptive Fields of Convolutional Neural Networks", Distill 2019 (the values of
  TensorFlow's ``receptive_field`` package): size, stride and effective padding.
* Every layer of the chain-shaped zoo models (VGG16, VGG19, MobileNet) against the
  closed-form calculator, with the chain read from the Keras layer configs.
* A squeeze-and-excitation model (MobileNetV3Small): flagged global, and Keras' own
  forward pass confirms that a far-away pixel changes the first cell.

The models are built with ``weights=None`` and converted on the fly by
``rfjax.receptive_field`` (the Keras model is not modified).
"""

from __future__ import annotations

import pytest

pytest.importorskip("keras")

import keras
import numpy as np
from keras_fixtures import assert_unchanged, weights_snapshot

import converters
import rfjax
from rfjax import HW
from rfjax.analytic import Layer, analytic_sweep

# name -> (final layer, size, stride, effective padding), Distill 2019 table.
PUBLISHED = {
    "VGG16": ("block5_pool", 212, 32, 90),
    "MobileNet": ("conv_pw_13_relu", 315, 32, 126),
    "InceptionV3": ("mixed10", 1311, 32, 618),
    "InceptionResNetV2": ("conv_7b_ac", 3039, 32, 1482),
}
HEAVY = {"InceptionV3", "InceptionResNetV2"}


def _build(name: str, **kw) -> keras.Model:
    return getattr(keras.applications, name)(
        weights=None, include_top=False, input_shape=(None, None, 3), **kw
    )


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name


@pytest.mark.parametrize("name", [_param(n) for n in PUBLISHED])
def test_final_feature_rf_equals_the_published_value(name):
    layer, size, stride, padding = PUBLISHED[name]
    model = _build(name)
    before = weights_snapshot(model)
    rf = rfjax.receptive_field(model, layer=layer, input_shape=(224, 224, 3), grow=True)
    assert rf.size == HW(size, size)
    assert rf.stride == HW(stride, stride)
    assert rf.padding == HW(padding, padding)
    assert rf.offset == HW(size / 2 - padding, size / 2 - padding)
    assert not rf.global_
    assert_unchanged(model, before)


def _resnet50_main_path() -> list[Layer]:
    """Keras ResNet50's deepest path (closed form): padded 7x7/2 stem, padded 3x3/2 max
    pool, then per bottleneck 1x1 (stride 2 in the first block of stages 3-5), 3x3 'same', 1x1."""
    chain = [
        Layer.conv(1, padding=((3, 3), (3, 3))),
        Layer.conv(7, stride=2),
        Layer.conv(1, padding=((1, 1), (1, 1))),
        Layer.pool(3, stride=2, kind="max_pool"),
    ]
    for stage, blocks in enumerate((3, 4, 6, 3)):
        for b in range(blocks):
            first_stride = 2 if (stage > 0 and b == 0) else 1
            chain += [Layer.conv(1, stride=first_stride), Layer.conv(3, padding="same"), Layer.conv(1)]
    return chain


def test_resnet50_rf_equals_the_published_size_and_its_closed_form_padding():
    # Distill lists resnet_v1_50 (TF-slim) as 483 / 32 / 239; Keras' ResNet50 strides in the
    # 1x1 conv and pads the stem explicitly, so its padding follows from its own chain.
    rf = rfjax.receptive_field(
        _build("ResNet50"), layer="conv5_block3_out", input_shape=(224, 224, 3), grow=True
    )
    closed = analytic_sweep(_resnet50_main_path(), tuple(rf.input_shape))[-1]
    assert (rf.size, rf.stride) == (HW(483, 483), HW(32, 32))
    assert (closed.size, closed.stride) == (rf.size, rf.stride)
    assert rf.padding == closed.padding


# --------------------------------------------------------------------------- every layer


def _chain_from_keras(model: keras.Model) -> list[tuple[str, Layer]]:
    """``(layer name, Layer)`` for every layer of a chain-shaped Keras model that changes
    the geometry, read from the Keras configs alone."""
    out = []
    for layer in model.layers:
        cfg, cls = layer.get_config(), type(layer).__name__
        if cls in ("Conv2D", "DepthwiseConv2D"):
            spec = Layer.conv(
                cfg["kernel_size"], cfg["strides"], dilation=cfg["dilation_rate"], padding=cfg["padding"]
            )
        elif cls in ("MaxPooling2D", "AveragePooling2D"):
            spec = Layer.pool(cfg["pool_size"], cfg["strides"], padding=cfg["padding"])
        elif cls == "ZeroPadding2D":
            spec = Layer.conv(1, padding=tuple(tuple(p) for p in cfg["padding"]))
        else:
            continue
        out.append((layer.name, spec))
    return out


CHAINS = {"VGG16": {}, "VGG19": {}, "MobileNet": {"alpha": 0.25}}


@pytest.mark.parametrize("name", list(CHAINS))
def test_every_layer_of_a_chain_model_equals_the_closed_form(name):
    model = _build(name, **CHAINS[name])
    named = _chain_from_keras(model)
    # ZeroPadding2D outputs enter the chain but are not compared: their border cells are
    # pure padding, with no RF (the sweep reports them as errors, see test_sweep).
    names = [n for n, _ in named if not n.startswith("conv_pad")]
    converted = converters.from_keras(model, input_shape=(224, 224, 3))
    rows = rfjax.sweep_layers(converted, layers=names, grow=True)
    assert [r.layer for r in rows] == names
    depth_of = {n: d for d, (n, _) in enumerate(named)}
    for row in rows:
        want = analytic_sweep([spec for _, spec in named[: depth_of[row.layer] + 1]], tuple(row.input_shape))[
            -1
        ]
        assert row.status == "ok" and not row.global_, row
        got = (row.size, row.stride, row.offset, row.padding, row.output_shape)
        assert got == (want.size, want.stride, want.offset, want.padding, want.output_shape), row.layer


# --------------------------------------------------------------------------- global


def test_squeeze_excitation_model_is_flagged_global_and_keras_agrees():
    model = _build("MobileNetV3Small", include_preprocessing=False)
    layer = model.layers[-1].name
    rf = rfjax.receptive_field(model, layer=layer, input_shape=(224, 224, 3), grow=True, max_input=1024)
    assert rf.global_
    assert rf.stride == HW(32, 32)
    # Keras itself, real random weights: a pixel far outside cell (0, 0)'s local RF moves it.
    keras.utils.set_random_seed(0)
    side = 512
    x = np.random.default_rng(0).normal(size=(1, side, side, 3)).astype(np.float32)
    far = x.copy()
    far[0, -64:, -64:, :] += 100.0  # a far corner block
    assert rf.offset.h + rf.size.h / 2 < side - 64  # the block is outside the local RF of cell (0, 0)
    y0, y1 = (np.asarray(model(v, training=False))[0, 0, 0] for v in (x, far))
    assert np.abs(y1 - y0).max() > 1e-3 * np.abs(y0).max()
