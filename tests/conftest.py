"""Session-wide test setup.

torchvision and timm import triton (a dependency of PyPI's Linux torch wheels), and
importing triton after TensorFlow 2.21 crashes the interpreter (segmentation fault in
triton's native module; the other order works). Collection imports the Keras test
modules before tests/test_torch.py, so the PyTorch model libraries are imported first.
"""

import timm  # noqa: F401
import torchvision  # noqa: F401
