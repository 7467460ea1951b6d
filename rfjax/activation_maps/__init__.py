"""Class activation maps: CAM, Grad-CAM and variants on one pipeline, placed by receptive field.

Modules: :mod:`~rfjax.activation_maps.methods` (the registry of methods), :mod:`~rfjax.activation_maps.pipeline`
(the one compiled program), :mod:`~rfjax.activation_maps.sampling` (its class, path and
noise axes), :mod:`~rfjax.activation_maps.tap` (gradients at any layer of any JAX
function), :mod:`~rfjax.activation_maps.placement` (RF-aware placement), :mod:`~rfjax.activation_maps.metrics`
(boxes, IoU, pointing game), :mod:`~rfjax.activation_maps.inputs` (argument checks),
:mod:`~rfjax.activation_maps.layers` (the feature layer and logits of a converted model, by
name or the adapter's pick).

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
* HiResCAM, XGrad-CAM, Eigen-CAM, Eigen-Grad-CAM (see :mod:`~rfjax.activation_maps.methods`).
* Input gradients: saliency (Simonyan et al. 2014), Integrated Gradients (Sundararajan et
  al. 2017); SmoothGrad (Smilkov et al. 2017) over any method (``smooth=n``).
* Score-CAM, Faster-Score-CAM, Ablation-CAM and test-time augmentation smoothing
  (:mod:`~rfjax.activation_maps.perturb`): perturbed copies as a batch axis of one program.
* Faithfulness metrics (:mod:`~rfjax.activation_maps.faithfulness`): Average Drop / Increase,
  Deletion / Insertion AUC, ROAD, via :func:`cam_metrics`.
"""

from typing import Any

from rfjax.activation_maps.faithfulness import CAMMetrics, MetricsSummary, cam_metrics
from rfjax.activation_maps.methods import HEAD_TOL, Variant, methods, variant
from rfjax.activation_maps.metrics import box_iou, cam_box, pointing_game
from rfjax.activation_maps.perturb import ablation_cam, augmentation_smoothing, faster_score_cam, score_cam
from rfjax.activation_maps.pipeline import (
    cam,
    class_activation_maps,
    eigen_cam,
    eigen_grad_cam,
    grad_cam,
    grad_cam_plus_plus,
    hires_cam,
    integrated_gradients,
    layer_cam,
    saliency,
    smoothgrad,
    xgrad_cam,
)
from rfjax.activation_maps.placement import place
from rfjax.activation_maps.result import CAMResult


def keras_cam_layers(model: Any) -> tuple[str, str]:
    """Names of the CAM feature layer and classifier of a Keras model with a GAP + dense
    head (see :func:`converters.keras_cam_layers`, where Keras introspection lives)."""
    import converters

    return converters.keras_cam_layers(model)


__all__ = [
    "HEAD_TOL",
    "CAMMetrics",
    "CAMResult",
    "MetricsSummary",
    "Variant",
    "ablation_cam",
    "augmentation_smoothing",
    "box_iou",
    "cam",
    "cam_box",
    "cam_metrics",
    "class_activation_maps",
    "eigen_cam",
    "eigen_grad_cam",
    "faster_score_cam",
    "grad_cam",
    "grad_cam_plus_plus",
    "hires_cam",
    "integrated_gradients",
    "keras_cam_layers",
    "layer_cam",
    "methods",
    "place",
    "pointing_game",
    "saliency",
    "score_cam",
    "smoothgrad",
    "variant",
    "xgrad_cam",
]
