"""The closed-form RF calculator against published values, hand-worked cases, a
brute-force interval propagation written here, and JAX itself."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chains import chain_fn
from jax import lax

from rfjax._types import HW, ReceptiveField
from rfjax.analytic import Layer, analytic_rf, analytic_sweep, output_shape, output_size
from rfjax.errors import RFError

C = Layer.conv
POOL = Layer.pool


def vgg16_pool5() -> list[Layer]:
    layers: list[Layer] = []
    for n_convs in (2, 2, 3, 3, 3):
        layers += [C(3, padding="same") for _ in range(n_convs)]
        layers.append(POOL(2, kind="max_pool"))
    return layers


def readme_net() -> list[Layer]:
    return [C(5), C(3), POOL(2), C(3), C(3), POOL(2), C(3), C(3, name="feature_grid")]


# --------------------------------------------------------------------------- published values


def test_vgg16_pool5_distill_table():
    rf = analytic_rf(vgg16_pool5(), (224, 224))
    assert rf.size == HW(212, 212)
    assert rf.stride == HW(32, 32)
    assert rf.padding == HW(90, 90)
    assert rf.offset == HW(16.0, 16.0)
    assert rf.output_shape == HW(7, 7)
    assert rf.method == "analytic"


def test_receptivefield_readme_net():
    rf = analytic_rf(readme_net(), (96, 96, 3))
    assert rf.offset == HW(17.0, 17.0)
    assert rf.stride == HW(4, 4)
    assert rf.size == HW(34, 34)
    assert rf.padding == HW(0, 0)
    assert rf.output_shape == HW(16, 16)
    assert rf.input_shape == HW(96, 96)
    assert rf.name == "feature_grid"
    assert isinstance(rf, ReceptiveField)


# --------------------------------------------------------------------------- hand-worked cases


def test_single_same_3x3():
    rf = analytic_rf([C(3, padding="same")], (10, 10))
    assert (rf.size, rf.stride, rf.offset, rf.padding) == (HW(3, 3), HW(1, 1), HW(0.5, 0.5), HW(1, 1))
    assert rf.output_shape == HW(10, 10)


def test_asymmetric_same_stride2():
    # k=3, s=2, 'same' on 8: out 4, total pad (4-1)*2 + 3 - 8 = 1 -> (0, 1).
    # On 7: out 4, total (4-1)*2 + 3 - 7 = 2 -> (1, 1).
    layer = C(3, 2, padding="same")
    assert layer.pads(8, 0) == (0, 1)
    assert layer.pads(7, 0) == (1, 1)
    rf = analytic_rf([layer], (8, 7))
    assert rf.output_shape == HW(4, 4)
    assert rf.padding == HW(0, 1)
    assert rf.offset == HW(1.5, 0.5)
    # Two such layers on 9: layer 1 pads (1, 1) -> 5; layer 2 on 5 pads (1, 1) -> 3.
    # Output 0 reads layer-1 cells -1..1, which read input -3..3: size 7, centre 0.5, P = 3.
    rf2 = analytic_rf([layer, layer], (9, 8))
    assert rf2.size == HW(7, 7)
    assert rf2.stride == HW(4, 4)
    assert rf2.offset == HW(0.5, 3.5)
    assert rf2.padding == HW(3, 0)
    assert rf2.output_shape == HW(3, 2)


def test_even_kernel_same_extra_pad_at_end():
    # k=4, s=1, 'same' on 10: total 3 -> (1, 2); cell 0 covers -1..2, centre 1.0.
    layer = C(4, padding="same")
    assert layer.pads(10, 1) == (1, 2)
    rf = analytic_rf([layer], (10, 10))
    assert rf.offset == HW(1.0, 1.0) and rf.padding == HW(1, 1) and rf.size == HW(4, 4)


@pytest.mark.parametrize("k,d", [(3, 2), (3, 4), (5, 3), (2, 5)])
def test_dilation(k, d):
    rf = analytic_rf([C(k, dilation=d)], (64, 64))
    assert rf.size == HW(1 + d * (k - 1), 1 + d * (k - 1))
    assert rf.offset == HW(rf.size.h / 2, rf.size.w / 2)
    assert rf.output_shape == HW(64 - d * (k - 1), 64 - d * (k - 1))


def test_non_square():
    layers = [C((3, 5), (1, 2), dilation=(2, 1)), POOL((2, 3), (2, 1)), C((1, 3), padding=((0, 0), (2, 1)))]
    rf = analytic_rf(layers, (40, 30))
    # h: k 3 d 2 s 1 -> span 5; pool 2 s 2; k 1.   size 1 + 4 + 1 = 6, stride 2, P 0.
    # w: k 5 s 2; pool 3 s 1 (J 2); k 3 pad-left 2 (J 2). size 1 + 4 + 2*2 + 2*2 = 13, stride 2, P 4.
    assert rf.size == HW(6, 13)
    assert rf.stride == HW(2, 2)
    assert rf.padding == HW(0, 4)
    assert rf.offset == HW(3.0, 2.5)
    # h: 40 -> 36 -> 18 -> 18 ; w: 30 -> 13 -> 11 -> 11 + 3 - 3 + 1 = 12
    assert rf.output_shape == HW(18, 12)


def test_explicit_int_padding_and_constructors():
    layer = C(3, padding=2)
    assert layer.padding == ((2, 2), (2, 2))
    assert layer.kernel == (3, 3) and layer.stride == (1, 1) and layer.dilation == (1, 1)
    assert POOL(3).stride == (3, 3) and POOL(3, 1).stride == (1, 1)
    assert Layer((2, 3)).kernel == (2, 3)
    assert C(3, padding="SAME").padding == "same"
    assert output_size(10, layer) == 12
    assert output_shape((10, 7), C((3, 1), 2)) == HW(4, 4)


def test_sweep_grows_layer_by_layer():
    sweep = analytic_sweep(readme_net(), (96, 96))
    sizes = [rf.size.h for rf in sweep]
    assert sizes == [5, 7, 8, 12, 16, 18, 26, 34]
    assert [rf.stride.h for rf in sweep] == [1, 1, 2, 2, 2, 4, 4, 4]
    assert [rf.output_shape.h for rf in sweep] == [92, 90, 45, 43, 41, 20, 18, 16]


# --------------------------------------------------------------------------- errors


def test_too_small_input_names_argument():
    with pytest.raises(RFError, match="input_shape") as info:
        analytic_rf(readme_net(), (20, 96))
    assert "layers[" in str(info.value)
    # Exactly large enough works: the README net needs 34 pixels for one cell.
    assert analytic_rf(readme_net(), (34, 35)).output_shape == HW(1, 1)
    with pytest.raises(RFError, match="input_shape"):
        analytic_rf(readme_net(), (33, 96))


@pytest.mark.parametrize(
    "bad,word",
    [
        (lambda: C(0), "kernel"),
        (lambda: C(3, 0), "stride"),
        (lambda: C(3, dilation=(1, 0)), "dilation"),
        (lambda: C(3, padding="full"), "padding"),
        (lambda: C(3, padding=((1, -1), (0, 0))), "padding"),
        (lambda: C((1, 2, 3)), "kernel"),
        (lambda: Layer(3, kind="dense"), "kind"),
        (lambda: analytic_rf([], (8, 8)), "layers"),
        (lambda: analytic_rf([C(3)], (8,)), "input_shape"),
        (lambda: analytic_rf([C(3)], (8, 0)), "input_shape"),
        (lambda: analytic_rf([(3, 3)], (8, 8)), "layers"),
        (lambda: output_size(8, C(3), axis=2), "axis"),
    ],
)
def test_bad_arguments_raise_rferror(bad, word):
    with pytest.raises(RFError, match=word):
        bad()


# --------------------------------------------------------------------------- brute force


def _brute_pads(n: int, layer: Layer, axis: int) -> tuple[int, int]:
    """Padding from JAX's own rule (lax.padtype_to_pads), with the dilated window."""
    if layer.padding == "valid":
        return (0, 0)
    if layer.padding == "same":
        span = layer.dilation[axis] * (layer.kernel[axis] - 1) + 1
        ((lo, hi),) = lax.padtype_to_pads((n,), (span,), (layer.stride[axis],), "SAME")
        return (int(lo), int(hi))
    return layer.padding[axis]


