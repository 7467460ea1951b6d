"""Class activation maps: CAM, Grad-CAM and variants on one pipeline, placed by receptive field.

The pipeline (one jit-compiled XLA program per model, method and input shape):

1. a forward pass gives the feature map ``A`` ``(N, h, w, K)`` of the chosen layer and the
   logits ``y`` ``(N, classes)``;
2. the classes to explain are the given ones or the top-``k`` logits;
3. one VJP per explained class gives ``G = d y_c / d A`` ``(N, h, w, K)`` (``jax.vmap`` over
   the ``k`` classes, the batch axis carries the images);
4. a *variant* turns ``(A, G)`` into a map ``(N, h, w)``: this is the only thing a CAM
   method says (see :func:`variant`);
5. the map is placed on the input: the value of feature cell ``(i, j)`` is put at the centre
   of its receptive field (RF), ``offset + (i, j) * stride`` (from :func:`rfjax.receptive_field`),
   and interpolated bilinearly between centres (held constant beyond the outermost ones).
   A plain bilinear resize is the special case ``offset = H / (2 h)``, ``stride = H / h``.

The model is any JAX function that returns the feature map and the logits, e.g. a tuple
``(A, y)`` or a dict ``{"features": A, "logits": y}``: the gradient ``d y / d A`` is taken by
re-evaluating the function's jaxpr with a perturbation added where ``A`` is computed, so the
function needs no split into a body and a head. Flax NNX modules, Flax Linen modules with
their variables and converted Keras models are accepted as in :func:`rfjax.receptive_field`.

Methods:

* CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016):
  for features -> global average pooling -> dense ``W`` ``(K, classes)``,
  ``CAM_c = sum_k A_k W[k, c]``. ``W[:, c]`` is read off the gradient, which is
  ``W[:, c] / (h w)`` at every cell for such a head; a head for which the gradient varies
  over space or with ``A`` is refused.
* Grad-CAM (Selvaraju et al., ICCV 2017): channel weights = spatial mean of ``G``, then ReLU.
  On a GAP + dense head, ``grad_cam = relu(cam) / (h w)`` exactly.
* Grad-CAM++ (Chattopadhay et al., WACV 2018) and Layer-CAM (Jiang et al., TIP 2021).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from rfjax import memory
from rfjax._types import HW, ReceptiveField
from rfjax.contract import as_function
from rfjax.errors import RFError
from rfjax.jaxpr import Tap, evaluate

__all__ = [
    "CAMResult",
    "box_iou",
    "cam",
    "cam_box",
    "class_activation_maps",
    "grad_cam",
    "grad_cam_plus_plus",
    "keras_cam_layers",
    "layer_cam",
    "pointing_game",
    "variant",
]

#: ``(A (N, h, w, K), G (N, h, w, K)) -> map (N, h, w)``: how one CAM method weighs features.
Variant = Callable[[jax.Array, jax.Array], jax.Array]
_VARIANTS: dict[str, Variant] = {}

#: Relative tolerance of the GAP + dense check in :func:`cam`.
HEAD_TOL = 1e-3
_PLACEMENTS = ("auto", "rf", "resize")


def variant(name: str) -> Callable[[Variant], Variant]:
    """Register a CAM method: ``@variant("my_cam")`` over ``f(A, G) -> (N, h, w)``.

    ``A`` is the layer's feature map and ``G`` the gradient of the explained class score
    with respect to it, both ``(N, h, w, K)``. The method is then available as
    ``class_activation_maps(..., method="my_cam")``.
    """

    def register(fn: Variant) -> Variant:
        _VARIANTS[name] = fn
        return fn

    return register


@variant("cam")
def _cam(a: jax.Array, g: jax.Array) -> jax.Array:
    # For GAP + dense, d y_c / d A_ijk = W[k, c] / (h w) at every cell, so the spatial sum is W[k, c].
    return jnp.einsum("nijk,nk->nij", a, g.sum(axis=(1, 2)))


@variant("grad_cam")
def _grad_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    return jax.nn.relu(jnp.einsum("nijk,nk->nij", a, g.mean(axis=(1, 2))))


@variant("grad_cam_plus_plus")
def _grad_cam_plus_plus(a: jax.Array, g: jax.Array) -> jax.Array:
    g2 = g * g
    denom = 2.0 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * g
    alpha = g2 / jnp.where(denom != 0, denom, 1.0)
    weights = (alpha * jax.nn.relu(g)).sum(axis=(1, 2))
    return jax.nn.relu(jnp.einsum("nijk,nk->nij", a, weights))


@variant("layer_cam")
def _layer_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    return jax.nn.relu((jax.nn.relu(g) * a).sum(axis=-1))


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class CAMResult:
    """Class activation maps of a batch of images.

    Attributes:
      maps: ``(N, k, h, w)`` maps at feature resolution; ``maps[n, j]`` explains class
        ``classes[n, j]`` of image ``n``.
      upsampled: ``(N, k, H, W)`` the maps placed on the input (see ``placement``).
      classes: ``(N, k)`` int class indices, best first when chosen by ``top_k``.
      probabilities: ``(N, k)`` softmax of the logits at ``classes``.
      method: ``"cam"``, ``"grad_cam"``, ... (a registered :func:`variant`).
      placement: ``"rf"`` (cell values at their RF centres) or ``"resize"`` (plain bilinear).
      offset: centre of feature cell ``(0, 0)`` on the input as used for the placement,
        continuous coordinates (pixel ``i`` spans ``[i, i + 1)``).
      stride: distance between the centres of neighbouring cells as used for the placement.
      rf: the receptive field of the layer when ``placement == "rf"``, else ``None``.
      layer: the name (dict key or tuple index) of the feature map in the model's outputs.
      input_shape: ``(H, W)``.
      feature_shape: ``(h, w)``.
    """

    maps: np.ndarray
    upsampled: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    method: str
    placement: str
    offset: HW
    stride: HW
    rf: ReceptiveField | None
    layer: str | int
    input_shape: HW
    feature_shape: HW

    def normalised(self) -> np.ndarray:
        """``upsampled`` divided, per image, by the maximum of its first class's map (Zhou et
        al.), ``(N, k, H, W)``; images whose first map has no positive value are left as is."""
        top = self.upsampled[:, 0].reshape(len(self.upsampled), -1).max(axis=1)
        scale = np.where(top > 0, top, 1.0)
        return self.upsampled / scale[:, None, None, None]

    def peaks(self) -> np.ndarray:
        """``(N, k, 2)`` ``(row, column)`` where each map peaks on the input: the placed centre
        ``offset + (i, j) * stride`` of its arg-max feature cell, continuous coordinates. (The
        upsampled map takes its maximum there too; beyond the outermost centres it is flat,
        so its pixel arg-max would be ambiguous.)"""
        n, k, _h, w = self.maps.shape
        flat = self.maps.reshape(n, k, -1).argmax(axis=-1)
        return np.stack([self.offset.h + (flat // w) * self.stride.h, self.offset.w + (flat % w) * self.stride.w], axis=-1)


# --------------------------------------------------------------------------- the tap


def _tapped(fn: Callable, with_params: bool, layer_index: int) -> Callable:
    """``(params, x, delta) -> flat outputs`` of ``fn`` with ``delta`` added to output leaf
    ``layer_index`` where it is computed, so that ``d outputs / d delta`` is the gradient
    with respect to that layer."""

    def run(params, x, delta):
        args = (params, x) if with_params else (x,)
        closed = jax.make_jaxpr(fn)(*args)
        target = closed.jaxpr.outvars[layer_index]
        if isinstance(target, jcore.Literal) or target in closed.jaxpr.invars or target in closed.jaxpr.constvars:
            raise RFError("layer names an output that is a constant or the input itself; pass a layer the model computes.")
        return evaluate(closed, jax.tree_util.tree_leaves(args), tap=Tap(target, delta))

    return run


# --------------------------------------------------------------------------- program


def _interp_matrix(n_out: int, n_in: int, offset: jax.Array, stride: jax.Array) -> jax.Array:
    """``(n_out, n_in)`` linear-interpolation weights: output pixel ``p`` (centre ``p + 0.5``)
    reads feature position ``(p + 0.5 - offset) / stride``, clamped to ``[0, n_in - 1]``."""
    u = jnp.clip((jnp.arange(n_out) + 0.5 - offset) / stride, 0.0, n_in - 1)
    return jax.nn.relu(1.0 - jnp.abs(u[:, None] - jnp.arange(n_in)[None, :]))


def place(maps: Any, input_shape: Sequence[int], offset: Sequence[float], stride: Sequence[float]) -> np.ndarray:
    """Put feature-resolution maps on the input: cell ``(i, j)``'s value at
    ``offset + (i, j) * stride`` (continuous coordinates), bilinear in between, constant
    beyond the outermost centres.

    Args:
      maps: ``(..., h, w)``.
      input_shape: ``(H, W)`` of the result.
      offset, stride: ``(h, w)`` pairs, e.g. from a :class:`ReceptiveField`.

    Returns:
      ``(..., H, W)`` float32.
    """
    m = jnp.asarray(maps, jnp.float32)
    return np.asarray(_place(m, tuple(int(v) for v in input_shape), jnp.asarray(offset, jnp.float32), jnp.asarray(stride, jnp.float32)))


def _place(maps: jax.Array, hw: tuple[int, int], offset: jax.Array, stride: jax.Array) -> jax.Array:
    rh = _interp_matrix(hw[0], maps.shape[-2], offset[0], stride[0])
    rw = _interp_matrix(hw[1], maps.shape[-1], offset[1], stride[1])
    return jnp.einsum("Hh,...hw,Ww->...HW", rh, maps, rw)


@functools.lru_cache(maxsize=64)
def _program(fn: Callable, with_params: bool, layer: int, logits: int, method: str, k: int, given: bool) -> Callable:
    """One jit-compiled ``(params, x, classes, offset, stride) -> dict`` per configuration."""
    tapped = _tapped(fn, with_params, layer)
    weigh = _VARIANTS[method]

    def run(params, x, classes, offset, stride):
        def head(delta):
            outs = tapped(params, x, delta)
            return outs[logits], outs[layer]

        a_shape = jax.eval_shape(lambda: tapped(params, x, jnp.zeros(()))[layer]).shape
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
            "upsampled": _place(maps, x.shape[1:3], offset, stride),
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
    prog: Callable, params: Any, x: np.ndarray, cls: np.ndarray | None, offset: np.ndarray, stride: np.ndarray,
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
        structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args(size)[1:])
        return memory.compiled(prog, params, *structs)

    size, exe = memory.plan_chunks(
        compile_for, n, budget, what="one image", fix="pass smaller images or explain an earlier layer", given=given
    )
    parts = [jax.device_get(exe(*args(size, start))) for start in range(0, n, size)]
    out = {k: np.concatenate([p[k] for p in parts])[:n] for k in _BATCHED}
    out.update({k: max(float(p[k]) for p in parts) for k in parts[0] if k not in _BATCHED})
    return out


# --------------------------------------------------------------------------- checks


def _check_images(images: Any) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype.kind not in "fiu":
        raise RFError(f"images has dtype {a.dtype}; pass real pixel values (float or integer), e.g. images.astype('float32').")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or min(a.shape) < 1:
        raise RFError(f"images has shape {np.shape(images)}; pass an NHWC batch (N, H, W, C) or one (H, W, C) image.")
    return a.astype(np.float32)


def _output_index(struct: Any, key: str | int, arg: str) -> int:
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


def _check_classes(classes: Any, top_k: int, n: int, n_classes: int) -> np.ndarray | None:
    if classes is None:
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or not 1 <= top_k <= n_classes:
            raise RFError(f"top_k={top_k!r} must be an integer between 1 and the model's {n_classes} classes.")
        return None
    c = np.asarray(classes)
    if c.dtype.kind not in "iu":
        raise RFError(f"classes={classes!r} must be integer class indices, e.g. classes=3 or classes=[[3], [7]].")
    if c.ndim == 0:
        c = c[None]
    if c.ndim == 1:
        c = np.broadcast_to(c[None], (n, c.size))
    if c.ndim != 2 or c.shape[0] != n or c.shape[1] < 1:
        raise RFError(f"classes has shape {np.shape(classes)}; pass an int, a list of ints, or one row per image ({n}, k).")
    bad = c[(c < 0) | (c >= n_classes)]
    if bad.size:
        raise RFError(f"classes holds index {int(bad[0])}, outside the model's {n_classes} classes; pass indices in [0, {n_classes}).")
    return np.ascontiguousarray(c, np.int32)


@functools.lru_cache(maxsize=64)
def _layer_only(fn: Callable, with_params: bool, index: int) -> Callable:
    """``fn`` returning only output leaf ``index`` (a stable object per model and layer, so
    the RF programs are compiled once)."""
    if with_params:
        return lambda params, x: jax.tree_util.tree_leaves(fn(params, x))[index]
    return lambda x: jax.tree_util.tree_leaves(fn(x))[index]


def _layer_rf(fn: Callable, params: Any, index: int, shape: tuple[int, int, int], name: Any) -> ReceptiveField:
    from rfjax.fit import receptive_field

    try:
        rf = receptive_field(
            _layer_only(fn, params is not None, index), shape, params=params, grow=True, max_input=4 * max(shape[:2])
        )
    except RFError as e:
        raise RFError(f"the RF of layer {name!r} could not be measured ({str(e).rstrip('.')}); use placement='resize'.") from None
    if rf.global_:
        raise RFError(f"every cell of layer {name!r} sees the whole input, so it has no RF centre; use placement='resize'.")
    return dataclasses.replace(rf, name=name)


def _placement(placement: str, rf: ReceptiveField | None, measure: Callable[[], ReceptiveField], hw: HW, grid: HW):
    if placement not in _PLACEMENTS:
        raise RFError(f"placement={placement!r} is not one of {_PLACEMENTS}.")
    if placement == "resize":
        return "resize", HW(hw.h / (2 * grid.h), hw.w / (2 * grid.w)), HW(hw.h / grid.h, hw.w / grid.w), None
    if rf is None:
        try:
            rf = measure()
        except RFError:
            if placement == "rf":
                raise
            return _placement("resize", None, measure, hw, grid)
    if not isinstance(rf, ReceptiveField):
        raise RFError(f"rf must be a ReceptiveField (from rfjax.receptive_field), not {type(rf).__name__}.")
    return "rf", HW(float(rf.offset.h), float(rf.offset.w)), HW(float(rf.stride.h), float(rf.stride.w)), rf


# --------------------------------------------------------------------------- public


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
      layer: key (dict) or index (tuple) of the feature map in the outputs.
      logits: key or index of the logits in the outputs.
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
    if method not in _VARIANTS:
        raise RFError(f"method={method!r} is not a registered CAM method; pass one of {sorted(_VARIANTS)}.")
    fn, params = as_function(model, params)
    x = _check_images(images)
    bound = fn if params is None else functools.partial(fn, params)
    try:
        struct = jax.eval_shape(bound, jnp.asarray(x))
    except RFError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure inside the user's model
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RFError(
            f"the model failed on images of shape {x.shape} ({type(e).__name__}: {msg[:200]}); pass images of the shape it expects."
        ) from None
    li = _output_index(struct, layer, "layer")
    yi = _output_index(struct, logits, "logits")
    leaves = jax.tree_util.tree_leaves(struct)
    a_shape, y_shape = tuple(leaves[li].shape), tuple(leaves[yi].shape)
    if len(a_shape) != 4 or a_shape[0] != x.shape[0] or a_shape[1] < 1 or a_shape[2] < 1:
        raise RFError(
            f"layer {layer!r} has shape {a_shape}, which is not a spatial feature map (N, h, w, K); pass a convolutional layer's output."
        )
    if len(y_shape) != 2 or y_shape[0] != x.shape[0]:
        raise RFError(f"logits {logits!r} has shape {y_shape}; pass the model's class scores of shape (N, classes).")
    n_classes = y_shape[1]
    cls = _check_classes(classes, top_k, x.shape[0], n_classes)
    k = top_k if cls is None else cls.shape[1]
    hw, grid = HW(x.shape[1], x.shape[2]), HW(a_shape[1], a_shape[2])
    used, offset, stride, used_rf = _placement(
        placement, rf, lambda: _layer_rf(fn, params, li, x.shape[1:], layer), hw, grid
    )
    prog = _program(fn, params is not None, li, yi, method, k, cls is not None)
    out = _run_chunked(prog, params, x, cls, np.asarray(offset, np.float32), np.asarray(stride, np.float32), max_memory)
    scale = float(out["grad_abs"])
    if not np.isfinite(scale):
        raise RFError(f"the gradient of the logits with respect to layer {layer!r} is not finite; check the model and its inputs.")
    if scale == 0:
        raise RFError(f"the logits do not depend on layer {layer!r} (zero gradient); pass a layer on the path to the logits.")
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


# --------------------------------------------------------------------------- localisation


def cam_box(heatmap: Any, threshold: float = 0.3) -> tuple[float, float, float, float] | None:
    """Bounding box ``(top, left, bottom, right)`` (continuous coordinates) of the largest
    connected region where ``heatmap (H, W) >= threshold * max`` (Zhou et al.'s localisation);
    ``None`` when the map has no positive value."""
    from scipy import ndimage

    m = np.asarray(heatmap, np.float64)
    top = m.max()
    if not top > 0:
        return None
    labels, n = ndimage.label(m >= threshold * top)
    sizes = ndimage.sum_labels(np.ones_like(m), labels, index=np.arange(1, n + 1))
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return (float(rows.start), float(cols.start), float(rows.stop), float(cols.stop))


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """Intersection over union of two ``(top, left, bottom, right)`` boxes (0 if either is ``None``)."""
    if a is None or b is None:
        return 0.0
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def pointing_game(points: Any, boxes: Any) -> float:
    """Fraction of points inside their box (the pointing game of Zhang et al. 2016, without
    tolerance): ``points (N, 2)`` ``(row, column)``, e.g. ``result.peaks()[:, 0]``, and
    ``boxes (N, 4)`` ``(top, left, bottom, right)``, continuous coordinates."""
    p = np.asarray(points, np.float64)
    b = np.asarray(boxes, np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or b.shape != (len(p), 4):
        raise RFError(f"points {p.shape} and boxes {b.shape} must be (N, 2) and (N, 4); pass one box per point.")
    hit = (p[:, 0] >= b[:, 0]) & (p[:, 0] < b[:, 2]) & (p[:, 1] >= b[:, 1]) & (p[:, 1] < b[:, 3])
    return float(hit.mean())


def keras_cam_layers(model: Any) -> tuple[str, str]:
    """Names of the CAM feature layer and classifier of a Keras model with a GAP + dense head.

    The feature layer is the layer feeding ``GlobalAveragePooling2D``; the classifier is the
    first ``Dense`` layer after it (``Dropout`` may sit in between). Its activation must be
    linear so that its output is the logits. Pass both to :func:`cam` with a converted model:
    ``cam(converted, images, layer=feature, logits=dense)``.
    """
    layers = list(getattr(model, "layers", []))
    gaps = [i for i, lyr in enumerate(layers) if type(lyr).__name__ == "GlobalAveragePooling2D"]
    if not gaps:
        raise RFError(
            f"model {getattr(model, 'name', '?')!r} has no GlobalAveragePooling2D layer, so plain CAM does not apply; "
            "use rfjax.grad_cam with layer= the last convolutional layer."
        )
    gap = layers[gaps[-1]]
    feature = gap._inbound_nodes[0].parent_nodes[0].operation.name if gap._inbound_nodes[0].parent_nodes else layers[gaps[-1] - 1].name
    for lyr in layers[gaps[-1] + 1 :]:
        kind = type(lyr).__name__
        if kind == "Dense":
            act = getattr(getattr(lyr, "activation", None), "__name__", "linear")
            if act != "linear":
                raise RFError(
                    f"Dense layer {lyr.name!r} has activation {act!r}; CAM needs its logits: build it with activation=None "
                    "and a separate Activation/Softmax layer."
                )
            return feature, lyr.name
        if kind not in ("Dropout", "Activation", "Softmax"):
            break
    raise RFError(
        f"no Dense layer follows GlobalAveragePooling2D {gap.name!r} in model {model.name!r}; "
        "use rfjax.grad_cam with layer= the last convolutional layer."
    )
