"""rfjax: receptive fields of convolutional networks, every output cell at once, in JAX.

The public face; everything lives in small private-by-convention modules:

* :mod:`rfjax.engine`   -- :func:`gradient_maps`, input gradients of many cells in one program
* :mod:`rfjax.fit`      -- :func:`receptive_field`, the per-axis RF fit
* :mod:`rfjax.prepare`  -- the RF preparation (linear activations, average pooling, ...)
* :mod:`rfjax.analytic` -- the closed-form RF of conv/pool chains (Araujo et al.)
* :mod:`rfjax.activation_maps` -- :func:`cam`, :func:`grad_cam` and variants, RF-aware placement
* :mod:`rfjax.erf`      -- :func:`effective_rf`, the effective RF (Luo et al.)
* :mod:`rfjax.sweep`, :mod:`rfjax.arch_sweep` -- layer and architecture sweeps
* :mod:`rfjax.plot`, :mod:`rfjax.plot_cam` -- figures (imported lazily)
"""

from rfjax import datasets, prepare  # noqa: F401 - rfjax.prepare.linearize, rfjax.datasets.shapes
from rfjax._types import HW, GradientMaps, ReceptiveField
from rfjax.activation_maps import (
    CAMResult,
    cam,
    class_activation_maps,
    grad_cam,
    grad_cam_plus_plus,
    layer_cam,
)
from rfjax.engine import gradient_maps
from rfjax.erf import EffectiveRF, effective_rf
from rfjax.errors import RFError, RFTooLarge
from rfjax.fit import fit_maps, receptive_field
from rfjax.prepare import linearize, prepare_params

__all__ = [
    "HW",
    "CAMResult",
    "EffectiveRF",
    "GradientMaps",
    "RFError",
    "RFTooLarge",
    "ReceptiveField",
    "cam",
    "class_activation_maps",
    "effective_rf",
    "fit_maps",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient_maps",
    "layer_cam",
    "linearize",
    "prepare_params",
    "receptive_field",
]
__version__ = "0.1.0"
