"""Checks of what the CAM family and the effective RF are given: images, output keys,
classes; and a model restricted to one output leaf."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfjax.contract import on_clear
from rfjax.errors import RFBadImages, RFError, cause


def check_images(images: Any) -> np.ndarray:
    """``images`` as a float32 NHWC batch; one :class:`RFError` sentence for anything else
    (:class:`RFBadImages` for mixed sizes and non-finite pixels)."""
    if isinstance(images, (list, tuple)) and len({np.shape(i) for i in images}) > 1:
        sizes = sorted({tuple(np.shape(i)) for i in images})
        raise RFBadImages(
            f"images holds images of different shapes {sizes[:3]}; resize them to one (H, W, C) before stacking."
        )
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
    a = a.astype(np.float32)
    bad = ~np.isfinite(a).reshape(len(a), -1).all(axis=1)
    if bad.any():
        raise RFBadImages(
            f"images {np.flatnonzero(bad)[:5].tolist()} hold NaN or infinite pixels; replace them, e.g. np.nan_to_num(images)."
        )
    return a


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
    """``(N, k)`` int32 classes to explain (``"all"``: every class in order), or ``None``
    to take the ``top_k`` best logits."""
    if isinstance(classes, str):
        if classes != "all":
            raise RFError(
                f"classes={classes!r} is not 'all'; pass 'all', an int, a list of ints or (N, k) ints."
            )
        return np.ascontiguousarray(np.broadcast_to(np.arange(n_classes, dtype=np.int32), (n, n_classes)))
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


def output_shapes(fn: Callable, params: Any, x: np.ndarray) -> Any:
    """The model's output shapes on ``x``; its failure is one sentence (grey images for an
    RGB model named as such)."""
    bound = fn if params is None else functools.partial(fn, params)
    try:
        return jax.eval_shape(bound, jnp.asarray(x))
    except RFError:
        raise
    except Exception as e:  # any failure inside the user's model
        if x.shape[-1] == 1 and _takes(bound, x.shape[:-1] + (3,)):
            raise RFBadImages(
                f"images are grey (1 channel) but the model takes 3 (RGB); pass images of shape {x.shape[:-1] + (3,)}, "
                "e.g. np.repeat(images, 3, axis=-1)."
            ) from e
        raise RFError(
            f"the model failed on images of shape {x.shape} ({cause(e)}); pass images of the shape it expects."
        ) from e


def _takes(bound: Callable, shape: tuple[int, ...]) -> bool:
    try:
        jax.eval_shape(bound, jax.ShapeDtypeStruct(shape, jnp.float32))
    except Exception:  # noqa: BLE001 - only asks whether it would run
        return False
    return True


def feature_shape(leaf: Any, x: np.ndarray, layer: str | int) -> tuple[int, ...]:
    shape = tuple(leaf.shape)
    if len(shape) != 4 or shape[0] != x.shape[0] or shape[1] < 1 or shape[2] < 1:
        raise RFError(
            f"layer {layer!r} has shape {shape}, which is not a spatial feature map (N, h, w, K); pass a convolutional layer's output."
        )
    return shape


def class_count(leaf: Any, x: np.ndarray, logits: str | int) -> int:
    shape = tuple(leaf.shape)
    if len(shape) != 2 or shape[0] != x.shape[0]:
        raise RFError(
            f"logits {logits!r} has shape {shape}; pass the model's class scores of shape (N, classes)."
        )
    return int(shape[1])


def check_samples(method: str, smooth: Any, noise: Any, steps: Any) -> int:
    """The program's sample axis: ``steps`` for integrated gradients, ``smooth`` otherwise."""
    for name, v, low in (("smooth", smooth, 0), ("steps", steps, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise RFError(f"{name}={v!r} must be an integer >= {low}.")
    if not isinstance(noise, (int, float, np.floating)) or not 0 <= float(noise) < np.inf:
        raise RFError(f"noise={noise!r} must be a non-negative fraction of the image's range, e.g. 0.2.")
    if method == "integrated_gradients":
        if smooth:
            raise RFError("smooth= does not apply to method='integrated_gradients'; pass smooth=0.")
        return int(steps)
    return int(smooth)


def prng_key(key: Any) -> jax.Array:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.PRNGKey(int(key))
    try:
        return jnp.asarray(key, jnp.uint32).reshape(2)
    except (TypeError, ValueError) as e:
        raise RFError(f"key={key!r} must be an int seed or a jax.random.PRNGKey.") from e


@functools.lru_cache(maxsize=64)
def layer_only(fn: Callable, with_params: bool, index: int) -> Callable:
    """``fn`` returning only output leaf ``index`` (a stable object per model and layer, so
    the RF programs are compiled once)."""
    if with_params:
        return lambda params, x: jax.tree_util.tree_leaves(fn(params, x))[index]
    return lambda x: jax.tree_util.tree_leaves(fn(x))[index]


on_clear(layer_only.cache_clear)
