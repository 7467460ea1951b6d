"""The typed result of a class-activation-map call."""

from __future__ import annotations

import dataclasses

import numpy as np

from rfjax._types import HW, ReceptiveField


@dataclasses.dataclass(frozen=True)
class CAMResult:
    """Class activation maps of a batch of images.

    Attributes:
      maps: ``(N, k, h, w)`` maps at feature resolution; ``maps[n, j]`` explains class
        ``classes[n, j]`` of image ``n``.
      upsampled: ``(N, k, H, W)`` the maps placed on the input (see ``placement``).
      classes: ``(N, k)`` int class indices, best first when chosen by ``top_k``.
      probabilities: ``(N, k)`` softmax of the logits at ``classes``.
      method: ``"cam"``, ``"grad_cam"``, ... (a registered :func:`variant`).
      placement: ``"rf"`` (cell values at their RF centres), ``"resize"`` (plain bilinear) or
        ``"input"`` (the input methods' maps, already at the input's resolution).
      offset: centre of feature cell ``(0, 0)`` on the input as used for the placement,
        continuous coordinates (pixel ``i`` spans ``[i, i + 1)``).
      stride: distance between the centres of neighbouring cells as used for the placement.
      rf: the receptive field of the layer when ``placement == "rf"``, else ``None``.
      layer: the name (dict key or tuple index) of the feature map in the model's outputs.
      input_shape: ``(H, W)``.
      feature_shape: ``(h, w)``.
    """

    maps: np.ndarray
    upsampled: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    method: str
    placement: str
    offset: HW
    stride: HW
    rf: ReceptiveField | None
    layer: str | int
    input_shape: HW
    feature_shape: HW

    def normalised(self) -> np.ndarray:
        """``upsampled`` divided, per image, by the maximum of its first class's map (Zhou et
        al.), ``(N, k, H, W)``; images whose first map has no positive value are left as is."""
        top = self.upsampled[:, 0].reshape(len(self.upsampled), -1).max(axis=1)
        scale = np.where(top > 0, top, 1.0)
        return self.upsampled / scale[:, None, None, None]

    def peaks(self) -> np.ndarray:
        """``(N, k, 2)`` ``(row, column)`` where each map peaks on the input: the placed centre
        ``offset + (i, j) * stride`` of its arg-max feature cell, continuous coordinates. (The
        upsampled map takes its maximum there too; beyond the outermost centres it is flat,
        so its pixel arg-max would be ambiguous.)"""
        n, k, _h, w = self.maps.shape
        flat = self.maps.reshape(n, k, -1).argmax(axis=-1)
        return np.stack(
            [self.offset.h + (flat // w) * self.stride.h, self.offset.w + (flat % w) * self.stride.w], axis=-1
        )
