"""The ONNX adapter (converters.from_onnx): forward parity with ONNX Runtime, the exact RF
copy, global branches, closed-form bounds and one-sentence errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from onnx import helper

import converters
from onnx_graphs import assert_close, model, nhwc, runtime, single, weight

X = np.random.default_rng(1).standard_normal((1, 3, 11, 13)).astype(np.float32)  # odd sizes: padding rules show


def _parity(proto, x=X, outputs=None, input_shape=None):
    """Every requested output of the converted model equals ONNX Runtime's."""
    converted = converters.from_onnx(proto, outputs=outputs, input_shape=input_shape)
    ours = converted(nhwc(x))
    ref = runtime(proto, x, converted.output_names)
    for name in converted.output_names:
        assert_close(ours[name], nhwc(ref[name]), what=name)
    return converted


W3 = weight(4, 3, 3, 3)
CONV_CASES = {
    "asymmetric pads, stride 2": dict(pads=[0, 1, 2, 1], strides=[2, 2]),
    "SAME_UPPER stride 2": dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    "SAME_LOWER stride 2": dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    "VALID dilated": dict(auto_pad="VALID", dilations=[2, 3]),
}


@pytest.mark.parametrize("attrs", CONV_CASES.values(), ids=CONV_CASES)
def test_conv_padding_rules_match_onnxruntime(attrs):
    _parity(single("Conv", (1, 3, 11, 13), {"w": W3, "b": weight(4)}, **attrs))


@pytest.mark.parametrize(
    "groups, w",
    [(3, weight(6, 1, 3, 3)), (3, weight(3, 1, 5, 5))],
    ids=["depthwise x2", "depthwise 5x5"],
)
def test_grouped_and_depthwise_conv(groups, w):
    _parity(single("Conv", (1, 3, 11, 13), {"w": w}, group=groups, pads=[1, 2, 1, 2], strides=[2, 1]))


def test_grouped_conv_with_two_channels_per_group():
    x = np.random.default_rng(2).standard_normal((1, 4, 9, 9)).astype(np.float32)
    _parity(single("Conv", (1, 4, 9, 9), {"w": weight(6, 2, 3, 3)}, group=2, pads=[1, 1, 1, 1]), x)


def test_pointwise_strided_conv():
    _parity(single("Conv", (1, 3, 11, 13), {"w": weight(5, 3, 1, 1), "b": weight(5)}, strides=[2, 3]))


TRANSPOSE_CASES = {
    "stride 2 pads": (weight(3, 4, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2])),
    "output_padding": (weight(3, 4, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0])),
    "groups": (weight(3, 2, 4, 4), dict(strides=[2, 2], group=3, pads=[1, 1, 1, 1])),
    "dilated": (weight(3, 2, 3, 3), dict(dilations=[2, 1])),
    "output_shape SAME_UPPER": (
        weight(3, 2, 3, 3),
        dict(strides=[2, 2], output_shape=[21, 26], auto_pad="SAME_UPPER"),
    ),
}


@pytest.mark.parametrize("w, attrs", TRANSPOSE_CASES.values(), ids=TRANSPOSE_CASES)
def test_conv_transpose_matches_onnxruntime(w, attrs):
    _parity(single("ConvTranspose", (1, 3, 11, 13), {"w": w, "b": weight(w.shape[1] * attrs.get("group", 1))}, **attrs))


POOL_CASES = {
    "max ceil_mode with pads": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "max ceil_mode no pads": ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "max SAME_LOWER": ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
    "max dilated": ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 0, 0, 1])),
    "max storage_order": ("MaxPool", dict(kernel_shape=[3, 3], storage_order=1)),
    "avg count_include_pad": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    ),
    "avg exclude pad, ceil_mode": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2], ceil_mode=1),
    ),
    "avg include pad, ceil_mode": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
    ),
    "avg SAME_UPPER": ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
}


@pytest.mark.parametrize("op, attrs", POOL_CASES.values(), ids=POOL_CASES)
def test_pooling_matches_onnxruntime(op, attrs):
    _parity(single(op, (1, 3, 11, 13), opset=19, **attrs))


@pytest.mark.parametrize(
    "mode, pads",
    [("constant", [0, 0, 1, 2, 0, 0, 3, 0]), ("reflect", [0, 0, 2, 1, 0, 0, 1, 3]), ("edge", [0, 0, 2, 0, 0, 0, 0, 2])],
)
def test_pad_modes(mode, pads):
    _parity(single("Pad", (1, 3, 11, 13), {"pads": np.array(pads, np.int64)}, mode=mode))


