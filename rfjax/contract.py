"""The one contract between model adapters and the engine.

Every adapter (Keras, TensorFlow, PyTorch, ONNX) turns a framework's model into a
:class:`ConvertedModel`: a pure JAX function of NHWC images returning named feature
maps, its parameter pytree, and the exact RF copy the fit measures. The fit, the CAM
family, the effective RF and the sweeps accept anything :func:`resolve_model` accepts
and never ask what a model is in any other way.

:class:`ConvertedModel` is an abstract base class, not a structural ``Protocol``: the
engine has to decide *at run time* whether an object is a converted model or a plain
JAX function, and ``isinstance`` against a runtime-checkable ``Protocol`` is attribute
probing in disguise (any object with an ``apply`` would pass). A nominal base makes the
decision a type, lets a type checker verify each adapter's signatures, and carries the
defaults of the optional features (an adapter that cannot find global branches simply
inherits "none").
"""

from __future__ import annotations

import abc
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from rfjax._types import HW
from rfjax.errors import RFError

Shape3 = tuple[int, int, int]


class RFBound(NamedTuple):
    """Closed-form RF size and stride of one layer along its local paths (an adapter
    reads them from the layer configurations; the engine uses them only to pick an
    input large enough for a measurement)."""

    size: HW
    stride: HW


