"""CAM methods: each is one small function ``(A, G) -> map`` in a registry.

``A`` is the explained layer's feature map and ``G`` the gradient of the explained class
score with respect to it, both ``(N, h, w, K)``; a method returns ``(N, h, w)``. The
pipeline (:mod:`rfjax.activation_maps.pipeline`) computes ``A`` and ``G`` once for every method.

* CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016).
* Grad-CAM (Selvaraju et al., ICCV 2017).
* Grad-CAM++ (Chattopadhay et al., WACV 2018).
* Layer-CAM (Jiang et al., TIP 2021).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from rfjax.errors import RFError

#: ``(A (N, h, w, K), G (N, h, w, K)) -> map (N, h, w)``: how one CAM method weighs features.
Variant = Callable[[jax.Array, jax.Array], jax.Array]
_VARIANTS: dict[str, Variant] = {}

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
