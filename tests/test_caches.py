"""rfjax.clear_caches() releases every function and model rfjax has cached.

The caches hold what they cache strongly (compiled programs keyed by the user's
function, conversions kept while the Keras model lives), so each test first checks that
the object outlives its last user reference, then that it is gone after clearing.
"""

from __future__ import annotations

import gc
import weakref

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import rfjax

DN = ("NHWC", "HWIO", "NHWC")


def _conv_with_weights():
    """A 3x3 then 2x2-stride-2 convolution closing over its own weights."""
    k3 = jnp.ones((3, 3, 1, 2), jnp.float32)
    k2 = jnp.ones((2, 2, 2, 1), jnp.float32)

    def fn(x):
        y = lax.conv_general_dilated(x, k3, (1, 1), "VALID", dimension_numbers=DN)
        return lax.conv_general_dilated(y, k2, (2, 2), "VALID", dimension_numbers=DN)

    return fn


def _released(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


def test_clear_caches_releases_a_function_and_the_weights_it_closes_over():
    fn = _conv_with_weights()
    rf = rfjax.receptive_field(fn, (12, 12, 1))
    assert (rf.size.h, rf.stride.h) == (4.0, 2.0)  # closed form: 3 + (2 - 1) * 1, stride 1 * 2
    x = np.ones((1, 12, 12, 1), np.float32)
    rfjax.gradient_maps(fn, x, cells=[(0, 0)])
    rfjax.effective_rf(fn, x, rf=None)
    ref = weakref.ref(fn)
    del fn
    assert not _released(ref)  # the compiled programs keep it
    rfjax.clear_caches()
    assert _released(ref)


def test_clear_caches_releases_the_conversion_of_a_live_keras_model_and_its_weights():
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(2, 3, name="c3"),
            keras.layers.Conv2D(1, 2, strides=2, name="c2"),
        ]
    )
    rf = rfjax.receptive_field(model, layer="c2")
    assert (rf.size.h, rf.stride.h) == (4.0, 2.0)
    converted = rfjax.resolve_model(model)
    refs = [weakref.ref(converted), weakref.ref(converted.params["c3"]["kernel"])]
    del converted
    assert not any(_released(r) for r in refs)  # kept while the Keras model lives
    rfjax.clear_caches()
    assert all(_released(r) for r in refs)  # the conversion, and its weights held by its copies
