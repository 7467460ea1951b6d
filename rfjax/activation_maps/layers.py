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


def explained_outputs(
    model: Any, layer: str | int | None, logits: str | int | None, input_shape: Sequence[int] | None = None
) -> CAMOutputs:
    """:func:`cam_outputs`, then the logits before a final softmax
    (:meth:`~rfjax.contract.ConvertedModel.pre_softmax`): what every CAM method runs."""
    model, layer, scores = cam_outputs(model, layer, logits, input_shape)
    model, scores = pre_softmax_logits(model, scores)
    return CAMOutputs(model, layer, scores)


def scores_outputs(
    model: Any, logits: str | int | None, input_shape: Sequence[int] | None = None
) -> tuple[Any, str | int]:
    """The model returning its class scores, and their key, for callers that need no layer
    (the faithfulness metrics): a plain function's output 1 by default; a converted
    model's named output, else its adapter's pick of the logits, else its one output;
    then the logits before a final softmax."""
    return pre_softmax_logits(*_scores_only(model, logits, input_shape))


def pre_softmax_logits(model: Any, logits: str | int) -> tuple[Any, str | int]:
    """The model and logits name to explain: a converted model's softmax output is replaced
    by the logits before it (:meth:`~rfjax.contract.ConvertedModel.pre_softmax`)."""
    converted = resolve_model(model)
    if converted is None or not isinstance(logits, str) or logits not in converted.output_names:
        return model, logits
    split = converted.pre_softmax(logits)
    return (model, logits) if split is None else split


def _scores_only(
    model: Any, logits: str | int | None, input_shape: Sequence[int] | None
) -> tuple[Any, str | int]:
    """The model returning its class scores and their key, for callers that need no layer:
    a plain function's output 1 by default; a converted model's named output, else its
    adapter's pick of the logits, else its one output."""
    converted = _converted(model, input_shape)
    if converted is None or isinstance(logits, int):
        return (model if converted is None else converted), (1 if logits is None else logits)
    if logits is None:
        try:
            logits = converted.cam_layers()[1]
        except RFError:
            if len(converted.output_names) != 1:
                raise
            logits = converted.output_names[0]
    return (converted if logits in converted.output_names else converted.with_outputs([logits])), logits


def _converted(model: Any, input_shape: Sequence[int] | None) -> ConvertedModel | None:
    if isinstance(model, ConvertedModel):
        return model
    return resolve_model(model, input_shape) if foreign_converter(model) is not None else None


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
    converted = _converted(model, input_shape)
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
