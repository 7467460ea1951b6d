"""One-channel RF mode: every feature map of the prepared model has a single channel.

In RF mode (:meth:`KerasModel.prepared`) kernels are positive constants, activations
the identity and the input constant, so all channels of a feature map carry the same
values, and where branches are concatenated, each channel's gradient support is the
union over the paths into it. Summing channels therefore never changes a support:
the model can run with one channel per layer and give the same receptive field, for
a fraction of the memory and time (a 4096 x 4096 input is then affordable).

The rewrite is per layer: channel counts in configs (``filters``, ``units``,
``groups``, ``depth_multiplier``) become 1, weights shrink to one input and one output
channel (the RF-mode constants are then ``1 / sqrt(kh * kw)``), concatenation along
channels becomes a mean, and reshapes infer their channel axis. The input is averaged
over its channels first.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

_CHANNEL_KEYS = ("filters", "units", "groups", "depth_multiplier")
_CONCATS = ("Concatenate", "ops.Concatenate")
_RESHAPES = ("Reshape", "ops.Reshape")


def config(config: dict) -> dict:
    """``config`` with every channel count set to 1."""
    return {k: (1 if k in _CHANNEL_KEYS and v is not None else v) for k, v in config.items()}


def weight(w: np.ndarray) -> np.ndarray:
    """A weight with one input and one output channel: ``(kh, kw, 1, 1)`` kernels,
    ``(1, 1)`` dense kernels, ``(1,)`` per-channel vectors."""
    w = np.asarray(w)
    if w.ndim == 0:
        return w
    if w.ndim == 4:
        return w[:, :, :1, :1]
    if w.ndim == 2:
        return w[:1, :1]
    return w[..., :1]


def wrap(class_name: str, config: dict, fn: Callable) -> Callable:
    """Channel-count-free versions of concatenation and reshape; other layers as they are."""
    if class_name in _CONCATS:
        axis = int(config.get("axis", -1 if class_name == "Concatenate" else 0))
        channel_axis = 1 if config.get("data_format") == "channels_first" else -1

        def concat(p, xs):
            xs = list(xs)
            nd = xs[0].ndim
            if nd == 4 and axis % nd == channel_axis % nd:
                return sum(xs) / len(xs)
            return fn(p, xs)

        return concat
    if class_name in _RESHAPES:

        def reshape(p, x):
            try:
                return fn(p, x)
            except (TypeError, ValueError):  # a target naming the original channel count
                target = list(config.get("target_shape") or config.get("newshape"))
                batch = [] if "target_shape" in config else [target.pop(0)]
                target[int(np.argmax(target))] = -1
                return jnp.reshape(x, (x.shape[0], *target) if not batch else (*batch, *target))

        return reshape
    return fn


def input_mean(x):
    """The input averaged over its channels, ``(N, H, W, 1)``."""
    return jnp.mean(x, axis=-1, keepdims=True)