def test_pad_with_negative_pads_crops_and_constant_value():
    inits = {"pads": np.array([0, 0, -1, 2, 0, 0, 2, -3], np.int64), "v": np.array(1.5, np.float32)}
    _parity(single("Pad", (1, 3, 11, 13), inits, mode="constant"))


RESIZE_CASES = [
    ("nearest", "asymmetric", "floor", None, [1, 1, 2, 2]),
    ("nearest", "half_pixel", "round_prefer_floor", None, [1, 1, 1.5, 0.7]),
    ("nearest", "align_corners", "round_prefer_ceil", None, [1, 1, 2.3, 1.6]),
    ("nearest", "tf_half_pixel_for_nn", "ceil", None, [1, 1, 2, 3]),
    ("linear", "half_pixel", None, None, [1, 1, 2, 2]),
    ("linear", "pytorch_half_pixel", None, [1, 3, 5, 1], None),
    ("linear", "align_corners", None, [1, 3, 20, 7], None),
    ("linear", "asymmetric", None, None, [1, 1, 0.5, 1.7]),
]


@pytest.mark.parametrize("mode, coords, rounding, sizes, scales", RESIZE_CASES)
def test_resize_modes(mode, coords, rounding, sizes, scales):
    inits = {"roi": np.zeros(0, np.float32), "scales": np.array(scales or [], np.float32)}
    if sizes is not None:
        inits["sizes"] = np.array(sizes, np.int64)
    attrs = {"mode": mode, "coordinate_transformation_mode": coords}
    if rounding:
        attrs["nearest_mode"] = rounding
    _parity(single("Resize", (1, 3, 11, 13), inits, opset=13, **attrs))


