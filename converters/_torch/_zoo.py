"""``torchvision:<name>`` and ``timm:<name>``: zoo models built offline, final features.

The model is built with random weights (``weights=None`` / ``pretrained=False``: nothing
is downloaded) and converted with its *final feature map* as the output: the last
top-level module, in call order, whose output is a 4-D map that still follows the input
size (``layer4`` of a ResNet, ``features`` of VGG / MobileNet / EfficientNet / ConvNeXt,
``Mixed_7c`` of Inception v3, ``trunk_output`` of RegNet), before global pooling and the
classifier head.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any

from converters._torch._model import TorchModel
from rfjax.errors import RFError

PREFIXES = ("torchvision:", "timm:")


def _module(source: str, name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet / inception_v3 warn about their default init
        if source == "timm":
            import timm

            known = timm.list_models()
            if name not in known:
                near = difflib.get_close_matches(name, known, n=3)
                raise RFError(
                    f"architecture {name!r} is not in timm; {'did you mean ' + ', '.join(near) + '?' if near else 'see timm.list_models().'}"
                )
            return timm.create_model(name, pretrained=False)
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3)
            raise RFError(
                f"architecture {name!r} is not in torchvision.models; {'did you mean ' + ', '.join(near) + '?' if near else 'see torchvision.models.list_models().'}"
            )
        kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(name, weights=None, **kwargs)


def final_features(model: TorchModel) -> str:
    """The last top-level module whose output is a spatial map (not a global value)."""
    shapes = model.spatial_shapes(model.known_input_shape())
    found = model.global_nodes()
    top = [n for n in model.layer_names if "." not in n and ":" not in n and n in shapes]
    maps = [n for n in top if len(shapes[n]) == 4 and n not in found]
    if not maps:
        raise RFError(f"the model has no top-level module with a spatial output; pick one of {list(top)}.")
    return maps[-1]


def build(spec: str, input_shape: tuple[int, int, int]) -> TorchModel:
    """Build ``"torchvision:<name>"`` or ``"timm:<name>"`` offline and convert it with its
    final feature map as the output (every module path stays requestable)."""
    from converters._torch import from_torch

    source, _, name = spec.partition(":")
    if spec.startswith(PREFIXES) is False or not name:
        raise RFError(f"architecture {spec!r} must look like 'torchvision:resnet50' or 'timm:resnet50d'.")
    converted = from_torch(_module(source, name).eval(), input_shape=input_shape)
    return converted.with_outputs(final_features(converted))
