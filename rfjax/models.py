"""Small reference networks: built natively in Flax NNX (no download, no Keras), and the Keras
CNN of the shapes example (:func:`shapes_cnn`, which imports Keras when called)."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx


class ReadmeNet(nnx.Module):
    """The network of the ``receptivefield`` package's README, on NHWC inputs.

    conv 32 5x5 valid -> conv 32 3x3 valid -> avgpool 2x2 -> conv 64 3x3 valid ->
    conv 64 3x3 valid -> avgpool 2x2 -> conv 128 3x3 valid -> conv 128 3x3 valid
    ('feature_grid'), linear activations. On a 96x96x3 input the feature grid is
    16x16x128 and the RF is offset (17, 17), stride (4, 4), size (34, 34).

    Args:
      channels: input channels.
      width: multiplies every layer's channel count (``width=1`` is the original).
      rngs: Flax random streams for the (irrelevant to the RF) initial weights.
    """

    def __init__(self, channels: int = 3, width: float = 1.0, *, rngs: nnx.Rngs):
        c = [max(1, round(n * width)) for n in (32, 32, 64, 64, 128, 128)]

        def conv(cin: int, cout: int, k: int) -> nnx.Conv:
            return nnx.Conv(cin, cout, (k, k), padding="VALID", rngs=rngs)

        self.conv1 = conv(channels, c[0], 5)
        self.conv2 = conv(c[0], c[1], 3)
        self.conv3 = conv(c[1], c[2], 3)
        self.conv4 = conv(c[2], c[3], 3)
        self.conv5 = conv(c[3], c[4], 3)
        self.feature_grid = conv(c[4], c[5], 3)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv2(self.conv1(x))
        x = nnx.avg_pool(x, (2, 2), (2, 2))
        x = self.conv4(self.conv3(x))
        x = nnx.avg_pool(x, (2, 2), (2, 2))
        return self.feature_grid(self.conv5(x))


def readme_net(seed: int = 0, width: float = 1.0) -> ReadmeNet:
    """The README network with random initial weights (seeded)."""
    return ReadmeNet(width=width, rngs=nnx.Rngs(seed))


def shapes_cnn() -> Any:
    """The small Keras GAP + dense CNN of the shapes example (:func:`rfjax.datasets.shapes`):
    64 x 64 x 3 inputs, four 'valid' conv + batch norm + ReLU blocks (5x5 stride 2, 3x3, a
    2x2 max pool, 3x3, 3x3 named ``"features"``: a 10 x 10 x 64 map), global average
    pooling and ``Dense(4)`` named ``"logits"`` (pre-softmax). Untrained; imports Keras
    (``pip install "rfjax[keras]"``)."""
    import keras

    from rfjax.datasets import SHAPE_NAMES

    L = keras.layers

    def block(filters: int, kernel: int, strides: int = 1, name: str | None = None) -> list:
        return [
            L.Conv2D(filters, kernel, strides=strides, use_bias=False),
            L.BatchNormalization(),
            L.ReLU(name=name),
        ]

    return keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            *block(16, 5, strides=2),
            *block(32, 3),
            L.MaxPooling2D(2),
            *block(32, 3),
            *block(64, 3, name="features"),
            L.GlobalAveragePooling2D(),
            L.Dense(len(SHAPE_NAMES), name="logits"),
        ]
    )
