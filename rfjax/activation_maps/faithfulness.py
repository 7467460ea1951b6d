"""Faithfulness metrics of class activation maps: does the model's score follow the map?

* Average Drop and Increase in Confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018):
  ``Y`` the class score of the image, ``O`` that of the image times its map ``E``
  (min-max normalised to ``[0, 1]`` per image as pytorch-grad-cam's ``scale_cam_image``:
  ``(m - min) / (max(m - min) + 1e-7)``); Average Drop ``= 100 * mean(max(0, Y - O) / Y)``,
  Increase ``= 100 * mean(Y < O)``.
* Deletion and Insertion (Petsiuk et al., "RISE", BMVC 2018): the pixels are ranked by the
  map (largest first; ties in row-major order, a stable sort) and ``ceil(H W / steps)`` of
  them change per step, ``steps + 1`` points from 0 to all pixels. Deletion replaces them by
  the substrate ``baseline`` (0, RISE's black image); insertion starts from RISE's blurred
  image (an 11 x 11 kernel ``scipy.ndimage.gaussian_filter`` of a unit impulse with sigma 5,
  convolved with zero padding) and puts the original pixels back. The AUC is the trapezoid
  rule over the fraction of pixels, ``(sum(s) - s[0] / 2 - s[-1] / 2) / steps``.
* ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", ICML 2022), as pytorch-grad-cam 1.5 computes it: for each percentile ``p`` of
  ``percentiles`` (10, ..., 90), MoRF removes the pixels where ``E >= percentile(E, p)`` and
  LeRF those where ``1 - E >= percentile(1 - E, p)``; removed pixels are filled by noisy
  linear imputation: each removed pixel is the weighted mean of its in-image 8 neighbours
  (weights 1/6 for edge neighbours, 1/12 for corner ones), solved jointly (conjugate
  gradients here, a sparse direct solve there), plus ``noise`` (0.01) times standard normal
  noise. The metric is the change of the class score, ``after - before``, averaged over the
  percentiles; ``(LeRF - MoRF) / 2`` is ROADCombined.

Every perturbed image is a batch axis of one compiled program per metric, in equal chunks
under ``max_memory``, each chunk sharded over the local devices
(:mod:`rfjax.activation_maps.batched`). Scores are softmax probabilities
(``score="probability"``, the papers') or logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rfjax.activation_maps import batched
from rfjax.activation_maps.result import CAMResult
from rfjax.errors import RFError

#: ROAD percentiles of pytorch-grad-cam's ``ROADMostRelevantFirstAverage``.
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
#: ROAD's 8-neighbour weights ``((dy, dx), w)`` (Rong et al.; pytorch-grad-cam).
NEIGHBOURS = tuple(
    ((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx
)
#: RISE's blur: kernel size and sigma.
BLUR_SIZE, BLUR_SIGMA = 11, 5.0


class MetricsSummary(NamedTuple):
    """Means over the images (Average Drop and Increase in percent)."""

    average_drop: float
    increase: float
    deletion_auc: float
    insertion_auc: float
    road_morf: float
    road_lerf: float
    road_combined: float


@dataclasses.dataclass(frozen=True)
class CAMMetrics:
    """Faithfulness of one map per image (``N`` images).

    Attributes:
      classes: ``(N,)`` the explained class of each image.
      score: ``(N,)`` its score on the image (softmax probability or logit, see ``score_kind``).
      average_drop: ``(N,)`` ``100 * max(0, Y - O) / Y`` per image.
      increase: ``(N,)`` bool, ``Y < O``.
      deletion_auc, insertion_auc: ``(N,)`` areas under the curves below.
      deletion, insertion: ``(N, steps + 1)`` scores after each step.
      fractions: ``(steps + 1,)`` fraction of pixels deleted / inserted at each step.
      road_morf, road_lerf: ``(N,)`` mean score change over ``percentiles``.
      percentiles: the ROAD percentiles.
      score_kind: ``"probability"`` or ``"logit"``.
    """

    classes: np.ndarray
    score: np.ndarray
    average_drop: np.ndarray
    increase: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    fractions: np.ndarray
    road_morf: np.ndarray
    road_lerf: np.ndarray
    percentiles: tuple[float, ...]
    score_kind: str

    @property
    def road_combined(self) -> np.ndarray:
        """``(N,)`` ``(LeRF - MoRF) / 2`` (pytorch-grad-cam's ``ROADCombined``)."""
        return (self.road_lerf - self.road_morf) / 2

    def mean(self) -> MetricsSummary:
        """The means over the images (Average Drop and Increase as percentages)."""
        return MetricsSummary(
            float(self.average_drop.mean()),
            float(100 * self.increase.mean()),
            float(self.deletion_auc.mean()),
            float(self.insertion_auc.mean()),
            float(self.road_morf.mean()),
            float(self.road_lerf.mean()),
            float(self.road_combined.mean()),
        )


def normalise(maps: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` maps scaled to ``[0, 1]`` per image: ``(m - min) / (max(m - min) + 1e-7)``."""
    m = maps - maps.min(axis=(1, 2), keepdims=True)
    return (m / (m.max(axis=(1, 2), keepdims=True) + 1e-7)).astype(np.float32)


def rise_blur(x: np.ndarray) -> np.ndarray:
    """RISE's insertion start: ``x (N, H, W, C)`` convolved per channel with the 11 x 11
    ``gaussian_filter(impulse, 5)`` kernel, zero padding."""
    from scipy import ndimage

    impulse = np.zeros((BLUR_SIZE, BLUR_SIZE))
    impulse[BLUR_SIZE // 2, BLUR_SIZE // 2] = 1
    kern = ndimage.gaussian_filter(impulse, BLUR_SIGMA)
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[3]):
            out[n, :, :, c] = ndimage.correlate(x[n, :, :, c].astype(np.float64), kern, mode="constant")
    return out


def _scaled(fn: Callable, with_params: bool, params: Any, x: jax.Array, aux: Any, t: jax.Array) -> list:
    (e,) = aux
    xs = x * e[..., None]
    return jax.tree_util.tree_leaves(fn(params, xs) if with_params else fn(xs))


def _reveal(fn: Callable, with_params: bool, params: Any, x: jax.Array, aux: Any, t: jax.Array) -> list:
    """Step ``t % (steps + 1)`` of curve ``t // (steps + 1)``: the pixels ranked below
    ``step * per_step`` come from ``finish``, the others from ``start``."""
    starts, finishes, rank, per_step, points = aux
    curve, step = t // points, t % points
    xs = jnp.where((rank < step * per_step)[..., None], finishes[curve], starts[curve])
    return jax.tree_util.tree_leaves(fn(params, xs) if with_params else fn(xs))


def impute(x: jax.Array, keep: jax.Array, noise: float, key: jax.Array) -> jax.Array:
    """ROAD's noisy linear imputation of ``x (N, H, W, C)`` where ``keep (N, H, W)`` is 0:
    every removed pixel becomes the weighted mean of its in-image neighbours
    (:data:`NEIGHBOURS`), the system solved by Jacobi-preconditioned conjugate gradients,
    at most ``5 * max(H, W)`` iterations (the condition number of a hole's neighbour system
    grows like its width squared, so CG needs about that many; measured on 64x64 images
    with a 60x60 hole, 90 % removed in one piece, and scattered kept pixels, the error
    against a sparse direct solve stops falling at ``5 * 64`` iterations, at float32's
    floor, while ``tol=1e-7`` is below what float32 residuals reach, so ``20 * max(H, W)``
    only ran 4x longer for nothing),
    plus ``noise`` times standard normal noise."""
    hole = (1.0 - keep)[..., None]
    ones = jnp.ones(x.shape[1:3])

    def spread(z: jax.Array) -> jax.Array:
        """``sum_j w_ij z_j`` over the in-image neighbours ``j`` of every pixel ``i``."""
        pad = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h, w = z.shape[1:3]
        out = jnp.zeros_like(z)
        for (dy, dx), wt in NEIGHBOURS:
            out = out + wt * pad[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        return out

    degree = spread(jnp.broadcast_to(ones[None, ..., None], x.shape[:3] + (1,)))  # in-image weights
    rhs = hole * spread(x * (1.0 - hole))

    def matvec(u: jax.Array) -> jax.Array:
        return hole * (degree * u - spread(hole * u)) + (1.0 - hole) * u

    u, _ = jax.scipy.sparse.linalg.cg(
        matvec,
        rhs,
        x0=hole * x.mean(axis=(1, 2), keepdims=True),
        tol=1e-7,
        maxiter=5 * max(x.shape[1:3]),
        M=lambda r: r / jnp.where(hole > 0, degree, 1.0),
    )
    filled = u + noise * jax.random.normal(key, x.shape, x.dtype)
    return jnp.where(hole > 0, filled, x)


def _road(fn: Callable, with_params: bool, params: Any, x: jax.Array, aux: Any, t: jax.Array) -> list:
    """ROAD step ``t``: remove where ``value[lerf[t]] >= thresholds[t]``, impute, score."""
    values, thresholds, lerf, noise, key = aux
    keep = (values[lerf[t]] < thresholds[t][:, None, None]).astype(x.dtype)
    xs = impute(x, keep, noise, jax.random.fold_in(key, t))
    return jax.tree_util.tree_leaves(fn(params, xs) if with_params else fn(xs))


def _check(result: Any, s: batched.Setup, which: int, steps: int, percentiles: Sequence[float]) -> None:
    if not isinstance(result, CAMResult):
        raise RFError(f"result must be a CAMResult (from rfjax.grad_cam, ...), not {type(result).__name__}.")
    n, k, h, w = result.upsampled.shape
    if (n, h, w) != s.x.shape[:3]:
        raise RFError(
            f"result holds maps of {n} images of {(h, w)} but images is {s.x.shape[:3]}; pass the images it explains."
        )
    if isinstance(which, bool) or not isinstance(which, int | np.integer) or not 0 <= which < k:
        raise RFError(f"which={which!r} must be a class column of result, 0 <= which < {k}.")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or not 1 <= steps <= h * w:
        raise RFError(f"steps={steps!r} must be an integer between 1 and the {h * w} pixels.")
    p = np.asarray(percentiles, np.float64)
    if p.ndim != 1 or p.size < 1 or not ((p > 0) & (p < 100)).all():
        raise RFError(f"percentiles={percentiles!r} must be numbers strictly between 0 and 100.")


def cam_metrics(
    model: Any,
    images: Any,
    result: CAMResult,
    *,
    logits: str | int | None = None,
    params: Any = None,
    which: int = 0,
    steps: int = 32,
    baseline: float = 0.0,
    percentiles: Sequence[float] = PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    score: str = "probability",
    max_memory: int | None = None,
    devices: int | None = None,
) -> CAMMetrics:
    """Average Drop / Increase, Deletion / Insertion AUC and ROAD of ``result``'s maps.

    Args:
      model, logits, params: the model as in :func:`rfjax.class_activation_maps` (only the
        ``logits`` output is used).
      images: the ``(N, H, W, C)`` images ``result`` explains.
      result: a :class:`CAMResult`; its placed maps ``upsampled[:, which]`` and classes
        ``classes[:, which]`` are measured.
      steps: deletion / insertion steps (``ceil(H W / steps)`` pixels each).
      baseline: the deletion substrate's pixel value.
      percentiles, noise, seed: ROAD's percentiles, imputation noise and random seed.
      score: ``"probability"`` (softmax) or ``"logit"``.
      max_memory: bytes one compiled call may take (equal chunks of the perturbed images).
      devices: local devices the perturbed images are sharded over (default: all;
        :mod:`rfjax.sharding`).

    Returns:
      A :class:`CAMMetrics` (per image; ``.mean()`` for the summary).
    """
    batched.check_score(score)
    s = batched.setup(model, images, None, logits, params, need_layer=False)
    _check(result, s, which, steps, percentiles)
    cls = np.ascontiguousarray(result.classes[:, which : which + 1], np.int32)
    emap = normalise(np.asarray(result.upsampled[:, which], np.float32))
    n, h, w = emap.shape
    run = lambda ev, aux, ts, what: batched.perturbed_scores(
        ev,
        s,
        aux,
        cls,
        ts,
        score=score,
        max_memory=max_memory,
        what=what,
        fix="pass fewer or smaller images",
        devices=devices,
    )[..., 0]
    base = run(_scaled, (np.ones_like(emap),), np.zeros(1, np.int32), "one image")[0]
    scaled = run(_scaled, (emap,), np.zeros(1, np.int32), "one image")[0]
    rank = np.argsort(np.argsort(-emap.reshape(n, -1), axis=1, kind="stable"), axis=1).reshape(n, h, w)
    per_step = -(-h * w // steps)
    x = s.x
    starts = np.stack([x, rise_blur(x)])
    finishes = np.stack([np.full_like(x, baseline), x])
    curves = run(
        _reveal,
        (starts, finishes, rank.astype(np.int32), per_step, steps + 1),
        np.arange(2 * (steps + 1)),
        "one step",
    )
    deletion, insertion = curves[: steps + 1].T, curves[steps + 1 :].T
    road = _road_scores(run, emap, base, percentiles, noise, seed)
    auc = lambda c: (c.sum(axis=1) - c[:, 0] / 2 - c[:, -1] / 2) / steps
    return CAMMetrics(
        classes=cls[:, 0],
        score=base,
        average_drop=100 * np.maximum(base - scaled, 0) / base,
        increase=base < scaled,
        deletion_auc=auc(deletion),
        insertion_auc=auc(insertion),
        deletion=deletion,
        insertion=insertion,
        fractions=np.minimum(np.arange(steps + 1) * per_step, h * w) / (h * w),
        road_morf=road[0],
        road_lerf=road[1],
        percentiles=tuple(float(p) for p in percentiles),
        score_kind=score,
    )


def _road_scores(
    run: Callable, emap: np.ndarray, before: np.ndarray, percentiles: Sequence[float], noise: float, seed: int
) -> np.ndarray:
    """``(2, N)`` mean ROAD score change, MoRF then LeRF."""
    values = np.stack([emap, 1 - emap])
    p = list(percentiles)
    thresholds = np.array(
        [[np.percentile(v, q) for v in values[lerf]] for lerf in (0, 1) for q in p], np.float32
    )
    lerf = np.repeat([0, 1], len(p)).astype(np.int32)
    aux = (values, thresholds, lerf, np.float32(noise), jax.random.PRNGKey(seed))
    after = run(_road, aux, np.arange(2 * len(p)), "one imputed image")  # (2P, N)
    return (after - before).reshape(2, len(p), -1).mean(axis=1)
