"""rfjax: receptive fields of convolutional networks, every output cell at once, in JAX.

The public face; everything lives in small private-by-convention modules:

* :mod:`rfjax.engine`   -- :func:`gradient_maps`, input gradients of many cells in one program
* :mod:`rfjax.fit`      -- :func:`receptive_field`, the per-axis RF fit
* :mod:`rfjax.prepare`  -- the RF preparation (linear activations, average pooling, ...)
* :mod:`rfjax.analytic` -- the closed-form RF of conv/pool chains (Araujo et al.)
* :mod:`rfjax.plot`     -- figures (imported lazily: ``import rfjax.plot``)
"""

from rfjax import prepare  # noqa: F401 - rfjax.prepare.linearize etc.
from rfjax._types import HW, GradientMaps, ReceptiveField
from rfjax.engine import gradient_maps
from rfjax.errors import RFError, RFTooLarge
from rfjax.fit import fit_maps, receptive_field
from rfjax.prepare import linearize, prepare_params

__all__ = [
    "HW",
    "GradientMaps",
    "RFError",
    "RFTooLarge",
    "ReceptiveField",
    "fit_maps",
    "gradient_maps",
    "linearize",
    "prepare_params",
    "receptive_field",
]
__version__ = "0.1.0"
