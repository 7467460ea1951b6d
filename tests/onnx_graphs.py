"""Small ONNX graphs built with onnx.helper for the adapter's tests, and the ONNX Runtime
reference they are compared against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def weight(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Sequence[int | str | None]],
    outputs: Sequence[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A model of ``nodes``: float inputs ``{name: dims}`` (str/None for dynamic),
    ``outputs`` of unknown shape, initializers from numpy arrays."""
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def single(
    op: str, shape: Sequence[int], inits: dict | None = None, opset: int = 17, **attrs
) -> onnx.ModelProto:
    """One ``op`` node on input ``x`` (then the initializers, in order) with output ``y``."""
    node = helper.make_node(op, ["x", *(inits or {})], ["y"], name=f"the_{op.lower()}", **attrs)
    return model([node], {"x": shape}, ["y"], inits, opset)


def runtime(
    proto: onnx.ModelProto, x: np.ndarray, outputs: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """ONNX Runtime's values of ``outputs`` (default the graph's) for NCHW ``x``."""
    import onnxruntime as ort

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    known = {o.name for o in proto.graph.output}
    for name in outputs or ():
        if name not in known:
            proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    names = list(outputs or [o.name for o in proto.graph.output])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


def assert_close(ours: np.ndarray, ref: np.ndarray, rel: float = 1e-4, what: str = "") -> None:
    """Equal to ``rel`` relative to the reference's largest magnitude (and same shape)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(ours - ref).max()) / scale
    assert err <= rel, f"{what}: relative error {err:.2e}"
