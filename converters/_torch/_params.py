"""The RF copy's parameters: constant positive weights, zero biases, identity statistics.

Leaves are PyTorch state names (``features.0.weight``, ``bn1.running_var``). A
``weight`` with two or more dimensions is a convolution (``(out, in / groups, kh, kw)``)
or linear (``(out, in)``) kernel and gets ``1 / (in * sqrt(kh * kw))``, so activations
grow by at most ``sqrt(kh * kw)`` per layer, as in :func:`rfjax.prepare.constant_kernel`
(which reads Flax's HWIO layout). ``bias`` and ``running_mean`` are 0; everything else
(norm scales, ``running_var``, layer scales, fixed filters) is 1. Normalisation is the
identity in the RF copy anyway (:mod:`converters._torch._rfmode`): its statistics only
have to be finite.
"""

from __future__ import annotations

import math

import numpy as np

_ZEROS = ("bias", "running_mean")


def kernel_constant(shape: tuple[int, ...]) -> float:
    """The positive constant of a PyTorch kernel of ``shape`` (``(out, in, *window)``)."""
    return 1.0 / (shape[1] * math.sqrt(math.prod(shape[2:])))


def prepared(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``params`` (``{state name: array}``) as the RF copy uses them (a new dict)."""
    out = {}
    for name, leaf in params.items():
        last = name.rsplit(".", 1)[-1]
        shape = tuple(leaf.shape)
        if last == "weight" and len(shape) >= 2:
            out[name] = np.full(shape, kernel_constant(shape), leaf.dtype)
        elif last in _ZEROS:
            out[name] = np.zeros(shape, leaf.dtype)
        else:
            out[name] = np.ones(shape, leaf.dtype)
    return out
