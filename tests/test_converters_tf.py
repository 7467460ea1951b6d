"""converters.from_tf: a non-Keras CNN written with raw tf.nn ops, as a tf.function and
as a SavedModel, converted through tf2jax. Expected RFs come from the closed-form
calculator (rfjax.analytic), expected outputs from TensorFlow itself."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2jax")

import jax
import numpy as np

import converters
import rfjax
from rfjax.analytic import Layer, analytic_sweep
from rfjax.errors import RFError

SHAPE = (45, 53, 3)  # odd, non-square: TF's SAME padding is asymmetric for the even kernels
CHAIN = [
    Layer.conv(4, 2, padding="same"),
    Layer.pool(2, 2, kind="max_pool"),
    Layer.conv(3, 1, padding="valid"),
    Layer.conv(2, 1, padding="same"),
]


class CNN(tf.Module):
    """conv 4x4/2 SAME + bias + ReLU, max-pool 2x2/2 VALID, conv 3x3 VALID + bias + ReLU,
    conv 2x2 SAME: raw tf.nn ops on tf.Variables with a fixed seed."""

    def __init__(self, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)

        def var(shape, name):
            return tf.Variable(rng.normal(0.0, 0.3, shape).astype(np.float32), name=name)

        self.k1, self.b1 = var((4, 4, 3, 8), "conv1/kernel"), var((8,), "conv1/bias")
        self.k2, self.b2 = var((3, 3, 8, 16), "conv2/kernel"), var((16,), "conv2/bias")
        self.k3 = var((2, 2, 16, 4), "head")

    def features(self, x):
        y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, self.k1, strides=2, padding="SAME"), self.b1))
        pooled = tf.nn.max_pool2d(y, ksize=2, strides=2, padding="VALID")
        y = tf.nn.relu(tf.nn.conv2d(pooled, self.k2, strides=1, padding="VALID") + self.b2)
        return {"block1": pooled, "features": tf.nn.conv2d(y, self.k3, strides=1, padding="SAME")}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
    def __call__(self, x):
        return self.features(x)

    @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32, name="image")])
    def head_only(self, x):
        return self.features(x)["features"]


def rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _x(shape=SHAPE, seed=1):
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    return CNN()


@pytest.fixture(scope="module")
def saved(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "cnn"
    tf.saved_model.save(cnn, str(path), signatures={"serving_default": cnn.__call__, "head": cnn.head_only})
    return path


@pytest.fixture(scope="module")
def converted(cnn):
    return converters.from_tf(tf.function(cnn.features), SHAPE)


def assert_parity(model, reference, x):
    out = model(x)
    ref = {k: v.numpy() for k, v in reference(tf.constant(x)).items()}
    assert set(out) == set(ref)
    for name, expected in ref.items():
        assert rel_error(out[name], expected) < 1e-5, name


def test_tf_function_matches_tensorflow(converted, cnn):
    assert converted.output_names == ("block1", "features")
    assert converted.input_shape == SHAPE
    assert_parity(converted, cnn.features, _x())


def test_tf_function_without_signature_is_traced_again_for_a_new_size(converted, cnn):
    assert_parity(converted, cnn.features, _x((32, 29, 3), seed=2))


def test_apply_is_pure_and_jittable(converted):
    x = _x()
    out = jax.jit(converted.apply)(converted.params, x)
    np.testing.assert_allclose(out["features"], converted(x)["features"], rtol=1e-5, atol=1e-6)
    assert set(converted.params) == {"conv1/kernel", "conv1/bias", "conv2/kernel", "conv2/bias", "head"}


def test_saved_model_matches_tensorflow(saved, cnn):
    model = converters.from_tf(saved, input_shape=SHAPE)
    assert set(model.output_names) == {"block1", "features"}  # a signature's dict outputs keep their keys
    assert_parity(model, cnn.__call__, _x(seed=3))


def test_saved_model_signature_with_a_single_output(saved, cnn):
    model = converters.from_tf(saved, signature="head")
    assert model.output_names == ("output_0",)
    assert model.input_shape == SHAPE  # from the signature
    x = _x(seed=4)
    assert rel_error(model(x)["output_0"], cnn.head_only(tf.constant(x)).numpy()) < 1e-5


def test_restored_function_of_a_saved_model(saved, cnn):
    loaded = tf.saved_model.load(str(saved))
    model = converters.from_tf(loaded.head_only)
    x = _x(seed=5)
    assert rel_error(model(x)["output_0"], cnn.head_only(tf.constant(x)).numpy()) < 1e-5


def test_with_outputs_selects_an_output(converted):
    view = converted.with_outputs("block1")
    assert view.output_names == ("block1",)
    assert set(view(_x())) == {"block1"}


def test_receptive_field_equals_the_closed_form(converted):
    sweep = analytic_sweep(CHAIN, SHAPE)
    rfs = rfjax.receptive_field(converted, input_shape=SHAPE)
    for name, expected in (("block1", sweep[1]), ("features", sweep[3])):
        got = rfs[name]
        assert (got.size, got.stride, got.padding, got.offset, got.output_shape) == (
            expected.size,
            expected.stride,
            expected.padding,
            expected.offset,
            expected.output_shape,
        ), name


def test_prepared_params_are_constant_kernels_and_zero_biases(converted):
    params = converted.prepared().params
    assert np.all(np.asarray(params["conv1/bias"]) == 0.0)
    assert np.all(np.asarray(params["head"]) > 0.0)  # unnamed 4-D variable: a kernel
    assert np.ptp(np.asarray(params["conv2/kernel"])) == 0.0


def _one_line_error(match, *args, **kwargs):
    with pytest.raises(RFError, match=match) as info:
        converters.from_tf(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_saved_model(tmp_path):
    _one_line_error("no SavedModel", tmp_path / "missing")


def test_corrupt_saved_model(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"not a protocol buffer")
    _one_line_error("could not be loaded as a SavedModel", tmp_path)


def test_unknown_signature(saved):
    _one_line_error("no signature 'predict'.*'head'", saved, SHAPE, signature="predict")


def test_unsupported_op_is_named():
    reflect = tf.function(lambda x: tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT"))
    _one_line_error("MirrorPad.*no tf2jax converter.*README", reflect, (8, 8, 1))


def test_dynamic_signature_needs_an_input_shape(saved):
    _one_line_error(r"dynamic; pass input_shape=\(H, W, C\)", saved)


def test_function_without_signature_needs_an_input_shape(cnn):
    _one_line_error("no input signature; pass input_shape", tf.function(cnn.features))


def test_input_shape_must_match_a_fixed_signature(cnn):
    _one_line_error("does not match the function's signature", cnn.head_only, (32, 32, 3))


def test_unknown_output_name(cnn):
    _one_line_error("did you mean 'features'", cnn.__call__, SHAPE, outputs="feature")
