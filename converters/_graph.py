"""Walk a Keras 3 model once into a small, Keras-free graph description.

The description holds plain data only (names, class names, configs, numpy weights,
argument trees with :class:`Ref` leaves), so everything after the walk (building JAX
functions, RF mode, choosing other outputs) never touches the user's Keras model.

Naming: a layer's first call in a model is named after the layer; its ``k``-th
further call (a shared layer) is ``"name:k"``, counted in Keras' own call order.
Layers of a nested Sequential/Functional model are ``"outer/inner"`` (``"outer:k/inner"``
for the nested model's ``k``-th call), and the nested model's own name stands for
its output. Parameters belong to layers, not calls, so shared layers share them.

TensorFlow/Keras are imported inside the functions only: ``import converters`` stays
cheap and ``import rfjax`` never imports TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rfjax.errors import RFError, cause


@dataclass(frozen=True)
class Ref:
    """A reference to output ``index`` of graph node ``node``."""

    node: str
    index: int = 0


@dataclass(frozen=True)
class Layer:
    """One Keras layer or operation (shared by all its calls)."""

    key: str  # parameter key: the qualified name of its first call
    class_name: str  # "Conv2D", "ops.Add", "LayerScale", ...
    lookup: tuple[str, ...]  # registry keys tried in order
    config: dict
    weights: dict[str, np.ndarray]


@dataclass(frozen=True)
class Node:
    """One call of a layer: ``layer`` applied to ``args`` / ``kwargs`` (trees of Refs and constants)."""

    name: str
    layer: str
    args: tuple
    kwargs: dict
    n_outputs: int = 1


@dataclass(frozen=True)
class Graph:
    """A Keras model as data: layers, calls in topological order, input and outputs."""

    layers: dict[str, Layer]
    nodes: tuple[Node, ...]
    input: str
    outputs: tuple[str, ...]
    input_shape: tuple[int | None, ...]  # Keras' own layout, without the batch axis
    aliases: dict[str, Ref] = field(default_factory=dict)  # nested models' names -> their output

    @property
    def channels_first(self) -> bool:
        return any(layer.config.get("data_format") == "channels_first" for layer in self.layers.values())


def load(path: str | os.PathLike, safe_mode: bool) -> Any:
    """Load a ``.keras`` / ``.h5`` file with Keras, turning every failure into one-line :class:`RFError`."""
    import keras

    p = Path(path)
    if not p.exists():
        raise RFError(f"model file {str(p)!r} does not exist.")
    if safe_mode and '"Lambda"' in _saved_config(p):
        raise RFError(
            f"model file {str(p)!r} contains a Lambda layer (arbitrary Python code), which Keras' safe mode "
            "refuses to load; pass safe_mode=False only if you trust the file."
        )
    try:
        return keras.saving.load_model(p, compile=False, safe_mode=safe_mode)
    except Exception as e:  # Keras raises many types for bad files
        raise RFError(f"could not load a Keras model from {str(p)!r} ({cause(e)}).") from e


def _saved_config(p: Path) -> str:
    """The model config JSON stored in a ``.keras`` archive or an ``.h5`` file ("" when
    it cannot be read: Keras' own loader then says what is wrong with the file)."""
    import zipfile

    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                return z.read("config.json").decode("utf-8", "replace")
        import h5py

        with h5py.File(p, "r") as f:
            config = f.attrs.get("model_config", "")
            return config.decode("utf-8", "replace") if isinstance(config, bytes) else str(config)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return ""


def _numpy(value: Any) -> np.ndarray:
    # A copy (the user's variables are never shared); .numpy() avoids a NumPy 2 warning on TF values.
    arr = np.array(value.numpy() if hasattr(value, "numpy") else value)
    return arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr


class _Walker:
    def __init__(self, safe_mode: bool):
        import keras

        self.keras = keras
        self.safe_mode = safe_mode
        self.layers: dict[str, Layer] = {}
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        self.aliases: dict[str, Ref] = {}
        self._layer_of: dict[int, str] = {}
        self._alive: list[Any] = []  # keeps walked objects alive so their ids stay unique

    # ------------------------------------------------------------------ naming
    def _unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.names:
            name, n = f"{base}#{n}", n + 1
        self.names.add(name)
        return name

    # ------------------------------------------------------------------ layers
    def _layer(self, op: Any, qualified: str) -> str:
        if id(op) in self._layer_of:
            return self._layer_of[id(op)]
        keras, cls = self.keras, type(op)
        if isinstance(op, keras.layers.Layer):
            class_name = cls.__name__
            lookup: tuple[str, ...] = (f"{cls.__module__}.{cls.__qualname__}", cls.__name__)
        else:
            class_name = f"ops.{cls.__name__}"
            lookup = (class_name,)
        try:
            config = dict(op.get_config())
        except Exception:  # noqa: BLE001 - some operations cannot serialise their config
            config = {}
        weights: dict[str, np.ndarray] = {}
        attrs = {id(v): a.lstrip("_") for a, v in vars(op).items() if isinstance(v, keras.Variable)}
        for v in getattr(op, "weights", []):
            # Unnamed variables (custom layers' add_weight without name=) are known by their attribute.
            name = attrs.get(id(v), v.name) if v.name.startswith("variable") else v.name
            weights.setdefault(name, _numpy(v))
        if isinstance(op, keras.layers.Lambda):
            if self.safe_mode:
                raise RFError(
                    f"layer {qualified!r} is a Lambda layer (arbitrary Python code) and safe_mode=True; pass "
                    "safe_mode=False to run its function on JAX arrays, or replace it with a Keras layer."
                )
            config.update(function=op.function, arguments=op.arguments)
        if isinstance(op, keras.layers.Normalization):
            weights = {"mean": _numpy(op.mean), "variance": _numpy(op.variance)}
        self.layers[qualified] = Layer(qualified, class_name, lookup, config, weights)
        self._layer_of[id(op)] = qualified
        self._alive.append(op)
        return qualified

    def _node(self, op: Any, name: str, args: tuple, kwargs: dict, n_outputs: int) -> list[Ref]:
        layer = self._layer(op, name)
        self.nodes.append(Node(name, layer, args, kwargs, n_outputs))
        return [Ref(name, i) for i in range(n_outputs)]

    def call(
        self, op: Any, prefix: str, call_index: int, args: tuple, kwargs: dict, n_outputs: int
    ) -> list[Ref]:
        """Add one call of ``op`` (a layer, an operation or a nested model)."""
        keras = self.keras
        name = self._unique(prefix + op.name + (f":{call_index}" if call_index else ""))
        if isinstance(op, keras.Sequential):
            out = [self.sequential(op, name + "/", refs_in(args)[0])]
        elif isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth"):
            out = self.functional(op, name + "/", refs_in(args))
        elif isinstance(op, keras.Model):
            raise RFError(
                f"layer {name!r} is a subclassed keras.Model ({type(op).__name__}) whose graph Keras does not "
                "record; rebuild it as a Functional or Sequential model."
            )
        else:
            return self._node(op, name, args, _drop_keras_kwargs(kwargs), n_outputs)
        if len(out) == 1:
            self.aliases[name] = out[0]
        return out

    # ------------------------------------------------------------------ models
    def functional(self, model: Any, prefix: str, inputs: list[Ref]) -> list[Ref]:
        keras = self.keras
        if len(model.inputs) != len(inputs):
            raise RFError(
                f"model {model.name!r} has {len(model.inputs)} inputs; rfjax converts single-input models."
            )
        tensors = {id(t): r for t, r in zip(model.inputs, inputs)}
        in_model = {id(n) for nodes in model._nodes_by_depth.values() for n in nodes}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if (
                    node.is_input
                    or not node.operation
                    or any(id(t) not in tensors for t in node.input_tensors)
                ):
                    continue
                op = node.operation
                k = [n for n in op._inbound_nodes if id(n) in in_model].index(node)

                def ref(v: Any) -> Any:
                    return tensors[id(v)] if isinstance(v, keras.KerasTensor) else _constant(v)

                args = map_refs(ref, tuple(node.arguments.args))
                kwargs = map_refs(ref, dict(node.arguments.kwargs))
                for t, r in zip(node.outputs, self.call(op, prefix, k, args, kwargs, len(node.outputs))):
                    tensors[id(t)] = r
        return [tensors[id(t)] for t in model.outputs]

    def sequential(self, model: Any, prefix: str, x: Ref) -> Ref:
        seen: dict[int, int] = {}
        for layer in model.layers:
            k = seen[id(layer)] = seen.get(id(layer), -1) + 1
            (x,) = self.call(layer, prefix, k, (x,), {}, 1)
        return x


def refs_in(tree: Any) -> list[Ref]:
    """The :class:`Ref` leaves of nested call arguments (tuples, lists, dicts), in order."""
    out: list[Ref] = []
    map_refs(lambda v: out.append(v) if isinstance(v, Ref) else None, tree)
    return out


def _drop_keras_kwargs(kwargs: dict) -> dict:
    """Call keywords that only matter to Keras (training, mask) are dropped."""
    return {k: v for k, v in kwargs.items() if k not in ("training", "mask")}


def map_refs(fn: Any, tree: Any) -> Any:
    """``fn`` applied to every leaf of nested call arguments (tuples, lists, dicts)."""
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_refs(fn, v) for v in tree)
    if isinstance(tree, dict):
        return {k: map_refs(fn, v) for k, v in tree.items()}
    return fn(tree)


