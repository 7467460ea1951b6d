"""PyTorch modules to JAX through torchax (imported only when a module is converted).

See :func:`converters.from_torch`. Modules: :mod:`._trace` (tracing with named module
outputs), :mod:`._rfmode` (the RF copy, applied while tracing), :mod:`._params` (its
parameters), :mod:`._jaxpr` (evaluation, global branches), :mod:`._model` (the
:class:`TorchModel` under rfjax's contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from converters._torch._model import TorchModel
from converters._torch._trace import Source
from rfjax.errors import RFError


def _first_conv_channels(module: torch.nn.Module) -> int | None:
    for mod in module.modules():
        if isinstance(mod, torch.nn.modules.conv._ConvNd):
            return int(mod.in_channels)
    return None


def _shape(input_shape: Sequence[int] | None, module: torch.nn.Module) -> tuple:
    if input_shape is None:
        return (None, None, _first_conv_channels(module))
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape
    ):
        raise RFError(f"input_shape={shape!r} must be three positive integers (H, W, C).")
    return tuple(int(v) for v in shape)


def from_torch(
    module: Any, outputs: str | Sequence[str] | None = None, *, input_shape: Sequence[int] | None = None
) -> TorchModel:
    """Convert a ``torch.nn.Module`` (see :func:`converters.from_torch`)."""
    if not isinstance(module, torch.nn.Module):
        raise RFError(f"module must be a torch.nn.Module, not {type(module).__name__}.")
    shape = _shape(input_shape, module)
    if shape[2] is None:
        raise RFError(
            "the module has no convolution to read its channel count from; pass input_shape=(H, W, C)."
        )
    source = Source(module)
    probe = (1, shape[0] or 224, shape[1] or 224, shape[2])
    traced = source.traced("plain", probe, source.params)
    names = traced.names if input_shape is not None else tuple(dict.fromkeys(source.paths + traced.names))
    return TorchModel(source, shape, names, traced.outputs if outputs is None else outputs)


__all__ = ["TorchModel", "from_torch"]
