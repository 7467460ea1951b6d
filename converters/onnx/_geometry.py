"""Closed-form RF size and stride bounds of every value, from Conv/Pool attributes.

The walk of :mod:`converters._geometry` (Araujo et al.) over an ONNX graph: per
spatial axis ``r += d (k - 1) j`` and ``j *= s`` through every window, the largest
over a node's image inputs, unchanged through per-pixel ops, padding and
concatenation. Global nodes are left out of merges; ops of unknown geometry
(transposed convolutions, resizes, reshapes) make everything downstream unknown.
"""

from __future__ import annotations

from typing import Any

from converters.onnx._graph import Graph

Bound = tuple[int, int, int, int]  # (size_h, size_w, stride_h, stride_w)
_GLOBAL = object()
_WINDOWS = {"Conv", "MaxPool", "AveragePool"}
_PER_PIXEL = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Elu", "Selu", "Softplus",
    "Mish", "Gelu", "Clip", "PRelu", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Add", "Sub", "Mul",
    "Div", "Pow", "Sum", "Max", "Min", "Mean", "Where", "BatchNormalization", "Identity", "Dropout", "Cast",
    "Concat", "Pad", "Split",
}  # fmt: skip


def _window(graph: Graph, node) -> tuple[list[int], list[int], list[int]]:
    kernel = node.attrs.get("kernel_shape")
    if kernel is None:
        kernel = graph.params[node.inputs[1]].shape[2:]
    kernel = [int(k) for k in kernel]
    strides = [int(s) for s in node.attrs.get("strides") or [1] * len(kernel)]
    dil = [int(d) for d in node.attrs.get("dilations") or [1] * len(kernel)]
    return kernel, strides, dil


def rf_bounds(graph: Graph, global_nodes: frozenset[str]) -> dict[str, Bound | None]:
    """``{value name: (size_h, size_w, stride_h, stride_w) or None}`` for image values."""
    out: dict[str, object] = {graph.input: (1, 1, 1, 1)}
    for node in graph.nodes:
        ins = [out[i] for i in node.inputs if i in out]
        if not ins:
            continue
        local = [b for b in ins if b is not _GLOBAL]
        if node.name in global_nodes or not local:
            bound: object = _GLOBAL
        elif any(b is None for b in local) or (
            node.op_type not in _WINDOWS and node.op_type not in _PER_PIXEL
        ):
            bound = None
        else:
            local_bounds: list[Any] = local
            r_h, r_w = max(b[0] for b in local_bounds), max(b[1] for b in local_bounds)
            j_h, j_w = max(b[2] for b in local_bounds), max(b[3] for b in local_bounds)
            bound = (r_h, r_w, j_h, j_w)
            if node.op_type in _WINDOWS:
                try:
                    (kh, kw), (sh, sw), (dh, dw) = _window(graph, node)
                    bound = (r_h + dh * (kh - 1) * j_h, r_w + dw * (kw - 1) * j_w, j_h * sh, j_w * sw)
                except (KeyError, ValueError):  # a kernel computed in the graph, or not 2-D
                    bound = None
        out.update((o, bound) for o in node.outputs if o)
    return {k: (None if v is _GLOBAL else v) for k, v in out.items()}  # type: ignore[misc]
