"""The gradient family of CAM methods, all classes at once, and the logits before a softmax.

References are independent of rfjax: TensorFlow's GradientTape on the Keras models (the
gradients at the layer or the input), the formulas written out in numpy (HiResCAM, XGrad-CAM,
Eigen-CAM with numpy's SVD, Integrated Gradients' Riemann sum), and Keras' own logits (a Keras
model built from the layers up to the last Dense without its softmax).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import converters
import rfjax
from rfjax import activation_maps as C
from rfjax.errors import RFBadImages, RFError, RFMemoryError, RFNeedsHead, RFNotLogits

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")


def _net(final_softmax_layer: bool, seed: int = 5):
    """Conv -> pool -> conv "feat" -> GAP -> Dense "scores" -> Softmax "probs" (or a Dense
    with activation="softmax")."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    head = (
        [L.Dense(4, name="scores"), L.Softmax(name="probs")]
        if final_softmax_layer
        else [L.Dense(4, activation="softmax", name="scores")]
    )
    return keras.Sequential(
        [
            keras.Input((20, 20, 3)),
            L.Conv2D(6, 3, activation="relu", name="c1"),
            L.MaxPooling2D(2, name="pool"),
            L.Conv2D(10, 3, activation="relu", name="feat"),
            L.GlobalAveragePooling2D(name="gap"),
            *head,
        ]
    )


def keras_logits_model(km):
    """Keras' own ``[features, logits]``: the same layers up to the last Dense, which is
    rebuilt without activation and given the same weights."""
    dense = km.get_layer("scores")
    linear = keras.layers.Dense(dense.units)
    y = linear(km.get_layer("gap").output)
    linear.set_weights(dense.get_weights())
    return keras.Model(km.inputs, [km.get_layer("feat").output, y])