ACTIVATIONS = [
    ("Relu", {}),
    ("LeakyRelu", {"alpha": 0.3}),
    ("Sigmoid", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("HardSwish", {}),
    ("Tanh", {}),
    ("Erf", {}),
    ("Elu", {"alpha": 0.7}),
    ("Selu", {}),
    ("Softplus", {}),
    ("Mish", {}),
    ("Gelu", {"approximate": "tanh"}),
    ("Abs", {}),
    ("Neg", {}),
]


@pytest.mark.parametrize("op, attrs", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activations(op, attrs):
    _parity(single(op, (1, 3, 11, 13), opset={"Gelu": 20, "Mish": 18}.get(op, 17), **attrs))


def test_clip_relu6_prelu_and_arithmetic_with_broadcast_constants():
    c = weight(1, 3, 1, 1)
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
        helper.make_node("PRelu", ["c", "slope"], ["p"]),
        helper.make_node("Sub", ["p", "k"], ["s"]),
        helper.make_node("Div", ["s", "k2"], ["d"]),
        helper.make_node("Mul", ["d", "x"], ["m"]),
        helper.make_node("Sum", ["m", "x", "d"], ["sum"]),
        helper.make_node("Max", ["sum", "x"], ["mx"]),
        helper.make_node("Min", ["mx", "c"], ["y"]),
    ]
    inits = {
        "lo": np.array(0.0, np.float32),
        "hi": np.array(6.0, np.float32),
        "slope": np.abs(c) + 0.1,
        "k": c,
        "k2": np.abs(c) + 1,
    }
    _parity(model(nodes, {"x": (1, 3, 11, 13)}, ["y"], inits), outputs=["c", "p", "d", "sum", "y"])


@pytest.mark.parametrize("op", ["BatchNormalization", "InstanceNormalization"])
def test_normalisations(op):
    inits = {"s": weight(3), "b": weight(3)}
    if op == "BatchNormalization":
        inits |= {"m": weight(3), "v": np.abs(weight(3)) + 0.5}
    _parity(single(op, (1, 3, 11, 13), inits, epsilon=1e-3))


def test_layer_normalisation_over_the_last_axes():
    _parity(single("LayerNormalization", (1, 3, 11, 13), {"s": weight(11, 13), "b": weight(11, 13)}, axis=-2))


@pytest.mark.parametrize("opset, axis", [(13, 1), (11, 1), (13, -1)])
def test_softmax_axis_rules(opset, axis):
    _parity(single("Softmax", (1, 3, 11, 13), opset=opset, axis=axis))


@pytest.mark.parametrize("opset", [13, 18])
def test_reductions_over_spatial_axes(opset):
    axes = {"axes": [2, 3]} if opset < 18 else {}
    inits = {"axes": np.array([2, 3], np.int64)} if opset >= 18 else {}
    nodes = [
        helper.make_node("ReduceMean", ["x", *inits], ["mean"], keepdims=1, **axes),
        helper.make_node("ReduceMax", ["x", *inits], ["max"], keepdims=0, **axes),
        helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
        helper.make_node("GlobalMaxPool", ["x"], ["gmp"]),
    ]
    _parity(model(nodes, {"x": (1, 3, 11, 13)}, ["mean", "max", "gap", "gmp"], inits, opset))


def test_exporters_shape_chain_is_folded_to_a_static_reshape():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch.flatten exports."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Shape", ["g"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Cast", ["target"], ["target64"], to=7),
        helper.make_node("Reshape", ["g", "target64"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["y"], transB=1),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "axes0": np.array([0], np.int64),
        "minus1": np.array([-1], np.int64),
        "fc": weight(5, 3),
        "fb": weight(5),
    }
    converted = _parity(model(nodes, {"x": ("N", 3, 11, 13)}, ["y"], inits, 13))
    jaxpr = jax.make_jaxpr(lambda x: converted(x))(nhwc(X)).jaxpr
    computed = [v.aval.dtype for eqn in jaxpr.eqns for v in eqn.outvars]
    assert all(np.issubdtype(d, np.floating) for d in computed), computed  # no shape arithmetic traced


def test_layout_ops_split_slice_transpose_squeeze():
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
        helper.make_node("Slice", ["b", "st", "en", "ax", "sp"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Concat", ["a", "a"], ["c"], axis=1),
        helper.make_node("Flatten", ["c"], ["f"], axis=2),
        helper.make_node("Unsqueeze", ["f", "ax0"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax0"], ["q"]),
        helper.make_node("MatMul", ["q", "mm"], ["y"]),
    ]
    inits = {
        "sizes": np.array([1, 2], np.int64),
        "st": np.array([-1, 10], np.int64),
        "en": np.array([-100, 1], np.int64),
        "ax": np.array([3, 2], np.int64),
        "sp": np.array([-2, -3], np.int64),
        "ax0": np.array([0], np.int64),
    }
    inits["mm"] = weight(143, 4)
    _parity(model(nodes, {"x": (1, 3, 11, 13)}, ["y"], inits), outputs=["s", "t", "y"])


# --------------------------------------------------------------------------- exported torchvision models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``get(name, size, dynamo=False) -> (path, module)``: a torchvision model with random
    weights exported to ONNX once per module."""
    import torch
    import torchvision

    folder, made = tmp_path_factory.mktemp("onnx"), {}

    def get(name: str, size: int = 64, dynamo: bool = False):
        key = (name, size, dynamo)
        if key not in made:
            torch.manual_seed(0)
            module = getattr(torchvision.models, name)(weights=None).eval()
            path = folder / f"{name}_{size}_{int(dynamo)}.onnx"
            x = torch.randn(1, 3, size, size)
            torch.onnx.export(module, (x,), str(path), dynamo=dynamo, opset_version=18 if dynamo else 17)
            made[key] = (str(path), module)
        return made[key]

    return get


_FLOAT_OPS = {"Conv", "Relu", "Clip", "Concat", "MaxPool", "AveragePool", "Sigmoid", "HardSwish", "BatchNormalization"}


def _model_parity(path, size: int, n: int = 6):
    """The graph's output and about ``n`` values spread over the graph equal ONNX Runtime's."""
    import onnx

    proto = onnx.load(path)
    values = [node.output[0] for node in proto.graph.node if node.op_type in _FLOAT_OPS]
    picked = [*values[:: max(len(values) // n, 1)], proto.graph.output[0].name]
    x = np.random.default_rng(3).standard_normal((1, 3, size, size)).astype(np.float32)
    converted = converters.from_onnx(path, outputs=picked)
    ours = jax.jit(converted.apply)(converted.params, nhwc(x))  # eager dispatch is slower than one compile
    ref = runtime(proto, x, picked)
    for name in picked:
        assert_close(ours[name], nhwc(ref[name]), what=name)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x0_5"])
def test_torchvision_exports_match_onnxruntime(exported, name):
    _model_parity(exported(name)[0], 64)


@pytest.mark.slow
def test_squeeze_excitation_and_hardswish_export_matches_onnxruntime(exported):
    _model_parity(exported("mobilenet_v3_small")[0], 64)


@pytest.mark.slow
def test_dynamo_export_matches_onnxruntime(exported):
    _model_parity(exported("resnet18", dynamo=True)[0], 64)
