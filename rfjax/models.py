"""Small reference networks built natively in Flax NNX (no download, no Keras)."""

from __future__ import annotations

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
