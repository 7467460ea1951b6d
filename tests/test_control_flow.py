"""Exact RFs through control flow: the one jaxpr interpreter (rfjax.jaxpr) behind the RF
preparation and the CAM tap.

Expected values come from the closed form (:func:`rfjax.analytic.analytic_rf`), never from
rfjax's fit. The issue's network: a 3x3 'valid' stem conv + ReLU, then four blocks of
3x3 conv + ReLU + 3x3 stride-1 max pool, RF 3 + 4 * (2 + 2) = 19, with the blocks in
``lax.cond``, ``lax.scan``, ``jax.checkpoint``, ``lax.fori_loop`` or behind a ``custom_vjp``.
Its weights are random normal (negative ones included), so without the preparation dead
ReLUs and max pooling would shrink the measured RF.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from chains import chain_fn
from flax import linen as nn
from flax import nnx
from hypothesis import HealthCheck, assume, given, settings
from jax import lax
from jax.sharding import PartitionSpec
from test_properties import chains

import rfjax
from rfjax.analytic import Layer, analytic_rf
from rfjax.errors import RFDataDependent, RFError, RFUnsupported
from rfjax.prepare import linearize

C = 4  # channels of the issue's network
SHAPE = (32, 32, 3)


def _conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _pool(x, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 1, 1, 1), padding)


def _block(h, w, padding="SAME"):
    return _pool(jax.nn.relu(_conv(h, w, padding)), padding)


def _stem(p, x):
    return jax.nn.relu(_conv(x, p["stem"]["kernel"], "VALID"))


def _params():
    k = jax.random.split(jax.random.key(0), 2)
    return {
        "stem": {"kernel": jax.random.normal(k[0], (3, 3, 3, C))},
        "blocks": {"kernel": jax.random.normal(k[1], (4, 3, 3, C, C))},
        "train": jnp.ones(()),  # a parameter-only switch, as Flax's train/eval flags
        "depth": jnp.int32(4),
    }


def _issue_rf(padding="same"):
    block = [Layer.conv(3, padding=padding), Layer.pool(3, 1, padding=padding)]
    return analytic_rf([Layer.conv(3)] + block * 4, SHAPE[:2])


@jax.custom_vjp
def _guided_relu(x):
    return jnp.maximum(x, 0.0)


# guided backprop: a bwd that differs from the primal's gradient (the RF follows the primal)
_guided_relu.defvjp(lambda x: (_guided_relu(x), x), lambda x, g: (jnp.where((x > 0) & (g > 0), g, 0.0),))


def _straight(p, x):
    h = _stem(p, x)
    for w in p["blocks"]["kernel"]:
        h = _block(h, w)
    return h


def _in_cond(p, x, padding="SAME"):
    h = _stem(p, x)
    for w in p["blocks"]["kernel"]:
        h = lax.cond(
            p["train"] > 0, lambda h, w=w: _block(h, w, padding), lambda h, w=w: _block(h, 2 * w, padding), h
        )
    return h


def _in_scan(p, x):
    return lax.scan(lambda h, w: (_block(h, w), None), _stem(p, x), p["blocks"]["kernel"])[0]


def _in_checkpoint(p, x):
    h = _stem(p, x)
    for w in p["blocks"]["kernel"]:
        h = jax.checkpoint(_block)(h, w)
    return h


def _in_fori_loop(p, x):
    return lax.fori_loop(0, 4, lambda i, h: _block(h, p["blocks"]["kernel"][i]), _stem(p, x))


def _custom_vjp(p, x):
    h = _stem(p, x)
    for w in p["blocks"]["kernel"]:
        h = _pool(_guided_relu(_conv(h, w, "SAME")), "SAME")
    return h


def _assert_rf(got, expected):
    summary = f"\nanalytic={expected}\nengine  ={got}"
    assert got.size == expected.size, summary
    assert got.stride == expected.stride, summary
    assert got.offset == expected.offset, summary
    assert got.padding == expected.padding, summary
    assert got.output_shape == expected.output_shape, summary


ISSUE_VARIANTS = {
    "straight": (_straight, "same"),
    "cond": (_in_cond, "same"),
    "scan": (_in_scan, "same"),
    "checkpoint": (_in_checkpoint, "same"),
    "fori_loop": (_in_fori_loop, "same"),
    "custom_vjp": (_custom_vjp, "same"),
}


@pytest.mark.parametrize("variant", list(ISSUE_VARIANTS), ids=list(ISSUE_VARIANTS))
def test_issue_network_rf_is_the_closed_form(variant):
    fn, padding = ISSUE_VARIANTS[variant]
    expected = _issue_rf(padding)
    assert expected.size == (19, 19)
    _assert_rf(rfjax.receptive_field(fn, SHAPE, params=_params()), expected)


@pytest.mark.slow
def test_issue_network_valid_blocks_in_cond():
    # silently 11 instead of 19 before the interpreter recursed into cond branches
    expected = _issue_rf("valid")
    assert expected.size == (19, 19)
    got = rfjax.receptive_field(lambda p, x: _in_cond(p, x, "VALID"), SHAPE, params=_params())
    _assert_rf(got, expected)


# --------------------------------------------------------------------------- hypothesis chains


def _relu_max_chain(layers, out_channels):
    """The chain with max pooling for its pools and a ReLU after every layer."""
    steps = [chain_fn([layer], channels=out_channels) for layer in layers]

    def fn(x):
        for step in steps:
            x = jax.nn.relu(step(x))
        return x

    return fn


def _zero_bwd(fn):
    """``fn`` behind a custom_vjp whose backward pass returns zeros."""
    wrapped = jax.custom_vjp(fn)
    wrapped.defvjp(lambda x: (fn(x), x), lambda x, g: (jnp.zeros_like(x),))
    return wrapped


WRAPPERS = {
    # one scan step per image of the batch
    "scan": lambda fn: lambda x: lax.scan(lambda c, xi: (c, fn(xi[None])[0]), 0.0, x)[1],
    # identical blocks repeated by a loop, accumulated in the carry
    "fori_loop": lambda fn: lambda x: lax.fori_loop(0, 2, lambda i, acc: acc + fn(x), jnp.zeros_like(fn(x))),
    "cond": lambda fn: lambda x: lax.cond(jnp.bool_(True), lambda x: fn(x), lambda x: 2 * fn(x), x),
    "checkpoint": jax.checkpoint,
    "custom_vjp": _zero_bwd,
}


def _well_posed(layers, shape):
    """A grid of at least 4x4 with two cells per axis whose closed-form RF is clear of the border."""
    rf = analytic_rf(layers, shape[:2])
    inside = []
    for a in (0, 1):
        lows = [i * rf.stride[a] - rf.padding[a] for i in range(rf.output_shape[a])]
        inside.append(sum(lo >= 1 and lo + rf.size[a] - 1 <= shape[a] - 2 for lo in lows))
    return min(rf.output_shape) >= 4 and min(inside) >= 2


@pytest.mark.parametrize("wrapper", list(WRAPPERS), ids=list(WRAPPERS))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=chains())
def test_wrapped_relu_max_pool_chains_are_the_closed_form(wrapper, case):
    layers, shape, out_channels = case
    layers = [
        layer if layer.kind == "conv" else dataclasses.replace(layer, kind="max_pool") for layer in layers
    ]
    assume(_well_posed(layers, shape))
    fn = WRAPPERS[wrapper](_relu_max_chain(layers, out_channels))
    _assert_rf(rfjax.receptive_field(fn, shape), analytic_rf(layers, shape[:2]))


# --------------------------------------------------------------------------- Flax


class _NnxBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(C, C, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x):
        return nnx.max_pool(jax.nn.relu(self.conv(x)), (3, 3), (1, 1), "SAME")


class _NnxScanNet(nnx.Module):
    """The issue's network with its four blocks stacked by nnx.vmap, run by nnx.scan over nnx.remat."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, C, (3, 3), padding="VALID", rngs=rngs)

        @nnx.split_rngs(splits=4)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stack(rngs):
            return _NnxBlock(rngs)

        self.blocks = stack(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        @nnx.remat
        def step(h, block):
            return block(h)

        return step(jax.nn.relu(self.stem(x)), self.blocks)


class _LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.max_pool(nn.relu(nn.Conv(C, (3, 3), padding="SAME")(x)), (3, 3), (1, 1), "SAME"), None


class _LinenScanNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(C, (3, 3), padding="VALID")(x))
        scanned = nn.scan(_LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=4)
        return scanned()(x, None)[0]


