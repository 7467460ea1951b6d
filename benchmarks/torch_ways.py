"""The obvious PyTorch ways to get the input gradient of every output cell, and rfjax's
way on the same module converted by :func:`converters.from_torch`.

The networks are torchvision's feature extractors (``weights=None``, no classifier):
ResNet-50 up to ``layer4``, MobileNetV2 ``features``, VGG16 ``features``, with the same
RF preparation as the TensorFlow ways (:func:`benchmarks.tf_ways.set_constant_weights`):
constant positive kernels ``1 / (C_in per group * sqrt(kh * kw))``, zero biases, batch
norms as identities (running mean 0, variance 1, scale 1, shift 0); ReLU/ReLU6 and max
pooling are kept. The input is all ones, ``(1, 3, 224, 224)`` on the PyTorch side.

Every way returns ``(Ho, Wo, H, W)`` numpy maps: the cotangent of cell ``(i, j)`` is
one-hot on that cell and summed over all output channels, the input gradient is summed
over the input channels.

* :func:`per_cell_autograd`   -- one forward and ``torch.autograd.grad`` per cell, in a Python loop;
* :func:`vmap_vjp`            -- ``torch.func.vjp`` once, ``torch.func.vmap`` of its pullback
  over the one-hot cotangents of all cells;
* :func:`jacobian_vectorize`  -- ``torch.autograd.functional.jacobian(..., vectorize=True)``
  of the channel-summed output grid;
* :func:`converted` + :func:`rfjax_gradient_maps` -- ``rfjax.gradient_maps`` on the
  converted module (conversion, torchax's trace at 224 included, is timed separately);
* :func:`rfjax_receptive_field` -- ``rfjax.receptive_field`` on the converted module (the
  RF fit, ``grow=True``), the answer :mod:`benchmarks.rfpkg_torch_way` is compared with.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torchvision

INPUT = (224, 224, 3)

# torchvision constructor and how to cut its feature extractor
MODELS = {
    "resnet50": "resnet50",
    "mobilenet_v2": "mobilenet_v2",
    "vgg16": "vgg16",
}


def feature_extractor(name: str) -> torch.nn.Module:
    """The torchvision model ``name`` without its classifier, with constant weights
    (:func:`set_constant_weights`), in eval mode, ReLUs not in place (``torch.func``
    transforms refuse in-place updates of values they batch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = getattr(torchvision.models, MODELS[name])(weights=None)
    if name == "resnet50":
        module: torch.nn.Module = torch.nn.Sequential(*list(full.children())[:-2])  # up to layer4
    else:
        module = full.features
    for mod in module.modules():
        if isinstance(mod, (torch.nn.ReLU, torch.nn.ReLU6)):
            mod.inplace = False
    return set_constant_weights(module).eval()


def set_constant_weights(module: torch.nn.Module) -> torch.nn.Module:
    """In place: kernels ``1 / (C_in per group * sqrt(kh * kw))``, biases 0, batch norms
    the identity up to their epsilon (statistics 0 / 1, affine 1 / 0)."""
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan, kh, kw = mod.weight.shape[1:]
                mod.weight.fill_(1.0 / (fan * math.sqrt(kh * kw)))
                if mod.bias is not None:
                    mod.bias.zero_()
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0)
                mod.weight.fill_(1.0)
                mod.bias.zero_()
    return module


def ones_input() -> torch.Tensor:
    h, w, c = INPUT
    return torch.ones((1, c, h, w))


def _grid(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    with torch.no_grad():
        _, co, ho, wo = module(x).shape
    return int(ho), int(wo), int(co)


def _cotangents(ho: int, wo: int, co: int) -> torch.Tensor:
    """``(Ho * Wo, 1, Co, Ho, Wo)``: cell ``n``'s one-hot mask, over all channels."""
    ct = torch.zeros((ho * wo, 1, co, ho, wo))
    cells = torch.arange(ho * wo)
    ct[cells, 0, :, cells // wo, cells % wo] = 1.0
    return ct


# --------------------------------------------------------------------------- ways


def per_cell_autograd(module: torch.nn.Module, x: torch.Tensor | None = None) -> np.ndarray:
    """One forward and backward pass per cell (``torch.autograd.grad``), in a Python loop."""
    x = ones_input() if x is None else x
    ho, wo, _ = _grid(module, x)
    maps = np.empty((ho, wo) + tuple(x.shape[2:]), np.float32)
    for i in range(ho):
        for j in range(wo):
            xi = x.clone().requires_grad_(True)
            loss = module(xi)[0, :, i, j].sum()
            (g,) = torch.autograd.grad(loss, xi)
            maps[i, j] = g[0].sum(0).numpy()
    return maps


def vmap_vjp(module: torch.nn.Module, x: torch.Tensor | None = None) -> np.ndarray:
    """``torch.func.vjp`` of the module once, its pullback ``torch.func.vmap``-ed over the
    one-hot cotangents of every cell."""
    x = ones_input() if x is None else x
    out, pullback = torch.func.vjp(module, x)
    _, co, ho, wo = out.shape
    (g,) = torch.func.vmap(pullback)(_cotangents(ho, wo, co))  # (Ho * Wo, 1, C, H, W)
    return g[:, 0].sum(1).reshape((ho, wo) + tuple(x.shape[2:])).detach().numpy()


def jacobian_vectorize(module: torch.nn.Module, x: torch.Tensor | None = None) -> np.ndarray:
    """``torch.autograd.functional.jacobian(..., vectorize=True)`` of the channel-summed
    output grid ``(Ho, Wo)`` with respect to the input."""
    x = ones_input() if x is None else x
    jac = torch.autograd.functional.jacobian(lambda t: module(t)[0].sum(0), x, vectorize=True)
    return jac[:, :, 0].sum(2).numpy()  # (Ho, Wo, 1, C, H, W) -> (Ho, Wo, H, W)


WAYS = {
    "torch_per_cell_autograd": per_cell_autograd,
    "torch_vmap_vjp": vmap_vjp,
    "torch_jacobian_vectorize": jacobian_vectorize,
}


# --------------------------------------------------------------------------- rfjax


def converted(module: torch.nn.Module) -> Any:
    """:func:`converters.from_torch` of ``module`` at 224 (torchax traces it here)."""
    import converters

    return converters.from_torch(module, input_shape=INPUT)


def rfjax_gradient_maps(model: Any, *, strategy: str = "auto") -> np.ndarray:
    """``rfjax.gradient_maps`` of every cell of the converted module's output (NHWC), the
    module's own constant weights, all-ones input: ``(Ho, Wo, H, W)``."""
    import rfjax

    x = np.ones((1,) + INPUT, np.float32)
    (maps,) = rfjax.gradient_maps(
        model.apply, x, params=model.params, input_channels="sum", strategy=strategy
    ).values()
    return maps.maps


def rfjax_receptive_field(model: Any) -> Any:
    """``rfjax.receptive_field`` of the converted module's single output (rfjax's own RF
    preparation: linear activations, average pooling), ``grow=True``: at 224 the RFs of
    these networks reach past the input, so the fit measures on a larger input with the
    same padding at every layer and reports the RF of the 224 input."""
    import rfjax

    (name,) = model.output_names
    return rfjax.receptive_field(model, grow=True, layer=name)
