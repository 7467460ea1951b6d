"""The ONNX adapter (converters.from_onnx): forward parity with ONNX Runtime, the exact RF
copy, global branches, closed-form bounds and one-sentence errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from onnx import helper
from onnx_graphs import assert_close, model, nhwc, runtime, single, weight

import converters

X = (
    np.random.default_rng(1).standard_normal((1, 3, 11, 13)).astype(np.float32)
)  # odd sizes: padding rules show


def _parity(proto, x=X, outputs=None, input_shape=None, channels_last=False):
    """Every requested output of the converted model equals ONNX Runtime's (``x`` in the
    file's layout; a channels-last file's outputs are channels-last already)."""
    import onnx

    converted = converters.from_onnx(proto, outputs=outputs, input_shape=input_shape)
    ours = converted(x if channels_last else nhwc(x))
    ref = runtime(onnx.load(proto) if isinstance(proto, str) else proto, x, converted.output_names)
    for name in converted.output_names:
        assert_close(ours[name], ref[name] if channels_last else nhwc(ref[name]), what=name)
    return converted


W3 = weight(4, 3, 3, 3)
CONV_CASES = {
    "asymmetric pads, stride 2": {"pads": [0, 1, 2, 1], "strides": [2, 2]},
    "SAME_UPPER stride 2": {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    "SAME_LOWER stride 2": {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    "VALID dilated": {"auto_pad": "VALID", "dilations": [2, 3]},
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
    "stride 2 pads": (weight(3, 4, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 2]}),
    "output_padding": (
        weight(3, 4, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]},
    ),
    "groups": (weight(3, 2, 4, 4), {"strides": [2, 2], "group": 3, "pads": [1, 1, 1, 1]}),
    "dilated": (weight(3, 2, 3, 3), {"dilations": [2, 1]}),
    "output_shape SAME_UPPER": (
        weight(3, 2, 3, 3),
        {"strides": [2, 2], "output_shape": [21, 26], "auto_pad": "SAME_UPPER"},
    ),
}


@pytest.mark.parametrize("w, attrs", TRANSPOSE_CASES.values(), ids=TRANSPOSE_CASES)
def test_conv_transpose_matches_onnxruntime(w, attrs):
    _parity(
        single(
            "ConvTranspose",
            (1, 3, 11, 13),
            {"w": w, "b": weight(w.shape[1] * attrs.get("group", 1))},
            **attrs,
        )
    )


POOL_CASES = {
    "max ceil_mode with pads": (
        "MaxPool",
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    ),
    "max ceil_mode no pads": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    "max SAME_LOWER": ("MaxPool", {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "max dilated": ("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 0, 0, 1]}),
    "max storage_order": ("MaxPool", {"kernel_shape": [3, 3], "storage_order": 1}),
    "avg count_include_pad": (
        "AveragePool",
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    "avg exclude pad, ceil_mode": (
        "AveragePool",
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 2], "ceil_mode": 1},
    ),
    "avg include pad, ceil_mode": (
        "AveragePool",
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "ceil_mode": 1,
            "count_include_pad": 1,
        },
    ),
    "avg SAME_UPPER": ("AveragePool", {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
}


@pytest.mark.parametrize("op, attrs", POOL_CASES.values(), ids=POOL_CASES)
def test_pooling_matches_onnxruntime(op, attrs):
    _parity(single(op, (1, 3, 11, 13), opset=19, **attrs))


@pytest.mark.parametrize(
    "mode, pads",
    [
        ("constant", [0, 0, 1, 2, 0, 0, 3, 0]),
        ("reflect", [0, 0, 2, 1, 0, 0, 1, 3]),
        ("edge", [0, 0, 2, 0, 0, 0, 0, 2]),
    ],
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


# Upsample (opsets 7 to 9; ONNX Runtime refuses it from opset 10) and Resize of opset 10:
# asymmetric coordinates, floor(size * scale) outputs; odd scales make the rounding show
UPSAMPLE_CASES = [
    (9, "nearest", [1, 1, 2, 3]),
    (9, "nearest", [1, 1, 1.5, 2.5]),
    (9, "linear", [1, 1, 2, 2]),
    (9, "linear", [1, 1, 1.7, 2.3]),
    (7, "nearest", [1, 1, 1.6, 2]),
    (7, "linear", [1, 1, 1.5, 1.3]),
    (10, "nearest", [1, 1, 0.6, 1.7]),  # Resize-10: downsampled axes round up
    (10, "linear", [1, 1, 0.45, 2.2]),
]


@pytest.mark.parametrize("opset, mode, scales", UPSAMPLE_CASES)
def test_upsample_and_opset_10_resize_match_onnxruntime(opset, mode, scales):
    if opset == 7:
        proto = single("Upsample", (1, 3, 11, 13), opset=7, mode=mode, scales=[float(s) for s in scales])
    else:
        op = "Resize" if opset == 10 else "Upsample"
        proto = single(op, (1, 3, 11, 13), {"s": np.array(scales, np.float32)}, opset=opset, mode=mode)
    converted = _parity(proto)
    h, w = (int(np.floor(np.float32(n) * np.float32(s))) for n, s in zip((11, 13), scales[2:]))
    assert converted(nhwc(X))["y"].shape == (1, h, w, 3)


def test_upsample_in_a_graph_keeps_the_rf_closed_form_unknown_and_refuses_cubic():
    from rfjax.errors import RFError

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Upsample", ["c", "s"], ["y"], name="up", mode="nearest"),
    ]
    inits = {"w": weight(2, 3, 3, 3), "s": np.array([1, 1, 2, 2], np.float32)}
    converted = _parity(model(nodes, {"x": (1, 3, 11, 13)}, ["y"], inits, opset=9))
    assert converted.rf_bound("c") is not None and converted.rf_bound("y") is None
    with pytest.raises(RFError, match=r"node 'the_upsample' \(Upsample\).*mode='cubic'"):
        converters.from_onnx(single("Upsample", (1, 3, 8, 8), {"s": inits["s"]}, opset=9, mode="cubic"))(
            nhwc(X[:, :, :8, :8])
        )


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


def _layout_graph():
    """Convolutions feeding ops of every layout kind: a per-channel and a per-column
    constant, concatenations over channels and width, a transpose of an image and
    one back, a value mixed with its own round trip, a flatten."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "bias"], ["a"]),
        helper.make_node("Mul", ["a", "cols"], ["m"]),
        helper.make_node("Concat", ["m", "c1"], ["cat"], axis=1),
        helper.make_node("Concat", ["cat", "cat"], ["wide"], axis=-1),
        helper.make_node("MaxPool", ["wide"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["p"], ["tp"], perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", ["tp"], ["back"], perm=[0, 1, 3, 2]),
        helper.make_node("Sub", ["p", "back"], ["zero"]),
        helper.make_node("Conv", ["tp", "w2"], ["c2"], pads=[0, 1, 0, 1]),
        helper.make_node("Relu", ["c2"], ["r"]),
        helper.make_node("Pad", ["r", "pads"], ["pd"], mode="constant"),
        helper.make_node("Flatten", ["pd"], ["y"]),
    ]
    inits = {"w1": weight(4, 3, 3, 3), "bias": weight(4, 1, 1), "cols": weight(13), "w2": weight(5, 8, 3, 3)}
    inits["pads"] = np.array([0, 1, 0, 2, 0, 2, 1, 0], np.int64)  # channels too
    return model(nodes, {"x": (2, 3, 11, 13)}, ["y"], inits)


def test_channels_last_storage_keeps_every_layout_rule_of_the_file():
    x = np.random.default_rng(5).standard_normal((2, 3, 11, 13)).astype(np.float32)
    converted = _parity(_layout_graph(), x, outputs=["a", "m", "cat", "wide", "tp", "zero", "c2", "pd", "y"])
    assert np.abs(converted(nhwc(x))["zero"]).max() == 0


def _image_transposes(converted, x):
    """The transposes of values with the batch axis (images, not weights) in the jaxpr."""
    jaxpr = jax.make_jaxpr(converted.apply)(converted.params, x)
    found = []
    for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name == "transpose" and eqn.invars[0].aval.shape[0] == x.shape[0]:
            found.append(eqn.invars[0].aval.shape)
    return found


def test_convolutions_pools_and_elementwise_ops_run_without_image_transposes():
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Pad", ["r", "pads"], ["rp"], mode="constant"),
        helper.make_node("MaxPool", ["rp"], ["p"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p"], ["s"]),
        helper.make_node("Concat", ["s", "p"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["y"], kernel_shape=[2, 2]),
    ]
    inits = {"w1": weight(4, 3, 3, 3), "b1": weight(4), "w2": weight(4, 4, 3, 3)}
    inits["pads"] = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)  # ZeroPadding2D in tf2onnx files
    inits |= {"g": weight(4), "be": weight(4), "mu": weight(4), "var": np.abs(weight(4)) + 0.5}
    x = np.random.default_rng(6).standard_normal((5, 3, 11, 13)).astype(np.float32)
    converted = _parity(model(nodes, {"x": (5, 3, 11, 13)}, ["y"], inits), x, outputs=["bn", "s", "y"])
    assert _image_transposes(converted, nhwc(x)) == []


# --------------------------------------------------------------------------- exported torchvision models
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


_FLOAT_OPS = {
    "Conv",
    "Relu",
    "Clip",
    "Concat",
    "MaxPool",
    "AveragePool",
    "Sigmoid",
    "HardSwish",
    "BatchNormalization",
}


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


# --------------------------------------------------------------------------- receptive fields


def _torch_rf(module, size: int) -> tuple[int, int, float]:
    """``(size, stride, offset)`` along h of ``module``'s output, measured without rfjax:
    a float64 copy with constant positive kernels, zero biases, identity batch norms and
    activations and average pooling; the input-gradient supports of two neighbouring
    central cells give the size, the stride and the padding."""
    import copy

    import torch

    m = copy.deepcopy(module).double().eval()
    for parent in list(m.modules()):
        for key, child in parent.named_children():
            if isinstance(child, (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.BatchNorm2d, torch.nn.Dropout)):
                setattr(parent, key, torch.nn.Identity())
            elif isinstance(child, torch.nn.MaxPool2d):
                pool = torch.nn.AvgPool2d(
                    child.kernel_size, child.stride, child.padding, child.ceil_mode, False
                )
                setattr(parent, key, pool)
            elif isinstance(child, torch.nn.Conv2d):
                with torch.no_grad():
                    child.weight.fill_(1.0 / child.weight[0].numel())
                    if child.bias is not None:
                        child.bias.zero_()
    x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    out = m(x)
    i = out.shape[2] // 2
    starts, ends = [], []
    for row in (i, i + 1):
        (g,) = torch.autograd.grad(out[0, :, row, i].sum(), x, retain_graph=True)
        rows = np.nonzero(g.abs().sum(dim=(0, 1, 3)).numpy())[0]
        assert rows[0] > 0 and rows[-1] < size - 1, "the reference cell's RF is clipped; use a larger input"
        starts.append(rows[0])
        ends.append(rows[-1])
    rf, stride = int(ends[0] - starts[0] + 1), int(starts[1] - starts[0])
    padding = i * stride - starts[0]
    return rf, stride, rf / 2 - padding


def _export(module, size: int, path) -> str:
    import torch

    torch.onnx.export(
        module.eval(), (torch.randn(1, 3, size, size),), str(path), dynamo=False, opset_version=17
    )
    return str(path)


def test_rf_of_exported_resnet18_trunk_equals_the_float64_torch_support(tmp_path):
    import torch
    import torchvision

    import rfjax

    resnet = torchvision.models.resnet18(weights=None)
    trunk = torch.nn.Sequential(*list(resnet.children())[:-3])  # up to layer3
    path = _export(trunk, 64, tmp_path / "trunk.onnx")
    (rf,) = rfjax.receptive_field(path, grow=True).values()  # a path resolves through converters.from_onnx
    size, stride, offset = _torch_rf(trunk, 320)
    assert (size, stride) == (211, 16)  # FACTS.md: the same float64 measurement, made independently
    assert tuple(rf.size) == (size, size) and tuple(rf.stride) == (stride, stride)
    assert tuple(rf.offset) == (offset, offset)


def test_rf_of_squeezenet_features_one_channel_and_full_copy_agree_with_torch(tmp_path):
    import torchvision

    import rfjax

    features = torchvision.models.squeezenet1_1(weights=None).features  # ceil_mode max pooling, concats
    converted = converters.from_onnx(_export(features, 64, tmp_path / "sq.onnx"))
    assert converted.has_one_channel
    (one,) = rfjax.receptive_field(converted, grow=True).values()
    every = list(range(512))  # every channel, named: the full-channel copy (one channel alone has its own RF)
    (full,) = rfjax.receptive_field(
        converted, grow=True, channels=every
    ).values()  # a channel subset: the full-channel copy
    size, stride, offset = _torch_rf(features, 256)
    for rf in (one, full):
        assert tuple(rf.size) == (size, size) and tuple(rf.stride) == (stride, stride)
        assert tuple(rf.offset) == (offset, offset)
    assert converted.rf_bound(converted.output_names[0]).size == (size, size)


def test_channel_split_models_fall_back_to_the_full_channel_copy(exported):
    converted = converters.from_onnx(exported("shufflenet_v2_x0_5")[0])
    assert not converted.has_one_channel  # its channel split would merge the branches it separates
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
    copy = converted.prepared(one_channel=True)
    (shape,) = jax.eval_shape(lambda x: copy(x), x).values()
    assert shape.shape == (1, 1000)  # all channels kept


def _chain():
    """Conv (asymmetric pads, stride 2) -> MaxPool (ceil_mode, pads) -> Conv (SAME_LOWER,
    dilation 1) -> AveragePool (SAME_UPPER), and the same chain in closed form."""
    from rfjax.analytic import Layer

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[2, 1, 0, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node(
            "MaxPool", ["b"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1
        ),
        helper.make_node("Conv", ["c", "w2"], ["d"], auto_pad="SAME_LOWER", strides=[2, 2]),
        helper.make_node(
            "AveragePool", ["d"], ["y"], kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_UPPER"
        ),
    ]
    proto = model(nodes, {"x": (1, 3, 96, 96)}, ["y"], {"w1": weight(4, 3, 5, 5), "w2": weight(4, 4, 4, 4)})
    layers = [
        Layer.conv(5, 2, padding=((2, 0), (1, 1))),
        Layer.pool(3, 2, padding=((1, 1), (1, 1)), kind="max_pool"),
        Layer.conv(4, 2, padding=((1, 1), (1, 1))),  # SAME_LOWER at 24 -> 12: total 2, 1 before and after
        Layer.pool(2, 1, padding=((0, 1), (0, 1))),
    ]
    return proto, layers


def test_rf_of_a_padded_chain_equals_the_closed_form():
    import rfjax
    from rfjax.analytic import analytic_rf

    proto, layers = _chain()
    converted = converters.from_onnx(proto)
    rf = rfjax.receptive_field(converted, layer="y")
    truth = analytic_rf(layers, (96, 96, 3))
    assert (rf.size, rf.stride, rf.offset) == (truth.size, truth.stride, truth.offset)
    bound = converted.rf_bound("y")
    assert (bound.size, bound.stride) == (truth.size, truth.stride)


def test_readme_network_through_onnx_keras_and_the_closed_form(tmp_path):
    """The receptivefield README network (MISSION.md: offset 17, stride 4, size 34 at
    96x96x3) exported from PyTorch equals the same network through from_keras."""
    import keras
    import torch

    import rfjax

    t = torch.nn
    net = t.Sequential(
        t.Conv2d(3, 32, 5), t.Conv2d(32, 32, 3), t.AvgPool2d(2),
        t.Conv2d(32, 64, 3), t.Conv2d(64, 64, 3), t.AvgPool2d(2),
        t.Conv2d(64, 128, 3), t.Conv2d(128, 128, 3),
    )  # fmt: skip
    (onnx_rf,) = rfjax.receptive_field(_export(net, 96, tmp_path / "readme.onnx")).values()
    L = keras.layers
    k = keras.Sequential(
        [keras.Input((96, 96, 3)), L.Conv2D(32, 5), L.Conv2D(32, 3), L.AveragePooling2D(2), L.Conv2D(64, 3),
         L.Conv2D(64, 3), L.AveragePooling2D(2), L.Conv2D(128, 3), L.Conv2D(128, 3)]
    )  # fmt: skip
    (keras_rf,) = rfjax.receptive_field(converters.from_keras(k)).values()
    assert (onnx_rf.size, onnx_rf.stride, onnx_rf.offset) == ((34, 34), (4, 4), (17.0, 17.0))
    assert (onnx_rf.size, onnx_rf.stride, onnx_rf.offset) == (keras_rf.size, keras_rf.stride, keras_rf.offset)


# --------------------------------------------------------------------------- global branches


def _squeeze_excitation():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Conv", ["g", "w1"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    return model(nodes, {"x": (1, 3, 32, 32)}, ["y"], {"w": weight(4, 3, 3, 3), "w1": weight(4, 4, 1, 1)})


def test_squeeze_excitation_is_flagged_global_with_its_local_rf():
    import rfjax

    converted = _parity(_squeeze_excitation(), np.ones((1, 3, 32, 32), np.float32))
    assert converted.global_nodes() == {"g"}  # unnamed nodes go by their first output
    assert converted.depends_globally("y") and not converted.depends_globally("c")
    rf = rfjax.receptive_field(converted, layer="y")
    assert rf.global_ and tuple(rf.size) == (3, 3)


def test_instance_normalisation_is_global_and_held_to_its_local_rf():
    import rfjax

    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["y"], name="norm"),
    ]
    proto = model(
        nodes, {"x": (1, 3, 32, 32)}, ["y"], {"w": weight(2, 3, 3, 3), "s": weight(2), "b": weight(2)}
    )
    converted = converters.from_onnx(proto)
    assert converted.global_nodes() == {"norm"}
    prepared = converted.prepared()
    x = np.ones((1, 32, 32, 3), np.float32)
    g = jax.grad(lambda x: prepared(x)["y"][0, 10, 10].sum())(x)
    assert np.count_nonzero(g.sum(-1)) == 32 * 32  # the statistics read every pixel: global
    rf = rfjax.receptive_field(converted, layer="y")
    assert rf.global_ and tuple(rf.size) == (3, 3)


def test_output_after_global_pooling_is_refused_as_global(exported):
    import onnx

    import rfjax
    from rfjax.errors import RFGlobal

    path = exported("resnet18")[0]
    (pooled,) = [n.output[0] for n in onnx.load(path).graph.node if n.op_type == "GlobalAveragePool"]
    with pytest.raises(RFGlobal):
        rfjax.receptive_field(converters.from_onnx(path), layer=pooled)


# --------------------------------------------------------------------------- bad input


def _save(proto, path) -> str:
    import onnx

    onnx.save(proto, str(path))
    return str(path)


def test_a_file_that_is_not_onnx_is_refused_naming_it(tmp_path):
    from rfjax.errors import RFError

    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(RFError, match="notes.onnx.*not an ONNX model"):
        converters.from_onnx(str(path))


def test_a_truncated_file_is_refused_naming_it(tmp_path):
    from rfjax.errors import RFError

    data = single("Conv", (1, 3, 11, 13), {"w": W3}).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RFError, match="cut.onnx.*truncated"):
        converters.from_onnx(str(path))


