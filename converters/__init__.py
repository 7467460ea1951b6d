"""Converters: Keras 3 / tf.keras models to pure JAX functions for the rfjax engine.

:func:`from_keras` walks a Keras model (Sequential, Functional, nested models,
shared layers, raw ``keras.ops`` calls) once into a small graph description and
turns every layer into a pure JAX function through a registry keyed by the Keras
class name (:func:`register`; :func:`supported_layers` lists them)::

    import converters, rfjax
    model = converters.from_keras(keras_model, outputs=["block3_pool", "block5_pool"])
    maps = model(x)                       # {"block3_pool": (N, H, W, C), ...}, NHWC
    rf = rfjax.receptive_field(model, input_shape=(224, 224, 3))

``model.apply(params, x)`` is pure and jit-able; ``model.params`` is a pytree with
Flax leaf names; ``model.with_outputs(names)`` requests other layers without a new
walk; ``model.prepared()`` is the exact layer-level RF preparation (linear
activations, average pooling, identity normalisation, constant positive kernels,
zero biases). ``channels_first`` models are converted to NHWC at the boundaries.
TensorFlow and Keras are imported only when a model is converted.

:func:`from_onnx` (the :mod:`converters.onnx` package, loaded on first use) reads ONNX
files into the same kind of object; the ``onnx`` package is imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from converters import _layers as _layers
from converters import _ops as _ops
from converters._introspect import cam_layers as keras_cam_layers
from converters._model import KerasModel
from converters._registry import register, supported_layers
from converters._tf import TFModel, from_tf
from rfjax._types import check_input_shape
from rfjax.errors import RFError


def from_keras(
    model_or_path: Any,
    outputs: str | Sequence[str] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    safe_mode: bool = True,
) -> KerasModel:
    """Convert a Keras 3 model (or a ``.keras`` / ``.h5`` file) to a :class:`KerasModel`.

    Args:
      model_or_path: a built ``keras.Model`` (Sequential or Functional, nested models
        and shared layers allowed) or a path to a saved model file.
      outputs: layer names to return (default: the model's outputs); any name in
        ``.layer_names``. A shared layer's further calls are ``"name:1"``, ...; a
        nested model's layers are ``"outer/inner"``.
      input_shape: ``(H, W, C)``, required when the model's spatial input size is
        dynamic (``None``); it is what the rfjax engine feeds by default.
      safe_mode: load files with Keras' safe mode and refuse Lambda layers; ``False``
        runs a Lambda's Python function on JAX arrays (trusted models only).

    Returns:
      A :class:`KerasModel` with ``.params``, ``.apply(params, x)``, ``.prepared()``.
    """
    from converters._graph import load, walk

    if isinstance(model_or_path, (str, os.PathLike)):
        model_or_path = load(model_or_path, safe_mode)
    graph = walk(model_or_path, safe_mode=safe_mode)
    converted = KerasModel(graph, outputs)
    if input_shape is not None:
        converted.input_shape = check_input_shape(input_shape)
    elif any(v is None for v in converted.input_shape):
        raise RFError(
            f"the model's input shape {converted.input_shape} is dynamic; pass input_shape=(H, W, C) to from_keras."
        )
    return converted


def load_keras(path: str | os.PathLike, safe_mode: bool = True) -> Any:
    """Load a ``.keras`` / ``.h5`` file with Keras (Lambda layers refused in safe mode);
    every failure is one :class:`RFError` sentence naming the file."""
    from converters._graph import load

    return load(path, safe_mode)


def __getattr__(name: str) -> Any:
    """``from_onnx`` and ``OnnxModel`` from :mod:`converters.onnx`, imported on first use."""
    if name in ("from_onnx", "OnnxModel"):
        from converters import onnx as _onnx

        return getattr(_onnx, name)
    raise AttributeError(f"module 'converters' has no attribute {name!r}")


def from_torch(
    module: Any, outputs: str | Sequence[str] | None = None, *, input_shape: Sequence[int] | None = None
) -> Any:
    """Convert a ``torch.nn.Module`` to a ``TorchModel`` (a pure JAX function, NHWC).

    The module is traced by `torchax <https://github.com/google/torchax>`_ to one JAX
    program of ``lax`` primitives per input shape (an eval-mode deep copy: batch-norm
    running statistics, no dropout; a module in training mode gets one warning; the
    user's module is never modified). torch, torchvision and torchax are imported here,
    not by ``import converters``.

    Args:
      module: a ``torch.nn.Module`` taking one NCHW float image batch.
      outputs: qualified module paths to return, as PyTorch names them (``"layer4"``,
        ``"layer3.5.relu"``, ``"features.28"``; a module's second call is
        ``"path:1"``); default the module's result (``"output"``, or its dict keys).
      input_shape: ``(H, W, C)``; traced once at conversion to check the module and
        list ``.layer_names`` in call order. Without it the channel count comes from
        the first convolution and the names from a 224 x 224 trace.

    Returns:
      A ``TorchModel``: ``.apply(params, x)`` on NHWC batches, ``.params`` by PyTorch
      state name, ``.prepared(one_channel=...)`` the exact RF copy.

    Raises:
      RFError: torch or torchax missing (``pip install "rfjax[torch]"``), an op with no
        JAX lowering, control flow on tensor values, a result that is not tensors, an
        input channel count the first convolution does not take, an unknown output name.
    """
    try:
        from converters import _torch
    except ImportError as e:
        raise RFError(
            f'converting PyTorch models needs torch, torchvision and torchax ({e}); install them with pip install "rfjax[torch]".'
        ) from e
    return _torch.from_torch(module, outputs, input_shape=input_shape)


def torch_zoo(spec: str, input_shape: Sequence[int]) -> Any:
    """Build ``"torchvision:<name>"`` or ``"timm:<name>"`` offline (random weights, no
    download) and convert it with its final feature map as the output (``layer4`` of a
    ResNet, ``features`` of a MobileNet, ...); see :func:`from_torch`."""
    try:
        from converters._torch import _zoo
    except ImportError as e:
        raise RFError(
            f'building {spec!r} needs torch, torchvision, timm and torchax ({e}); install them with pip install "rfjax[torch]".'
        ) from e
    h, w, c = (int(v) for v in input_shape)
    return _zoo.build(spec, (h, w, c))


__all__ = [
    "KerasModel",
    "OnnxModel",
    "RFError",
    "TFModel",
    "from_keras",
    "from_onnx",
    "from_tf",
    "from_torch",
    "keras_cam_layers",
    "load_keras",
    "register",
    "supported_layers",
    "torch_zoo",
]
