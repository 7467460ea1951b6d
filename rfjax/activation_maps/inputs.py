"""Checks of what the CAM family and the effective RF are given: images, output keys,
classes; and a model restricted to one output leaf."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from rfjax.contract import ConvertedModel, on_clear, resolve_model
from rfjax.errors import RFError


def check_images(images: Any) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype.kind not in "fiu":
        raise RFError(
            f"images has dtype {a.dtype}; pass real pixel values (float or integer), e.g. images.astype('float32')."
        )
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or min(a.shape) < 1:
        raise RFError(
            f"images has shape {np.shape(images)}; pass an NHWC batch (N, H, W, C) or one (H, W, C) image."
        )
    return a.astype(np.float32)


def output_index(struct: Any, key: str | int, arg: str) -> int:
    """Position in the flat outputs of the array at top-level ``key`` of the output tree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(struct)
    names = []
    for i, (path, _) in enumerate(flat):
        top = path[0] if path else None
        name = getattr(top, "key", getattr(top, "idx", getattr(top, "name", None)))
        names.append(name)
        if len(path) == 1 and name == key:
            return i
    shown = sorted({n for n in names if n is not None}, key=str)
    raise RFError(f"{arg}={key!r} is not one of the model's outputs {shown}; pass {arg}= one of them.")


def check_classes(classes: Any, top_k: int, n: int, n_classes: int) -> np.ndarray | None:
    if classes is None:
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or not 1 <= top_k <= n_classes:
            raise RFError(
                f"top_k={top_k!r} must be an integer between 1 and the model's {n_classes} classes."
            )
        return None
    c = np.asarray(classes)
    if c.dtype.kind not in "iu":
        raise RFError(
            f"classes={classes!r} must be integer class indices, e.g. classes=3 or classes=[[3], [7]]."
        )
    if c.ndim == 0:
        c = c[None]
    if c.ndim == 1:
        c = np.broadcast_to(c[None], (n, c.size))
    if c.ndim != 2 or c.shape[0] != n or c.shape[1] < 1:
        raise RFError(
            f"classes has shape {np.shape(classes)}; pass an int, a list of ints, or one row per image ({n}, k)."
        )
    bad = c[(c < 0) | (c >= n_classes)]
    if bad.size:
        raise RFError(
            f"classes holds index {int(bad[0])}, outside the model's {n_classes} classes; pass indices in [0, {n_classes})."
        )
    return np.ascontiguousarray(c, np.int32)


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def named_outputs(
    model: Any, layer: str | int, logits: str | int, input_shape: Sequence[int]
) -> tuple[Any, str | int, str | int]:
    """``(model, layer, logits)`` to explain: for a framework model (PyTorch module, Keras
    model, ONNX file) or a converted model asked for a ``layer`` it does not return, the
    converted copy returning ``{layer, logits}`` (logits by default: the model's one
    output, e.g. ``"output"`` for a PyTorch module); anything else as given. The copy is
    cached per model, so repeated calls reuse one compiled program. Raises
    :class:`RFError` for an unknown layer name (with the nearest names) and when the
    logits cannot be told apart from several outputs."""
    converted = resolve_model(model, tuple(input_shape))
    if converted is None or not isinstance(layer, str):
        return model, layer, logits
    if layer in converted.output_names:
        return converted, layer, logits
    if not isinstance(logits, str):
        if len(converted.output_names) != 1:
            raise RFError(
                f"logits={logits!r}: the model returns {list(converted.output_names)}; pass logits= the name of "
                "its class scores."
            )
        logits = converted.output_names[0]
    return _view(converted, layer, logits), layer, logits


def _view(model: ConvertedModel, layer: str, logits: str) -> ConvertedModel:
    cache = _VIEWS.setdefault(model, {})
    if (layer, logits) not in cache:
        cache[(layer, logits)] = model.with_outputs([layer, logits])
    return cache[(layer, logits)]


on_clear(_VIEWS.clear)


@functools.lru_cache(maxsize=64)
def layer_only(fn: Callable, with_params: bool, index: int) -> Callable:
    """``fn`` returning only output leaf ``index`` (a stable object per model and layer, so
    the RF programs are compiled once)."""
    if with_params:
        return lambda params, x: jax.tree_util.tree_leaves(fn(params, x))[index]
    return lambda x: jax.tree_util.tree_leaves(fn(x))[index]


on_clear(layer_only.cache_clear)
