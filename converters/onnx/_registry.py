"""The ONNX op registry: op type -> a pure JAX function of the node's inputs.

An op function is ``fn(ctx, *inputs) -> output | tuple of outputs``: ``ctx`` is the
node's :class:`Ctx` (its attributes as plain Python values, the RF-mode flags and
which inputs depend on the image), ``inputs`` are arrays in the file's layout (NCHW
for images): ``jax`` arrays for values computed from the image or from float
initializers, ``numpy`` arrays for the static ones (integer initializers, ``Constant``
nodes, ``Shape`` of anything, and every op of only static inputs, so the
Shape/Gather/Cast/Concat chains exporters emit are folded to numbers before XLA sees
them). A missing optional input is ``None``.

:func:`register` refuses a second registration of an op type, and every node's
attributes are checked against the names its op was written for: an attribute the
converter does not know might change the result, so it is an error, not a guess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rfjax.errors import RFError

OpFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Ctx:
    """What an op function knows about its node.

    Attributes:
      name: the node's name (or its first output's name when the node has none).
      attrs: attribute name -> Python value (ints, floats, strings, lists, numpy arrays).
      rf: the RF copy (linear activations, average pooling, constant positive weights,
        zero biases, identity normalisation).
      one_channel: the one-channel RF copy (every image tensor has one channel).
      held: statistics over the whole image (instance/layer norms, spatial softmax)
        are held constant (``stop_gradient``) in the RF copy.
      dynamic: per input, whether it depends on the image.
      opset: the model's default-domain opset version.
      n_outputs: how many of the node's outputs the graph uses (by position, the last used one's index + 1).
      declared: how many outputs the node declares (a ``Split``'s part count).
      channels_last: the node's 4-D image values are stored NHWC, ``(N, H, W, C)``, not
        in the file's NCHW (the interpreter chooses it for the ops in
        :data:`converters.onnx._layout.CHANNELS_LAST_OPS`, whose functions honour it).
    """

    name: str
    attrs: dict[str, Any]
    rf: bool = False
    one_channel: bool = False
    held: bool = False
    dynamic: tuple[bool, ...] = ()
    opset: int = 0
    n_outputs: int = 1
    declared: int = 1
    channels_last: bool = False

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One registered op: its function, the attributes it understands, the inputs that
    must be static (shapes, axes, pads, scales), and whether its window spreads a
    gradient to neighbouring pixels (where the one-channel copy keeps supports only),
    and for normalisations, the axes whose statistics it takes (``reduces(ctx, ndim)``:
    a node whose statistics span an axis that follows the input size is global)."""

    op_type: str
    fn: OpFn
    attrs: frozenset[str]
    static: tuple[int, ...]
    spreads: bool
    reduces: Callable[[Ctx, int], tuple[int, ...]] | None = None


_REGISTRY: dict[str, OpSpec] = {}


def register(
    *op_types: str,
    attrs: tuple[str, ...] = (),
    static: tuple[int, ...] = (),
    spreads: bool = False,
    reduces: Callable[[Ctx, int], tuple[int, ...]] | None = None,
) -> Callable[[OpFn], OpFn]:
    """Decorator registering ``fn(ctx, *inputs)`` under one or more ONNX op types of
    the default domain. ``attrs``: the attribute names it handles (any other one on a
    node is refused); ``static``: input positions that must be known before tracing.
    Registering an op type twice raises :class:`~rfjax.errors.RFError`."""

    def deco(fn: OpFn) -> OpFn:
        for op in op_types:
            if op in _REGISTRY:
                raise RFError(f"ONNX op {op!r} is already registered; one converter per op type.")
            _REGISTRY[op] = OpSpec(op, fn, frozenset(attrs), tuple(static), spreads, reduces)
        return fn

    return deco


def supported_ops() -> list[str]:
    """Sorted names of every registered ONNX op type."""
    return sorted(_REGISTRY, key=str.lower)


def spec(op_type: str) -> OpSpec | None:
    """The registered op, or ``None``."""
    return _REGISTRY.get(op_type)


def ops_table() -> str:
    """The README's table of supported ops: op type, attributes and static inputs."""
    rows = ["| ONNX op | attributes handled | static inputs |", "|---|---|---|"]
    for op in supported_ops():
        s = _REGISTRY[op]
        attrs = ", ".join(sorted(s.attrs)) or "-"
        static = ", ".join(map(str, s.static)) or "-"
        rows.append(f"| {op} | {attrs} | {static} |")
    return "\n".join(rows)