def brute_axis(layers: list[Layer], n: int, axis: int) -> tuple[int, int, float, int]:
    """(size, stride, offset, output length) along one axis by propagating the set of
    positions each output index reads, layer by layer, back to input coordinates."""
    lengths, pads = [n], []
    for layer in layers:
        before, after = _brute_pads(lengths[-1], layer, axis)
        pads.append(before)
        k, s, d = layer.kernel[axis], layer.stride[axis], layer.dilation[axis]
        m = 0
        while m * s + d * (k - 1) < lengths[-1] + before + after:
            m += 1
        lengths.append(m)

    def support(index: int) -> set[int]:
        cur = {index}
        for layer, before in zip(reversed(layers), reversed(pads)):
            k, s, d = layer.kernel[axis], layer.stride[axis], layer.dilation[axis]
            cur = {j * s - before + t * d for j in cur for t in range(k)}
        return cur

    s0, s1 = support(0), support(1)
    size = max(s0) - min(s0) + 1
    assert size == max(s1) - min(s1) + 1
    c0 = (min(s0) + max(s0) + 1) / 2
    c1 = (min(s1) + max(s1) + 1) / 2
    return size, int(c1 - c0), c0, lengths[-1]


CASES = [
    (readme_net(), (96, 96)),
    (vgg16_pool5(), (224, 224)),
    (vgg16_pool5(), (227, 201)),
    ([C(7, 2, padding="same"), POOL(3, 2, padding="same"), C(3, padding="same")], (37, 36)),
    ([C((3, 5), (2, 1), dilation=(1, 3), padding="same"), C(4, (1, 3), padding="same")], (31, 44)),
    (
        [
            C(2, 2),
            C((3, 1), padding=((2, 0), (0, 1))),
            POOL((1, 2), (3, 2)),
            C(5, dilation=2, padding="same"),
        ],
        (61, 50),
    ),
    ([C(1, 3, padding="same"), C(6, 1, dilation=3, padding="same"), C(3, 2, padding="same")], (75, 76)),
]


