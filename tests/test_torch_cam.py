"""Grad-CAM, Grad-CAM++ and Layer-CAM of PyTorch modules against the `grad-cam` package.

The peer is pytorch-grad-cam (PyPI `grad-cam`, Jacob Gildenblat): its ``GradCAM``,
``GradCAMPlusPlus`` and ``LayerCAM`` on the same random-weight torchvision ResNet-18 and
the same target classes (``ClassifierOutputTarget``), its activations and gradients
taken by its own PyTorch hooks and autograd.

What is compared: the package's map at layer resolution, ``max(get_cam_image(...), 0)``
(what its ``compute_cam_per_layer`` computes before ``scale_cam_image`` min-max scales it
with a 1e-7 epsilon and resizes it to the input with OpenCV), against rfjax's
``CAMResult.maps``, as ``max |rfjax - peer| / max |peer|`` per method; and the package's
final output (min-max scaled, OpenCV-resized, scaled again by ``aggregate_multi_layers``)
against the package's own ``scale_cam_image`` applied the same way to rfjax's maps.

The package's Grad-CAM++ adds ``eps = 1e-6`` (grad-cam 1.5.7) to the denominator of its
alpha weights, rfjax adds none. With PyTorch's default initialisation the gradient at
``layer4`` is about 1e-2, its square 1e-4, and the epsilon moves Grad-CAM++ by about 2 %;
so the classifier weights are multiplied by 1000 (the same module for both), which makes
the epsilon's effect about 1e-8 relative and leaves the other methods' comparison as it is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import rfjax
from rfjax.errors import RFError

SIZE = 128  # layer4 is 4x4
CLASSES = [3, 7]  # one target class per image


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        module.fc.weight.mul_(1000.0)  # see the module docstring (Grad-CAM++ epsilon)
    return module


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


def _peer(cls: type, module: torch.nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(maps at layer4 resolution (N, h, w), final output (N, H, W))`` of the package."""
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    with cls(model=module, target_layers=[module.layer4]) as cam:
        final = cam(x, targets)
        a = cam.activations_and_grads.activations[0].numpy()
        g = cam.activations_and_grads.gradients[0].numpy()
        maps = np.maximum(cam.get_cam_image(x, module.layer4, targets, a, g, False), 0)
    return maps, final


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize(
    "method, peer",
    [("grad_cam", GradCAM), ("grad_cam_plus_plus", GradCAMPlusPlus), ("layer_cam", LayerCAM)],
)
def test_maps_equal_the_grad_cam_package(resnet18, images, method, peer):
    r = rfjax.class_activation_maps(
        resnet18,
        images,
        method=method,
        layer="layer4",
        classes=np.array(CLASSES)[:, None],
        placement="resize",
    )
    ref, final = _peer(peer, resnet18, images)
    assert r.maps.shape == (2, 1, SIZE // 32, SIZE // 32) and ref.shape == (2, SIZE // 32, SIZE // 32)
    assert (ref > 0).any(axis=(1, 2)).all()  # a map that is not all zero in each image
    assert _rel(r.maps[:, 0], ref) < 1e-4
    # the package's own post-processing (min-max, OpenCV resize, min-max) of rfjax's maps
    ours_final = scale_cam_image(np.maximum(scale_cam_image(r.maps[:, 0], (SIZE, SIZE)), 0))
    assert np.abs(ours_final - final).max() < 1e-4


def test_module_path_and_logits_found_for_a_module_passed_directly(resnet18, images):
    """``grad_cam(module, images, layer=...)``: the logits are the module's output, the top
    class is PyTorch's arg-max, and the maps are placed at RF centres measured on the
    converted module (ResNet-18 layer4 RF in closed form below)."""
    r = rfjax.grad_cam(resnet18, images, layer="layer4")
    with torch.no_grad():
        logits = resnet18(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_array_equal(r.classes[:, 0], logits.argmax(axis=1))
    # stem conv 7/2, max pool 3/2, then eight 3x3 convolutions per pair of stages on the
    # main path, the first of layer2..4 with stride 2
    size, jump = 1, 1
    for k, s in [(7, 2), (3, 2)] + [(3, 1)] * 4 + ([(3, 2)] + [(3, 1)] * 3) * 3:
        size, jump = size + (k - 1) * jump, jump * s
    assert r.placement == "rf" and r.rf is not None
    assert tuple(r.rf.size) == (size, size) and tuple(r.rf.stride) == (jump, jump)


def test_unknown_module_path_is_refused_with_the_nearest_names(resnet18, images):
    with pytest.raises(RFError, match="layer4"):
        rfjax.grad_cam(resnet18, images, layer="layer5")


def test_the_layer_is_picked_for_a_module_and_equals_the_package_at_layer4(resnet18, images):
    from converters import from_torch

    assert from_torch(resnet18, input_shape=(SIZE, SIZE, 3)).cam_layers() == ("layer4", "output")
    picked = rfjax.grad_cam(resnet18, images, classes=np.array(CLASSES)[:, None], placement="resize")
    ref, _ = _peer(GradCAM, resnet18, images)  # pytorch-grad-cam at module.layer4
    assert picked.layer == "layer4" and _rel(picked.maps[:, 0], ref) < 1e-4
