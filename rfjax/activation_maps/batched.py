"""Class scores of many perturbed copies of a batch of images, in one compiled program.

The perturbation methods (Score-CAM's masked inputs, Ablation-CAM's ablated channels) and
the faithfulness metrics (deletion and insertion steps, ROAD percentiles) all score ``T``
perturbed copies of the same ``N`` images. Here the copies are a batch axis inside one
jit-compiled program: ``jax.vmap`` over the perturbation index ``t``, with the images
unbatched, so whatever does not depend on ``t`` (e.g. the layers before an ablated one) is
computed once per call. The ``T`` copies are split into equal chunks that fit the memory
budget (:func:`rfjax.memory.plan_chunks`; the last chunk padded with copies of the last
index, cut off afterwards), and each chunk is split over the local devices
(:mod:`rfjax.sharding`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rfjax import memory, sharding
from rfjax.activation_maps.inputs import (
    check_classes,
    check_images,
    class_count,
    feature_shape,
    output_index,
    output_shapes,
)
from rfjax.activation_maps.layers import explained_outputs, scores_outputs
from rfjax.contract import as_function, on_clear
from rfjax.errors import RFError

#: ``(fn, with_params, params, x (N, H, W, C), aux, t) -> flat outputs of fn`` for copy ``t``.
Evaluate = Callable[[Callable, bool, Any, jax.Array, Any, jax.Array], list]

SCORES = ("logit", "probability")


class Setup(NamedTuple):
    """A model resolved to ``fn`` and its outputs located.

    Attributes:
      fn: ``x -> outputs`` or ``(params, x) -> outputs``.
      params: the parameter pytree, or ``None``.
      x: ``(N, H, W, C)`` float32 images.
      layer_index: position of the feature map in the flat outputs (``-1``: not asked).
      logits_index: position of the logits in the flat outputs.
      feature_shape: ``(N, h, w, K)`` of the feature map (``()`` when not asked).
      n_classes: number of classes of the logits.
      model: the resolved model (a converted one for Keras / PyTorch / ONNX models).
      layer: the feature map's key in the outputs (``None`` when not asked).
    """

    fn: Callable
    params: Any
    x: np.ndarray
    layer_index: int
    logits_index: int
    feature_shape: tuple[int, ...]
    n_classes: int
    model: Any = None
    layer: str | int | None = None

    @property
    def with_params(self) -> bool:
        return self.params is not None


def setup(
    model: Any,
    images: Any,
    layer: str | int | None,
    logits: str | int | None,
    params: Any,
    need_layer: bool = True,
) -> Setup:
    """Resolve ``model`` as :func:`rfjax.class_activation_maps` does (layer names and
    picks, the logits before a softmax: :func:`~rfjax.activation_maps.layers.explained_outputs`)
    and check that output ``layer`` is a spatial feature map ``(N, h, w, K)``
    (``need_layer=False``: no layer) and output ``logits`` is ``(N, classes)``;
    :class:`RFError` otherwise."""
    x = check_images(images)
    if need_layer:
        model, layer, logits = explained_outputs(model, layer, logits, x.shape[1:])
    else:
        (model, logits), layer = scores_outputs(model, logits, x.shape[1:]), None
    fn, params = as_function(model, params)
    struct = output_shapes(fn, params, x)
    leaves = jax.tree_util.tree_leaves(struct)
    yi = output_index(struct, logits, "logits")
    n_classes = class_count(leaves[yi], x, logits)
    li, a_shape = -1, tuple[int, ...]()
    if layer is not None:
        li = output_index(struct, layer, "layer")
        a_shape = feature_shape(leaves[li], x, layer)
    return Setup(fn, params, x, li, yi, a_shape, n_classes, model, layer)


def outputs(s: Setup, x: Any) -> list:
    """The flat outputs of the model on ``x``."""
    args = (s.params, x) if s.with_params else (x,)
    return jax.tree_util.tree_leaves(s.fn(*args))


@functools.lru_cache(maxsize=64)
def _forward(fn: Callable, with_params: bool, li: int, yi: int) -> Callable:
    def run(params, x):
        outs = jax.tree_util.tree_leaves(fn(params, x) if with_params else fn(x))
        a = outs[li].astype(jnp.float32) if li >= 0 else jnp.zeros(())
        return a, outs[yi].astype(jnp.float32)

    return jax.jit(run)


def forward(s: Setup) -> tuple[np.ndarray, np.ndarray]:
    """``(A (N, h, w, K), logits (N, classes))`` of the images, float32 (``A`` is a scalar
    when no layer was asked)."""
    a, y = _forward(s.fn, s.with_params, s.layer_index, s.logits_index)(s.params, s.x)
    return np.asarray(a), np.asarray(y)


def explained_classes(s: Setup, y: np.ndarray, classes: Any, top_k: int) -> np.ndarray:
    """``(N, k)`` int32 classes to explain: the given ones, or the ``top_k`` best logits."""
    cls = check_classes(classes, top_k, s.x.shape[0], s.n_classes)
    if cls is None:
        cls = np.argsort(-y, axis=1, kind="stable")[:, :top_k].astype(np.int32)
    return cls


def softmax_at(y: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """``(N, k)`` softmax of the logits ``y (N, classes)`` at ``cls (N, k)``."""
    z = np.exp(y - y.max(axis=1, keepdims=True))
    return np.take_along_axis(z / z.sum(axis=1, keepdims=True), cls, axis=1)


def check_score(score: str) -> str:
    if score not in SCORES:
        raise RFError(f"score={score!r} is not one of {SCORES}; pass score='logit' or score='probability'.")
    return score


@functools.lru_cache(maxsize=64)
def _program(
    evaluate: Evaluate, fn: Callable, with_params: bool, yi: int, score: str, n_devices: int = 1
) -> Callable:
    """``(params, x, aux, cls (N, k), ts (T,)) -> (T, N, k)`` class scores of ``T`` copies,
    ``ts`` split over ``n_devices`` local devices (``T`` a multiple of it)."""

    def run(params, x, aux, cls, ts):
        def one(t):
            y = evaluate(fn, with_params, params, x, aux, t)[yi].astype(jnp.float32)
            if score == "probability":
                y = jax.nn.softmax(y, axis=-1)
            return jnp.take_along_axis(y, cls, axis=1)

        return jax.vmap(one)(ts)

    return jax.jit(sharding.split(run, n_devices, (False, False, False, False, True)))


def perturbed_scores(
    evaluate: Evaluate,
    s: Setup,
    aux: Any,
    cls: np.ndarray,
    ts: np.ndarray,
    *,
    score: str,
    max_memory: int | None,
    what: str,
    fix: str,
    devices: int | None = None,
) -> np.ndarray:
    """``(T, N, k)`` scores (``"logit"`` or softmax ``"probability"``) of classes ``cls
    (N, k)`` on the copies ``evaluate(..., t)`` for every ``t`` in ``ts (T,)``, in equal
    chunks of ``ts`` sized by :func:`rfjax.memory.plan_chunks` under ``max_memory`` bytes
    (default: half the free memory), each chunk split over ``devices`` local devices
    (default: all; :mod:`rfjax.sharding`). ``evaluate`` must be a module-level function
    (the compiled program is cached per function)."""
    ts = np.asarray(ts)
    n = len(ts)
    n_devices = sharding.for_items(devices, n)
    prog = _program(evaluate, s.fn, s.with_params, s.logits_index, score, n_devices)
    budget = memory.check_budget(max_memory)
    given = budget is not None
    budget = budget if given else memory.default_budget()
    x, cls_j = jnp.asarray(s.x), jnp.asarray(cls, jnp.int32)
    aux = jax.tree.map(jnp.asarray, aux)

    def chunk(size: int, start: int = 0) -> np.ndarray:
        return ts[np.minimum(np.arange(start, start + size), n - 1)]

    def compile_for(size: int) -> Any:
        args = (x, aux, cls_j, chunk(size))
        structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args)
        return memory.compiled(prog, s.params, *structs)

    size, exe = memory.plan_chunks(
        compile_for, n, budget, what=what, fix=fix, given=given, multiple=n_devices
    )
    parts = [np.asarray(exe(s.params, x, aux, cls_j, jnp.asarray(chunk(size, i)))) for i in range(0, n, size)]
    return np.concatenate(parts)[:n]


on_clear(_forward.cache_clear)
on_clear(_program.cache_clear)
