"""Packed grid-line passes give exactly the per-line supports of one pass per line.

The reference is computed here with plain ``jax.vjp``, one grid line at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import rfjax
from rfjax import engine
from rfjax.lines import line_supports

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, k, stride=1, dilation=1, padding="VALID"):
    w = jnp.ones((k, k, x.shape[-1], 1), jnp.float32)
    return lax.conv_general_dilated(
        x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation), dimension_numbers=DN
    )


def uneven(x):
    """Left half of the output sees a 3x3 window, right half a 9x9 one: not uniform."""
    a = conv(x, 3)[:, 3:-3, 3:-3]
    b = conv(x, 9)
    half = a.shape[2] // 2
    return jnp.concatenate([a[:, :, :half], b[:, :, half:]], axis=2)


PRODUCT = {
    "readme-like": lambda x: conv(
        lax.reduce_window(conv(conv(x, 5), 3), 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), 3
    ),
    "dilated": lambda x: conv(conv(x, 3, dilation=3), 3, stride=2),
    "flipped": lambda x: conv(x, 3)[:, ::-1, ::-1],
    "same-stride3": lambda x: conv(conv(x, 4, stride=3, padding="SAME"), 3, padding="SAME"),
}


def reference(fn, x):
    out, vjp = jax.vjp(fn, x)
    _, ho, wo, _ = out.shape
    rows, cols = [], []
    for i in range(ho):
        ct = jnp.zeros(out.shape).at[0, i].set(1.0)
        rows.append(np.flatnonzero(np.abs(np.asarray(vjp(ct)[0][0])).sum((1, 2)) > 0))
    for j in range(wo):
        ct = jnp.zeros(out.shape).at[0, :, j].set(1.0)
        cols.append(np.flatnonzero(np.abs(np.asarray(vjp(ct)[0][0])).sum((0, 2)) > 0))
    return rows, cols


@pytest.mark.parametrize("name", sorted(PRODUCT))
def test_packed_lines_equal_one_pass_per_line(name):
    fn = PRODUCT[name]
    x = jnp.ones((1, 60, 52, 1), jnp.float32)
    plan = engine.plan(fn, x, devices=1)
    grid = plan.grid(0)
    rows, cols = line_supports(plan.run_many, {0: grid}, (60, 52))[0]
    want_rows, want_cols = reference(fn, x)
    assert len(rows) == grid[0] and len(cols) == grid[1]
    for got, want in zip(rows, want_rows):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(cols, want_cols):
        np.testing.assert_array_equal(got, want)


def test_rf_that_is_not_a_product_falls_back_to_cells():
    # the probe cells catch it: the lines answer would have read the 3x3 half only
    by_lines = rfjax.receptive_field(uneven, (60, 52, 1), method="lines")
    by_cells = rfjax.receptive_field(uneven, (60, 52, 1), method="cells")
    assert by_lines == by_cells and by_lines.method == "cells"
    assert by_cells.size == rfjax.HW(9, 9)


def test_packed_gradient_maps_stay_exact_when_rfs_are_uneven():
    x = np.random.default_rng(0).normal(size=(60, 52, 1)).astype(np.float32)
    dense = rfjax.gradient_maps(uneven, x, strategy="dense").maps
    packed = rfjax.gradient_maps(uneven, x, strategy="packed").maps
    np.testing.assert_array_equal(packed, dense)
