"""What a Keras model says about itself that rfjax entry points need (read from its
public config, never from Keras' private attributes)."""

from __future__ import annotations

from typing import Any

from rfjax.errors import RFError


def _input_layer_name(model: Any, layer: Any) -> str | None:
    """The name of the layer whose output feeds ``layer``, from the functional config
    (``inbound_nodes`` hold ``__keras_tensor__`` entries with a ``keras_history``)."""
    for entry in model.get_config().get("layers", []):
        if (
            not isinstance(entry, dict)
            or entry.get("name", entry.get("config", {}).get("name")) != layer.name
        ):
            continue
        stack = list(entry.get("inbound_nodes", []))
        while stack:
            item = stack.pop(0)
            if isinstance(item, dict):
                history = (
                    item.get("config", {}).get("keras_history")
                    if item.get("class_name") == "__keras_tensor__"
                    else None
                )
                if history:
                    return str(history[0])
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
    return None


def cam_layers(model: Any) -> tuple[str, str]:
    """Names of the CAM feature layer and classifier of a Keras model with a GAP + dense head.

    The feature layer is the layer feeding ``GlobalAveragePooling2D``; the classifier is the
    first ``Dense`` layer after it (``Dropout`` may sit in between). Its activation must be
    linear or softmax (the CAM pipeline explains the logits before a fused softmax, see
    ``KerasModel.pre_softmax``). Pass both to :func:`cam` with a converted model:
    ``cam(converted, images, layer=feature, logits=dense)``.
    """
    layers = list(getattr(model, "layers", []))
    gaps = [i for i, lyr in enumerate(layers) if type(lyr).__name__ == "GlobalAveragePooling2D"]
    if not gaps:
        raise RFError(
            f"model {getattr(model, 'name', '?')!r} has no GlobalAveragePooling2D layer, so plain CAM does not apply; "
            "use rfjax.grad_cam with layer= the last convolutional layer."
        )
    gap = layers[gaps[-1]]
    feature = _input_layer_name(model, gap) or layers[gaps[-1] - 1].name
    for lyr in layers[gaps[-1] + 1 :]:
        kind = type(lyr).__name__
        if kind == "Dense":
            act = getattr(getattr(lyr, "activation", None), "__name__", "linear")
            if act not in ("linear", "softmax"):  # a fused softmax is split off by the CAM pipeline
                raise RFError(
                    f"Dense layer {lyr.name!r} has activation {act!r}; CAM needs its logits: build it with activation=None "
                    "(or 'softmax', which rfjax splits off)."
                )
            return feature, lyr.name
        if kind not in ("Dropout", "Activation", "Softmax"):
            break
    raise RFError(
        f"no Dense layer follows GlobalAveragePooling2D {gap.name!r} in model {model.name!r}; "
        "use rfjax.grad_cam with layer= the last convolutional layer."
    )
