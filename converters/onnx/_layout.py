"""Where the interpreter keeps 4-D image values channels-last (NHWC) instead of the file's NCHW.

XLA:CPU convolves and pools fastest in NHWC, and rfjax's images and maps are NHWC, so
the interpreter stores a 4-D value ``v`` (``(N, C, H, W)`` in the file) as
``transpose(v, (0, 2, 3, 1))`` wherever the ops that touch it allow, and puts it back in
the file's layout only in front of an op that needs the file's axes (a reshape, a
flatten, a slice, a softmax, ...). A value's layout is the interpreter's bookkeeping,
never the op's guess:

* :data:`WINDOWED` ops (convolution, pooling, batch normalisation) run channels-last
  on any 4-D image input (their functions read ``ctx.channels_last``);
* :data:`ELEMENTWISE` ops (activations, arithmetic, concatenation) run channels-last when
  an image input is stored so; their constant inputs (a bias ``(C, 1, 1)``) are
  broadcast to rank 4 and transposed the same way, so broadcasting is unchanged;
* :data:`FOLLOWING` ops (padding) run in the layout their image input is stored in;
* a ``Transpose`` of a 4-D image composes its permutation with the stored layout and
  stores the result in whichever layout makes it free (tf2onnx's NHWC -> NCHW transpose
  at the input costs nothing then);
* every other op gets its inputs in the file's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from converters.onnx._graph import Node

TO_LAST = (0, 2, 3, 1)  # the file's (N, C, H, W) -> stored (N, H, W, C)
TO_FILE = (0, 3, 1, 2)
_IDENTITY = (0, 1, 2, 3)

WINDOWED = frozenset(
    {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"}
)
ELEMENTWISE = frozenset(
    {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Elu", "Selu", "Softplus"}
    | {"Mish", "Gelu", "Clip", "PRelu", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal"}
    | {"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean", "Identity", "Dropout", "Concat"}
)
FOLLOWING = frozenset({"Pad"})
CHANNELS_LAST_OPS = WINDOWED | ELEMENTWISE | FOLLOWING


def runs_channels_last(
    node: Node, args: Sequence[Any], stored_last: Sequence[bool], dynamic: Sequence[bool]
) -> bool:
    """Whether ``node`` runs on channels-last values: its op is one of
    :data:`CHANNELS_LAST_OPS`, every image input is 4-D, and (elementwise ops) one of
    them is already stored channels-last; windowed ops need their other inputs constant."""
    images = [(a, last) for a, last, d in zip(args, stored_last, dynamic) if d and a is not None]
    if node.op_type not in CHANNELS_LAST_OPS or not images or any(np.ndim(a) != 4 for a, _ in images):
        return False
    if node.op_type in WINDOWED:
        return bool(dynamic[0]) and not any(dynamic[1:])
    if node.op_type in FOLLOWING:
        return bool(dynamic[0]) and bool(stored_last[0]) and not any(dynamic[1:])
    others = [a for a, d in zip(args, dynamic) if not d and a is not None]
    return any(last for _, last in images) and all(np.ndim(a) <= 4 for a in others)


def arguments(
    node: Node, args: Sequence[Any], stored_last: Sequence[bool], dynamic: Sequence[bool], last: bool
) -> list[Any]:
    """The node's inputs in the layout it runs in: image inputs transposed where stored
    otherwise, and for a channels-last elementwise op its constants of rank >= 1
    broadcast to rank 4 and transposed (a scalar stays)."""
    out: list[Any] = []
    for a, is_last, d in zip(args, stored_last, dynamic):
        if a is None:
            out.append(a)
        elif d and np.ndim(a) == 4 and is_last != last:
            out.append(jnp.transpose(a, TO_LAST if last else TO_FILE))
        elif last and not d and node.op_type in ELEMENTWISE and np.ndim(a) >= 1:
            xp = np if isinstance(a, np.ndarray) else jnp
            a4 = xp.reshape(a, (1,) * (4 - np.ndim(a)) + tuple(np.shape(a)))
            out.append(xp.transpose(a4, TO_LAST))
        else:
            out.append(a)
    return out


def transpose(x: Any, stored_last: bool, perm: Sequence[int]) -> tuple[Any, bool]:
    """A ``Transpose`` of a 4-D image value ``x`` (stored channels-last or not) by the
    file's ``perm``: ``(stored result, whether it is stored channels-last)``, the layout
    that needs no data movement when there is one."""
    inverse = np.argsort(TO_LAST if stored_last else _IDENTITY)
    base = tuple(int(inverse[p]) for p in perm)  # the file's result, from the stored x
    as_last = tuple(base[q] for q in TO_LAST)
    if as_last == _IDENTITY:
        return x, True
    return (x if base == _IDENTITY else jnp.transpose(x, base)), False


def to_file(x: Any, stored_last: bool) -> Any:
    """A stored value in the file's layout."""
    return jnp.transpose(x, TO_FILE) if stored_last else x
