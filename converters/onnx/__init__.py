"""ONNX models (any framework's export) as pure JAX functions for the rfjax engine.

:func:`from_onnx` reads a ``.onnx`` file (or an ``onnx.ModelProto``) once into a small
graph description and interprets it op by op through a registry keyed by ONNX op type
(:func:`supported_ops`; :func:`register` adds one)::

    import converters, rfjax
    model = converters.from_onnx("resnet18.onnx", outputs=["/layer3/layer3.1/relu_1/Relu_output_0"])
    rf = rfjax.receptive_field(model)

Convolutions in the file compute in NCHW; images in and 4-D maps out are NHWC, as
everywhere in rfjax (each value's channel axis is tracked through transposes, so
tf2onnx's NHWC files work too). Only the ``onnx`` package is needed (imported when a model is read); ONNX
Runtime is the reference the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.onnx import _math, _nn, _resize, _shape  # noqa: F401 - they register the ops
from converters.onnx._graph import read
from converters.onnx._model import OnnxModel
from converters.onnx._registry import ops_table, register, supported_ops
from rfjax.errors import RFError


def from_onnx(
    path_or_model: Any,
    outputs: str | Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    input_name: str | None = None,
) -> OnnxModel:
    """Convert an ONNX model to an :class:`OnnxModel`.

    Args:
      path_or_model: a ``.onnx`` path (external data files next to it are read) or an
        ``onnx.ModelProto``; default-domain opsets 7 to the newest ``onnx`` knows.
      outputs: value names to return (default: the graph's outputs); any node output,
        or a node's name for its first output (see ``.layer_names``).
      input_shape: ``(H, W, C)``, required when the file's spatial size is dynamic.
      input_name: which graph input is the image, when there are several.

    Returns:
      An :class:`OnnxModel` (``.apply(params, x)`` on NHWC ``x``, ``.prepared()``, ...).

    Raises:
      RFError: not an ONNX file, truncated, missing external data, an unsupported op,
        attribute or opset, a dynamic size without ``input_shape``, several inputs.
    """
    graph = read(path_or_model, input_name)
    dims = graph.input_dims
    nchw = (dims[0], dims[3], dims[1], dims[2]) if graph.channels_last else dims
    return OnnxModel(graph, outputs, _input_shape(nchw, input_shape, graph.source, graph.input))


def _input_shape(dims: tuple, given: Sequence[int] | None, source: str, name: str) -> tuple[int, int, int]:
    """``(H, W, C)`` from the file's ``(N, C, H, W)`` and the caller's ``input_shape``."""
    _, c, h, w = dims
    if given is None:
        if h is None or w is None or c is None:
            raise RFError(
                f"input {name!r} of {source} has dynamic dimensions {dims}; pass input_shape=(H, W, C) to from_onnx."
            )
        return (h, w, c)
    shape = tuple(given)
    if len(shape) != 3 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in shape):
        raise RFError(f"input_shape={shape!r} must be three positive integers (H, W, C).")
    if c is not None and shape[2] != c:
        raise RFError(
            f"input_shape={shape!r} has {shape[2]} channels but input {name!r} of {source} takes {c}."
        )
    return (int(shape[0]), int(shape[1]), int(shape[2]))


__all__ = ["OnnxModel", "from_onnx", "ops_table", "register", "supported_ops"]
