"""rfjax: receptive fields of convolutional networks, every output cell at once, in JAX.

The public face; everything lives in small private-by-convention modules:

* :mod:`rfjax.contract` -- :class:`ConvertedModel`, the one contract every model adapter implements
* :mod:`rfjax.engine`   -- :func:`gradient_maps`, input gradients of many cells in one program
* :mod:`rfjax.fit`      -- :func:`receptive_field`, the per-axis RF fit
* :mod:`rfjax.prepare`  -- the RF preparation (linear activations, average pooling, ...)
* :mod:`rfjax.analytic` -- the closed-form RF of conv/pool chains (Araujo et al.)
* :mod:`rfjax.activation_maps`     -- :func:`cam`, :func:`grad_cam` and variants on one pipeline, RF-aware placement
* :mod:`rfjax.erf`      -- :func:`effective_rf`, the effective RF (Luo et al.)
* :mod:`rfjax.layer_sweep` -- :func:`sweep_layers`, every layer of one model
* :mod:`rfjax.arch_sweep`  -- :func:`sweep`, many architectures and input sizes, resumable
* :mod:`rfjax.plot`, :mod:`rfjax.plot_cam`, :mod:`rfjax.plot_faithfulness` -- figures (imported lazily)
"""

from rfjax import datasets, models, prepare  # noqa: F401 - rfjax.models.readme_net, rfjax.datasets.shapes
from rfjax._types import HW, GradientMaps, ReceptiveField
from rfjax.activation_maps import (
    CAMMetrics,
    CAMResult,
    ablation_cam,
    augmentation_smoothing,
    cam,
    cam_metrics,
    class_activation_maps,
    eigen_cam,
    eigen_grad_cam,
    faster_score_cam,
    grad_cam,
    grad_cam_plus_plus,
    hires_cam,
    integrated_gradients,
    layer_cam,
    saliency,
    score_cam,
    smoothgrad,
    xgrad_cam,
)
from rfjax.arch_sweep import Arch, sweep
from rfjax.contract import ConvertedModel, RFBound, clear_caches, resolve_model
from rfjax.engine import gradient_maps
from rfjax.erf import EffectiveRF, effective_rf
from rfjax.errors import RFDataDependent, RFError, RFGlobal, RFTooLarge, RFUnhandledSetting, RFUnsupported
from rfjax.fit import fit_maps, receptive_field
from rfjax.layer_plot import plot_sweep
from rfjax.layer_sweep import LayerRF, plot_layers, save_rows, sweep_layers
from rfjax.prepare import linearize, prepare_params

__all__ = [
    "HW",
    "Arch",
    "CAMMetrics",
    "CAMResult",
    "ConvertedModel",
    "EffectiveRF",
    "GradientMaps",
    "LayerRF",
    "RFBound",
    "RFDataDependent",
    "RFError",
    "RFGlobal",
    "RFTooLarge",
    "RFUnhandledSetting",
    "RFUnsupported",
    "ReceptiveField",
    "ablation_cam",
    "augmentation_smoothing",
    "cam",
    "cam_metrics",
    "class_activation_maps",
    "clear_caches",
    "effective_rf",
    "eigen_cam",
    "eigen_grad_cam",
    "faster_score_cam",
    "fit_maps",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient_maps",
    "hires_cam",
    "integrated_gradients",
    "layer_cam",
    "linearize",
    "plot_layers",
    "plot_sweep",
    "prepare_params",
    "receptive_field",
    "resolve_model",
    "saliency",
    "save_rows",
    "score_cam",
    "smoothgrad",
    "sweep",
    "sweep_layers",
    "xgrad_cam",
]
__version__ = "0.1.0"
