"""The supports-only backward rule of the one-channel RF copies (shared by the adapters)."""

from __future__ import annotations

import jax


@jax.custom_vjp
def support_only(y: jax.Array) -> jax.Array:
    """Identity whose backward pass keeps only the support of the cotangent (1 where it
    is non-zero). The one-channel RF copies apply it after the layers that spread a
    gradient to neighbouring pixels (convolutions, pooling and resizing with windows
    larger than 1; the others are identities or means there): their fit reads supports
    only, and with true magnitudes the fringe of a deep network's RF falls
    below float32's range (a 3x3 layer scales the centre by 3 and the edge by 1/3, so
    InceptionResNetV2's edges reached 1e-45 and were flushed to zero)."""
    return y


def _support_fwd(y: jax.Array):
    return y, None


def _support_bwd(_, g: jax.Array):
    return ((g != 0).astype(g.dtype),)


support_only.defvjp(_support_fwd, _support_bwd)