def test_dynamic_spatial_size_needs_input_shape(tmp_path):
    from rfjax.errors import RFError

    path = _save(single("Conv", ("N", 3, "H", "W"), {"w": W3}), tmp_path / "dyn.onnx")
    with pytest.raises(RFError, match=r"input 'x' of '.*dyn.onnx' has dynamic dimensions.*input_shape"):
        converters.from_onnx(path)
    _parity(path, input_shape=(11, 13, 3))


def test_several_inputs_ask_which_one_is_the_image(tmp_path):
    from rfjax.errors import RFError

    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    path = _save(model(nodes, {"x": (1, 3, 8, 8), "z": (1, 3, 8, 8)}, ["y"]), tmp_path / "two.onnx")
    with pytest.raises(RFError, match=r"two.onnx' has 2 inputs \['x', 'z'\]; pass input_name="):
        converters.from_onnx(path)
    assert converters.from_onnx(path, input_name="z").input_name == "z"


def test_unsupported_op_names_node_type_opset_and_the_supported_list():
    from rfjax.errors import RFError

    nodes = [helper.make_node("Einsum", ["x"], ["y"], name="mixer", equation="nchw->nchw")]
    with pytest.raises(
        RFError, match=r"node 'mixer' of the ModelProto has op type 'Einsum' \(opset 17\).*supported: .*Conv"
    ):
        converters.from_onnx(model(nodes, {"x": (1, 3, 8, 8)}, ["y"]))


