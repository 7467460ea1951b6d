"""RF size and stride bounds of every node, read from the Keras layer configs.

A walk over the graph in the closed form of Araujo et al.: per axis, a node's RF size
``r`` and stride (jump) ``j`` grow through every windowed layer as
``r += d (k - 1) j``, ``j *= s``, and a node with several inputs takes the largest.
Padding and cropping shift an RF but do not change its size, so they pass through, as
does every per-pixel layer. Global nodes (global pooling) are left out of the merges
(the local path's RF, as :meth:`KerasModel.held` measures it).

The value is exact for chains and for graphs whose paths are centred alike. Where two
paths are centred differently (asymmetric padding on one branch) the true RF is the
span of both, wider than the widest path, so the value is then *not* an upper bound;
it is only used to choose the input size for a measurement in one step instead of
growing by doubling, and the measurement grows further (and proves its geometry) when
the RF turns out larger.
Layers whose geometry it does not know (up-sampling, transposed convolutions,
reshapes) make every node downstream ``None`` (unknown).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters._graph import Graph, refs_in

Bound = tuple[int, int, int, int]  # (size_h, size_w, stride_h, stride_w)
_GLOBAL = object()  # a node that depends on the input through global nodes only

_WINDOWED = {
    "Conv2D": ("kernel_size", "strides", "dilation_rate"),
    "DepthwiseConv2D": ("kernel_size", "strides", "dilation_rate"),
    "SeparableConv2D": ("kernel_size", "strides", "dilation_rate"),
    "MaxPooling2D": ("pool_size", "strides", None),
    "AveragePooling2D": ("pool_size", "strides", None),
}
_UNKNOWN = {"Conv2DTranspose", "UpSampling2D", "Resizing", "Reshape", "Flatten", "Permute", "Lambda"}


def config_pair(v: Any, default: int = 1) -> tuple[int, int]:
    """A Keras config's size, stride or rate as ``(h, w)`` Python ints: an int (Python or
    NumPy) means square, ``None`` means ``(default, default)``."""
    if v is None:
        return (default, default)
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def rf_bounds(graph: Graph, global_nodes: frozenset[str]) -> dict[str, Bound | None]:
    """``{node name: (size_h, size_w, stride_h, stride_w) or None}`` for every node
    (``None``: unknown geometry, or a node with no local path to the input)."""
    out: dict[str, Any] = {graph.input: (1, 1, 1, 1)}
    for node in graph.nodes:
        if node.name == graph.input:
            continue
        if node.name in global_nodes:
            out[node.name] = _GLOBAL
            continue
        refs = [r.node for r in refs_in((node.args, node.kwargs))]
        local: list[Any] = [out.get(r) for r in refs if out.get(r) is not _GLOBAL]
        if not local:  # fed by global nodes only (an SE branch after its pooling)
            out[node.name] = _GLOBAL
            continue
        if any(b is None for b in local):
            out[node.name] = None
            continue
        r_h, r_w = max(b[0] for b in local), max(b[1] for b in local)
        j_h, j_w = max(b[2] for b in local), max(b[3] for b in local)
        layer = graph.layers[node.layer]
        if layer.class_name in _UNKNOWN:
            out[node.name] = None
            continue
        keys = _WINDOWED.get(layer.class_name)
        if keys is not None:
            cfg = layer.config
            k = config_pair(cfg.get(keys[0]))
            s = config_pair(cfg.get(keys[1]), 0) if cfg.get(keys[1]) is not None else k
            d = config_pair(cfg.get(keys[2])) if keys[2] else (1, 1)
            r_h, r_w = r_h + d[0] * (k[0] - 1) * j_h, r_w + d[1] * (k[1] - 1) * j_w
            j_h, j_w = j_h * s[0], j_w * s[1]
        out[node.name] = (r_h, r_w, j_h, j_w)
    return {k: (None if v is _GLOBAL else v) for k, v in out.items()}
