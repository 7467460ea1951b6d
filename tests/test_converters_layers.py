"""Layer-by-layer parity of converted Keras models with Keras, graph handling, RF mode
and bad input (issue 3, points 1, 2, 4 and "Bad input").

The reference is always Keras' own inference forward pass on the same input
(``max|jax - keras| / max|keras| <= 1e-5`` for these small models), except for RF mode,
which is checked against closed-form receptive fields.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("keras")

import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras import layers, ops
from keras_fixtures import assert_unchanged, randomize_normalization, rel_error, weights_snapshot

import converters
from rfjax.errors import RFError, RFUnhandledSetting

TOLERANCE = 1e-5


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


def check_parity(model, x=None, **kwargs):
    """Convert ``model``, run both on ``x`` and compare every model output."""
    x = _x(model.inputs[0].shape[1:]) if x is None else x
    want = model(x, training=False)
    want = [np.asarray(w) for w in (want if isinstance(want, (list, tuple)) else [want])]
    converted = converters.from_keras(model, **kwargs)
    got = jax.jit(converted.apply)(converted.params, x)
    assert len(converted.output_names) == len(want)
    for name, w in zip(converted.output_names, want):
        assert rel_error(got[name], w) <= TOLERANCE, name
    return converted


def seq(input_shape, *stack, name=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(input_shape), *stack], name=name)
    randomize_normalization(model)
    return model


# --------------------------------------------------------------------------- convolutions


@pytest.mark.parametrize(
    "kwargs, size",
    [
        ({"kernel_size": 3, "activation": "relu"}, 9),
        (
            {"kernel_size": 4, "strides": 2, "padding": "same"},
            15,
        ),  # even kernel, odd input: TF's asymmetric pad
        ({"kernel_size": 4, "strides": 2, "padding": "same"}, 16),
        ({"kernel_size": 2, "strides": 2, "padding": "same"}, 9),
        ({"kernel_size": 3, "dilation_rate": 2, "padding": "same", "activation": "elu"}, 11),
        ({"kernel_size": 3, "dilation_rate": (1, 3), "activation": "selu"}, 12),
        ({"kernel_size": 3, "strides": 2, "padding": "same", "groups": 2, "activation": "sigmoid"}, 10),
        ({"kernel_size": (1, 7), "padding": "same", "activation": "tanh"}, 9),
        ({"kernel_size": 4, "strides": 4, "use_bias": False}, 16),
    ],
)
def test_conv2d(kwargs, size):
    check_parity(seq((size, size, 4), layers.Conv2D(6, **kwargs)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "depth_multiplier": 2, "activation": "relu6"},
        {"kernel_size": 5, "strides": 2, "padding": "same", "depth_multiplier": 3},
        {"kernel_size": 3, "dilation_rate": 2, "padding": "same", "use_bias": False},
    ],
)
def test_depthwise_conv2d(kwargs):
    check_parity(seq((11, 11, 3), layers.DepthwiseConv2D(**kwargs)))


@pytest.mark.parametrize(
    "kwargs", [{"depth_multiplier": 2}, {"strides": 2, "padding": "same", "activation": "relu"}]
)
def test_separable_conv2d(kwargs):
    check_parity(seq((11, 11, 3), layers.SeparableConv2D(5, 3, **kwargs)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "strides": 2, "padding": "same"},
        {"kernel_size": 4, "strides": 2, "padding": "same"},
        {"kernel_size": 3, "strides": 2, "padding": "valid"},
        {"kernel_size": 2, "strides": 3, "padding": "valid"},
        {"kernel_size": 3, "strides": 2, "padding": "same", "output_padding": 1},
        {"kernel_size": 3, "strides": 2, "padding": "valid", "output_padding": 0, "activation": "relu"},
    ],
)
def test_conv2d_transpose(kwargs):
    check_parity(seq((5, 6, 3), layers.Conv2DTranspose(4, **kwargs)))


def test_conv2d_transpose_with_dilation_against_numpy():
    """TensorFlow's CPU kernels refuse dilated transposed convolutions, so the reference
    is the definition: every input pixel stamps the dilated kernel at ``stride * i``."""
    model = seq((4, 5, 2), layers.Conv2DTranspose(3, 3, strides=1, dilation_rate=2, padding="valid"))
    kernel, bias = (v.numpy() for v in model.layers[0].weights)  # (kh, kw, out, in)
    x = _x((4, 5, 2))
    want = np.zeros((1, 4 + 4, 5 + 4, 3))
    for i in range(4):
        for j in range(5):
            for a in range(3):
                for b in range(3):
                    want[0, i + 2 * a, j + 2 * b] += kernel[a, b] @ x[0, i, j]
    converted = converters.from_keras(model)
    assert rel_error(converted(x)[converted.output_names[0]], want + bias) <= TOLERANCE


def test_dense_on_feature_maps_and_after_flatten():
    check_parity(
        seq(
            (5, 5, 3),
            layers.Dense(4, activation="gelu"),
            layers.Flatten(),
            layers.Dense(3, activation="softmax"),
        )
    )


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    "layer",
    [
        layers.MaxPooling2D(2, padding="same"),
        layers.MaxPooling2D(3, strides=2),
        layers.AveragePooling2D(3, strides=2, padding="same"),  # border windows average real cells only
        layers.AveragePooling2D(2, padding="same"),
        layers.AveragePooling2D((2, 3), strides=(1, 2)),
        layers.GlobalAveragePooling2D(),
        layers.GlobalAveragePooling2D(keepdims=True),
        layers.GlobalMaxPooling2D(),
        layers.GlobalMaxPooling2D(keepdims=True),
    ],
    ids=lambda layer: (
        f"{type(layer).__name__}-{layer.get_config().get('padding', layer.get_config().get('keepdims'))}"
    ),
)
def test_pooling(layer):
    check_parity(seq((9, 9, 3), layer))


# --------------------------------------------------------------------------- normalisation and scaling


@pytest.mark.parametrize(
    "layer",
    [
        layers.BatchNormalization(epsilon=1.001e-5),
        layers.BatchNormalization(scale=False),
        layers.BatchNormalization(center=False, axis=1),
        layers.LayerNormalization(epsilon=1e-6),
        layers.LayerNormalization(axis=[1, 2, 3]),
        layers.LayerNormalization(rms_scaling=True),
        layers.RMSNormalization(),
        layers.Rescaling(1 / 127.5, offset=-1),
        layers.Rescaling([0.5, 2.0, 1.0]),
        layers.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.25, 1.0]),
        layers.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.25, 1.0], invert=True),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_normalisation(layer):
    model = seq((6, 6, 3), layer)
    for v in layer.weights:  # non-trivial gamma/beta for layer normalisation too
        if v.name in ("gamma", "beta", "scale"):
            v.assign(np.random.default_rng(3).uniform(0.5, 1.5, v.shape))
    check_parity(model)


def test_adapted_normalization():
    norm = layers.Normalization()
    norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, (20, 4, 4, 3)).astype(np.float32))
    check_parity(seq((4, 4, 3), norm))


# --------------------------------------------------------------------------- activations


@pytest.mark.parametrize(
    "name",
    [
        "relu",
        "relu6",
        "softmax",
        "sigmoid",
        "hard_sigmoid",
        "hard_silu",
        "hard_swish",
        "silu",
        "swish",
        "gelu",
        "tanh",
        "elu",
        "selu",
        "linear",
        "exponential",
        "softplus",
        "softsign",
        "leaky_relu",
        "mish",
        "log_softmax",
    ],
)
def test_activation_by_name(name):
    check_parity(seq((4, 4, 3), layers.Activation(name)), x=3 * _x((4, 4, 3)))


@pytest.mark.parametrize(
    "layer",
    [
        layers.ReLU(),
        layers.ReLU(max_value=6.0),
        layers.ReLU(negative_slope=0.1),
        layers.ReLU(max_value=2.0, negative_slope=0.2, threshold=0.5),
        layers.ReLU(threshold=0.3),
        layers.LeakyReLU(),
        layers.LeakyReLU(negative_slope=0.05),
        layers.ELU(alpha=0.5),
        layers.PReLU(alpha_initializer="random_uniform"),
        layers.Softmax(),
        layers.Softmax(axis=[1, 2]),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_activation_layers(layer):
    check_parity(seq((4, 4, 3), layer), x=3 * _x((4, 4, 3)))


# --------------------------------------------------------------------------- reshaping


@pytest.mark.parametrize(
    "layer",
    [
        layers.ZeroPadding2D(((1, 2), (0, 1))),
        layers.ZeroPadding2D(2),
        layers.Cropping2D(((1, 0), (2, 1))),
        layers.Cropping2D(1),
        layers.UpSampling2D((2, 3)),
        layers.UpSampling2D(2, interpolation="bilinear"),
        layers.Reshape((15, 5)),
        layers.Reshape((-1, 3)),
        layers.Flatten(),
        layers.Permute((2, 1, 3)),
        layers.Dropout(0.5),
        layers.SpatialDropout2D(0.3),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_reshaping(layer):
    check_parity(seq((5, 5, 3), layer))


# --------------------------------------------------------------------------- merging and keras.ops


@pytest.mark.parametrize(
    "merge",
    [
        layers.Add,
        layers.Subtract,
        layers.Multiply,
        layers.Average,
        layers.Maximum,
        layers.Minimum,
        layers.Concatenate,
        lambda: layers.Concatenate(axis=1),
    ],
    ids=["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Concatenate1"],
)
def test_merge_layers(merge):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(4, 3, padding="same")(inp)
    b = layers.Conv2D(4, 3, padding="same")(inp)
    check_parity(keras.Model(inp, merge()([a, b])))


def test_keras_ops_in_the_graph():
    """Raw keras.ops calls (as MobileNetV3 and ConvNeXt use them) are converted by type,
    not confused with the merge layers of the same class name."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    a = layers.Conv2D(4, 3, padding="same")(inp)
    hard_swish = a * (layers.ReLU(6.0)(a + 3.0) * (1.0 / 6.0))
    b = ops.relu6(a) + ops.sigmoid(hard_swish) - ops.mean(a, axis=[1, 2], keepdims=True)
    c = ops.concatenate([ops.maximum(b, 0.5), ops.hard_sigmoid(a) / 3, -ops.tanh(a)], axis=-1)
    d = layers.Add()([ops.softmax(c, axis=-1), ops.gelu(c)])
    check_parity(keras.Model(inp, [d, ops.reshape(d, (-1, 6 * 6 * 12))]))


