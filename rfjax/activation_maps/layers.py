"""Which outputs of a model the CAM family explains: the feature layer and the logits.

A plain JAX function names them by output key or index (``layer=0, logits=1`` by
default). A converted model (or a Keras/PyTorch/ONNX model or file, converted here)
names them by layer name, from :attr:`~rfjax.contract.ConvertedModel.layer_names`; a
name it does not already return, or none at all, makes a copy that returns exactly the
two (:meth:`~rfjax.contract.ConvertedModel.with_outputs`), and a missing one is the
adapter's pick (:meth:`~rfjax.contract.ConvertedModel.cam_layers`: the last spatial
layer before the head's global pooling and the pre-softmax logits). An adapter that
cannot pick keeps the function defaults (outputs 0 and 1) where its outputs hold them,
and takes its one output as the logits when only ``layer`` is named (a PyTorch
module's ``"output"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from rfjax.contract import ConvertedModel, foreign_converter, resolve_model
from rfjax.errors import RFError


class CAMOutputs(NamedTuple):
    """The model to run and the keys of the feature map and the logits in its outputs."""

    model: Any
    layer: str | int
    logits: str | int


def cam_outputs(
    model: Any, layer: str | int | None, logits: str | int | None, input_shape: Sequence[int] | None = None
) -> CAMOutputs:
    """The model and output keys the CAM pipeline runs for ``model`` (see the module);
    ``input_shape`` ``(H, W, C)`` of the images is what a model without one of its own
    (a PyTorch module) is converted for.

    Raises :class:`~rfjax.errors.RFError` when a converted model must pick a layer and
    its adapter cannot (:meth:`~rfjax.contract.ConvertedModel.cam_layers`), or a name is
    not one of its layers.
    """
    converted = model if isinstance(model, ConvertedModel) else None
    if converted is None and foreign_converter(model) is not None:
        converted = resolve_model(model, input_shape)
    if converted is None:
        return CAMOutputs(model, 0 if layer is None else layer, 1 if logits is None else logits)
    returned = set(converted.output_names)
    given = [k for k in (layer, logits) if k is not None]
    positions = any(isinstance(k, int) for k in given)  # keys of the outputs it returns now
    if positions or (len(given) == 2 and all(k in returned for k in given)):
        return CAMOutputs(converted, 0 if layer is None else layer, 1 if logits is None else logits)
    try:
        picked = converted.cam_layers() if len(given) < 2 else (str(layer), str(logits))
    except RFError:
        if all(k in returned for k in given):
            return CAMOutputs(converted, 0 if layer is None else layer, 1 if logits is None else logits)
        if layer is None or logits is not None or len(converted.output_names) != 1:
            raise
        picked = (str(layer), converted.output_names[0])  # the model's one output are its scores
    feature = picked[0] if layer is None else str(layer)
    scores = picked[1] if logits is None else str(logits)
    return CAMOutputs(converted.with_outputs([feature, scores]), feature, scores)
