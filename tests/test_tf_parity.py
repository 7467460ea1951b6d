"""rfjax's gradient maps against TensorFlow's (an independent implementation).

The README network of the ``receptivefield`` package is built twice: in Keras 3
(``benchmarks/tf_ways.py``) and as a plain JAX function (``benchmarks/rfjax_ways.py``),
with the same constant weights. TensorFlow's GradientTape gradients are the reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks folder is not an installed package
    sys.path.insert(0, str(ROOT))

import rfjax
from benchmarks import rfjax_ways, tf_ways

CELLS = np.array([(0, 0), (0, 15), (15, 0), (15, 15), (8, 8), (7, 3)])
SMALL = (64, 64, 3)  # 8x8 grid: all cells through TF's batched tape stay cheap


def _close(actual, expected):
    expected = np.asarray(expected)
    # constant positive weights: every gradient entry is a sum of positive terms, no cancellation
    np.testing.assert_array_equal(np.abs(actual) > 0, np.abs(expected) > 0)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7 * float(np.abs(expected).max()))


@pytest.fixture(scope="module")
def tf_model():
    return tf_ways.readme_net()


@pytest.fixture(scope="module")
def tf_cells(tf_model):
    return tf_ways.per_cell_tape(tf_model, cells=CELLS)


@pytest.fixture(scope="module")
def params():
    return rfjax_ways.readme_params()


def test_networks_have_the_same_grid(tf_model, params):
    import jax

    out = jax.eval_shape(lambda x: rfjax_ways.readme_net(params, x), rfjax_ways.ones_input())
    assert tuple(tf_model.output_shape[1:]) == tuple(out.shape[1:]) == (16, 16, 128)


def test_tf_support_of_cell_00_is_closed_form(tf_cells):
    # RF size 1 + (4 + 2 + 1) + 2 * (2 + 2 + 1) + 4 * (2 + 2) = 34 (Araujo et al.), from the corner
    nz = np.abs(tf_cells[0]) > 0
    assert np.array_equal(np.flatnonzero(nz.any(axis=1)), np.arange(34))
    assert np.array_equal(np.flatnonzero(nz.any(axis=0)), np.arange(34))
    assert nz[:34, :34].all()


@pytest.mark.parametrize("strategy", ["auto", "dense", "packed"])
def test_all_cells_match_tf_per_cell_tape(tf_cells, params, strategy):
    maps = rfjax.gradient_maps(
        rfjax_ways.readme_net, rfjax_ways.ones_input(), params=params, input_channels="sum", strategy=strategy
    )
    assert maps.maps.shape == (16, 16, 96, 96)
    _close(maps.maps[CELLS[:, 0], CELLS[:, 1]], tf_cells)


def test_chosen_cells_match_tf_per_cell_tape(tf_cells, params):
    maps = rfjax.gradient_maps(
        rfjax_ways.readme_net, rfjax_ways.ones_input(), params=params, cells=CELLS, input_channels="sum"
    )
    assert maps.maps.shape == (len(CELLS), 96, 96)
    _close(maps.maps, tf_cells)
    for n, cell in enumerate(CELLS):
        _close(maps.at(tuple(cell)), tf_cells[n])


def test_abs_sum_equals_sum_for_positive_weights(tf_cells, params):
    maps = rfjax.gradient_maps(rfjax_ways.readme_net, rfjax_ways.ones_input(), params=params, cells=CELLS)
    _close(maps.maps, tf_cells)


def test_small_variant_all_cells_match_tf_batched_tape():
    model = tf_ways.readme_net(SMALL)
    expected = tf_ways.batched_tape(model)
    assert expected.shape == (8, 8, 64, 64)
    maps = rfjax.gradient_maps(
        rfjax_ways.readme_net,
        rfjax_ways.ones_input(SMALL),
        params=rfjax_ways.readme_params(),
        input_channels="sum",
    )
    _close(maps.maps, expected)


def test_random_input_and_channel_subset_match_tf(params):
    """A linear network's gradient does not depend on the input; a channel subset changes
    the cotangent. Both ways must still agree."""
    import tensorflow as tf

    model = tf_ways.readme_net(SMALL)
    x = np.random.default_rng(0).normal(size=(1,) + SMALL).astype(np.float32)
    chans = [3, 64, 127]
    xt = tf.constant(x)
    expected = []
    for i, j in [(0, 0), (5, 2)]:
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(tf.gather(model(xt)[0, i, j], chans))
        expected.append(tape.gradient(loss, xt)[0].numpy())
    maps = rfjax.gradient_maps(
        rfjax_ways.readme_net, x, params=params, cells=[(0, 0), (5, 2)], channels=chans, input_channels="keep"
    )
    _close(maps.maps, np.stack(expected))


def test_receptive_field_matches_receptivefield_readme(params):
    rf = rfjax.receptive_field(rfjax_ways.readme_net, (96, 96, 3), params=params)
    assert tuple(rf.size) == (34, 34)
    assert tuple(rf.stride) == (4, 4)
    assert tuple(rf.offset) == (17, 17)
    assert tuple(rf.output_shape) == (16, 16)
