"""The RF preparation: parameters by name, and the jaxpr-level linearisation."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rfjax
from rfjax import HW
from rfjax.prepare import constant_kernel, linearize, prepare_params


class ReluBnNet(nnx.Module):
    """conv3 valid -> BN -> relu6 -> maxpool 3/2 -> conv3 'same' stride 2 -> relu."""

    def __init__(self, rngs):
        self.c1 = nnx.Conv(3, 8, (3, 3), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.c2 = nnx.Conv(8, 4, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu6(self.bn(self.c1(x)))
        x = nnx.max_pool(x, (3, 3), (2, 2))
        return jax.nn.relu(self.c2(x))


def test_prepare_params_by_name():
    state = nnx.state(ReluBnNet(nnx.Rngs(0)))
    p = prepare_params(state)
    k1 = np.asarray(p["c1"]["kernel"][...])
    assert np.all(k1 == 1 / (3 * 3.0))  # 1 / (C_in * sqrt(kh * kw))
    assert np.all(np.asarray(p["c1"]["bias"][...]) == 0)
    assert np.all(np.asarray(p["bn"]["scale"][...]) == 1) and np.all(np.asarray(p["bn"]["var"][...]) == 1)
    assert np.all(np.asarray(p["bn"]["mean"][...]) == 0) and np.all(np.asarray(p["bn"]["bias"][...]) == 0)
    assert constant_kernel((3, 3, 1, 32)) == 1 / 3  # depthwise: 1 / sqrt(kh * kw)
    assert constant_kernel((64, 10)) == 1 / 64


def test_linearize_replaces_relu_clip_and_max_pool():
    def f(x):
        return nnx.max_pool(jax.nn.relu6(jax.nn.relu(x - 5.0)), (2, 2), (2, 2))

    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    # relu(v) -> v / 2, relu6(u) -> (u / 2 + 6) / 2, max pool -> mean: all affine
    u = (x - 5.0) / 2
    want = ((u / 2 + 6) / 2).reshape(2, 2, 2, 2).mean(axis=(1, 3))
    got = linearize(f)(x)[0, :, :, 0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    g = jax.grad(lambda x: linearize(f)(x).sum())(x)
    assert np.all(np.asarray(g) > 0)  # every input pixel reaches the output
    assert jax.jit(linearize(f))(x).shape == (1, 2, 2, 1)


def test_prepared_nnx_model_has_the_closed_form_rf():
    # conv3 (s1) -> maxpool3/2 -> conv3 same s2:
    # size = 1 + 2 + 2*1 + 2*2 = 9, stride 4; P = 0 + 0 + 1*2 = 2 -> offset 9/2 - 2 = 2.5
    model = ReluBnNet(nnx.Rngs(0))
    before = jax.tree_util.tree_map(np.asarray, nnx.state(model))
    rf = rfjax.receptive_field(model, (41, 41, 3))
    assert (
        rf.size == HW(9, 9) and rf.stride == HW(4, 4) and rf.offset == HW(2.5, 2.5) and rf.padding == HW(2, 2)
    )
    after = jax.tree_util.tree_map(np.asarray, nnx.state(model))
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(np.array_equal, before, after)
    )  # the model is untouched