def test_nnx_scan_remat_model_is_the_closed_form():
    _assert_rf(rfjax.receptive_field(_NnxScanNet(nnx.Rngs(0)), SHAPE), _issue_rf())


def test_linen_scan_model_is_the_closed_form():
    model = _LinenScanNet()
    variables = model.init(jax.random.key(0), jnp.ones((1, *SHAPE)))
    assert (4, 3, 3, C, C) in [leaf.shape for leaf in jax.tree_util.tree_leaves(variables)]  # stacked
    _assert_rf(rfjax.receptive_field(model, SHAPE, params=variables), _issue_rf())


def test_shard_map_body_is_prepared():
    mesh = jax.make_mesh((1,), ("d",))

    def body(x):
        w = jnp.full((3, 3, 1, 2), -1.0)  # negative weights: every ReLU is dead without the rules
        return lax.psum(_pool(jax.nn.relu(_conv(x, w, "VALID")), "VALID"), "d")

    fn = jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec(), out_specs=PartitionSpec())
    layers = [Layer.conv(3), Layer.pool(3, 1)]
    _assert_rf(rfjax.receptive_field(fn, (20, 20, 1)), analytic_rf(layers, (20, 20)))


def test_rewritten_scan_keeps_its_carry_types():
    def f(x):
        def body(carry, _):
            i, h = carry
            return (i + 1, _pool(jax.nn.relu(h), "SAME")), None

        return lax.scan(body, (jnp.int32(0), x.astype(jnp.bfloat16)), None, length=2)[0]

    x = jnp.ones((1, 8, 8, 1))
    scans = [e for e in jax.make_jaxpr(linearize(f))(x).jaxpr.eqns if e.primitive.name == "scan"]
    body = scans[0].params["jaxpr"]
    assert [v.aval for v in body.jaxpr.outvars] == [v.aval for v in body.jaxpr.invars]  # (int32, bf16 map)
    assert not any(e.primitive.name in ("max", "reduce_window_max") for e in body.jaxpr.eqns)
    assert jax.eval_shape(linearize(f), x) == jax.eval_shape(f, x)


