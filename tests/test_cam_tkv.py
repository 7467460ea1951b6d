"""Grad-CAM, Grad-CAM++, Layer-CAM, Score-CAM, Faster-Score-CAM, saliency and SmoothGrad
against tf-keras-vis 0.8.7 (``tf-keras-vis``, in the ``test`` extra) on the same
random-weight Keras classifier and the same targets.

tf-keras-vis is called with ``expand_cam=False, normalize_cam=False`` (``normalize_map=False``
for saliency), so the maps are compared at feature resolution before any scaling; its
constants, read in its source (``gradcam.py``, ``gradcam_plus_plus.py``, ``layercam.py``,
``scorecam.py``, ``saliency.py``, ``utils/__init__.py``), and how rfjax meets them:

* targets: ``CategoricalScore([c_0, c_1])``, one class per image, on the model's output; the
  classifier here ends in a linear Dense, so no ``ReplaceToLinear`` is needed and both libraries
  differentiate the same logits.
* Grad-CAM: ``relu(sum_k mean_ij(G_k) A_k)``, Layer-CAM: ``relu(sum_k relu(G_k) A_k)``: the same
  formulas as ``grad_cam`` and ``layer_cam``.
* Grad-CAM++: alphas ``G**2 / (2 G**2 + sum_ij(A) G**3)`` (``+1`` where ``G**2 == 0``), divided by
  their spatial sum per channel, and the derivatives carry the paper's ``exp(y_c)``: that is
  ``method="grad_cam_plus_plus_normalised"`` times ``exp(y_c)`` (a stated constant per map).
  rfjax's ``grad_cam_plus_plus`` (pytorch-grad-cam's form, no normalisation) is another map.
* Score-CAM: masks ``scipy.ndimage.zoom(order=1)`` of each channel (corners aligned:
  ``masks="corners"``), normalised ``(u - min) / (max - min + 1e-7)`` (``K.epsilon()``; rfjax's
  ``MASK_EPS`` is 1e-8, a difference of ``9e-8 / (max - min)`` relative in each mask),
  weights = softmax probability of the class on the masked image (``weighting="probability"``),
  masked images predicted with ``batch_size=32`` (any batch size gives the same scores).
  Faster-Score-CAM ``max_N``: channels ranked by spatial standard deviation, and the union of
  every image's ``max_N`` channels over the batch; rfjax takes each image's own ``channels``
  (the same set when tf-keras-vis is called one image at a time, as here).
* ``expand_cam=True``: ``scipy.ndimage.zoom(cam, (1, H / h, W / w), order=1)``, corners aligned:
  rfjax's placement with ``offset = 0.5`` and ``stride = (H - 1) / (h - 1)``; its
  ``normalize_cam=True`` is ``(m - min) / (max - min + 1e-7)`` per image. (rfjax's own
  ``placement="resize"`` puts cell centres at ``(i + 0.5) H / h``, half-pixel centres.)
* Saliency: ``max_c |G_c|``; SmoothGrad ``smooth_samples=n, smooth_noise=0.2``: noise of std
  ``0.2 * (max - min)`` of each image, ``|G|`` averaged over the copies, then the channel
  maximum. Its noise is ``np.random.normal``; here it is handed the standard normal draws
  rfjax uses (``key`` split per image), so both average the same noisy copies.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import converters
import rfjax
from rfjax.activation_maps import perturb
from rfjax.activation_maps.placement import place

keras = pytest.importorskip("keras")
tkv = pytest.importorskip("tf_keras_vis")

from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.scores import CategoricalScore

CLASSES = [1, 3]
SIZE = 20
#: tf-keras-vis' epsilon (``K.epsilon()``) in its normalisations
KERAS_EPSILON = 1e-7


@pytest.fixture(scope="module")
def net():
    """conv -> pool -> conv 'feat' (7 x 7 x 8) -> conv -> flatten -> dense 'logits': a head whose
    gradient varies over space and with the features (Grad-CAM++'s alphas differ per cell)."""
    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((SIZE, SIZE, 3))
    h = L.MaxPooling2D(2, name="pool")(L.Conv2D(6, 3, activation="relu", name="c1")(inp))
    f = L.Conv2D(8, 3, activation="relu", name="feat")(h)
    g = L.Conv2D(5, 3, activation="relu", name="c3")(f)
    return keras.Model(inp, L.Dense(4, name="logits")(L.Flatten()(g)))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def model(net):
    return converters.from_keras(net, outputs=["feat", "logits"])


def _theirs(cls, net, images, **kw):
    kw = {"penultimate_layer": "feat", "seek_penultimate_conv_layer": False, **kw}
    return np.asarray(cls(net, clone=False)(CategoricalScore(CLASSES), images, **kw), np.float64)


def _rel(ours, theirs):
    """Largest difference relative to the reference's largest magnitude."""
    assert np.abs(theirs).max() > 0 and (np.asarray(theirs) > 0).any(axis=(-2, -1)).all()
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize(("method", "cls"), [("grad_cam", Gradcam), ("layer_cam", Layercam)])
def test_gradient_maps_equal_tf_keras_vis_before_scaling(net, model, images, method, cls):
    r = rfjax.class_activation_maps(
        model, images, method=method, layer="feat", logits="logits", classes=[[c] for c in CLASSES]
    )
    want = _theirs(cls, net, images, expand_cam=False, normalize_cam=False)
    assert want.shape == (2, 7, 7) and r.maps.shape == (2, 1, 7, 7)
    assert _rel(r.maps[:, 0], want) < 1e-4


def test_grad_cam_plus_plus_is_the_normalised_alphas_variant_times_exp_logit(net, model, images):
    kw = {"layer": "feat", "logits": "logits", "classes": [[c] for c in CLASSES]}
    r = rfjax.class_activation_maps(model, images, method="grad_cam_plus_plus_normalised", **kw)
    want = _theirs(GradcamPlusPlus, net, images, expand_cam=False, normalize_cam=False)
    logits = np.asarray(net.predict(images, verbose=0), np.float64)  # Keras' own class scores
    scale = np.exp(logits[np.arange(2), CLASSES])[:, None, None]
    assert _rel(r.maps[:, 0] * scale, want) < 1e-4
    # without the normalisation (pytorch-grad-cam's form) the channels weigh differently:
    # no single factor per image maps one on the other
    plain = rfjax.class_activation_maps(model, images, method="grad_cam_plus_plus", **kw).maps[:, 0]
    for n in range(2):
        best = (plain[n] * want[n]).sum() / (plain[n] ** 2).sum()
        assert np.abs(best * plain[n] - want[n]).max() > 0.01 * want[n].max()


def test_expanded_and_normalised_maps_are_a_corner_aligned_placement(net, model, images):
    r = rfjax.grad_cam(model, images, layer="feat", logits="logits", classes=[[c] for c in CLASSES])
    corners = place(r.maps[:, 0], (SIZE, SIZE), (0.5, 0.5), ((SIZE - 1) / 6, (SIZE - 1) / 6))
    expanded = _theirs(Gradcam, net, images, normalize_cam=False)
    assert expanded.shape == (2, SIZE, SIZE)
    assert _rel(corners, expanded) < 1e-4
    lo = corners.min(axis=(1, 2), keepdims=True)
    normalised = (corners - lo) / (corners.max(axis=(1, 2), keepdims=True) - lo + KERAS_EPSILON)
    assert np.abs(normalised - _theirs(Gradcam, net, images)).max() < 1e-4
    # rfjax's half-pixel resize is another grid: it differs from tf-keras-vis' expansion
    resized = rfjax.grad_cam(
        model, images, layer="feat", logits="logits", classes=[[1], [3]], placement="resize"
    )
    assert _rel(resized.upsampled[:, 0], expanded) > 1e-2


def test_score_cam_equals_tf_keras_vis_with_probability_weights_and_corner_masks(net, model, images):
    r = rfjax.score_cam(
        model,
        images,
        layer="feat",
        logits="logits",
        classes=[[c] for c in CLASSES],
        masks="corners",
        weighting="probability",
    )
    want = _theirs(Scorecam, net, images, expand_cam=False, normalize_cam=False)
    # the mask epsilons differ by 9e-8 / (max - min) relative: far below the tolerance here
    assert perturb.MASK_EPS == 1e-8
    assert _rel(r.maps[:, 0], want) < 1e-4


def test_faster_score_cam_equals_tf_keras_vis_max_n_one_image_at_a_time(net, model, images):
    r = rfjax.faster_score_cam(
        model,
        images,
        channels=3,
        layer="feat",
        logits="logits",
        classes=[[c] for c in CLASSES],
        masks="corners",
        weighting="probability",
    )
    for n, c in enumerate(CLASSES):
        want = Scorecam(net, clone=False)(
            CategoricalScore([c]),
            images[n : n + 1],
            penultimate_layer="feat",
            seek_penultimate_conv_layer=False,
            max_N=3,
            expand_cam=False,
            normalize_cam=False,
        )
        assert _rel(r.maps[n, 0], np.asarray(want, np.float64)[0]) < 1e-4
    full = rfjax.score_cam(
        model, images, layer="feat", logits="logits", classes=[[c] for c in CLASSES], masks="corners"
    )
    assert np.abs(full.maps - r.maps).max() > 1e-3 * full.maps.max()  # 3 of 8 channels: another map


def test_saliency_equals_tf_keras_vis(net, model, images):
    # layer= only names the outputs the converted model returns (saliency explains the input)
    r = rfjax.saliency(model, images, layer="feat", logits="logits", classes=[[c] for c in CLASSES])
    want = np.asarray(Saliency(net, clone=False)(CategoricalScore(CLASSES), images, normalize_map=False))
    assert want.shape == (2, SIZE, SIZE)
    assert _rel(r.maps[:, 0], want) < 1e-4


def test_smoothgrad_equals_tf_keras_vis_on_the_same_noise(net, model, images, monkeypatch):
    samples, noise, key = 4, 0.2, 7
    r = rfjax.smoothgrad(
        model,
        images,
        samples=samples,
        noise=noise,
        key=key,
        layer="feat",
        logits="logits",
        classes=[[c] for c in CLASSES],
    )
    # rfjax's draws: one key per image, (samples, H, W, C) standard normals each
    keys = jax.random.split(jax.random.PRNGKey(key), len(images))
    eps = np.stack([np.asarray(jax.random.normal(k, (samples, SIZE, SIZE, 3))) for k in keys], axis=1)
    asked = []

    def normal(loc, scale, size):  # tf-keras-vis: X + np.random.normal(0, sigma (S, N, 1, 1, 1), X.shape)
        asked.append((loc, tuple(size)))
        return (loc + np.asarray(scale) * eps).astype(np.float32)

    monkeypatch.setattr(np.random, "normal", normal)
    want = Saliency(net, clone=False)(
        CategoricalScore(CLASSES), images, smooth_samples=samples, smooth_noise=noise, normalize_map=False
    )
    assert asked == [(0.0, (samples, 2, SIZE, SIZE, 3))]
    assert _rel(r.maps[:, 0], np.asarray(want)) < 1e-4