@pytest.mark.parametrize("layers,hw", CASES)
def test_against_brute_force(layers, hw):
    rf = analytic_rf(layers, hw)
    for a, name in enumerate(("h", "w")):
        size, stride, offset, length = brute_axis(layers, hw[a], a)
        assert getattr(rf.size, name) == size
        assert getattr(rf.stride, name) == stride
        assert getattr(rf.offset, name) == offset
        assert getattr(rf.padding, name) == size / 2 - offset
        assert getattr(rf.output_shape, name) == length


def test_against_brute_force_exhaustive_small():
    """Every 2-layer 1-D chain with small kernels/strides/dilations and both paddings."""
    opts = list(itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2), ("valid", "same")))
    for (k1, s1, d1, p1), (k2, s2, d2, p2) in itertools.product(opts, opts):
        layers = [
            C((k1, 1), (s1, 1), dilation=(d1, 1), padding=p1),
            C((k2, 1), (s2, 1), dilation=(d2, 1), padding=p2),
        ]
        for n in (27, 28, 29, 30):
            rf = analytic_rf(layers, (n, 1))
            assert (rf.size.h, rf.stride.h, rf.offset.h, rf.output_shape.h) == brute_axis(layers, n, 0)


# --------------------------------------------------------------------------- JAX itself


@pytest.mark.parametrize("layers,hw", CASES[2:])
def test_same_padding_agrees_with_jax_strings(layers, hw):
    x = jax.random.uniform(jax.random.PRNGKey(0), (1, *hw, 2))
    a = jax.jit(chain_fn(layers, channels=2))(x)
    b = jax.jit(chain_fn(layers, channels=2, padding_mode="strings"))(x)
    assert a.shape == b.shape == (1, *analytic_rf(layers, hw).output_shape, 2)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers,hw", CASES[:1] + CASES[3:])
def test_gradient_support_matches_rect(layers, hw):
    """The input-gradient support of cells whose RF is inside the input spans exactly
    the analytic rectangle (jax.grad directly, independent of the rfjax engine)."""
    rf = analytic_rf(layers, hw)
    fn = jax.jit(chain_fn(layers))
    x = jnp.ones((1, *hw, 1))
    y, pullback = jax.vjp(fn, x)
    checked = 0
    for i in range(rf.output_shape.h):
        for j in range(rf.output_shape.w):
            top, left, bottom, right = rf.rect((i, j))
            if top < 0 or left < 0 or bottom > hw[0] or right > hw[1]:
                continue
            g = pullback(jnp.zeros_like(y).at[0, i, j, 0].set(1.0))[0][0, :, :, 0]
            rows = np.flatnonzero(np.asarray(g != 0).any(axis=1))
            cols = np.flatnonzero(np.asarray(g != 0).any(axis=0))
            assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (top, bottom, left, right)
            checked += 1
            if checked >= 3:
                return
    assert checked > 0


def test_output_size_formula_matches_ceil_for_same():
    for n, k, s, d in itertools.product(range(1, 15), range(1, 6), range(1, 4), range(1, 3)):
        layer = C(k, s, dilation=d, padding="same")
        assert output_size(n, layer) == math.ceil(n / s)
        assert layer.pads(n, 0) == _brute_pads(n, layer, 0)
