"""CAM methods: each is one small function ``(A, G) -> map`` in a registry.

``A`` is the explained layer's feature map and ``G`` the gradient of the explained class
score with respect to it, both ``(N, h, w, K)``; a method returns ``(N, h, w)``. The
pipeline (:mod:`rfjax.activation_maps.pipeline`) computes ``A`` and ``G`` once for every method.

* CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016).
* Grad-CAM (Selvaraju et al., ICCV 2017).
* Grad-CAM++ (Chattopadhay et al., WACV 2018), and the variant with normalised alphas of
  tf-keras-vis.
* Layer-CAM (Jiang et al., TIP 2021).
* HiResCAM (Draelos & Carin 2020), XGrad-CAM (Fu et al., BMVC 2020), Eigen-CAM (Muhammad &
  Yeasin, IJCNN 2020) and Eigen-Grad-CAM.
* Input-gradient methods, where ``A`` is the image and ``G`` the gradient with respect to it
  (see :data:`INPUT_METHODS`): saliency (Simonyan et al., 2014) and Integrated Gradients
  (Sundararajan et al., ICML 2017, ``G`` averaged along the path by the pipeline).

Every method but CAM ends in a ReLU, as pytorch-grad-cam does (``np.maximum(cam, 0)`` in its
``BaseCAM``); integrated gradients keep their sign (they must sum to ``f(x) - f(0)``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rfjax.errors import RFError

#: ``(A (N, h, w, K), G (N, h, w, K)) -> map (N, h, w)``: how one CAM method weighs features.
Variant = Callable[[jax.Array, jax.Array], jax.Array]
_VARIANTS: dict[str, Variant] = {}

#: Methods explaining the input itself (``A`` = the image, ``G`` = ``d y_c / d x``):
#: the pipeline's ``layer`` argument does not apply to them.
INPUT_METHODS = frozenset({"saliency", "integrated_gradients"})

#: Relative tolerance of the GAP + dense check in :func:`cam`.
HEAD_TOL = 1e-3


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


def method(name: str) -> Variant:
    """The registered method ``name``; :class:`RFError` listing the registered ones."""
    if name not in _VARIANTS:
        raise RFError(f"method={name!r} is not a registered CAM method; pass one of {sorted(_VARIANTS)}.")
    return _VARIANTS[name]


def unregister(name: str) -> None:
    """Remove the method ``name`` from the registry (for temporary methods)."""
    _VARIANTS.pop(name, None)


def methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_VARIANTS)


@variant("cam")
def _cam(a: jax.Array, g: jax.Array) -> jax.Array:
    # For GAP + dense, d y_c / d A_ijk = W[k, c] / (h w) at every cell, so the spatial sum is W[k, c].
    return jnp.einsum("nijk,nk->nij", a, g.sum(axis=(1, 2)))


@variant("grad_cam")
def _grad_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    return jax.nn.relu(jnp.einsum("nijk,nk->nij", a, g.mean(axis=(1, 2))))


def _alphas(a: jax.Array, g: jax.Array) -> jax.Array:
    """Grad-CAM++'s ``alpha = G**2 / (2 G**2 + sum_ij(A) G**3)`` (0 where the denominator
    is), the closed form for an exponential class score (Chattopadhay et al.)."""
    g2 = g * g
    denom = 2.0 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * g
    return g2 / jnp.where(denom != 0, denom, 1.0)


@variant("grad_cam_plus_plus")
def _grad_cam_plus_plus(a: jax.Array, g: jax.Array) -> jax.Array:
    """Grad-CAM++: weights ``sum_ij(alpha * relu(G))`` (pytorch-grad-cam's form; the paper's
    ``exp(y_c)`` factor of the derivatives is left out, a positive scale per map)."""
    weights = (_alphas(a, g) * jax.nn.relu(g)).sum(axis=(1, 2))
    return jax.nn.relu(jnp.einsum("nijk,nk->nij", a, weights))


@variant("grad_cam_plus_plus_normalised")
def _grad_cam_plus_plus_normalised(a: jax.Array, g: jax.Array) -> jax.Array:
    """Grad-CAM++ with each channel's alphas divided by their spatial sum (``alpha /
    sum_ij(alpha)``, a sum of 0 left as is) before weighing ``relu(G)``: tf-keras-vis 0.8's
    ``GradcamPlusPlus``, whose maps are these times ``exp(y_c)`` (it keeps the paper's
    exponential score in the derivatives). The normalisation changes the channel weights
    relative to each other, so the map is not a rescaled :func:`grad_cam_plus_plus`."""
    alpha = _alphas(a, g)
    total = alpha.sum(axis=(1, 2), keepdims=True)
    weights = (alpha / jnp.where(total != 0, total, 1.0) * jax.nn.relu(g)).sum(axis=(1, 2))
    return jax.nn.relu(jnp.einsum("nijk,nk->nij", a, weights))


@variant("layer_cam")
def _layer_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    return jax.nn.relu((jax.nn.relu(g) * a).sum(axis=-1))


# --------------------------------------------------------------------------- result


@variant("hires_cam")
def _hires_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    """HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations
    of convolutional neural networks", 2020): ``relu(sum_k G_k * A_k)`` cell by cell (no
    spatial averaging of the gradient, so the map is the exact contribution of each cell when
    the head is linear after the layer)."""
    return jax.nn.relu((g * a).sum(axis=-1))


#: pytorch-grad-cam's ``eps`` in XGrad-CAM's denominator (``xgrad_cam.py``).
XGRAD_EPS = 1e-7


@variant("xgrad_cam")
def _xgrad_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    """XGrad-CAM (Fu et al., "Axiom-based Grad-CAM", BMVC 2020): channel weights
    ``w_k = sum_ij(G_k A_k) / (sum_ij A_k + eps)``, map ``relu(sum_k w_k A_k)``;
    ``eps = 1e-7`` as in pytorch-grad-cam."""
    w = (g * a).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + XGRAD_EPS)
    return jax.nn.relu(jnp.einsum("nijk,nk->nij", a, w))


def first_component(m: jax.Array) -> jax.Array:
    """Projection of each image's cells on the first principal component of its
    ``(h * w, K)`` matrix (columns centred first), ``(N, h, w, K) -> (N, h, w)``.

    This is pytorch-grad-cam's ``get_2d_projection`` (centred, ``reshaped @ VT[0]``). The sign
    of a singular vector is arbitrary (pytorch-grad-cam keeps whatever LAPACK returns); here it
    is fixed so that the component's weights sum to a non-negative number, i.e. the map grows
    with the channels' common activation (for non-negative features this is the sign of the
    uncentred first component of the paper).
    """
    n, h, w, k = m.shape
    x = m.reshape(n, h * w, k)
    x = x - x.mean(axis=1, keepdims=True)
    v = jnp.linalg.svd(x, full_matrices=False)[2][:, 0, :]  # (N, K)
    v = v * jnp.where(v.sum(axis=-1, keepdims=True) < 0, -1.0, 1.0)
    return jnp.einsum("nck,nk->nc", x, v).reshape(n, h, w)


@variant("eigen_cam")
def _eigen_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    """Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
    Components", IJCNN 2020): ``relu`` of the features' first principal component
    (:func:`first_component`); it uses no gradient, so it is the same map for every class."""
    del g
    return jax.nn.relu(first_component(a))


@variant("eigen_grad_cam")
def _eigen_grad_cam(a: jax.Array, g: jax.Array) -> jax.Array:
    """Eigen-Grad-CAM (pytorch-grad-cam's class-discriminative Eigen-CAM): ``relu`` of the first
    principal component (:func:`first_component`) of ``G * A``."""
    return jax.nn.relu(first_component(g * a))


@variant("saliency")
def _saliency(a: jax.Array, g: jax.Array) -> jax.Array:
    """Saliency (Simonyan et al., "Deep Inside Convolutional Networks", ICLR workshop 2014):
    ``max_c |d y / d x_c|`` per pixel; ``A`` is the image, unused."""
    del a
    return jnp.abs(g).max(axis=-1)


@variant("integrated_gradients")
def _integrated_gradients(a: jax.Array, g: jax.Array) -> jax.Array:
    """Integrated Gradients (Sundararajan et al., "Axiomatic Attribution for Deep Networks",
    ICML 2017) with a black (zero) baseline, summed over colour channels:
    ``sum_c x_c * G_c`` where the pipeline passes ``A = x`` and ``G`` the mean gradient at
    ``(s / m) x``, ``s = 1..m`` (right Riemann sum). Signed: the maps sum to about
    ``y_c(x) - y_c(0)`` (completeness)."""
    return (a * g).sum(axis=-1)