class ConvertedModel(abc.ABC):
    """A model as the engine sees it: ``apply(params, x) -> {name: feature map}``.

    Attributes:
      input_shape: ``(H, W, C)`` the engine feeds by default (``None`` entries for
        dynamic dimensions).
      output_names: the names :meth:`apply` returns, in order.
      layer_names: every name that can be requested with :meth:`with_outputs`.
      params: the parameter pytree :meth:`apply` takes.

    Images are NHWC ``(N, H, W, C)`` float32 at this boundary whatever the framework
    computes in; feature maps are NHWC.
    """

    input_shape: tuple[int | None, ...]  # (H, W, C)
    output_names: tuple[str, ...]
    layer_names: tuple[str, ...]
    params: Any

    # ------------------------------------------------------------ what every adapter implements
    @abc.abstractmethod
    def apply(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        """Run the model on an NHWC batch; pure and jit-able."""

    @abc.abstractmethod
    def with_outputs(self, outputs: str | Sequence[str]) -> ConvertedModel:
        """A copy returning other layers (names from :attr:`layer_names`); unknown
        names raise :class:`~rfjax.errors.RFError` with the nearest names."""

    @abc.abstractmethod
    def prepared(self, *, one_channel: bool = False) -> ConvertedModel:
        """The exact RF copy: linear activations, average pooling, identity
        normalisation, constant positive weights, zero biases. ``one_channel=True``
        asks for a copy with one channel per layer (same gradient supports, far
        cheaper); an adapter without one returns the full-channel copy and says so in
        :attr:`has_one_channel`."""

    # ------------------------------------------------------------ optional, with defaults
    def known_input_shape(self) -> Shape3:
        """:attr:`input_shape` as three ints; :class:`~rfjax.errors.RFError` when a
        dimension is dynamic (the adapter was given no ``input_shape``)."""
        if len(self.input_shape) != 3 or any(v is None for v in self.input_shape):
            raise RFError(
                f"the model's input shape {tuple(self.input_shape)} is dynamic; pass input_shape=(H, W, C) "
                "when converting it."
            )
        h, w, c = (int(v) for v in self.input_shape if v is not None)
        return (h, w, c)

    @property
    def has_one_channel(self) -> bool:
        """Whether :meth:`prepared` honours ``one_channel=True``."""
        return False

    @property
    def input_name(self) -> str | None:
        """The name under which the input itself is requestable, if any."""
        return None

    def held(self) -> ConvertedModel:
        """A copy with every :meth:`global_nodes` output held constant
        (``stop_gradient``); the model itself when it has none."""
        return self

    def global_nodes(self) -> frozenset[str]:
        """Nodes whose output does not follow the input size (global pooling, a
        flatten before a dense head); empty when the adapter cannot tell."""
        return frozenset()

    def depends_globally(self, name: str) -> bool:
        """Whether layer ``name`` depends on the whole input through a global node."""
        return False

    def rf_bound(self, name: str) -> RFBound | None:
        """The closed-form RF bound of ``name``, when the adapter knows the geometry."""
        return None

    def rf_source(self, name: str) -> str | None:
        """The layer whose RF layer ``name`` has by construction: its single input, when
        ``name`` is a per-pixel layer (activation, normalisation, 1x1 stride-1
        convolution) that maps every input pixel to the same output pixel; ``None`` when
        the adapter cannot tell or the layer may spread or move its input. A layer sweep
        then takes the input's row instead of measuring (same grid checked there)."""
        return None

    def cam_layers(self) -> tuple[str, str]:
        """``(feature layer, logits)``: the names the CAM family explains by default, the
        last spatial layer before the global pooling (or flatten) of the classifier head
        and the pre-softmax class scores ``(N, classes)``. The default refuses: the
        adapter cannot tell, so ``layer=`` and ``logits=`` must be given."""
        raise RFError(
            f"{type(self).__name__} cannot pick the CAM layer and the logits by itself; pass layer= and logits= "
            "(names from .layer_names)."
        )

    def spatial_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The output shape of every layer for an ``(H, W, C)`` input, traced without
        compute. The default traces :meth:`apply` over every layer name."""
        every = self.with_outputs(list(self.layer_names))
        x = jax.ShapeDtypeStruct((1,) + tuple(int(v) for v in input_shape), np.float32)
        out = jax.eval_shape(lambda x: every.apply(every.params, x), x)
        return {k: tuple(v.shape) for k, v in out.items()}

    def pre_softmax(self, name: str) -> tuple[ConvertedModel, str] | None:
        """Where output ``name`` is a softmax (a softmax layer, or a layer with a fused
        softmax activation), a copy of this model with the same outputs except that
        ``name`` is replaced by the layer giving the logits before the softmax (a fused
        activation split off), and that layer's name; ``None`` where ``name`` is no
        softmax or the adapter cannot tell (the CAM family then checks the values)."""
        return None

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """:meth:`apply` with this model's own :attr:`params`."""
        return self.apply(self.params, x)


# --------------------------------------------------------------------------- resolving


def _framework_instance(model: Any, module: str, cls_path: str) -> bool:
    """Whether ``model`` is an instance of ``module.cls_path``, without importing the
    framework: an object of a framework that was never imported cannot exist."""
    mod = sys.modules.get(module)
    if mod is None:
        return False
    cls: Any = mod
    for part in cls_path.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            return False
    return isinstance(model, cls)


def is_keras_model(model: Any) -> bool:
    """A Keras 3 or tf.keras model (no framework import when neither is loaded)."""
    return _framework_instance(model, "keras", "Model") or _framework_instance(model, "tf_keras", "Model")


def is_torch_module(model: Any) -> bool:
    """A ``torch.nn.Module`` (no import of torch when it is not loaded)."""
    return _framework_instance(model, "torch", "nn.Module")


def is_onnx_model(model: Any) -> bool:
    """An ``onnx.ModelProto`` or a path to a ``.onnx`` file."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model).lower().endswith(".onnx")
    return _framework_instance(model, "onnx", "ModelProto")


Converter = Callable[[Any, "Shape3 | None"], ConvertedModel]
_FRAMEWORKS: list[tuple[Callable[[Any], bool], Callable[[], Converter]]] = []


def _keras_converter() -> Converter:
    import converters

    return lambda m, shape: converters.from_keras(m, input_shape=shape)


def _torch_converter() -> Converter:
    import converters

    return lambda m, shape: converters.from_torch(m, input_shape=shape)


def _onnx_converter() -> Converter:
    from converters import onnx as onnx_adapter

    return lambda m, shape: onnx_adapter.from_onnx(m, input_shape=shape)


def _keras_file(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith((".keras", ".h5"))


_FRAMEWORKS += [
    (is_keras_model, _keras_converter),
    (_keras_file, _keras_converter),
    (is_torch_module, _torch_converter),
    (is_onnx_model, _onnx_converter),
]


def foreign_converter(model: Any) -> Converter | None:
    """The converter for a framework model (Keras, PyTorch, ONNX) or ``None`` when
    ``model`` is not one."""
    for recognise, converter in _FRAMEWORKS:
        if recognise(model):
            return converter()
    return None


def resolve_model(model: Any, input_shape: Sequence[int] | None = None) -> ConvertedModel | None:
    """The :class:`ConvertedModel` for ``model``: itself when it already is one, a
    conversion (cached per model object) for a Keras model, a ``torch.nn.Module`` or an
    ONNX file; ``None`` for a plain JAX function or a Flax module, which the engine
    runs as they are.

    Raises :class:`~rfjax.errors.RFError` when ``model`` is a string that names no
    supported model file.
    """
    if isinstance(model, ConvertedModel):
        return model
    convert = foreign_converter(model)
    if convert is None:
        if isinstance(model, (str, os.PathLike)):
            raise RFError(
                f"model={os.fspath(model)!r} is not a model file rfjax reads; pass a .keras, .h5 or .onnx "
                "file, a model object or a JAX function."
            )
        return None
    shape = None if input_shape is None else _shape3(input_shape)
    return _CONVERTED.get(model, shape, convert)


def _shape3(shape: Sequence[int]) -> Shape3:
    h, w, c = (int(v) for v in shape)
    return (h, w, c)


class _ConversionCache:
    """Conversions of framework model objects, kept as long as the object lives (files
    are converted anew: they may change on disk). Cleared by :func:`rfjax.clear_caches`."""

    def __init__(self) -> None:
        import weakref

        self._objects: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: Any, shape: Shape3 | None, convert: Converter) -> ConvertedModel:
        if isinstance(model, (str, os.PathLike)):
            return convert(model, shape)
        try:
            per_model = self._objects.setdefault(model, {})
        except TypeError:  # not weak-referenceable: convert every time
            return convert(model, shape)
        if shape not in per_model:
            per_model[shape] = convert(model, shape)
        return per_model[shape]

    def clear(self) -> None:
        self._objects.clear()


_CONVERTED = _ConversionCache()


# --------------------------------------------------------------------------- functions


_NNX_APPLY: dict[Any, Callable] = {}


def _nnx_apply(graphdef: Any) -> Callable:
    """A stable ``fn(state, x)`` per NNX graph definition, so compiled programs are reused."""
    if graphdef not in _NNX_APPLY:
        from flax import nnx

        _NNX_APPLY[graphdef] = lambda state, x: nnx.merge(graphdef, state)(x)
    return _NNX_APPLY[graphdef]


def as_function(model: Any, params: Any = None) -> tuple[Callable, Any]:
    """``(fn, params)`` with ``fn(params, x)`` (or ``fn(x)`` when ``params`` is ``None``)
    for a converted model (its :meth:`~ConvertedModel.apply` and params), a framework
    model (converted by :func:`resolve_model`), a Flax NNX module, a Flax Linen module
    with its variables, or a JAX function.

    Raises :class:`~rfjax.errors.RFError` for a Linen module without ``params`` and for
    anything that is not callable.
    """
    converted = resolve_model(model)
    if converted is not None:
        return converted.apply, converted.params if params is None else params
    from flax import linen as nn
    from flax import nnx

    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return _nnx_apply(graphdef), state
    if isinstance(model, nn.Module):
        if params is None:
            raise RFError(
                "params is missing: a Flax Linen module needs its variables, e.g. params=model.init(key, x)."
            )
        return model.apply, params
    if not callable(model):
        raise RFError(
            f"model must be a JAX function, a Flax module, a Keras, PyTorch or ONNX model or a converted "
            f"model, not {type(model).__name__}."
        )
    return model, params


def clear_caches() -> None:
    """Forget every conversion, compiled program and view rfjax keeps for models and
    functions it has seen.

    Caches (the one policy): rfjax caches only what makes a repeated call on the same
    model or function fast, in memory, and this call drops all of it. A module that keeps
    a cache registers its clearing function with :func:`on_clear`.

    * Conversions of framework model objects (:func:`resolve_model`): keyed weakly by the
      object, then by input shape; kept while the object lives. Files are converted anew.
    * Views of converted models (prepared, restricted to outputs, global branches held):
      keyed weakly by the model.
    * Compiled programs: the engine's forward and backward passes, the CAM, ERF and RF
      programs, the linearised and one-output wrappers of a function. ``lru_cache``s keyed
      by the function's identity and the program's options, 16 to 256 entries each, least
      recently used dropped first; until then they keep the function, and the weights it
      closes over, alive.
    * Compiled executables per argument shapes (:mod:`rfjax.memory`): the last 256.
    * Flax NNX apply functions: one per graph definition.

    Not global, so not cleared here: what a converted model derives from its own graph
    (built functions per mode, global nodes, closed-form bounds, traced shapes) lives in
    the model and its copies and goes with them. Nothing is cached on disk.
    """
    _CONVERTED.clear()
    _NNX_APPLY.clear()
    for hook in _CLEAR_HOOKS:
        hook()


_CLEAR_HOOKS: list[Callable[[], None]] = []


def on_clear(hook: Callable[[], None]) -> None:
    """Register a module's cache-clearing function with :func:`clear_caches`."""
    _CLEAR_HOOKS.append(hook)
