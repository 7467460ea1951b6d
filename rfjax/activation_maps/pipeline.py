"""The CAM pipeline: one jit-compiled XLA program per model, method and input shape.

1. a forward pass gives the feature map ``A`` ``(N, h, w, K)`` of the chosen layer and the
   logits ``y`` ``(N, classes)``;
2. the classes to explain are the given ones or the top-``k`` logits;
3. one VJP per explained class gives ``G = d y_c / d A`` ``(N, h, w, K)`` (``jax.vmap`` over
   the ``k`` classes, the batch axis carries the images), through the tap
   (:mod:`rfjax.activation_maps.tap`);
4. a method (:mod:`rfjax.activation_maps.methods`) turns ``(A, G)`` into a map ``(N, h, w)``;
5. the map is placed on the input at each cell's RF centre (:mod:`rfjax.activation_maps.placement`).

Images are split into equal chunks sized by XLA's memory analysis (:mod:`rfjax.memory`), and
each chunk is sharded over the local devices (:mod:`rfjax.sharding`): the images, or, for
SmoothGrad and Integrated Gradients, the noisy copies or path points of each image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rfjax import memory, sharding
from rfjax._types import HW, ReceptiveField
from rfjax.activation_maps import placement as placing
from rfjax.activation_maps.inputs import (
    check_classes,
    check_images,
    check_samples,
    class_count,
    feature_shape,
    output_index,
    output_shapes,
    prng_key,
)
from rfjax.activation_maps.layers import explained_outputs
from rfjax.activation_maps.methods import HEAD_TOL, INPUT_METHODS
from rfjax.activation_maps.methods import method as lookup_method
from rfjax.activation_maps.result import CAMResult
from rfjax.activation_maps.sampling import grads, path_mean, smoothed, weigh_all
from rfjax.activation_maps.tap import tapped
from rfjax.contract import as_function, on_clear
from rfjax.errors import RFError, RFNeedsHead, RFNotLogits


@functools.lru_cache(maxsize=64)
def _program(
    fn: Callable,
    with_params: bool,
    layer: int,
    logits: int,
    method: str,
    k: int,
    given: bool,
    samples: int = 0,
    image_devices: int = 1,
    sample_devices: int = 1,
) -> Callable:
    """One jit-compiled ``(params, x, classes, keys, offset, stride, noise) -> dict`` per
    configuration. ``layer < 0`` explains the input (:data:`INPUT_METHODS`); ``samples``
    is the path length of integrated gradients or the number of SmoothGrad copies. The
    images are split over ``image_devices`` local devices, the samples of each image over
    ``sample_devices`` (one of the two is 1). Every output has the images' leading axis
    (the head checks are ``(1,)`` per device, maxima taken on the host)."""
    weigh = lookup_method(method)
    explain = _explainer(fn, with_params, layer, logits)

    def run(params, x, classes, keys, offset, stride, noise):
        y, vjp, a = explain(params, x)
        n_classes = y.shape[-1]
        cls = classes if given else jax.lax.top_k(y, k)[1]
        if method == "integrated_gradients":
            g = path_mean(
                lambda xs: grads(explain(params, xs)[1], cls, n_classes), x, samples, sample_devices
            )
            maps = weigh_all(weigh, a, g)
        elif samples:
            g, maps = smoothed(
                explain, weigh, params, x, cls, n_classes, keys, noise, samples, method, sample_devices
            )
        else:
            g = grads(vjp, cls, n_classes)  # (k, N, h, w, K)
            maps = weigh_all(weigh, a, g)
        row_is_p = (y.min(axis=-1) >= 0) & (jnp.abs(y.sum(axis=-1) - 1) <= 1e-4)
        out = {
            "maps": maps,
            "upsampled": maps if layer < 0 else placing.place_jax(maps, x.shape[1:3], offset, stride),
            "classes": cls,
            "probabilities": jnp.take_along_axis(jax.nn.softmax(y, axis=-1), cls, axis=1),
            "grad_abs": jnp.abs(g).max()[None],
            "logit_rows": jnp.any(~row_is_p).astype(jnp.float32)[None],
        }
        if method == "cam":
            # GAP + dense: the gradient is the same at every cell and does not depend on A.
            g = grads(vjp, cls, n_classes)
            out["spatial"] = jnp.abs(g - g.mean(axis=(2, 3), keepdims=True)).max()[None]
            out["affine"] = jnp.abs(grads(explain(params, x, -a)[1], cls, n_classes) - g).max()[None]
        return out

    # params, x, classes, keys: split; offset, stride, noise: replicated
    return jax.jit(sharding.split(run, image_devices, (False, True, True, True, False, False, False)))


def _explainer(fn: Callable, with_params: bool, layer: int, logits: int) -> Callable:
    """``(params, x, shift=0) -> (y (N, classes), vjp, A)``: the logits, their VJP with
    respect to ``A`` and ``A`` itself (float32), with ``shift`` added to ``A``; ``A`` is the
    layer's output, or the image when ``layer < 0``."""
    if layer < 0:

        def head_of(params, x):
            def head(delta):
                out = jax.tree_util.tree_leaves(fn(params, x + delta) if with_params else fn(x + delta))
                return out[logits], x + delta

            return head, x.shape

    else:
        tap = tapped(fn, with_params, layer)

        def head_of(params, x):
            def head(delta):
                outs = tap(params, x, delta)
                return outs[logits], outs[layer]

            return head, jax.eval_shape(lambda: tap(params, x, jnp.zeros(()))[layer]).shape

    def explain(params, x, shift=None):
        head, shape = head_of(params, x)
        start = jnp.zeros(shape, jnp.float32) if shift is None else shift
        y, vjp, a = jax.vjp(head, start, has_aux=True)
        return y.astype(jnp.float32), vjp, a.astype(jnp.float32)

    return explain