# --------------------------------------------------------------------------- graphs


def test_shared_layer_called_twice():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    conv = layers.Conv2D(3, 3, padding="same", activation="relu", name="shared")
    y = conv(conv(inp))
    out = layers.Add()([y, conv(inp)])
    converted = check_parity(keras.Model(inp, out))
    assert {"shared", "shared:1", "shared:2"} <= set(converted.layer_names)
    assert list(converted.params) == ["shared"]  # one set of weights for three calls
    x = _x((8, 8, 3))
    first = converted.with_outputs("shared")(x)["shared"]
    want = np.asarray(layers.Activation("relu")(ops.conv(x, conv.kernel, padding="same") + conv.bias))
    assert rel_error(first, want) <= TOLERANCE


def test_nested_sequential_and_functional_blocks():
    keras.utils.set_random_seed(0)
    block = keras.Sequential(
        [
            layers.Conv2D(4, 3, padding="same", name="c"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(name="r"),
        ],
        name="block",
    )
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(
        inner_in, layers.Add()([inner_in, layers.Conv2D(4, 1, name="p")(inner_in)]), name="inner"
    )
    inp = keras.Input((8, 8, 4))
    y = inner(block(inp))
    model = keras.Model(inp, layers.GlobalAveragePooling2D()(block(y)))
    randomize_normalization(model)
    converted = check_parity(model)
    assert {"block/c", "block/bn", "inner/p", "block:1/c", "block", "block:1", "inner"} <= set(
        converted.layer_names
    )
    x = _x((8, 8, 4))
    got = converted.with_outputs("inner")(x)["inner"]
    assert rel_error(got, np.asarray(keras.Model(inp, y)(x, training=False))) <= TOLERANCE


def test_sequential_built_without_input_layer():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([layers.Conv2D(4, 3), layers.MaxPooling2D()])
    model.build((None, 10, 10, 3))
    check_parity(model, x=_x((10, 10, 3)))


def _stack(data_format, axis):
    keras.utils.set_random_seed(0)
    shape = (3, 11, 10) if data_format == "channels_first" else (11, 10, 3)
    inp = keras.Input(shape)
    f = {"data_format": data_format}
    x = layers.Conv2D(6, 4, strides=2, padding="same", **f)(inp)
    x = layers.BatchNormalization(axis=axis)(x)
    y = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, **f)(x)
    x = layers.Concatenate(axis=axis)(
        [layers.ZeroPadding2D(((1, 0), (0, 1)), **f)(x), layers.ZeroPadding2D(((0, 1), (1, 0)), **f)(y)]
    )
    x = layers.AveragePooling2D(3, strides=2, padding="same", **f)(x)
    x = layers.MaxPooling2D(2, **f)(layers.UpSampling2D(2, **f)(x))
    feat = layers.Cropping2D(((0, 1), (1, 0)), **f)(x)
    head = layers.Dense(4)(layers.Flatten(**f)(layers.GlobalAveragePooling2D(keepdims=True, **f)(feat)))
    model = keras.Model(inp, [feat, head])
    randomize_normalization(model)
    return model