def _constant(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str, Ref)):
        return v
    return _numpy(v)


def _input_spec(model: Any) -> tuple[str, tuple[int | None, ...]]:
    """The input layer's name and shape (without batch) of a built model."""
    inputs = None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        pass
    if not inputs:
        raise RFError(
            f"model {model.name!r} is not built (its input shape is unknown); give it a keras.Input or call "
            "model.build((None, H, W, C)) before converting."
        )
    if len(inputs) != 1:
        raise RFError(f"model {model.name!r} has {len(inputs)} inputs; rfjax converts single-input models.")
    history = getattr(inputs[0], "_keras_history", None)
    name = history[0].name if history else "input"
    return name, tuple(inputs[0].shape[1:])


def walk(model: Any, safe_mode: bool = True) -> Graph:
    """Describe a built Keras 3 Sequential or Functional model as a :class:`Graph`."""
    import keras

    if not isinstance(model, keras.Model):
        raise RFError(
            f"model must be a Keras 3 model or a path to a .keras/.h5 file, not {type(model).__name__}."
        )
    walker = _Walker(safe_mode)
    name, shape = _input_spec(model)
    name = walker._unique(name)
    walker.layers[name] = Layer(name, "InputLayer", ("InputLayer",), {}, {})
    walker.nodes.append(Node(name, name, (), {}, 1))
    if isinstance(model, keras.Sequential):
        outs = [walker.sequential(model, "", Ref(name))]
    elif hasattr(model, "_nodes_by_depth"):
        outs = walker.functional(model, "", [Ref(name)])
    else:
        raise RFError(
            f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__}) whose graph Keras does "
            "not record; rebuild it as a Functional or Sequential model."
        )
    outputs = tuple(dict.fromkeys(_output_name(r, walker) for r in outs))
    return Graph(walker.layers, tuple(walker.nodes), name, outputs, shape, walker.aliases)


def _output_name(ref: Ref, walker: _Walker) -> str:
    aliases = [a for a, r in walker.aliases.items() if r == ref]
    return aliases[-1] if aliases else ref.node