_BATCHED = ("maps", "upsampled", "classes", "probabilities")


def _run_chunked(
    prog: Callable,
    params: Any,
    x: np.ndarray,
    cls: np.ndarray | None,
    keys: np.ndarray | None,
    shared: tuple,
    max_memory: int | None,
    what: str,
    multiple: int = 1,
) -> dict[str, np.ndarray]:
    """Run the CAM program over equal chunks of images sized by :mod:`rfjax.memory`, a
    ``multiple`` of the devices the images are split over (the last chunk padded with
    copies of the last image, cut off afterwards); per-image outputs are concatenated, the
    head checks (``grad_abs``, ...) are maxima."""
    budget = memory.check_budget(max_memory)
    given = budget is not None
    budget = budget if given else memory.default_budget()
    n = x.shape[0]

    def args(size: int, start: int = 0) -> tuple:
        idx = np.minimum(np.arange(start, start + size), n - 1)
        pick = lambda a: None if a is None else a[idx]
        return (params, x[idx], pick(cls), pick(keys), *shared)

    def compile_for(size: int) -> Any:
        structs = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args(size)[1:]
        )
        return memory.compiled(prog, params, *structs)

    size, exe = memory.plan_chunks(
        compile_for,
        n,
        budget,
        what=what,
        fix="explain fewer classes (top_k= or classes=), pass smaller images or explain an earlier layer "
        "(the images are split into chunks, the classes of one image are not)",
        given=given,
        multiple=multiple,
    )
    parts = [jax.device_get(exe(*args(size, start))) for start in range(0, n, size)]
    out = {k: np.concatenate([p[k] for p in parts])[:n] for k in _BATCHED}
    out.update({k: max(float(np.max(p[k])) for p in parts) for k in parts[0] if k not in _BATCHED})
    return out


