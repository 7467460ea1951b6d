"""The effective receptive field against closed forms and Luo et al.'s sqrt(depth) law."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import rfjax
from rfjax.erf import effective_rf
from rfjax.errors import RFError

DN = ("NHWC", "HWIO", "NHWC")


def conv_stack(params, x):
    for k in params:
        x = lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN)
    return x


def random_kernels(depth, channels=8, seed=0):
    rng = np.random.default_rng(seed)
    return [
        jnp.asarray(rng.normal(size=(3, 3, channels, channels)) / np.sqrt(9 * channels), jnp.float32)
        for _ in range(depth)
    ]


@pytest.fixture(scope="module")
def stacks():
    x = np.random.default_rng(1).normal(size=(4, 65, 65, 8)).astype(np.float32)
    return {d: effective_rf(conv_stack, x, params=random_kernels(d)) for d in (4, 16)}


def test_uniform_kernels_give_the_repeated_box_filter_exactly():
    # With 3x3 kernels of ones and one channel, the centre cell's gradient is the L-fold
    # convolution of a 3x3 box: per axis the trinomial with variance L * 2 / 3.
    depth = 5
    ones = [jnp.ones((3, 3, 1, 1), jnp.float32)] * depth
    e = effective_rf(conv_stack, np.zeros((1, 21, 21, 1), np.float32), params=ones)
    line = np.array([1.0])
    for _ in range(depth):
        line = np.convolve(line, np.ones(3))
    want = np.zeros((21, 21))
    want[5:16, 5:16] = np.outer(line, line)
    np.testing.assert_allclose(e.map, want, rtol=1e-6)
    assert e.cell == (10, 10) and e.centre == (10.5, 10.5)
    var = (e.map.sum(1) * (np.arange(21) + 0.5 - 10.5) ** 2).sum() / e.map.sum()
    assert var == pytest.approx(depth * 2 / 3)
    assert e.sigma.h == pytest.approx(np.sqrt(depth * 2 / 3), rel=0.05)
    assert e.rf.size == (11, 11) and e.rf_rect == (5.0, 5.0, 16.0, 16.0)


def test_sigma_grows_like_sqrt_depth(stacks):
    s4, s16 = (np.mean(stacks[d].sigma) for d in (4, 16))
    assert s16 / s4 == pytest.approx(2.0, rel=0.2)  # sqrt(16 / 4)
    # |g| of a zero-mean Gaussian field with variance profile N(0, L * 2/3) per axis is
    # roughly Gaussian with sigma sqrt(2 * L * 2/3).
    for d, s in ((4, s4), (16, s16)):
        assert s / np.sqrt(d) == pytest.approx(np.sqrt(4 / 3), rel=0.15)


def test_erf_is_concentrated_well_inside_the_theoretical_rf(stacks):
    for d, e in stacks.items():
        assert e.rf.size == (2 * d + 1, 2 * d + 1)
        t, left, b, r = (int(v) for v in e.rf_rect)
        outside = e.map.copy()
        outside[t:b, left:r] = 0
        assert outside.max() == 0  # no gradient outside the theoretical RF
        assert abs(e.centre.h - 32.5) < 1 and abs(e.centre.w - 32.5) < 1
    assert stacks[16].radius_fraction < 0.65
    assert stacks[16].radius_fraction < stacks[4].radius_fraction


def test_batch_average_equals_per_input_gradients():
    rng = np.random.default_rng(2)
    k1 = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    k2 = jnp.asarray(rng.normal(size=(3, 3, 4, 3)), jnp.float32)

    def relu_net(x):
        return lax.conv_general_dilated(
            jax.nn.relu(lax.conv_general_dilated(x, k1, (1, 1), "VALID", dimension_numbers=DN)),
            k2,
            (2, 2),
            "VALID",
            dimension_numbers=DN,
        )

    xs = rng.normal(size=(5, 19, 19, 2)).astype(np.float32)
    e = effective_rf(relu_net, xs, cell=(3, 5), channels=[0, 2])
    each = [rfjax.gradient_maps(relu_net, x, cells=[(3, 5)], channels=[0, 2]).maps[0] for x in xs]
    np.testing.assert_allclose(e.map, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    assert e.n_inputs == 5 and e.output_shape == (8, 8)
    sq = effective_rf(relu_net, xs, cell=(3, 5), squared=True, rf=None)
    assert sq.rf is None and sq.map.max() > 0


def test_mass_radius():
    ones = [jnp.ones((3, 3, 1, 1), jnp.float32)]
    x = np.zeros((9, 9, 1), np.float32)
    # nine equal pixels around (4.5, 4.5): the centre holds 1/9, with its 4 neighbours
    # (distance 1) 5/9, with the 4 corners (distance sqrt 2) all
    assert effective_rf(conv_stack, x, params=ones, mass=0.1).radius == 0.0
    assert effective_rf(conv_stack, x, params=ones, mass=0.5).radius == 1.0
    assert effective_rf(conv_stack, x, params=ones, mass=0.9).radius == pytest.approx(np.sqrt(2))


def test_erf_map_figure(stacks, tmp_path):
    from matplotlib.image import AxesImage
    from matplotlib.patches import Circle, Ellipse

    from rfjax.plot_cam import erf_map

    e = stacks[16]
    fig = erf_map(e, save=tmp_path / "erf.png")
    ax = fig.axes[0]
    im = next(c for c in ax.get_children() if isinstance(c, AxesImage))
    np.testing.assert_allclose(np.asarray(im.get_array()), e.map)
    assert im.get_extent() == [0, 65, 65, 0]
    rect = next(p for p in ax.patches if p.get_gid() == "rf")
    t, left, b, r = e.rf_rect
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (left, t, r - left, b - t)
    circle = next(p for p in ax.patches if p.get_gid() == "erf-radius")
    assert isinstance(circle, Circle) and circle.get_radius() == e.radius
    assert circle.center == (e.centre.w, e.centre.h)
    ellipse = next(p for p in ax.patches if p.get_gid() == "sigma")
    assert isinstance(ellipse, Ellipse) and (ellipse.width, ellipse.height) == (4 * e.sigma.w, 4 * e.sigma.h)
    assert ax.get_title() == "effective RF of cell (32, 32) of the output\nover 4 input(s)"
    assert (tmp_path / "erf.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mass": 1.0}, "mass=1.0 must be a fraction"),
        ({"cell": (9, 0)}, r"cell=\(9, 0\) is outside the 9x9 grid"),
        ({"channels": 3}, "outside the output's 1 channels"),
        ({"rf": "yes"}, "rf='yes' must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    ones = [jnp.ones((3, 3, 1, 1), jnp.float32)]
    with pytest.raises(RFError, match=match):
        effective_rf(conv_stack, np.zeros((9, 9, 1), np.float32), params=ones, **kwargs)


def test_several_outputs_need_output_and_zero_gradient_is_reported():
    def two(x):
        return {"a": x * 2, "b": x[:, :2, :2] * 0}

    with pytest.raises(RFError, match="pass output="):
        effective_rf(two, np.ones((6, 6, 1), np.float32))
    assert effective_rf(two, np.ones((6, 6, 1), np.float32), output="a", rf=None).map[3, 3] == 2
    with pytest.raises(RFError, match="zero for every input"):
        effective_rf(two, np.ones((6, 6, 1), np.float32), output="b", rf=None)
    with pytest.raises(RFError, match="dtype bool"):
        effective_rf(two, np.ones((6, 6, 1), bool), output="a")
