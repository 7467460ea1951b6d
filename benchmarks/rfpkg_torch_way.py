"""The ``receptivefield`` package's PyTorch API (fornaxai/receptivefield 0.5.0, the
reference tool) as a benchmark way on the torchvision feature extractors.

``receptivefield.pytorch`` needs only torch, numpy and matplotlib (no TensorFlow), so it
runs in this venv (torch 2.12.1 here). It is not a declared dependency; install it with
``pip install receptivefield==0.5.0`` (pip < 24.1, which still accepts the wheel's
``pillow (>=6.2.*)`` metadata; ``--no-deps`` when numpy/matplotlib/pillow are there), or
into a folder of its own with ``pip install --target DIR receptivefield==0.5.0 --no-deps``
and ``RECEPTIVEFIELD_TARGET=DIR`` (see :data:`TARGET_ENV`): ``benchmarks/run.py`` then
puts ``DIR`` on the child's ``PYTHONPATH``, only when this interpreter lacks the package
(:func:`import_path`). Without either, the way's row says "not runnable: ...".

What is timed is the package's own user call,
``PytorchReceptiveField(model_fn).compute(input_shape=(W, H, C))``: one forward pass (for
the feature map's shape) and three single-cell forward + backward passes (the grid centre,
the cell at centre + (1, 1) and cell (0, 0)), eager, on an all-zeros input, not all output
cells. ``model_fn`` returns a module built once in setup (the other ways also build their
model in setup), so a call does not include building it.

What the package needs from the module:

* a wrapper: the module must keep its output maps in a list ``self.feature_maps`` during
  ``forward`` (the package reads ``model.__dict__["feature_maps"]``), see :class:`FeatureMaps`;
* linear activations and average pooling: the input is all zeros and the package counts
  pixels whose |gradient| > 0, so with ReLU (gradient 0 at 0) every gradient is 0 and the
  answer is NaN stride, size 0 (measured here, torchvision modules as they are); max
  pooling would route each window's gradient to one tie. :func:`linearised` swaps
  ``ReLU``/``ReLU6`` for ``Identity`` and ``MaxPool2d`` for ``AvgPool2d`` with the same
  kernel, stride, padding and ceil mode; the weights stay the benchmark's constant positive
  ones (:func:`benchmarks.torch_ways.set_constant_weights`: zero biases, identity batch
  norms), so every gradient in the support is > 0.

The package's answer, in its own terms (checked here on an asymmetric two-layer net,
kernels (3, 7) stride (2, 1) then (5, 1) stride (1, 3), on a 40x60 input):

* ``input_shape`` is ``(W, H, C)``: ``ImageShape(w, h, c)`` becomes the tensor
  ``(1, C, H, W)``, although its docstring says ``[H, W, C]``; so this way passes rfjax's
  ``(H, W, C)`` swapped;
* ``size``, ``stride``, ``offset`` are ``(row, col)`` like rfjax's, despite the names
  ``Size(w, h)`` and ``(x, y)``: it transposes the gradient to NHWC and sums over the last
  spatial axis, so its ``x``/``w`` is the row axis (that net: size (11, 7), stride (2, 3),
  offset (5.5, 3.5), the analytic values in (row, col));
* ``offset`` = extent of cell (0, 0)'s support minus half the size = the RF centre of cell
  (0, 0) in pixel-edge coordinates, rfjax's convention (no +0.5).

When the RF of the grid-centre cell or of the cell at centre + (1, 1) reaches past the
input, the package's size and stride come from clipped supports (its docs: enlarge the
input); the answer's ``note`` says so (:func:`benchmarks.rfpkg_way.clipped_note`). At
224x224 that is ResNet-50 and MobileNetV2 (size 224, stride 0) and VGG16 (size 212 right,
stride 19 instead of 32). Unclipped, at 448x448 (VGG16) and 672x672 (ResNet-50,
MobileNetV2), it gives rfjax's answers (size 212 / 427 / 491, stride 32, offset 16 / 0.5 /
0.5).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = "receptivefield"
# a folder filled by ``pip install --target DIR receptivefield==0.5.0 --no-deps``
TARGET_ENV = "RECEPTIVEFIELD_TARGET"


def import_path() -> tuple[str | None, str]:
    """``(path, why)``: ``""`` when this interpreter has the package, the folder named by
    ``$RECEPTIVEFIELD_TARGET`` when that holds it (to put on the child's ``PYTHONPATH``),
    else ``(None, reason)``. Cheap: finds the package without importing it."""
    if importlib.util.find_spec(PACKAGE) is not None:
        return "", ""
    target = os.environ.get(TARGET_ENV)
    if target and (Path(target) / PACKAGE / "pytorch.py").is_file():
        return target, ""
    where = f" ({TARGET_ENV}={target} does not hold it)" if target else ""
    return None, (
        f"not runnable: {PACKAGE} not installed{where} (pip<24.1: pip install receptivefield==0.5.0; "
        f"or pip install --target DIR receptivefield==0.5.0 --no-deps and {TARGET_ENV}=DIR)"
    )


# --------------------------------------------------------------------------- in the child


def _torch():
    import torch

    return torch


def linearised(module: Any) -> Any:
    """In place: every ``ReLU``/``ReLU6`` -> ``Identity``, every ``MaxPool2d`` ->
    ``AvgPool2d`` (same kernel, stride, padding, ceil mode). Returns ``module``."""
    nn = _torch().nn
    for name, child in module.named_children():
        if isinstance(child, (nn.ReLU, nn.ReLU6)):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.MaxPool2d):
            if child.dilation not in (1, (1, 1)):
                from rfjax.errors import RFError

                raise RFError(f"{name}: a dilated max pooling has no AvgPool2d equivalent; undilate it.")
            pool = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode)
            setattr(module, name, pool)
        else:
            linearised(child)
    return module


def feature_maps_module(module: Any) -> Any:
    """``module`` wrapped so that ``forward`` keeps its output in ``self.feature_maps``
    (a one-element list), as the package requires."""
    nn = _torch().nn

    class FeatureMaps(nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            y = self.inner(x)
            self.feature_maps = [y]
            return y

    return FeatureMaps(module).eval()


def setup(input_shape, torch_model: str) -> Callable[[], Any]:
    """Build the module (the benchmark's torchvision feature extractor, linearised) and
    return the timed call (:func:`estimator_call`)."""
    from benchmarks import torch_ways

    return estimator_call(linearised(torch_ways.feature_extractor(torch_model)), input_shape)


def estimator_call(module: Any, input_shape) -> Callable[[], Any]:
    """The package's estimator on ``module`` (wrapped by :func:`feature_maps_module`) for
    an ``(H, W, C)`` input, and the call: one ``compute()``, summarised as an object with
    ``size``, ``stride``, ``offset`` (each ``(row, col)``) and ``note``."""
    from receptivefield.pytorch import PytorchReceptiveField

    from benchmarks import rfpkg_way

    logging.getLogger().setLevel(logging.WARNING)  # the package sets the root logger to INFO
    h, w, c = (int(v) for v in input_shape)
    model = feature_maps_module(module)
    estimator = PytorchReceptiveField(lambda: model)
    with _torch().no_grad():
        _, _, gh, gw = model(_torch().zeros((1, c, h, w))).shape

    def call():
        (fm,) = estimator.compute(input_shape=(w, h, c))  # the package's (W, H, C)
        rf = fm.rf
        size = tuple(float(v) for v in rf.size)  # (row, col), see the module docstring
        stride = tuple(float(v) for v in rf.stride)
        offset = tuple(float(v) for v in rf.offset)
        note = rfpkg_way.clipped_note(size, stride, offset, (int(gh), int(gw)), (h, w))
        return types.SimpleNamespace(size=size, stride=stride, offset=offset, note=note)

    return call
