"""The CAM pipeline: one jit-compiled XLA program per model, method and input shape.

1. a forward pass gives the feature map ``A`` ``(N, h, w, K)`` of the chosen layer and the
   logits ``y`` ``(N, classes)``;
2. the classes to explain are the given ones or the top-``k`` logits;
3. one VJP per explained class gives ``G = d y_c / d A`` ``(N, h, w, K)`` (``jax.vmap`` over
   the ``k`` classes, the batch axis carries the images), through the tap
   (:mod:`rfjax.activation_maps.tap`);
4. a method (:mod:`rfjax.activation_maps.methods`) turns ``(A, G)`` into a map ``(N, h, w)``;
5. the map is placed on the input at each cell's RF centre (:mod:`rfjax.activation_maps.placement`).

Images are split into equal chunks sized by XLA's memory analysis (:mod:`rfjax.memory`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfjax import memory
from rfjax._types import HW, ReceptiveField
from rfjax.activation_maps import placement as placing
from rfjax.activation_maps.inputs import check_classes, check_images, named_outputs, output_index
from rfjax.activation_maps.methods import HEAD_TOL
from rfjax.activation_maps.methods import method as lookup_method
from rfjax.activation_maps.result import CAMResult
from rfjax.activation_maps.tap import tapped
from rfjax.contract import as_function, on_clear
from rfjax.errors import RFError, cause


@functools.lru_cache(maxsize=64)
def _program(
    fn: Callable, with_params: bool, layer: int, logits: int, method: str, k: int, given: bool
) -> Callable:
    """One jit-compiled ``(params, x, classes, offset, stride) -> dict`` per configuration."""
    tap = tapped(fn, with_params, layer)
    weigh = lookup_method(method)

    def run(params, x, classes, offset, stride):
        def head(delta):
            outs = tap(params, x, delta)
            return outs[logits], outs[layer]

        a_shape = jax.eval_shape(lambda: tap(params, x, jnp.zeros(()))[layer]).shape
        y, vjp, a = jax.vjp(head, jnp.zeros(a_shape, jnp.float32), has_aux=True)
        y = y.astype(jnp.float32)
        cls = classes if given else jax.lax.top_k(y, k)[1]
        probs = jnp.take_along_axis(jax.nn.softmax(y, axis=-1), cls, axis=1)

        def grads(vjp_fn):
            one = lambda c: vjp_fn(jax.nn.one_hot(c, y.shape[-1], dtype=y.dtype))[0]
            return jax.vmap(one, in_axes=1)(cls)  # (k, N, h, w, K)

        g = grads(vjp)
        a = a.astype(jnp.float32)
        maps = jnp.moveaxis(jax.vmap(lambda gj: weigh(a, gj.astype(jnp.float32)))(g), 0, 1)
        out = {
            "maps": maps,
            "upsampled": placing.place_jax(maps, x.shape[1:3], offset, stride),
            "classes": cls,
            "probabilities": probs,
            "grad_abs": jnp.abs(g).max(),
        }
        if method == "cam":
            # GAP + dense: the gradient is the same at every cell and does not depend on A.
            _, vjp0, _ = jax.vjp(head, -a, has_aux=True)
            out["spatial"] = jnp.abs(g - g.mean(axis=(2, 3), keepdims=True)).max()
            out["affine"] = jnp.abs(grads(vjp0) - g).max()
        return out

    return jax.jit(run)


_BATCHED = ("maps", "upsampled", "classes", "probabilities")


def _run_chunked(
    prog: Callable,
    params: Any,
    x: np.ndarray,
    cls: np.ndarray | None,
    offset: np.ndarray,
    stride: np.ndarray,
    max_memory: int | None,
) -> dict[str, np.ndarray]:
    """Run the CAM program over equal chunks of images sized by :mod:`rfjax.memory`
    (the last chunk padded with copies of the last image, cut off afterwards); per-image
    outputs are concatenated, the head checks (``grad_abs``, ...) are maxima."""
    budget = memory.check_budget(max_memory)
    given = budget is not None
    budget = budget if given else memory.default_budget()
    n = x.shape[0]

    def args(size: int, start: int = 0) -> tuple:
        idx = np.minimum(np.arange(start, start + size), n - 1)
        return (params, x[idx], None if cls is None else cls[idx], offset, stride)

    def compile_for(size: int) -> Any:
        structs = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args(size)[1:]
        )
        return memory.compiled(prog, params, *structs)

    size, exe = memory.plan_chunks(
        compile_for,
        n,
        budget,
        what="one image",
        fix="pass smaller images or explain an earlier layer",
        given=given,
    )
    parts = [jax.device_get(exe(*args(size, start))) for start in range(0, n, size)]
    out = {k: np.concatenate([p[k] for p in parts])[:n] for k in _BATCHED}
    out.update({k: max(float(p[k]) for p in parts) for k in parts[0] if k not in _BATCHED})
    return out


def class_activation_maps(
    model: Any,
    images: Any,
    *,
    method: str = "grad_cam",
    layer: str | int = 0,
    logits: str | int = 1,
    params: Any = None,
    classes: Any = None,
    top_k: int = 1,
    placement: str = "auto",
    rf: ReceptiveField | None = None,
    max_memory: int | None = None,
) -> CAMResult:
    """Class activation maps of ``images`` with any registered method, in one compiled program.

    Args:
      model: a JAX function ``x (N, H, W, C) -> outputs`` (or ``fn(params, x)`` with
        ``params``) whose outputs hold the feature map ``(N, h, w, K)`` of the layer to explain
        and the logits ``(N, classes)`` (pre-softmax), e.g. a tuple ``(A, y)`` or a dict; a Flax
        NNX module; a Flax Linen module with ``params=variables``; or a converted Keras model.
      images: ``(N, H, W, C)`` or one ``(H, W, C)`` image, real numbers.
      method: ``"cam"``, ``"grad_cam"``, ``"grad_cam_plus_plus"``, ``"layer_cam"`` or a name
        registered with :func:`variant`.
      layer: key (dict) or index (tuple) of the feature map in the outputs. For a
        PyTorch module, Keras model or ONNX file (or a converted model), any of its layer
        names (e.g. ``"layer4"``): the converted copy returning that layer and the logits
        is made for you.
      logits: key or index of the logits in the outputs; for a framework model asked
        for another layer, by default its own output (e.g. a module's ``"output"``).
      params: parameter pytree for ``model(params, x)``.
      classes: classes to explain: an int, a list of ints (the same for every image), or
        ``(N, k)`` per image. Default: the ``top_k`` best logits of each image.
      top_k: how many classes to explain when ``classes`` is ``None``.
      placement: ``"rf"`` puts each cell's value at its RF centre (``rf`` or measured with
        :func:`rfjax.receptive_field`), ``"resize"`` is a plain bilinear resize, ``"auto"``
        (default) is ``"rf"`` where the RF can be measured and ``"resize"`` otherwise.
      rf: the layer's receptive field, if already known.
      max_memory: bytes one compiled call may take; the images are split into equal
        chunks that fit (XLA's own memory analysis). Default: half the free memory.

    Returns:
      A :class:`CAMResult`.
    """
    lookup_method(method)
    x = check_images(images)
    model, layer, logits = named_outputs(model, layer, logits, x.shape[1:])
    fn, params = as_function(model, params)
    bound = fn if params is None else functools.partial(fn, params)
    try:
        struct = jax.eval_shape(bound, jnp.asarray(x))
    except RFError:
        raise
    except Exception as e:  # any failure inside the user's model
        raise RFError(
            f"the model failed on images of shape {x.shape} ({cause(e)}); pass images of the shape it expects."
        ) from e
    li = output_index(struct, layer, "layer")
    yi = output_index(struct, logits, "logits")
    leaves = jax.tree_util.tree_leaves(struct)
    a_shape, y_shape = tuple(leaves[li].shape), tuple(leaves[yi].shape)
    if len(a_shape) != 4 or a_shape[0] != x.shape[0] or a_shape[1] < 1 or a_shape[2] < 1:
        raise RFError(
            f"layer {layer!r} has shape {a_shape}, which is not a spatial feature map (N, h, w, K); pass a convolutional layer's output."
        )
    if len(y_shape) != 2 or y_shape[0] != x.shape[0]:
        raise RFError(
            f"logits {logits!r} has shape {y_shape}; pass the model's class scores of shape (N, classes)."
        )
    n_classes = y_shape[1]
    cls = check_classes(classes, top_k, x.shape[0], n_classes)
    k = top_k if cls is None else cls.shape[1]
    hw, grid = HW(x.shape[1], x.shape[2]), HW(a_shape[1], a_shape[2])
    used, offset, stride, used_rf = placing.choose(
        placement, rf, lambda: placing.layer_rf(fn, params, li, x.shape[1:], layer, model), hw, grid
    )
    prog = _program(fn, params is not None, li, yi, method, k, cls is not None)
    out = _run_chunked(
        prog, params, x, cls, np.asarray(offset, np.float32), np.asarray(stride, np.float32), max_memory
    )
    scale = float(out["grad_abs"])
    if not np.isfinite(scale):
        raise RFError(
            f"the gradient of the logits with respect to layer {layer!r} is not finite; check the model and its inputs."
        )
    if scale == 0:
        raise RFError(
            f"the logits do not depend on layer {layer!r} (zero gradient); pass a layer on the path to the logits."
        )
    if method == "cam" and max(float(out["spatial"]), float(out["affine"])) > HEAD_TOL * scale:
        raise RFError(
            f"the model has no global-average-pooling + dense head after layer {layer!r} (the logits' gradient varies over "
            f"space or with the features), so plain CAM does not apply; use rfjax.grad_cam(model, images, layer={layer!r})."
        )
    return CAMResult(
        maps=np.asarray(out["maps"]),
        upsampled=np.asarray(out["upsampled"]),
        classes=np.asarray(out["classes"]),
        probabilities=np.asarray(out["probabilities"]),
        method=method,
        placement=used,
        offset=offset,
        stride=stride,
        rf=used_rf,
        layer=layer,
        input_shape=hw,
        feature_shape=grid,
    )


def cam(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """CAM (Zhou et al. 2016) for models ending in features -> global average pooling -> dense.

    ``maps[n, j] = sum_k A[n, :, :, k] * W[k, classes[n, j]]`` with ``A`` the feature map named
    by ``layer`` and ``W`` the dense weights (no ReLU, no normalisation; see
    :meth:`CAMResult.normalised`). Arguments as in :func:`class_activation_maps`. Raises
    :class:`RFError` when the head after ``layer`` is not GAP + dense (use :func:`grad_cam`).
    """
    return class_activation_maps(model, images, method="cam", **kwargs)


def grad_cam(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """Grad-CAM (Selvaraju et al. 2017) for any layer: ``relu(sum_k mean_ij(G_k) A_k)``.

    On a GAP + dense head it equals ``relu(cam) / (h * w)``. Arguments as in
    :func:`class_activation_maps`.
    """
    return class_activation_maps(model, images, method="grad_cam", **kwargs)


def grad_cam_plus_plus(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """Grad-CAM++ (Chattopadhay et al. 2018), with the usual closed form for the second and
    third derivatives (``G**2``, ``G**3``). Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="grad_cam_plus_plus", **kwargs)


def layer_cam(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """Layer-CAM (Jiang et al. 2021): ``relu(sum_k relu(G_k) * A_k)``, cell by cell.
    Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="layer_cam", **kwargs)


on_clear(_program.cache_clear)
