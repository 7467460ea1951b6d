"""The engine against closed-form gradients built with numpy (an independent source)."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import rfjax
from rfjax import RFError, engine
from rfjax.memory import compile_count

DN = ("NHWC", "HWIO", "NHWC")


def conv_fn(kernel, stride=(1, 1), dilation=(1, 1)):
    k = jnp.asarray(kernel, jnp.float32)
    return lambda x: lax.conv_general_dilated(
        x, k, stride, "VALID", rhs_dilation=dilation, dimension_numbers=DN
    )


def expected_conv_grad(kernel, cell, stride, dilation, in_hw, channels=None):
    """d(sum_c w_c out[i, j, c]) / d in, written out by hand: the kernel (summed over the
    chosen output channels) stamped at (i*s, j*s) with dilation."""
    kernel = np.asarray(kernel, np.float64)
    kh, kw, cin, cout = kernel.shape
    wvec = np.ones(cout) if channels is None else np.eye(cout)[np.atleast_1d(channels)].sum(0)
    k = kernel @ wvec  # (kh, kw, cin)
    g = np.zeros(tuple(in_hw) + (cin,))
    for a in range(kh):
        for b in range(kw):
            g[cell[0] * stride[0] + a * dilation[0], cell[1] * stride[1] + b * dilation[1]] += k[a, b]
    return g


@pytest.fixture(scope="module")
def kernel():
    return np.random.default_rng(0).normal(size=(3, 2, 2, 4)).astype(np.float32)


@pytest.mark.parametrize("strategy", ["dense", "packed"])
def test_every_cell_matches_hand_computed_gradient(kernel, strategy):
    stride, dil = (2, 1), (1, 2)
    fn = conv_fn(kernel, stride, dil)
    x = np.random.default_rng(1).normal(size=(11, 9, 2)).astype(np.float32)
    gm = rfjax.gradient_maps(fn, x, input_channels="keep", strategy=strategy)
    assert gm.maps.shape == (5, 7, 11, 9, 2) and gm.full_grid
    for i in range(5):
        for j in range(7):
            np.testing.assert_allclose(
                gm.maps[i, j], expected_conv_grad(kernel, (i, j), stride, dil, (11, 9)), atol=1e-5
            )


def test_input_channel_reductions(kernel):
    fn = conv_fn(kernel)
    x = np.ones((6, 6, 2), np.float32)
    keep = rfjax.gradient_maps(fn, x, input_channels="keep").maps
    want = np.stack(
        [
            np.stack([expected_conv_grad(kernel, (i, j), (1, 1), (1, 1), (6, 6)) for j in range(5)])
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(rfjax.gradient_maps(fn, x, input_channels="sum").maps, want.sum(-1), atol=1e-5)
    np.testing.assert_allclose(rfjax.gradient_maps(fn, x).maps, np.abs(want).sum(-1), atol=1e-5)
    np.testing.assert_allclose(keep, want, atol=1e-5)


def test_subset_of_cells_and_channels(kernel):
    fn = conv_fn(kernel)
    x = np.ones((7, 7, 2), np.float32)
    cells = [(0, 0), (4, 3), (2, 5)]
    gm = rfjax.gradient_maps(fn, x, cells=cells, channels=[1, 3], input_channels="keep")
    assert gm.maps.shape == (3, 7, 7, 2) and not gm.full_grid
    for n, c in enumerate(cells):
        np.testing.assert_allclose(
            gm.maps[n], expected_conv_grad(kernel, c, (1, 1), (1, 1), (7, 7), [1, 3]), atol=1e-5
        )
        np.testing.assert_allclose(gm.at(c), gm.maps[n])
    one = rfjax.gradient_maps(fn, x, cells=[(4, 3)], channels=2, input_channels="keep")
    np.testing.assert_allclose(
        one.maps[0], expected_conv_grad(kernel, (4, 3), (1, 1), (1, 1), (7, 7), 2), atol=1e-5
    )


def test_score_map_cotangent_is_the_weighted_sum_of_cell_gradients(kernel):
    fn = conv_fn(kernel)
    x = np.ones((7, 6, 2), np.float32)
    score = np.random.default_rng(2).uniform(size=(5, 5)).astype(np.float32)
    got = rfjax.gradient_maps(fn, x, cotangents=score, input_channels="keep").maps
    want = sum(
        score[i, j] * expected_conv_grad(kernel, (i, j), (1, 1), (1, 1), (7, 6))
        for i in range(5)
        for j in range(5)
    )
    assert got.shape == (1, 7, 6, 2)
    np.testing.assert_allclose(got[0], want, atol=1e-4)


def test_several_feature_maps_in_one_call(kernel):
    k2 = np.ones((1, 1, 4, 3), np.float32)

    def fn(x):
        a = conv_fn(kernel)(x)
        return {"a": a, "b": lax.conv_general_dilated(a, k2, (1, 1), "VALID", dimension_numbers=DN)}

    x = np.ones((5, 5, 2), np.float32)
    out = rfjax.gradient_maps(fn, x, input_channels="keep")
    assert set(out) == {"a", "b"} and out["b"].name == "b"
    np.testing.assert_allclose(
        out["a"].maps[1, 2], expected_conv_grad(kernel, (1, 2), (1, 1), (1, 1), (5, 5)), atol=1e-5
    )
    # b = 3 * sum over a's channels, so each b cell's gradient is 3x a's
    np.testing.assert_allclose(out["b"].maps, 3 * out["a"].maps, rtol=1e-5)
    only_b = rfjax.gradient_maps(fn, x, outputs=["b"], input_channels="keep")
    assert set(only_b) == {"b"}


def test_memory_budget_splits_into_chunks_with_the_same_answer():
    fn = conv_fn(np.ones((5, 5, 3, 16), np.float32))
    x = np.ones((40, 40, 3), np.float32)
    xb = engine.as_batch(x)
    shapes = [(1, 36, 36, 16)]
    one_cell = engine.memory_per_chunk(fn, None, xb, shapes, 1)
    all_cells = engine.memory_per_chunk(fn, None, xb, shapes, 36 * 36)
    budget = (one_cell + all_cells) // 8
    chunk = engine.chunk_for_budget(fn, None, xb, shapes, budget, "abs_sum")
    assert 1 < chunk < 36 * 36
    assert engine.memory_per_chunk(fn, None, xb, shapes, chunk) <= budget
    full = rfjax.gradient_maps(fn, x, strategy="dense").maps
    chunked = rfjax.gradient_maps(fn, x, strategy="dense", max_memory=budget).maps
    np.testing.assert_array_equal(full, chunked)


def test_sharding_over_two_host_devices_gives_the_same_maps(tmp_path):
    script = textwrap.dedent(
        """
        import numpy as np, jax, jax.numpy as jnp, rfjax
        from jax import lax
        assert jax.local_device_count() == 2
        k = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 4)), jnp.float32)
        fn = lambda x: lax.conv_general_dilated(x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        x = np.random.default_rng(1).normal(size=(9, 8, 2)).astype(np.float32)
        a = rfjax.gradient_maps(fn, x, devices=2, strategy='dense').maps
        b = rfjax.gradient_maps(fn, x, devices=1, strategy='dense').maps
        np.save(r'%s', np.stack([a, b]))
        """
        % (tmp_path / "out.npy")
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    a, b = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a).sum() > 0


# ----------------------------------------------------------------------------- bad input


def test_non_nhwc_output_is_refused_with_advice():
    with pytest.raises(RFError, match=r"fn's output has shape \(1, 48\).*spatial layer"):
        rfjax.gradient_maps(lambda x: x.reshape(1, -1), np.ones((4, 4, 3), np.float32))


def test_cell_outside_grid_is_refused(kernel):
    with pytest.raises(RFError, match=r"cells contains \(4, 0\), outside the output's 4x5 grid"):
        rfjax.gradient_maps(conv_fn(kernel), np.ones((6, 6, 2), np.float32), cells=[(4, 0)])


def test_channel_outside_output_is_refused(kernel):
    with pytest.raises(RFError, match=r"channels=7 is outside the output's 4 channels"):
        rfjax.gradient_maps(conv_fn(kernel), np.ones((6, 6, 2), np.float32), channels=7)


def test_wrong_input_shape_names_input_shape(kernel):
    with pytest.raises(RFError, match=r"fn failed on an input of shape \(1, 6, 6, 3\).*input_shape"):
        rfjax.gradient_maps(conv_fn(kernel), np.ones((6, 6, 3), np.float32))
    with pytest.raises(RFError, match=r"x has shape \(2, 6, 6, 2\)"):
        rfjax.gradient_maps(conv_fn(kernel), np.ones((2, 6, 6, 2), np.float32))


def test_too_small_input_is_refused(kernel):
    fn = conv_fn(np.ones((5, 5, 1, 1), np.float32))
    with pytest.raises(RFError, match=r"too small.*larger input_shape"):
        rfjax.gradient_maps(fn, np.ones((4, 4, 1), np.float32))


def test_memory_budget_below_one_cell_is_refused(kernel):
    with pytest.raises(
        RFError, match=r"max_memory=100 bytes is too small for (the forward pass|one cell).*raise max_memory"
    ):
        rfjax.gradient_maps(conv_fn(kernel), np.ones((6, 6, 2), np.float32), max_memory=100)


def test_bad_cotangent_shape_is_refused(kernel):
    with pytest.raises(RFError, match=r"cotangents has shape \(3, 3\); the output needs \(n, 4, 5, 4\)"):
        rfjax.gradient_maps(conv_fn(kernel), np.ones((6, 6, 2), np.float32), cotangents=np.ones((3, 3)))


def test_jit_compiles_once_per_shape(kernel):
    fn = conv_fn(kernel)
    x = np.ones((6, 6, 2), np.float32)
    rfjax.gradient_maps(fn, x, strategy="dense")
    before = compile_count()
    rfjax.gradient_maps(fn, x + 1, strategy="dense")
    assert compile_count() == before
    rfjax.gradient_maps(fn, np.ones((7, 6, 2), np.float32), strategy="dense")
    assert compile_count() > before  # a new shape is compiled anew