def test_channels_first_model_is_nhwc_at_the_boundaries():
    """TensorFlow cannot run NCHW convolutions on CPU, so the reference is the same
    network built channels_last with the same weights (Keras defines them as equal)."""
    first, last = _stack("channels_first", 1), _stack("channels_last", -1)
    last.set_weights(first.get_weights())
    x = _x((11, 10, 3))
    want = [np.asarray(v) for v in last(x, training=False)]
    converted = converters.from_keras(first)
    assert converted.channels_first and converted.input_shape == (11, 10, 3)
    got = converted(x)
    for name, w in zip(converted.output_names, want):
        assert rel_error(got[name], w) <= TOLERANCE


# --------------------------------------------------------------------------- the result object


def test_any_layer_can_be_requested_and_params_use_flax_names():
    model = seq(
        (12, 12, 3),
        layers.Conv2D(4, 3, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.SeparableConv2D(5, 3, name="sep"),
        layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(2, name="fc"),
    )
    converted = converters.from_keras(model, outputs=["conv", "sep", "fc"])
    assert converted.output_names == ("conv", "sep", "fc")
    assert converted.layer_names[1:] == ("conv", "bn", "sep", "dw", "gap", "fc")
    shapes = jax.tree_util.tree_map(jnp.shape, converted.params)
    assert shapes == {
        "conv": {"kernel": (3, 3, 3, 4), "bias": (4,)},
        "bn": {"scale": (4,), "bias": (4,), "mean": (4,), "var": (4,)},
        "sep": {"depthwise_kernel": (3, 3, 1, 4), "pointwise_kernel": (1, 1, 4, 5), "bias": (5,)},
        "dw": {"kernel": (3, 3, 1, 10), "bias": (10,)},
        "fc": {"kernel": (10, 2), "bias": (2,)},
    }
    out = converted(_x((12, 12, 3)))
    assert out["conv"].shape == (1, 10, 10, 4) and out["fc"].shape == (1, 2)
    assert converted.with_outputs("dw")(_x((12, 12, 3)))["dw"].shape == (1, 6, 6, 10)


def test_model_with_no_spatial_output_converts():
    converted = converters.from_keras(
        seq((8, 8, 3), layers.Conv2D(4, 3, name="conv"), layers.Flatten(), layers.Dense(2))
    )
    assert converted(_x((8, 8, 3)))[converted.output_names[0]].shape == (1, 2)
    assert converted.with_outputs("conv")(_x((8, 8, 3)))["conv"].shape == (1, 6, 6, 4)


def test_importing_rfjax_and_converters_does_not_import_tensorflow_or_torch():
    frameworks = "{'tensorflow', 'keras', 'torch', 'torchvision', 'torchax', 'timm', 'onnx'}"
    code = f"import sys, rfjax, converters; assert not {frameworks} & set(sys.modules), {frameworks} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_keras_model_is_unmodified_by_conversion_and_preparation():
    model = seq(
        (10, 10, 3),
        layers.Conv2D(4, 3),
        layers.BatchNormalization(),
        layers.ReLU(6.0),
        layers.MaxPooling2D(),
        layers.Dense(3),
    )
    before = weights_snapshot(model)
    converted = converters.from_keras(model)
    prepared = converted.prepared()
    prepared(np.ones((1, 10, 10, 3), np.float32))
    assert_unchanged(model, before)
    assert prepared.rf_mode and not converted.rf_mode
    check_parity(model)  # the original conversion still matches Keras


# --------------------------------------------------------------------------- RF mode


def _centre_gradient(converted, shape):
    prepared = converted.prepared()
    x = jnp.ones((1, *shape), jnp.float32)
    name = prepared.output_names[0]
    out, vjp = jax.vjp(lambda v: prepared(v)[name], x)
    mask = jnp.zeros_like(out).at[0, out.shape[1] // 2, out.shape[2] // 2, :].set(1.0)
    (g,) = vjp(mask)
    return np.asarray(g[0]).sum(-1), out.shape


def test_rf_mode_gradient_support_is_the_analytic_rectangle():
    """The receptivefield README network with ReLUs and max pooling: 96x96 input,
    16x16 grid, RF 34x34, stride 4 (so cell (8, 8) sees rows/columns 32..65), and every
    pixel inside it gets a strictly positive gradient."""
    model = seq(
        (96, 96, 3),
        layers.Conv2D(8, 5, activation="relu"),
        layers.Conv2D(8, 3),
        layers.ReLU(6.0),
        layers.MaxPooling2D(2),
        layers.Conv2D(8, 3),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        layers.Conv2D(8, 3, activation="hard_silu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(8, 3, activation="gelu"),
        layers.Conv2D(8, 3, activation="softmax"),
    )
    g, out_shape = _centre_gradient(converters.from_keras(model), (96, 96, 3))
    assert out_shape == (1, 16, 16, 8)
    inside = np.zeros_like(g, bool)
    inside[32:66, 32:66] = True
    assert (g[inside] > 0).all()
    assert (g[~inside] == 0).all()


def test_rf_mode_keeps_the_global_dependence_of_squeeze_excitation():
    keras.utils.set_random_seed(0)
    inp = keras.Input((20, 20, 3))
    x = layers.Conv2D(4, 3, activation="relu")(inp)
    s = layers.Dense(4, activation="hard_sigmoid")(layers.GlobalAveragePooling2D(keepdims=True)(x))
    out = layers.Conv2D(4, 1)(layers.Multiply()([x, s]))
    g, _ = _centre_gradient(converters.from_keras(keras.Model(inp, out)), (20, 20, 3))
    assert (g > 0).all()


def test_rf_mode_stays_finite_in_deep_hard_swish_and_residual_stacks():
    """60 blocks of MobileNetV3-style hard-swish (a product of two tensors) with residual
    additions: a plain product would square activations block after block."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same")(inp)
    for _ in range(60):
        y = layers.DepthwiseConv2D(3, padding="same")(x)
        y = y * (layers.ReLU(6.0)(y + 3.0) * (1.0 / 6.0))
        x = layers.Add()([x, layers.Conv2D(8, 1)(y)])
    g, _ = _centre_gradient(converters.from_keras(keras.Model(inp, x)), (16, 16, 3))
    assert np.isfinite(g).all() and (g > 0).all()


def test_rf_mode_parameters():
    model = seq(
        (9, 9, 3),
        layers.Conv2D(4, 3, groups=1, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.DepthwiseConv2D(5, depth_multiplier=2, name="dw"),
        layers.SeparableConv2D(6, 3, name="sep"),
        layers.Conv2D(4, 1, groups=2, name="grouped"),
        layers.Flatten(),
        layers.Dense(3, name="fc"),
    )
    params = converters.from_keras(model).prepared().params
    assert set(params) == {"conv", "dw", "sep", "grouped", "fc"}  # batch norm is the identity: no parameters
    np.testing.assert_allclose(params["conv"]["kernel"], 1 / (3 * 3))
    np.testing.assert_allclose(params["dw"]["kernel"], 1 / 5)  # depthwise: 1 / sqrt(kh * kw)
    np.testing.assert_allclose(params["sep"]["depthwise_kernel"], 1 / 3)
    np.testing.assert_allclose(params["sep"]["pointwise_kernel"], 1 / 8)  # 4 channels x multiplier 2
    np.testing.assert_allclose(params["grouped"]["kernel"], 1 / 3)
    np.testing.assert_allclose(params["fc"]["kernel"], 1 / params["fc"]["kernel"].shape[0])
    for p in params.values():
        if "bias" in p:
            assert not np.asarray(p["bias"]).any()


def test_rf_mode_replaces_max_by_average():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    out = layers.Maximum()(
        [layers.MaxPooling2D(2, padding="same")(inp), layers.GlobalMaxPooling2D(keepdims=True)(inp)]
    )
    prepared = converters.from_keras(keras.Model(inp, out)).prepared()
    x = _x((6, 6, 2))
    pooled = x.reshape(1, 3, 2, 3, 2, 2).mean(axis=(2, 4))
    want = (pooled + x.mean(axis=(1, 2), keepdims=True)) / 2
    np.testing.assert_allclose(prepared(x)[prepared.output_names[0]], want, rtol=1e-5, atol=1e-6)


def test_rf_of_a_converted_model_end_to_end():
    """The receptivefield README network (linear, average pooling) through the engine:
    offset 17, stride 4, size 34 (MISSION.md)."""
    import rfjax

    def c(n, k):
        return layers.Conv2D(n, k)

    model = seq(
        (96, 96, 3),
        c(32, 5),
        c(32, 3),
        layers.AveragePooling2D(2),
        c(64, 3),
        c(64, 3),
        layers.AveragePooling2D(2),
        c(128, 3),
        layers.Conv2D(128, 3, name="feature_grid"),
    )
    rf = rfjax.receptive_field(converters.from_keras(model), input_shape=(96, 96, 3))["feature_grid"]
    assert (rf.size.h, rf.size.w, rf.stride.h, rf.offset.h) == (34, 34, 4, 17)


# --------------------------------------------------------------------------- bad input


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_lambda_layer_refused_in_safe_mode_and_run_in_unsafe_mode():
    model = seq((6, 6, 3), layers.Conv2D(4, 3), layers.Lambda(lambda t: t * 2.0 + 1.0, name="lam"))
    with pytest.raises(RFError) as err:
        converters.from_keras(model)
    assert "'lam'" in _one_line(err) and "safe_mode=False" in str(err.value)
    check_parity(model, safe_mode=False)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file_with_lambda_loaded_safely_advises_safe_mode(tmp_path, suffix):
    path = tmp_path / f"lam{suffix}"
    seq((6, 6, 3), layers.Conv2D(4, 3), layers.Lambda(lambda t: t * 2.0)).save(path)
    with pytest.raises(RFError) as err:
        converters.from_keras(path)
    assert str(path) in _one_line(err) and "safe_mode=False" in str(err.value)


def test_keras_file_round_trip(tmp_path):
    model = seq((8, 8, 3), layers.Conv2D(4, 3, name="conv"), layers.BatchNormalization(), layers.ReLU())
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"m{suffix}"
        model.save(path)
        converted = converters.from_keras(str(path))
        x = _x((8, 8, 3))
        assert (
            rel_error(converted(x)[converted.output_names[0]], np.asarray(model(x, training=False)))
            <= TOLERANCE
        )


class Doubler(layers.Layer):
    def call(self, x):
        return 2 * x


def test_custom_layer_without_converter_names_layer_class_and_supported_list():
    model = seq((6, 6, 3), layers.Conv2D(4, 3), Doubler(name="dbl"))
    with pytest.raises(RFError) as err:
        converters.from_keras(model)
    msg = _one_line(err)
    assert "'dbl'" in msg and "Doubler" in msg and "Conv2D" in msg and "DepthwiseConv2D" in msg


def test_registering_a_converter_for_a_custom_layer():
    @converters.register(f"{Doubler.__module__}.{Doubler.__qualname__}")
    def doubler(config, weights, rf):
        return (lambda p, x: x if rf else 2 * x), {}

    check_parity(seq((6, 6, 3), layers.Conv2D(4, 3), Doubler()))
    assert f"{Doubler.__module__}.Doubler" in converters.supported_layers()


def test_dynamic_input_shape_needs_input_shape():
    model = seq((None, None, 3), layers.Conv2D(4, 3), layers.ReLU())
    with pytest.raises(RFError) as err:
        converters.from_keras(model)
    assert "input_shape" in _one_line(err)
    converted = converters.from_keras(model, input_shape=(12, 10, 3))
    assert converted.input_shape == (12, 10, 3)
    check_parity(model, x=_x((12, 10, 3)), input_shape=(12, 10, 3))
    with pytest.raises(RFError, match="input_shape"):
        converters.from_keras(model, input_shape=(12, 10))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.keras"
    with pytest.raises(RFError) as err:
        converters.from_keras(path)
    assert str(path) in _one_line(err)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x00not a model\xff" * 50)
    with pytest.raises(RFError) as err:
        converters.from_keras(str(path))
    assert str(path) in _one_line(err)


def test_unknown_output_name_suggests_near_names():
    model = seq((8, 8, 3), layers.Conv2D(4, 3, name="block1_conv1"), layers.Conv2D(4, 3, name="block1_conv2"))
    with pytest.raises(RFError) as err:
        converters.from_keras(model, outputs=["block1_cnv2"])
    msg = _one_line(err)
    assert "'block1_cnv2'" in msg and "'block1_conv2'" in msg
    with pytest.raises(RFError, match="layer_names"):
        converters.from_keras(model).with_outputs("zzz")


def test_not_a_model_and_unbuilt_model():
    with pytest.raises(RFError, match="Keras 3 model"):
        converters.from_keras(42)
    with pytest.raises(RFError, match="not built"):
        converters.from_keras(keras.Sequential([layers.Dense(2)]))


def test_registering_a_taken_name_is_refused_unless_replace_is_asked():
    with pytest.raises(RFError, match=r"'Conv2D' already has a converter; pass replace=True"):

        @converters.register("Conv2D")
        def other(config, weights, rf):
            return (lambda p, x: x), {}


def test_a_setting_the_converter_does_not_implement_is_refused_by_name():
    # LoRA adds lora_kernel_a @ lora_kernel_b to the kernel in Keras' own forward pass;
    # the Dense converter reads only `kernel`, so it must refuse, naming the layer and key.
    inp = keras.Input((6, 6, 3))
    dense = layers.Dense(3, name="head")
    model = keras.Model(inp, dense(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inp))))
    dense.enable_lora(2)
    with pytest.raises(RFUnhandledSetting) as err:
        converters.from_keras(model)
    assert err.value.layer == "head" and err.value.keys == ["lora_rank"]
    assert "lora_rank=2" in _one_line(err) and "'head'" in _one_line(err)


class Shifter(layers.Layer):
    """Adds ``offset`` to its input; ``offset`` is a setting in its config."""

    def __init__(self, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def call(self, x):
        return x + self.offset

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


def test_a_custom_converter_that_ignores_a_setting_is_refused_until_it_reads_it():
    key = f"{Shifter.__module__}.{Shifter.__qualname__}"
    model = seq((6, 6, 3), layers.Conv2D(4, 3), Shifter(offset=0.5, name="shift"))

    @converters.register(key)
    def sloppy(config, weights, rf):
        return (lambda p, x: x), {}

    with pytest.raises(RFUnhandledSetting, match=r"'shift' \(Shifter\) sets offset=0.5"):
        converters.from_keras(model)

    @converters.register(key, replace=True)
    def careful(config, weights, rf):
        offset = 0.0 if rf else float(config["offset"])
        return (lambda p, x: x + offset), {}

    check_parity(model)  # Keras' own forward pass, with the offset


def test_a_setting_declared_unread_is_accepted():
    key = f"{Shifter.__module__}.{Shifter.__qualname__}"

    @converters.register(key, replace=True, unread=("offset",))
    def ignoring(config, weights, rf):
        return (lambda p, x: x), {}

    converted = converters.from_keras(seq((6, 6, 3), layers.Conv2D(4, 3), Shifter(offset=0.5)))
    assert converted.output_names