def class_activation_maps(
    model: Any,
    images: Any,
    *,
    method: str = "grad_cam",
    layer: str | int | None = None,
    logits: str | int | None = None,
    params: Any = None,
    classes: Any = None,
    top_k: int = 1,
    placement: str = "auto",
    rf: ReceptiveField | None = None,
    max_memory: int | None = None,
    smooth: int = 0,
    noise: float = 0.2,
    key: Any = 0,
    steps: int = 32,
    devices: int | None = None,
) -> CAMResult:
    """Class activation maps of ``images`` with any registered method, in one compiled program.

    Args:
      model: a JAX function ``x (N, H, W, C) -> outputs`` (or ``fn(params, x)`` with
        ``params``) whose outputs hold the feature map ``(N, h, w, K)`` of the layer to explain
        and the logits ``(N, classes)`` (pre-softmax), e.g. a tuple ``(A, y)`` or a dict; a Flax
        NNX module; a Flax Linen module with ``params=variables``; or a converted Keras model.
        Logits that are a converted model's softmax output are replaced by the logits before
        it (:meth:`ConvertedModel.pre_softmax`); scores that are probabilities (rows
        non-negative, summing to one) are refused (:class:`RFNotLogits`).
      images: ``(N, H, W, C)`` or one ``(H, W, C)`` image, real finite numbers.
      method: one of :func:`methods` (``"grad_cam"``, ``"hires_cam"``, ``"saliency"``, ...)
        or a name registered with :func:`variant`. The input methods (``"saliency"``,
        ``"integrated_gradients"``) explain the image: ``layer`` and ``placement`` do not
        apply and the maps are ``(N, k, H, W)``.
      layer: key (dict) or index (tuple) of the feature map in the outputs (default 0); for
        a converted or framework model, any layer name (default: the adapter's pick, the
        last spatial layer before the head's global pooling; see
        :mod:`rfjax.activation_maps.layers`).
      logits: key or index of the logits in the outputs (default 1); for a converted or
        framework model a layer name (default: the pre-softmax class scores).
      params: parameter pytree for ``model(params, x)``.
      classes: classes to explain: an int, a list of ints (the same for every image),
        ``(N, k)`` per image, or ``"all"`` (every class, one forward pass and one vmapped VJP).
        Default: the ``top_k`` best logits of each image.
      top_k: how many classes to explain when ``classes`` is ``None``.
      placement: ``"rf"`` puts each cell's value at its RF centre (``rf`` or measured with
        :func:`rfjax.receptive_field`), ``"resize"`` is a plain bilinear resize, ``"auto"``
        (default) is ``"rf"`` where the RF can be measured and ``"resize"`` otherwise.
      rf: the layer's receptive field, if already known.
      max_memory: bytes one compiled call may take; the images are split into equal
        chunks that fit (XLA's own memory analysis). Default: half the free memory.
      smooth: SmoothGrad copies per image (0: none): the maps averaged over ``smooth`` noisy
        copies, one batch axis of the program (see :func:`smoothgrad`).
      noise: SmoothGrad's noise standard deviation as a fraction of each image's range.
      key: SmoothGrad's PRNG seed (an int) or ``jax.random`` key: same key, same maps.
      steps: integrated gradients' path points (one batch axis of the program).
      devices: number of local devices to shard over (default: all): the images of each
        chunk, or with ``smooth`` or integrated gradients each image's noisy copies or path
        points (:mod:`rfjax.sharding`). The maps do not depend on it.

    Returns:
      A :class:`CAMResult`.
    """
    lookup_method(method)
    on_input = method in INPUT_METHODS
    samples = check_samples(method, smooth, noise, steps)
    x = check_images(images)
    model, layer, logits = explained_outputs(model, layer, logits, x.shape[1:])
    fn, params = as_function(model, params)
    struct = output_shapes(fn, params, x)
    li = -1 if on_input else output_index(struct, layer, "layer")
    yi = output_index(struct, logits, "logits")
    leaves = jax.tree_util.tree_leaves(struct)
    a_shape = tuple(x.shape) if on_input else feature_shape(leaves[li], x, layer)
    n_classes = class_count(leaves[yi], x, logits)
    cls = check_classes(classes, top_k, x.shape[0], n_classes)
    k = top_k if cls is None else cls.shape[1]
    hw, grid = HW(x.shape[1], x.shape[2]), HW(a_shape[1], a_shape[2])
    if on_input:
        used, offset, stride, used_rf = "input", HW(0.5, 0.5), HW(1.0, 1.0), None
    else:
        used, offset, stride, used_rf = placing.choose(
            placement, rf, lambda: placing.layer_rf(fn, params, li, x.shape[1:], layer, model), hw, grid
        )
    sample_devices = sharding.for_items(devices, samples) if samples else 1
    image_devices = 1 if sample_devices > 1 else sharding.for_items(devices, x.shape[0])
    prog = _program(
        fn, params is not None, li, yi, method, k, cls is not None, samples, image_devices, sample_devices
    )
    keys = np.asarray(jax.random.split(prng_key(key), x.shape[0])) if smooth else None
    shared = (np.asarray(offset, np.float32), np.asarray(stride, np.float32), np.float32(noise))
    what = "one image" if k == 1 else f"one image with {k} classes"
    out = _run_chunked(prog, params, x, cls, keys, shared, max_memory, what, image_devices)
    _check_outputs(out, method, "the input" if on_input else f"layer {layer!r}", layer, logits, n_classes)
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