def tf_grads(model, x, classes, wrt_input=False):
    """TensorFlow's ``(A, [G_c for c in classes], y)`` of a ``[features, logits]`` Keras model
    (``A = x`` and gradients with respect to the input when ``wrt_input``)."""
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        a, y = model(xt, training=False)
        scores = [y[:, c] for c in classes]
    target = xt if wrt_input else a
    gs = [tape.gradient(s, target).numpy().astype(np.float64) for s in scores]
    return (x if wrt_input else a.numpy()).astype(np.float64), gs, y.numpy()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(6).uniform(0, 255, size=(3, 20, 20, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def softmax_layer_net():
    return _net(True)


@pytest.fixture(scope="module")
def tf_ref(softmax_layer_net, x):
    return tf_grads(keras_logits_model(softmax_layer_net), x, range(4))


def _close(got, want, rtol=1e-4):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------- logits, not softmax


def _tf_grad_cam(a, gs):
    return np.stack([np.maximum(np.einsum("nijk,nk->nij", a, g.mean(axis=(1, 2))), 0) for g in gs], 1)


@pytest.mark.parametrize("softmax_layer", [True, False], ids=["Softmax layer", "Dense softmax"])
def test_api_explains_the_logits_before_the_softmax(softmax_layer, x):
    km = _net(softmax_layer)
    last = km.layers[-1].name
    model = converters.from_keras(km, outputs=["feat", last])
    r = rfjax.grad_cam(model, x, layer="feat", logits=last, classes="all")
    a, gs, _ = tf_grads(keras_logits_model(km), x, range(4))
    _close(r.maps, _tf_grad_cam(a, gs))
    np.testing.assert_allclose(r.probabilities, km.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    from rfjax.memory import compile_count

    size = compile_count()
    rfjax.grad_cam(model, x[::-1].copy(), layer="feat", logits=last, classes="all")
    assert compile_count() == size  # the split model is the same object each call
    feature, dense = converters.keras_cam_layers(km)  # a Dense softmax is accepted: it is split
    r = rfjax.cam(
        converters.from_keras(km, outputs=[feature, dense]), x, layer=feature, logits=dense, classes=1
    )
    w = km.get_layer("scores").get_weights()[0]
    _close(r.maps[:, 0], np.einsum("nijk,k->nij", a, w[:, 1]))


@pytest.mark.parametrize(
    ("softmax_layer", "layer", "extra"),
    [
        (True, "feat", []),
        (False, "feat", ["--method", "xgrad_cam", "--smooth", "2"]),
        (False, None, []),
        (True, None, ["--method", "saliency"]),
    ],
)
def test_cli_prints_keras_probabilities_and_explains_logits(softmax_layer, layer, extra, tmp_path, capsys):
    import matplotlib.image

    from rfjax.cli import main

    km = _net(softmax_layer, seed=8)
    path = tmp_path / "clf.keras"
    km.save(path)
    img = np.random.default_rng(9).integers(0, 256, size=(20, 20, 3)).astype(np.uint8)
    matplotlib.image.imsave(tmp_path / "img.png", img)
    read = matplotlib.image.imread(tmp_path / "img.png")[..., :3] * 255.0
    args = ["cam", str(path), str(tmp_path / "img.png"), "--top-k", "2", "--out", str(tmp_path / "o")]
    assert main(args + extra + (["--layer", layer] if layer else [])) == 0
    assert (tmp_path / "o" / "img_cam.png").stat().st_size > 0
    printed = re.findall(r"(\d+) \(([\d.]+)\)", capsys.readouterr().out)
    p = km.predict(read[None].astype(np.float32), verbose=0)[0]
    best = np.argsort(-p)[:2]
    assert [int(c) for c, _ in printed] == best.tolist()
    assert [v for _, v in printed] == [f"{p[c]:.2f}" for c in best]


def test_probabilities_as_logits_are_refused(x):
    k = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32) / 100

    def probs(z):
        f = jax.nn.relu(
            jax.lax.conv_general_dilated(z, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        )
        return f, jax.nn.softmax(f.mean(axis=(1, 2)))

    with pytest.raises(RFNotLogits, match="are probabilities"):
        rfjax.grad_cam(probs, x)
    with pytest.raises(RFNotLogits):
        rfjax.saliency(probs, x)


# --------------------------------------------------------------------------- layer methods vs TF


def _keras_converted(km):
    return converters.from_keras(km, outputs=["feat", "scores"])


def _pc(m):
    """numpy's first principal component projection with the documented sign."""
    out = []
    for img in m:
        r = img.reshape(-1, img.shape[-1])
        r = r - r.mean(axis=0)
        v = np.linalg.svd(r, full_matrices=False)[2][0]
        v = -v if v.sum() < 0 else v
        out.append((r @ v).reshape(img.shape[:2]))
    return np.stack(out)


def _formulas(a, g):
    return {
        "hires_cam": np.maximum((g * a).sum(-1), 0),
        "xgrad_cam": np.maximum(
            np.einsum("nijk,nk->nij", a, (g * a).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + 1e-7)), 0
        ),
        "eigen_cam": np.maximum(_pc(a), 0),
        "eigen_grad_cam": np.maximum(_pc(g * a), 0),
    }


@pytest.mark.parametrize("method", ["hires_cam", "xgrad_cam", "eigen_cam", "eigen_grad_cam"])
def test_layer_methods_match_their_formulas_on_tensorflow_gradients(method, softmax_layer_net, x, tf_ref):
    a, gs, _ = tf_ref
    r = C.class_activation_maps(
        _keras_converted(softmax_layer_net), x, method=method, layer="feat", logits="scores", classes="all"
    )
    want = np.stack([_formulas(a, g)[method] for g in gs], axis=1)
    assert r.maps.shape == (3, 4, 7, 7) and want.max() > 0
    _close(r.maps, want, rtol=2e-4)
    assert (
        getattr(rfjax, method)(_keras_converted(softmax_layer_net), x, layer="feat", logits="scores").method
        == method
    )


# --------------------------------------------------------------------------- input gradients


@pytest.fixture(scope="module")
def input_ref(softmax_layer_net, x):
    return keras_logits_model(softmax_layer_net)


def test_saliency_is_max_abs_input_gradient(softmax_layer_net, x, input_ref):
    r = rfjax.saliency(_keras_converted(softmax_layer_net), x, logits="scores", classes=[0, 3])
    _, gs, _ = tf_grads(input_ref, x, [0, 3], wrt_input=True)
    assert r.maps.shape == r.upsampled.shape == (3, 2, 20, 20) and r.placement == "input"
    _close(r.maps, np.stack([np.abs(g).max(-1) for g in gs], 1))


def test_integrated_gradients_match_tensorflow_riemann_sum(softmax_layer_net, x, input_ref):
    steps = 16
    r = rfjax.integrated_gradients(
        _keras_converted(softmax_layer_net), x, steps=steps, logits="scores", classes=2
    )
    total = 0.0
    for s in range(1, steps + 1):
        total = total + tf_grads(input_ref, (x * (s / steps)).astype(np.float32), [2], wrt_input=True)[1][0]
    _close(r.maps[:, 0], (x * total / steps).sum(-1), rtol=5e-4)


def test_integrated_gradients_completeness(softmax_layer_net, x, input_ref):
    r = rfjax.integrated_gradients(
        _keras_converted(softmax_layer_net), x, steps=512, logits="scores", classes="all"
    )
    y = input_ref.predict(x, verbose=0)[1]
    y0 = input_ref.predict(np.zeros_like(x), verbose=0)[1]
    gap = y - y0
    err = np.abs(r.maps.sum(axis=(2, 3)) - gap)
    assert np.all(err <= 0.01 * np.abs(gap).max()), (err, gap)


def _noise(key, n, samples, shape):
    keys = jax.random.split(jax.random.PRNGKey(key), n)
    return np.stack([np.asarray(jax.random.normal(k, (samples, *shape))) for k in keys], axis=1)


def test_smoothgrad_on_input_gradients_matches_tensorflow(softmax_layer_net, x, input_ref):
    samples, noise = 6, 0.2
    model = _keras_converted(softmax_layer_net)
    r = rfjax.smoothgrad(model, x, samples=samples, noise=noise, key=3, logits="scores", classes=1)
    eps = _noise(3, 3, samples, x.shape[1:])
    span = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    acc = sum(
        np.abs(tf_grads(input_ref, (x + noise * span * eps[s]).astype(np.float32), [1], wrt_input=True)[1][0])
        for s in range(samples)
    )
    _close(r.maps[:, 0], (acc / samples).max(-1), rtol=5e-4)  # as tf-keras-vis: mean |G|, then channel max
    again = rfjax.smoothgrad(model, x, samples=samples, key=3, logits="scores", classes=1, max_memory=2**20)
    np.testing.assert_allclose(again.maps, r.maps, rtol=1e-5)  # same key, other chunking
    other = rfjax.smoothgrad(model, x, samples=samples, key=4, logits="scores", classes=1)
    assert np.abs(other.maps - r.maps).max() > 1e-3 * np.abs(r.maps).max()


def test_smoothgrad_over_grad_cam_matches_tensorflow(softmax_layer_net, x):
    samples = 4
    model = _keras_converted(softmax_layer_net)
    r = rfjax.smoothgrad(
        model, x, samples=samples, key=1, method="grad_cam", layer="feat", logits="scores", classes=[0, 2]
    )
    eps = _noise(1, 3, samples, x.shape[1:])
    span = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    ref = keras_logits_model(softmax_layer_net)
    maps = [
        _tf_grad_cam(*tf_grads(ref, (x + 0.2 * span * eps[s]).astype(np.float32), [0, 2])[:2])
        for s in range(samples)
    ]
    _close(r.maps, np.mean(maps, axis=0), rtol=5e-4)


# --------------------------------------------------------------------------- all classes


def test_all_classes_equal_one_class_at_a_time(softmax_layer_net, x):
    model = _keras_converted(softmax_layer_net)
    r = rfjax.grad_cam(model, x, layer="feat", logits="scores", classes="all")
    assert r.maps.shape == (3, 4, 7, 7) and r.upsampled.shape == (3, 4, 20, 20)
    np.testing.assert_array_equal(r.classes, np.tile(np.arange(4), (3, 1)))
    for c in range(4):
        one = rfjax.grad_cam(model, x, layer="feat", logits="scores", classes=c)
        _close(r.maps[:, c], one.maps[:, 0], rtol=1e-5)
    top = rfjax.grad_cam(model, x, layer="feat", logits="scores", top_k=4)
    for n in range(3):
        _close(top.maps[n], r.maps[n, top.classes[n]], rtol=1e-5)


def test_all_classes_over_the_memory_budget_is_refused_naming_budget_and_chunking():
    w = np.random.default_rng(0).normal(size=(8, 5000)).astype(np.float32)

    def many(z):
        f = jnp.tile(z, (1, 1, 1, 8)) ** 2
        return f, f.mean(axis=(1, 2)) @ w

    z = np.random.default_rng(1).uniform(size=(2, 32, 32, 1)).astype(np.float32)
    with pytest.raises(
        RFMemoryError, match=r"max_memory=4,000,000 bytes is too small for one image with 5000 classes.*not"
    ):
        rfjax.grad_cam(many, z, classes="all", max_memory=4_000_000, placement="resize")


# --------------------------------------------------------------------------- bad input


def test_bad_input_one_sentence_each(softmax_layer_net, x):
    model = _keras_converted(softmax_layer_net)
    kw = {"layer": "feat", "logits": "scores"}
    with pytest.raises(RFBadImages, match="different shapes"):
        rfjax.grad_cam(model, [x[0], x[0, :10]], **kw)
    with pytest.raises(RFBadImages, match="grey .* takes 3"):
        rfjax.grad_cam(model, x[..., :1], **kw)
    bad = x.copy()
    bad[1, 3, 4, 0] = np.nan
    with pytest.raises(RFBadImages, match=r"images \[1\] hold NaN"):
        rfjax.grad_cam(model, bad, **kw)
    with pytest.raises(RFError, match="classes='some' is not 'all'"):
        rfjax.grad_cam(model, x, classes="some", **kw)
    with pytest.raises(RFError, match="smooth=-1"):
        rfjax.grad_cam(model, x, smooth=-1, **kw)
    with pytest.raises(RFError, match="does not apply to method='integrated_gradients'"):
        rfjax.integrated_gradients(model, x, smooth=2, **kw)


def test_cam_needs_a_gap_dense_head_and_says_so():
    def flat_head(z):
        f = jax.nn.relu(z[:, ::2, ::2, :] - 0.3)
        return f, f.reshape(len(z), -1)[:, :5] * jnp.arange(1.0, 6.0)

    z = np.random.default_rng(2).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    with pytest.raises(RFNeedsHead, match="method='cam' needs a global-average-pooling"):
        rfjax.cam(flat_head, z)
    assert rfjax.hires_cam(flat_head, z).maps.shape == (2, 1, 4, 4)