# --------------------------------------------------------------------------- rules


def test_rules_apply_only_to_values_that_depend_on_the_input():
    def f(p, x):
        return jnp.maximum(p, 0.0) + jnp.maximum(x, 0.0)

    # the parameter's max is kept (a constant), the input's becomes the mean
    assert float(linearize(f)(jnp.float32(-1.0), jnp.float32(-4.0))) == -2.0


def test_input_steered_select_and_mask_become_means():
    x = -jnp.arange(1.0, 5.0)
    np.testing.assert_allclose(linearize(lambda x: jnp.where(x > 0, x, 0.0))(x), x / 2)
    np.testing.assert_allclose(linearize(lambda x: x * (x > 0))(x), x / 2)
    assert np.all(np.asarray(jax.grad(lambda x: linearize(lambda x: x * (x > 0))(x).sum())(x)) == 0.5)
    np.testing.assert_allclose(linearize(lambda x: lax.cummax(x))(x), np.cumsum(x) / np.arange(1, 5))


def test_custom_vmap_primal_is_rewritten():
    relu = jax.custom_batching.custom_vmap(lambda x: jnp.maximum(x, 0.0))
    relu.def_vmap(lambda axis_size, in_batched, x: (jnp.maximum(x, 0.0), in_batched[0]))
    assert float(linearize(relu)(jnp.float32(-2.0))) == -1.0


def test_step_functions_and_stop_gradient_pass_the_gradient():
    def f(x):
        return jnp.round(x) + lax.stop_gradient(jnp.sign(x))

    assert float(jax.grad(linearize(f))(jnp.float32(0.3))) == 2.0  # both paths pass their operand


# --------------------------------------------------------------------------- refusals