def _check_outputs(out: dict, method: str, where: str, layer: Any, logits: Any, n_classes: int) -> None:
    """Refusals read off the program's outputs: non-finite or zero gradients, probabilities
    instead of logits, a head plain CAM does not apply to."""
    scale = float(out["grad_abs"])
    if not np.isfinite(scale):
        raise RFError(
            f"the gradient of the logits with respect to {where} is not finite; check the model and its inputs."
        )
    if float(out["logit_rows"]) == 0 and n_classes > 1:
        raise RFNotLogits(
            f"logits {logits!r} are probabilities (every row is non-negative and sums to 1), whose gradients "
            "saturate; pass the scores before the softmax as logits= (for Keras, the Dense layer before it)."
        )
    if scale == 0:
        raise RFError(
            f"the logits do not depend on {where} (zero gradient); pass a layer on the path to the logits."
        )
    if method == "cam" and max(float(out["spatial"]), float(out["affine"])) > HEAD_TOL * scale:
        raise RFNeedsHead(
            f"method='cam' needs a global-average-pooling + dense head after layer {layer!r} (the logits' gradient "
            f"varies over space or with the features); use rfjax.grad_cam(model, images, layer={layer!r}), or "
            "any other method, which need no such head."
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


def hires_cam(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """HiResCAM (Draelos & Carin 2020): ``relu(sum_k G_k * A_k)`` cell by cell.
    Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="hires_cam", **kwargs)


def xgrad_cam(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """XGrad-CAM (Fu et al. 2020): weights ``sum_ij(G_k A_k) / (sum_ij A_k + 1e-7)``.
    Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="xgrad_cam", **kwargs)


def eigen_cam(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the layer's
    ``(h * w, K)`` features (sign: see :func:`~rfjax.activation_maps.methods.first_component`).
    Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="eigen_cam", **kwargs)


def eigen_grad_cam(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """Eigen-Grad-CAM: the first principal component of ``G * A``.
    Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="eigen_grad_cam", **kwargs)


def saliency(model: Any, images: Any, **kwargs: Any) -> CAMResult:
    """Saliency (Simonyan et al. 2014): ``max_c |d y_c / d x|``, maps ``(N, k, H, W)`` on the
    input (``layer`` does not apply). Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="saliency", **kwargs)


def integrated_gradients(model: Any, images: Any, steps: int = 32, **kwargs: Any) -> CAMResult:
    """Integrated Gradients (Sundararajan et al. 2017), black baseline, ``steps`` path points
    (right Riemann sum) as one vmapped batch; maps ``(N, k, H, W)`` summed over channels, signed,
    summing to about ``y_c(x) - y_c(0)``. Arguments as in :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method="integrated_gradients", steps=steps, **kwargs)


def smoothgrad(
    model: Any,
    images: Any,
    samples: int = 50,
    noise: float = 0.2,
    key: Any = 0,
    method: str = "saliency",
    **kwargs: Any,
) -> CAMResult:
    """SmoothGrad (Smilkov et al. 2017) of ``method`` (``"saliency"``: input gradients, or
    ``"grad_cam"``, ...): ``samples`` noisy copies per image (noise ``noise`` times the
    image's range, PRNG ``key``), one batch axis of the program. Arguments as in
    :func:`class_activation_maps`."""
    return class_activation_maps(model, images, method=method, smooth=samples, noise=noise, key=key, **kwargs)


on_clear(_program.cache_clear)
