"""An ONNX file read once into a small graph description (no protobuf after this).

The image input is the one graph input that is not an initializer; its shape is in
the file's layout (``(N, C, H, W)``). Float initializers become parameters (traced,
replaceable leaves); integer and boolean ones, float ones that feed a static input
slot (a Resize's scales, a Pad's value) and ``Constant`` nodes stay numpy constants,
so shape arithmetic is folded to numbers before tracing.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from converters.onnx._registry import spec
from rfjax.errors import RFError

# the Shape and Size of a tensor are static even when the tensor is not
_SHAPE_OPS = frozenset({"Shape", "Size"})
# ops whose image output has its channels on axis 1 (ONNX's layout for them)
_CHANNELS_FIRST = frozenset(
    {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
    | {"BatchNormalization", "InstanceNormalization"}
)
# ops whose output keeps the layout of their first image input
_KEEPS_LAYOUT = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Erf",
        "Elu",
        "Selu",
        "Softplus",
        "Mish",
    }
    | {
        "Gelu",
        "Clip",
        "PRelu",
        "Sqrt",
        "Exp",
        "Log",
        "Abs",
        "Neg",
        "Reciprocal",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
    }
    | {"Sum", "Max", "Min", "Mean", "Where", "Identity", "Dropout", "Cast", "Concat", "Split", "Slice", "Pad"}
    | {"Resize", "Upsample", "LayerNormalization", "Softmax", "LogSoftmax"}
)


@dataclasses.dataclass(frozen=True)
class Node:
    """One ONNX node: ``inputs``/``outputs`` are value names ("" for an absent optional)."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


@dataclasses.dataclass
class Graph:
    """The graph of one ONNX model.

    Attributes:
      source: how messages name the model (the file path, or "the ModelProto").
      nodes: in the file's (topological) order.
      input: the image input's value name; ``input_dims``: its dims in the file
        (``None`` for dynamic ones), ``(N, C, H, W)``, or ``(N, H, W, C)`` when
        ``channels_last`` (tf2onnx's files take NHWC images and transpose inside).
      channel_axis: for every image value, the axis holding its channels (``None``
        where no op says, after a reshape or a dense layer); 4-D values are returned
        with that axis last.
      outputs: the graph's output value names.
      params: float initializers, ``{value name: float32 array}``.
      consts: static values, ``{value name: numpy array}``.
      dynamic: value names that depend on the image.
      opset: the default domain's opset version.
      cache: per-graph memo (built functions, traced shapes), shared by copies.
    """

    source: str
    nodes: tuple[Node, ...]
    input: str
    input_dims: tuple[int | None, ...]
    channels_last: bool
    channel_axis: dict[str, int | None]
    outputs: tuple[str, ...]
    params: dict[str, np.ndarray]
    consts: dict[str, np.ndarray]
    dynamic: frozenset[str]
    opset: int
    cache: dict = dataclasses.field(default_factory=dict)


def read(model: Any, input_name: str | None = None) -> Graph:
    """The :class:`Graph` of an ``onnx.ModelProto`` or a ``.onnx`` path (external data
    files are read from the model file's folder)."""
    from converters.onnx._load import load, opset_of

    proto, source = load(model)
    opset = opset_of(proto, source)
    g = proto.graph
    from onnx import numpy_helper

    inits = {t.name: t for t in g.initializer}
    nodes = tuple(_node(n, i) for i, n in enumerate(g.node))
    name, dims = _image_input(g, inits, source, input_name)
    static_slots = {
        n.inputs[k] for n in nodes if (s := spec(n.op_type)) for k in s.static if k < len(n.inputs)
    }
    params, consts = {}, {}
    for key, t in inits.items():
        try:
            a = numpy_helper.to_array(t)
        except (OSError, ValueError) as e:
            raise RFError(f"initializer {key!r} of {source} could not be read ({e}).") from e
        if a.dtype.kind == "f" and key not in static_slots:
            params[key] = a.astype(np.float32)
        else:
            consts[key] = a
    return Graph(
        source=source,
        nodes=nodes,
        input=name,
        input_dims=dims,
        channels_last=_channels_last(dims),
        channel_axis=_channel_axes(nodes, name, 3 if _channels_last(dims) else 1),
        outputs=tuple(o.name for o in g.output),
        params=params,
        consts=consts,
        dynamic=_dynamic(nodes, name),
        opset=opset,
    )


def _node(proto: Any, index: int) -> Node:
    from onnx import helper, numpy_helper

    attrs: dict[str, Any] = {}
    for a in proto.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif hasattr(v, "dims") and hasattr(v, "data_type"):  # a TensorProto
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        attrs[a.name] = v
    name = proto.name or (proto.output[0] if proto.output else f"node_{index}")
    return Node(name, proto.op_type, proto.domain, tuple(proto.input), tuple(proto.output), attrs)


def _image_input(g: Any, inits: dict, source: str, wanted: str | None) -> tuple[str, tuple[int | None, ...]]:
    inputs = {i.name: i for i in g.input if i.name not in inits}
    if wanted is not None:
        if wanted not in inputs:
            raise RFError(
                f"input_name={wanted!r} is not an input of {source}; its inputs are {sorted(inputs)}."
            )
        chosen = inputs[wanted]
    elif len(inputs) == 1:
        chosen = next(iter(inputs.values()))
    else:
        raise RFError(
            f"{source} has {len(inputs)} inputs {sorted(inputs)}; pass input_name= to say which one is the image."
        )
    t = chosen.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    if len(dims) != 4:
        raise RFError(
            f"input {chosen.name!r} of {source} has rank {len(dims)}; rfjax reads image models with one "
            "(N, C, H, W) input."
        )
    return chosen.name, dims


def _dynamic(nodes: tuple[Node, ...], image: str) -> frozenset[str]:
    """Value names computed from the image (``Shape``/``Size`` of one are static)."""
    dyn = {image}
    for n in nodes:
        if n.op_type not in _SHAPE_OPS and any(i in dyn for i in n.inputs if i):
            dyn.update(o for o in n.outputs if o)
    return frozenset(dyn)


def _channels_last(dims: tuple[int | None, ...]) -> bool:
    """An NHWC image input: a small last dim (1 to 4 channels) and no small dim 1."""
    small = lambda d: d is not None and d <= 4
    return small(dims[3]) and not small(dims[1])


def _channel_axes(nodes: tuple[Node, ...], image: str, axis: int) -> dict[str, int | None]:
    """The channel axis of every image value, propagated from the input through the
    ops that fix it (convolutions: 1), move it (Transpose) or keep it."""
    axes: dict[str, int | None] = {image: axis}
    for n in nodes:
        known = [axes[i] for i in n.inputs if i in axes]
        if not known:
            continue
        out: int | None
        if n.op_type in _CHANNELS_FIRST:
            out = 1
        elif n.op_type == "Transpose" and known[0] is not None and n.attrs.get("perm"):
            out = list(n.attrs["perm"]).index(known[0])
        elif n.op_type in _KEEPS_LAYOUT:
            out = next((a for a in known if a is not None), None)
        else:
            out = None
        axes.update((o, out) for o in n.outputs if o)
    return axes


def label(model: Any) -> str:
    """How messages name a model argument."""
    if isinstance(model, (str, os.PathLike)):
        return repr(os.fspath(model))
    return "the ModelProto"