def _conv1(x):
    return _conv(x, jnp.ones((3, 3, x.shape[-1], 1)), "SAME")


def _refusal(fn, shape=(16, 16, 1)):
    with pytest.raises(RFUnsupported) as info:
        rfjax.receptive_field(fn, shape)
    return info.value


def test_primitive_without_rule_is_refused_by_name_and_place():
    def fn(x):
        def step(h, _):
            h = lax.cond(jnp.bool_(True), lambda h: h, lambda h: lax.sort(h, dimension=1), h)
            return h, None

        return lax.scan(step, _conv1(x), None, length=2)[0]

    e = _refusal(fn)
    assert (e.primitive, e.where) == ("sort", "scan body > cond branch 0")
    assert "`sort` in scan body > cond branch 0" in str(e)


def test_input_chosen_indices_are_refused():
    def fn(x):
        h = _conv1(x)
        return jnp.take_along_axis(h, jnp.argmax(h, axis=1, keepdims=True), axis=1)

    assert _refusal(fn).primitive == "gather"


def test_unknown_sub_jaxpr_is_refused():
    def fn(x):  # a reduce_window with a computation of its own carries a jaxpr
        return lax.reduce_window(_conv1(x), 1.0, lambda a, b: a * b, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")

    e = _refusal(fn)
    assert e.primitive == "reduce_window" and not isinstance(e, RFDataDependent)


def test_input_steered_cond_is_refused():
    def fn(x):
        return lax.cond(x.mean() > 0, _conv1, lambda h: 2 * _conv1(h), x)

    e = _refusal(fn)
    assert isinstance(e, RFDataDependent) and e.primitive == "cond"
    assert "only defined for the branch taken at the constant input" in str(e)


def test_input_steered_while_is_refused():
    def fn(x):
        def body(c):
            return c[0] + 1, _conv1(c[1])

        return lax.while_loop(lambda c: c[1].sum() < 1e6, body, (0, x))[1]

    e = _refusal(fn)
    assert isinstance(e, RFDataDependent) and e.primitive == "while"


def test_while_with_parameter_bounds_is_refused():
    # fori_loop with array bounds is a while loop, which JAX cannot differentiate in reverse mode
    def fn(p, x):
        return lax.fori_loop(0, p["depth"], lambda i, h: _conv1(h), x)

    with pytest.raises(RFUnsupported) as info:
        rfjax.receptive_field(fn, (16, 16, 1), params={"depth": jnp.int32(2)})
    assert info.value.primitive == "while" and not isinstance(info.value, RFDataDependent)


# --------------------------------------------------------------------------- CAM tap


def _classifier(blocks):
    def fn(p, x):
        h = blocks(p, x)
        return {"features": h, "logits": h.mean(axis=(1, 2)) @ p["head"]}

    return fn


def test_grad_cam_through_scan_equals_straight_line():
    p = {**_params(), "head": jax.random.normal(jax.random.key(1), (C, 5))}
    images = jax.random.uniform(jax.random.key(2), (2, *SHAPE))
    kw = {"params": p, "layer": "features", "logits": "logits", "top_k": 2, "placement": "resize"}
    scanned = rfjax.grad_cam(_classifier(_in_scan), images, **kw)
    straight = rfjax.grad_cam(_classifier(_straight), images, **kw)
    np.testing.assert_array_equal(scanned.classes, straight.classes)
    np.testing.assert_allclose(scanned.maps, straight.maps, rtol=1e-4, atol=1e-6)
    assert np.abs(straight.maps).max() > 0


def test_tap_refuses_a_layer_whose_consumers_sit_in_the_same_scan():
    def fn(p, x):
        def step(h, w):
            h = _block(h, w)
            return h, h.mean(axis=(1, 2)) @ p["head"]

        h, ys = lax.scan(step, _stem(p, x), p["blocks"]["kernel"])
        return {"features": h, "logits": ys[-1]}

    p = {**_params(), "head": jnp.ones((C, 3))}
    with pytest.raises(RFError, match="inside `scan`"):
        rfjax.grad_cam(
            fn, jnp.ones((1, *SHAPE)), params=p, layer="features", logits="logits", placement="resize"
        )