def test_unsupported_opset_and_unknown_attribute_are_refused():
    from rfjax.errors import RFError

    with pytest.raises(RFError, match="uses opset 6 of the default ONNX domain; rfjax reads opsets 7 to"):
        converters.from_onnx(single("Relu", (1, 3, 8, 8), opset=6))
    with pytest.raises(RFError, match=r"node 'the_conv' \(Conv\).*attribute\(s\) \['winograd'\]"):
        converters.from_onnx(single("Conv", (1, 3, 11, 13), {"w": W3}, winograd=1))


def test_missing_external_data_names_the_initializer_and_file(tmp_path):
    import onnx

    from rfjax.errors import RFError

    proto = single("Conv", (1, 3, 11, 13), {"w": W3, "b": weight(4)})
    path = str(tmp_path / "ext.onnx")
    onnx.save(proto, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    _parity(path)  # external data next to the file is read
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(
        RFError, match=r"initializer 'w' of '.*ext.onnx' is stored in 'ext.bin', which is not in"
    ):
        converters.from_onnx(path)


def test_a_shape_input_computed_from_the_image_is_refused():
    from rfjax.errors import RFError

    nodes = [
        helper.make_node("Cast", ["x"], ["i"], to=7),
        helper.make_node("Reshape", ["x", "i"], ["y"], name="r"),
    ]
    with pytest.raises(RFError, match=r"node 'r' \(Reshape\).*input 1 \('i'\) must be a constant"):
        converters.from_onnx(model(nodes, {"x": (1, 4, 1, 1)}, ["y"]))(np.ones((1, 1, 1, 4), np.float32))


def test_registering_an_op_twice_is_refused():
    from converters.onnx import register
    from rfjax.errors import RFError

    with pytest.raises(RFError, match="'Conv' is already registered"):
        register("Conv")(lambda ctx, x: x)


def test_readme_ops_table_is_the_registry():
    import pathlib

    from converters.onnx import ops_table

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    assert ops_table() in readme


def test_importing_rfjax_and_converters_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, rfjax, converters, converters.onnx; assert not {'onnx', 'onnxruntime', 'torch'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- Keras through tf2onnx


def _keras_to_onnx(keras_model, path) -> str:
    """tf2onnx's export of a Keras 3 model (its ``from_keras`` fails on Keras 3; a
    ``tf.function`` of the model converts): NHWC input, transposes inside."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((1, *keras_model.input_shape[1:]), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_function(
        tf.function(lambda x: keras_model(x)), input_signature=spec, opset=17
    )
    return _save(proto, path)


def test_keras_model_through_tf2onnx_matches_onnxruntime_and_the_native_rf(tmp_path):
    import keras

    import rfjax

    L = keras.layers
    x = keras.Input((40, 40, 3))
    a = L.Conv2D(8, 5, strides=2, padding="same")(x)
    a = L.ReLU(6.0)(L.BatchNormalization()(a))
    b = L.DepthwiseConv2D(3, padding="same")(a)
    c = L.Add()([a, L.Conv2D(8, 1)(b)])
    c = L.MaxPooling2D(3, strides=2, padding="same")(c)
    y = L.Conv2D(4, 3, dilation_rate=2, name="features")(c)
    k = keras.Model(x, y)
    path = _keras_to_onnx(k, tmp_path / "keras.onnx")
    image = np.random.default_rng(4).standard_normal((1, 40, 40, 3)).astype(np.float32)
    converted = _parity(path, image, channels_last=True)
    assert converted.input_shape == (40, 40, 3)
    ours = converters.from_onnx(path)(np.ones((1, 40, 40, 3), np.float32))
    native = converters.from_keras(k)(np.ones((1, 40, 40, 3), np.float32))
    assert_close(next(iter(ours.values())), native["features"], rel=1e-4, what="keras vs onnx")
    (onnx_rf,) = rfjax.receptive_field(path).values()
    keras_rf = rfjax.receptive_field(k, layer="features")
    assert (onnx_rf.size, onnx_rf.stride, onnx_rf.offset) == (keras_rf.size, keras_rf.stride, keras_rf.offset)


def test_cli_estimate_reads_an_onnx_file(tmp_path, capsys):
    from rfjax.analytic import analytic_rf
    from rfjax.cli import main

    proto, layers = _chain()
    path = _save(proto, tmp_path / "chain.onnx")
    assert main(["estimate", path, "--out", str(tmp_path / "figs")]) == 0
    truth = analytic_rf(layers, (96, 96, 3))
    assert f"size=({truth.size.h:g}, {truth.size.w:g})" in capsys.readouterr().out
    assert (tmp_path / "figs" / "rf_grid.png").exists()


def test_one_channel_copy_only_where_no_op_picks_channels():
    crop = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Slice", ["c", "st", "en", "ax"], ["y"]),
    ]
    inits = {"w": W3, "st": np.array([1], np.int64), "en": np.array([-1], np.int64)}
    spatial = model(crop, {"x": (1, 3, 11, 13)}, ["y"], inits | {"ax": np.array([2], np.int64)})
    channels = model(crop, {"x": (1, 3, 11, 13)}, ["y"], inits | {"ax": np.array([1], np.int64)})
    assert converters.from_onnx(spatial).has_one_channel
    assert not converters.from_onnx(channels).has_one_channel


def test_split_into_equal_parts_counts_unused_outputs():
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3)
    _parity(model([node], {"x": (1, 3, 11, 13)}, ["a"], opset=18))


# --------------------------------------------------------------------------- CAM on ONNX classifiers


def _torch_grad_cam(module, block, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM of the top logit of each image at ``block``'s output, computed by PyTorch
    (forward hook, autograd): ``(maps (N, h, w), classes (N,), logits (N, classes))``."""
    import torch

    seen = {}
    hook = block.register_forward_hook(lambda m, i, o: seen.update(a=o))
    try:
        logits = module(torch.from_numpy(x))
    finally:
        hook.remove()
    top = logits.argmax(dim=1)
    maps = []
    for n in range(x.shape[0]):
        (g,) = torch.autograd.grad(logits[n, top[n]], seen["a"], retain_graph=True)
        a, g = seen["a"][n], g[n]  # (K, h, w)
        maps.append(torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(0)).detach().numpy())
    return np.stack(maps), top.numpy(), logits.detach().numpy()


def test_grad_cam_of_an_onnx_file_equals_pytorchs_on_the_native_model(exported):
    import onnx

    import rfjax

    path, module = exported("resnet18")
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want, top, _ = _torch_grad_cam(module, module.layer4, x)
    r = rfjax.grad_cam(path, nhwc(x), placement="resize")
    relus = [n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Relu"]
    assert r.layer == relus[-1]  # the input of the global average pooling
    np.testing.assert_array_equal(r.classes[:, 0], top)
    for n in range(2):
        assert_close(r.maps[n, 0], want[n], what=f"image {n}")
    layer3 = [v for v in relus if v.startswith("/layer3/")][-1]
    want3, _, _ = _torch_grad_cam(module, module.layer3, x)
    r3 = rfjax.grad_cam(path, nhwc(x), layer=layer3, placement="resize")
    assert r3.maps.shape[2:] == want3.shape[1:] == (4, 4)
    for n in range(2):
        assert_close(r3.maps[n, 0], want3[n], what=f"layer3, image {n}")


def test_cam_explains_the_logits_before_a_final_softmax(tmp_path):
    import onnx
    import torch
    import torchvision

    import rfjax

    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    path = _export(torch.nn.Sequential(net, torch.nn.Softmax(dim=1)), 64, tmp_path / "soft.onnx")
    graph = onnx.load(path).graph
    assert graph.node[-1].op_type == "Softmax"
    feature, logits = converters.from_onnx(path).cam_layers()
    assert (
        logits == graph.node[-1].input[0]
        and feature == [n.output[0] for n in graph.node if n.op_type == "Relu"][-1]
    )
    x = np.random.default_rng(8).standard_normal((2, 3, 64, 64)).astype(np.float32)
    want, top, scores = _torch_grad_cam(net, net.layer4, x)
    r = rfjax.grad_cam(path, nhwc(x), placement="resize")
    np.testing.assert_array_equal(r.classes[:, 0], top)
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(r.probabilities[:, 0], probs[np.arange(2), top], rtol=1e-4)
    for n in range(2):
        assert_close(r.maps[n, 0], want[n], what=f"image {n}")


def test_cam_layer_pick_refuses_a_graph_without_spatial_layers():
    from rfjax.errors import RFError

    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"]),
    ]
    converted = converters.from_onnx(model(nodes, {"x": (1, 3, 8, 8)}, ["y"], {"w": weight(3, 4)}))
    with pytest.raises(RFError, match="no spatial layer before its output 'y'; pass layer="):
        converted.cam_layers()


def test_rfjax_cam_explains_a_folder_with_an_onnx_classifier(exported, tmp_path, capsys):
    import matplotlib.image
    import torch

    from rfjax.cam_files import LOG_NAME, read_image
    from rfjax.cli import main

    path, module = exported("resnet18")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in range(2):
        matplotlib.image.imsave(folder / f"i{n}.png", np.random.default_rng(n).uniform(size=(70, 60, 3)))
    out = tmp_path / "out"
    assert main(["cam", path, str(folder), "--out", str(out), "--scale", "1", "--top-k", "1", "--quiet"]) == 0
    assert capsys.readouterr().out.count("top classes") == 2
    rows = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()[1:]]
    for row in rows:
        x = read_image(row["image"], (64, 64), 3, scale=1.0)  # what the command fed the model
        with torch.no_grad():
            logits = module(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
        assert row["classes"] == [int(logits.argmax())]
        assert Path(row["overlay"]).stat().st_size > 0
