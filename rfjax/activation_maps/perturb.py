"""Perturbation CAM methods, each one compiled program over a batch of perturbed copies.

* Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
  Neural Networks", CVPR-W 2020): each channel ``A_k`` of the layer, placed on the input and
  min-max normalised to ``[0, 1]``, masks the input; channel ``k``'s weight is the class
  score of the masked input, and the map is ``relu(sum_k w_k A_k)``. Faster-Score-CAM (the
  ``max_N`` of tf-keras-vis) uses only the ``channels`` channels of largest spatial variance
  of each image.
* Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM", WACV 2020): ``w_k = (y_c - y_c^(k)) / y_c``
  with ``y_c^(k)`` the class logit when channel ``k`` of the layer is set to zero; the map is
  ``relu(sum_k w_k A_k)``. Only the network after the layer is re-run (see
  :func:`ablation_cam`), and an affine head (e.g. GAP + dense) takes a closed form.
* Test-time augmentation smoothing (:func:`augmentation_smoothing`): flips and small shifts,
  undone on the placed maps (and on the feature-resolution maps where a shift is a whole
  number of strides) before averaging.

Every perturbed copy is a batch axis of one jit-compiled program, split into equal chunks
under ``max_memory`` by :mod:`rfjax.memory` (:mod:`rfjax.activation_maps.batched`).

Conventions of the peer libraries (and how to match them here):

* pytorch-grad-cam 1.5 ``ScoreCAM``: masks upsampled with ``UpsamplingBilinear2d``
  (``align_corners=True``: ``masks="corners"`` here), normalised ``(u - min) / (max - min +
  1e-8)``, weights = softmax over channels of the class *logits* of the masked inputs
  (``weighting="softmax"``, the default here), then ReLU. Its ``AblationCAM`` ablates to 0
  when the batch's minimum activation is 0 (after a ReLU, as here) and to ``min - 1e7``
  otherwise; rfjax always ablates to 0 (the paper).
* tf-keras-vis 0.8 ``Scorecam``: masks by ``scipy.ndimage.zoom(order=1)`` (corners aligned),
  epsilon ``1e-7``, weights = softmax *probability* of the class on the masked input
  (``weighting="probability"``); its ``max_N`` ranks channels by standard deviation and
  takes the union over the batch (here: per image, by variance, the same order).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rfjax._types import HW, ReceptiveField
from rfjax.activation_maps import batched
from rfjax.activation_maps import placement as placing
from rfjax.activation_maps.inputs import check_images
from rfjax.activation_maps.methods import HEAD_TOL
from rfjax.activation_maps.pipeline import class_activation_maps
from rfjax.activation_maps.result import CAMResult
from rfjax.activation_maps.tap import tapped
from rfjax.contract import on_clear
from rfjax.errors import RFError

#: Score-CAM's mask normalisation epsilon (pytorch-grad-cam's).
MASK_EPS = 1e-8
WEIGHTINGS = ("softmax", "probability")
MASKS = ("placement", "corners")


def _masked(fn: Callable, with_params: bool, params: Any, x: jax.Array, aux: Any, t: jax.Array) -> list:
    """Outputs on ``x`` times the min-max normalised placed channel ``t`` of ``aux[0]``."""
    a, offset, stride = aux
    m = placing.place_jax(jnp.take(a, t, axis=-1), (x.shape[1], x.shape[2]), offset, stride)  # (N, H, W)
    lo = m.min(axis=(1, 2), keepdims=True)
    hi = m.max(axis=(1, 2), keepdims=True)
    xs = x * ((m - lo) / (hi - lo + MASK_EPS))[..., None]
    return jax.tree_util.tree_leaves(fn(params, xs) if with_params else fn(xs))


@functools.lru_cache(maxsize=64)
def _ablator(layer_index: int) -> batched.Evaluate:
    """The outputs with channel ``t`` of output leaf ``layer_index`` set to zero (a stable
    function per layer, so its program is compiled once)."""

    def ablate(fn: Callable, with_params: bool, params: Any, x: jax.Array, aux: Any, t: jax.Array) -> list:
        (a,) = aux
        delta = -a * (jnp.arange(a.shape[-1]) == t).astype(a.dtype)
        return tapped(fn, with_params, layer_index)(params, x, delta)

    return ablate


class _Prepared:
    """What every perturbation method computes first: the resolved model, the layer's
    activations, the explained classes and the placement of the layer on the input."""

    def __init__(self, model, images, layer, logits, params, classes, top_k, placement, rf):
        self.s = s = batched.setup(model, images, layer, logits, params)
        self.a, self.y = batched.forward(s)
        self.cls = batched.explained_classes(s, self.y, classes, top_k)
        _, h, w, _ = s.feature_shape
        self.hw, self.grid = HW(s.x.shape[1], s.x.shape[2]), HW(h, w)
        self.placement, self.offset, self.stride, self.rf = placing.choose(
            placement,
            rf,
            lambda: placing.layer_rf(s.fn, s.params, s.layer_index, s.x.shape[1:], s.layer, s.model),
            self.hw,
            self.grid,
        )
        self.layer = s.layer

    def result(self, a: np.ndarray, weights: np.ndarray, method: str) -> CAMResult:
        """``relu(sum_k weights[n, c, k] A[n, :, :, k])`` as a :class:`CAMResult`."""
        maps = np.maximum(np.einsum("nijk,nck->ncij", a, weights), 0).astype(np.float32)
        up = placing.place(maps, self.hw, self.offset, self.stride)
        return CAMResult(
            maps=maps,
            upsampled=up,
            classes=self.cls,
            probabilities=batched.softmax_at(self.y, self.cls).astype(np.float32),
            method=method,
            placement=self.placement,
            offset=self.offset,
            stride=self.stride,
            rf=self.rf,
            layer=self.layer,
            input_shape=self.hw,
            feature_shape=self.grid,
        )


def _top_variance(a: np.ndarray, channels: int | None) -> np.ndarray:
    """``(N, n)`` indices of each image's channels by decreasing spatial variance (all
    ``K`` channels in order when ``channels`` is ``None``)."""
    n, _, _, k = a.shape
    if channels is None:
        return np.broadcast_to(np.arange(k), (n, k))
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer) or not 1 <= channels <= k:
        raise RFError(f"channels={channels!r} must be an integer between 1 and the layer's {k} channels.")
    var = a.reshape(n, -1, k).var(axis=1)
    return np.argsort(-var, axis=1, kind="stable")[:, :channels]


def score_cam(
    model: Any,
    images: Any,
    *,
    layer: str | int | None = None,
    logits: str | int | None = None,
    params: Any = None,
    classes: Any = None,
    top_k: int = 1,
    placement: str = "auto",
    rf: ReceptiveField | None = None,
    channels: int | None = None,
    weighting: str = "softmax",
    masks: str = "placement",
    max_memory: int | None = None,
    devices: int | None = None,
) -> CAMResult:
    """Score-CAM (Wang et al. 2020); Faster-Score-CAM with ``channels=N``.

    Channel ``k`` of the layer, ``A_k (h, w)``, is placed on the input (``masks="placement"``:
    at its cells' RF centres or by plain resize, as the maps; ``"corners"``: bilinear with
    corners aligned, pytorch-grad-cam's ``UpsamplingBilinear2d``), normalised to
    ``M_k = (u - min u) / (max u - min u + 1e-8)``, and the class score ``s_k`` of
    ``x * M_k`` weighs it: ``w = softmax_k(s_k)`` of the logits (``weighting="softmax"``,
    pytorch-grad-cam) or ``w_k = softmax(y(x * M_k))_c`` (``"probability"``,
    tf-keras-vis). The map is ``relu(sum_k w_k A_k)``. The ``N * K`` masked images run as
    one program over the channel axis, in equal chunks under ``max_memory``.

    Args:
      channels: Faster-Score-CAM: only each image's ``channels`` channels of largest spatial
        variance (``None``: all).
      devices: local devices the masked images are sharded over (default: all;
        :mod:`rfjax.sharding`).
      Other arguments as in :func:`rfjax.class_activation_maps`.

    Returns:
      A :class:`CAMResult` with ``method`` ``"score_cam"`` (or ``"faster_score_cam"``).
    """
    if weighting not in WEIGHTINGS:
        raise RFError(f"weighting={weighting!r} is not one of {WEIGHTINGS}.")
    if masks not in MASKS:
        raise RFError(f"masks={masks!r} is not one of {MASKS}.")
    p = _Prepared(model, images, layer, logits, params, classes, top_k, placement, rf)
    idx = _top_variance(p.a, channels)
    a_sel = np.take_along_axis(p.a, idx[:, None, None, :], axis=3)
    offset, stride = np.asarray(p.offset, np.float32), np.asarray(p.stride, np.float32)
    if masks == "corners":
        offset = np.full(2, 0.5, np.float32)
        stride = np.array([(n - 1) / max(g - 1, 1) for n, g in zip(p.hw, p.grid)], np.float32)
    scores = batched.perturbed_scores(
        _masked,
        p.s,
        (a_sel, offset, stride),
        p.cls,
        np.arange(a_sel.shape[-1]),
        score="logit" if weighting == "softmax" else "probability",
        max_memory=max_memory,
        what="one masked image per input image",
        fix="pass fewer images or Faster-Score-CAM's channels=",
        devices=devices,
    )  # (K', N, k)
    w = np.moveaxis(scores, 0, -1).astype(np.float64)  # (N, k, K')
    if weighting == "softmax":
        w = np.exp(w - w.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
    return p.result(a_sel, w, "score_cam" if channels is None else "faster_score_cam")


def faster_score_cam(model: Any, images: Any, *, channels: int = 64, **kwargs: Any) -> CAMResult:
    """Faster-Score-CAM: :func:`score_cam` on each image's ``channels`` channels of largest
    spatial variance."""
    return score_cam(model, images, channels=channels, **kwargs)


@functools.lru_cache(maxsize=64)
def _drops_program(fn: Callable, with_params: bool, li: int, yi: int) -> Callable:
    """``(params, x, a, cls) -> dict``: the first-order ablation drops ``<G_k, A_k>`` from
    one VJP per class, and the checks that the head after the layer is affine."""
    tap = tapped(fn, with_params, li)

    def run(params, x, a, cls):
        def head(delta):
            return tap(params, x, delta)[yi].astype(jnp.float32)

        y, vjp = jax.vjp(head, jnp.zeros(a.shape, jnp.float32))
        y0, vjp0 = jax.vjp(head, -a)

        def grads(vjp_fn):
            one = lambda c: vjp_fn(jax.nn.one_hot(c, y.shape[-1], dtype=y.dtype))[0]
            return jax.vmap(one, in_axes=1)(cls)  # (k, N, h, w, K)

        g, g0 = grads(vjp), grads(vjp0)
        drops = jnp.einsum("cnijk,nijk->nck", g, a)
        yc, y0c = jnp.take_along_axis(y, cls, axis=1), jnp.take_along_axis(y0, cls, axis=1)
        return {
            "drops": drops,
            "scores": yc,
            "scale": jnp.abs(g).max(),
            "nonaffine": jnp.abs(g - g0).max(),
            "path": jnp.abs(yc - y0c - drops.sum(axis=-1)).max() / jnp.maximum(jnp.abs(yc).max(), 1e-30),
        }

    return jax.jit(run)


def ablation_cam(
    model: Any,
    images: Any,
    *,
    layer: str | int | None = None,
    logits: str | int | None = None,
    params: Any = None,
    classes: Any = None,
    top_k: int = 1,
    placement: str = "auto",
    rf: ReceptiveField | None = None,
    closed_form: bool | None = None,
    max_memory: int | None = None,
    devices: int | None = None,
) -> CAMResult:
    """Ablation-CAM (Desai & Ramaswamy 2020): ``w_k = (y_c - y_c^(k)) / y_c``, map
    ``relu(sum_k w_k A_k)``, with ``y_c^(k)`` the logit of class ``c`` when channel ``k`` of
    the layer is zero (pytorch-grad-cam's weight, without its ``min - 1e7`` ablation for
    layers with negative values).

    Brute force: the ``K`` ablations are a batch axis of one program (equal chunks under
    ``max_memory``). The ablation is a perturbation ``-A_k`` added where the layer is
    computed (:mod:`~rfjax.activation_maps.tap`); it is ``jax.vmap``-ed over ``k`` with the
    images unbatched, so the layers before the explained one do not depend on ``k`` and run
    once per chunk: only the network after the layer is re-run per channel.

    Closed form: if the logit is affine in ``A``, ``y_c(A') = y_c(A) + <G, A' - A>`` with
    ``G = d y_c / d A`` the same at every ``A``. Ablating channel ``k`` is ``A' = A - A_k e_k``,
    so ``y_c - y_c^(k) = <G_k, A_k> = sum_ij G[i, j, k] A[i, j, k]``, exactly: one VJP per class
    gives every channel's drop. For GAP + dense, ``G[i, j, k] = W[k, c] / (h w)`` and the drop
    is ``W[k, c] * mean_ij A[i, j, k]``. The head is taken as affine when ``G`` at ``A`` equals
    ``G`` at ``A = 0`` and ``y_c(A) - y_c(0) = sum_k <G_k, A_k>`` (both within
    :data:`HEAD_TOL` relative).

    Args:
      closed_form: ``None`` (default): the closed form where the head is affine, brute
        force otherwise; ``True``: the closed form, :class:`RFError` when the head is not
        affine; ``False``: brute force.
      devices: local devices the brute-force ablations are sharded over (default: all;
        :mod:`rfjax.sharding`).
      Other arguments as in :func:`rfjax.class_activation_maps`.
    """
    if closed_form not in (None, True, False):
        raise RFError(f"closed_form={closed_form!r} must be None (automatic), True or False.")
    p = _Prepared(model, images, layer, logits, params, classes, top_k, placement, rf)
    y_c = np.take_along_axis(p.y, p.cls, axis=1)  # (N, k)
    drops = None
    if closed_form is not False:
        out = jax.device_get(
            _drops_program(p.s.fn, p.s.with_params, p.s.layer_index, p.s.logits_index)(
                p.s.params, jnp.asarray(p.s.x), jnp.asarray(p.a), jnp.asarray(p.cls)
            )
        )
        affine = (
            max(float(out["nonaffine"]), 0.0) <= HEAD_TOL * float(out["scale"])
            and float(out["path"]) <= HEAD_TOL
        )
        if affine:
            drops = np.asarray(out["drops"], np.float64)
        elif closed_form:
            raise RFError(
                f"the logits are not affine in layer {layer!r} (no GAP + dense head after it), so Ablation-CAM has no "
                "closed form there; pass closed_form=None to ablate channel by channel."
            )
    if drops is None:
        ablated = batched.perturbed_scores(
            _ablator(p.s.layer_index),
            p.s,
            (p.a,),
            p.cls,
            np.arange(p.a.shape[-1]),
            score="logit",
            max_memory=max_memory,
            what="one ablated channel",
            fix="pass fewer images or explain a layer with fewer channels",
            devices=devices,
        )  # (K, N, k)
        drops = y_c[..., None] - np.moveaxis(ablated, 0, -1).astype(np.float64)
    safe = np.where(y_c == 0, np.finfo(np.float32).tiny, y_c)[..., None]
    return p.result(p.a, drops / safe, "ablation_cam")


# --------------------------------------------------------------------------- augmentation smoothing

#: Default shifts ``(dy, dx)`` in pixels of :func:`augmentation_smoothing`.
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (4, 0), (-4, 0), (0, 4), (0, -4))

_PERTURBATION_METHODS: dict[str, Callable[..., CAMResult]] = {
    "score_cam": score_cam,
    "faster_score_cam": faster_score_cam,
    "ablation_cam": ablation_cam,
}


def shift_images(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x (N, H, W, C)`` moved down by ``dy`` and right by ``dx`` pixels (edge pixels
    repeated into the uncovered border): ``out[:, i, j] = x[:, i - dy, j - dx]``."""
    _n, h, w, _ = x.shape
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return x[:, rows][:, :, cols]


def _undo(maps: np.ndarray, dy: int, dx: int, flipped: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(maps, valid)`` of maps ``(..., h, w)`` of shifted (after an optional flip) images
    taken back to the original frame, ``dy`` and ``dx`` in rows and columns of the maps;
    ``valid (h, w)`` marks the cells the shifted image saw."""
    h, w = maps.shape[-2:]
    rows, cols = np.arange(h) + dy, np.arange(w) + dx
    ok = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    back = maps[..., np.clip(rows, 0, h - 1), :][..., np.clip(cols, 0, w - 1)]
    if flipped:
        back, ok = back[..., ::-1], ok[:, ::-1]
    return back * ok, ok.astype(np.float32)


class _Augmentation(NamedTuple):
    """A horizontal flip (first) and a shift ``(dy, dx)`` in pixels (then)."""

    flip: bool
    dy: int
    dx: int


_IDENTITY = _Augmentation(False, 0, 0)


def _in_cells(aug: _Augmentation, r: CAMResult) -> tuple[int, int] | None:
    """The shift of ``aug`` in feature cells, ``None`` when it cannot be undone exactly at
    feature resolution: a shift that is not a whole number of strides, or a flip whose
    mirror image of the cell centres ``offset + i * stride`` is not the centres themselves
    (``2 offset + (w - 1) stride != W``)."""
    w, fw = r.input_shape.w, r.maps.shape[-1]
    cells = []
    for d, stride in ((aug.dy, r.stride.h), (aug.dx, r.stride.w)):
        m = d / stride
        if abs(m - round(m)) > 1e-6:
            return None
        cells.append(round(m))
    if aug.flip and abs(2 * r.offset.w + (fw - 1) * r.stride.w - w) > 1e-6 * w:
        return None
    return cells[0], cells[1]


def augmentation_smoothing(
    model: Any,
    images: Any,
    *,
    method: str = "grad_cam",
    flip: bool = True,
    shifts: Sequence[tuple[int, int]] = SHIFTS,
    classes: Any = None,
    top_k: int = 1,
    **kwargs: Any,
) -> CAMResult:
    """Test-time augmentation smoothing: ``method``'s results averaged over horizontally
    flipped (``flip``) and shifted copies of the images, each copy's maps undone first.

    A shift ``(dy, dx)`` moves the image down/right by that many pixels (edge pixels fill
    the border) after the optional flip; its maps are moved back and unflipped, and each
    pixel (cell) averages only the copies that saw it. The classes are those of the
    original images (``classes`` or their ``top_k``) for every copy. The copies other than
    the original images run as one batch of ``method`` (``"score_cam"``,
    ``"faster_score_cam"``, ``"ablation_cam"`` or a method of
    :func:`rfjax.class_activation_maps`); keyword arguments (``layer``, ``placement``,
    ``max_memory``, ``devices``, ...) go to it.

    Returns:
      The :class:`CAMResult` of the original images with ``method`` ``"<method>+tta"`` and

      * ``upsampled``: the mean over every copy of its placed maps, undone pixel by pixel;
      * ``probabilities``: the mean over every copy of its softmax at the classes (the
        test-time-augmented class probability);
      * ``maps``: the mean over the copies whose augmentation is undone exactly at feature
        resolution, undone cell by cell: shifts by whole multiples of the placement's
        ``stride``, and flips only where the cell centres are mirror-symmetric
        (``2 offset + (w - 1) stride == W``, e.g. every ``placement="resize"``); other
        shifts move the map by a fraction of a cell, which only the placed maps can undo.
        When no copy is exact, the original images' maps. Input methods (saliency, ...)
        have stride 1, so every copy counts and ``maps`` equals ``upsampled``.

      ``classes``, ``placement``, ``offset``, ``stride``, ``rf`` and the shapes are the
      original images' (the same for every copy).
    """
    run = _PERTURBATION_METHODS.get(method) or functools.partial(class_activation_maps, method=method)
    moves = [(int(dy), int(dx)) for dy, dx in np.asarray(shifts, dtype=int).reshape(-1, 2)]
    if not moves:
        raise RFError("shifts is empty; pass at least one (dy, dx) shift, e.g. shifts=[(0, 0)].")
    x = check_images(images)
    h, w = x.shape[1:3]
    if any(abs(dy) >= h or abs(dx) >= w for dy, dx in moves):
        raise RFError(
            f"shifts {moves} move images of size {(h, w)} out of view; pass shifts smaller than the image."
        )
    base = run(model, images, classes=classes, top_k=top_k, **kwargs)
    augs = [_Augmentation(f, dy, dx) for f in ((False, True) if flip else (False,)) for dy, dx in moves]
    others = [a for a in augs if a != _IDENTITY]
    results = {_IDENTITY: base}
    if others:
        copies = np.concatenate([shift_images(x[:, :, ::-1] if a.flip else x, a.dy, a.dx) for a in others])
        every = run(model, copies, classes=np.tile(base.classes, (len(others), 1)), **kwargs)
        n = len(x)
        for i, a in enumerate(others):
            rows = slice(i * n, (i + 1) * n)
            results[a] = dataclasses.replace(
                every,
                maps=every.maps[rows],
                upsampled=every.upsampled[rows],
                probabilities=every.probabilities[rows],
            )
    up, up_count = np.zeros_like(base.upsampled), np.zeros((h, w), np.float32)
    maps, maps_count = np.zeros_like(base.maps), np.zeros(base.maps.shape[-2:], np.float32)
    exact = 0
    for a in augs:
        r = results[a]
        back, seen = _undo(r.upsampled, a.dy, a.dx, a.flip)
        up, up_count = up + back, up_count + seen
        cells = _in_cells(a, base)
        if cells is not None:
            back, seen = _undo(r.maps, *cells, a.flip)
            maps, maps_count, exact = maps + back, maps_count + seen, exact + 1
    probabilities = np.mean([results[a].probabilities for a in augs], axis=0).astype(np.float32)
    return dataclasses.replace(
        base,
        maps=maps / np.maximum(maps_count, 1.0) if exact else base.maps,
        upsampled=up / np.maximum(up_count, 1.0),
        probabilities=probabilities,
        method=f"{base.method}+tta",
    )


on_clear(_drops_program.cache_clear)
on_clear(_ablator.cache_clear)
