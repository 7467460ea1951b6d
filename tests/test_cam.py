"""CAM, Grad-CAM and variants, RF-aware placement, and their pictures.

Expected values come from numpy (CAM = features @ dense weights, written out), from
jax.image.resize (the plain bilinear resize), and from synthetic networks whose receptive
field is known in closed form.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import converters
import rfjax
from rfjax import activation_maps as C
from rfjax.activation_maps.methods import unregister
from rfjax.errors import RFError

DN = ("NHWC", "HWIO", "NHWC")
RNG = np.random.default_rng(0)
K1 = RNG.normal(size=(3, 3, 3, 8)).astype(np.float32)
K2 = RNG.normal(size=(3, 3, 8, 16)).astype(np.float32) / 5
W = RNG.normal(size=(16, 5)).astype(np.float32)
B = RNG.normal(size=(5,)).astype(np.float32)


def body(x):
    h = jax.nn.relu(lax.conv_general_dilated(x, K1, (1, 1), "VALID", dimension_numbers=DN))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return jax.nn.relu(lax.conv_general_dilated(h, K2, (1, 1), "VALID", dimension_numbers=DN))


def gap_dense(x):
    """features (N, 13, 13, 16) on 32x32 inputs -> GAP -> dense (16 x 5) + bias."""
    f = body(x)
    return f, f.mean(axis=(1, 2)) @ W + B


def not_gap(x):
    f = body(x)
    return f, jnp.tanh(f.mean(axis=(1, 2)) @ W * 1e-2) + f[:, :1, :1, :5].reshape(len(x), 5)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(size=(3, 32, 32, 3)).astype(np.float32)


def numpy_cam(x):
    f = np.asarray(body(jnp.asarray(x)), np.float64)
    return np.einsum("nijk,kc->ncij", f, W.astype(np.float64))  # (N, classes, h, w)


# --------------------------------------------------------------------------- CAM / Grad-CAM


def test_cam_is_features_times_dense_weights_for_top_k_classes(images):
    r = C.cam(gap_dense, images, top_k=3)
    logits = np.asarray(gap_dense(jnp.asarray(images))[1])
    want_cls = np.argsort(-logits, axis=1)[:, :3]
    np.testing.assert_array_equal(r.classes, want_cls)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(r.probabilities, np.take_along_axis(p, want_cls, 1), rtol=1e-5, atol=1e-7)
    want = numpy_cam(images)
    assert r.maps.shape == (3, 3, 13, 13) and r.upsampled.shape == (3, 3, 32, 32)
    for n in range(3):
        for j in range(3):
            np.testing.assert_allclose(r.maps[n, j], want[n, want_cls[n, j]], rtol=1e-4, atol=1e-4)
    assert r.feature_shape == (13, 13) and r.input_shape == (32, 32) and r.method == "cam"


def test_grad_cam_is_relu_cam_over_cell_count_on_gap_dense_head(images):
    plain = C.cam(gap_dense, images, classes=[0, 2, 4])
    grad = C.grad_cam(gap_dense, images, classes=[0, 2, 4])
    np.testing.assert_allclose(grad.maps, np.maximum(plain.maps, 0) / (13 * 13), rtol=1e-4, atol=1e-7)


def test_given_classes_per_image(images):
    r = C.cam(gap_dense, images, classes=[[1], [3], [4]])
    np.testing.assert_array_equal(r.classes[:, 0], [1, 3, 4])
    want = numpy_cam(images)
    for n, c in enumerate([1, 3, 4]):
        np.testing.assert_allclose(r.maps[n, 0], want[n, c], rtol=1e-4, atol=1e-4)


def test_variants_share_the_pipeline_and_a_new_one_is_one_function(images):
    for method in ("grad_cam_plus_plus", "layer_cam"):
        r = C.class_activation_maps(gap_dense, images, method=method, top_k=2)
        assert r.maps.shape == (3, 2, 13, 13) and np.all(r.maps >= 0) and r.maps.max() > 0

    @C.variant("test_gradient_times_feature")
    def _g_times_a(a, g):
        return (a * g).sum(-1)

    try:
        r = C.class_activation_maps(gap_dense, images, method="test_gradient_times_feature", classes=2)
        np.testing.assert_allclose(r.maps[:, 0], numpy_cam(images)[:, 2] / 169, rtol=1e-4, atol=1e-6)
    finally:
        unregister("test_gradient_times_feature")


def test_dict_outputs_jitted_models_and_flax_modules(images):
    from flax import nnx

    jitted = jax.jit(lambda x: dict(zip(("features", "logits"), gap_dense(x))))
    r = C.cam(jitted, images, layer="features", logits="logits", classes=1)
    np.testing.assert_allclose(r.maps[:, 0], numpy_cam(images)[:, 1], rtol=1e-4, atol=1e-4)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 6, (3, 3), padding="SAME", rngs=rngs)
            self.dense = nnx.Linear(6, 4, rngs=rngs)

        def __call__(self, x):
            f = nnx.relu(self.conv(x))
            return f, self.dense(f.mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    r = C.cam(net, images, classes=[0, 3])
    f = np.asarray(nnx.relu(net.conv(jnp.asarray(images))))
    want = np.einsum("nijk,kc->ncij", f, np.asarray(net.dense.kernel[...]))[:, [0, 3]]
    np.testing.assert_allclose(r.maps, want, rtol=1e-4, atol=1e-5)
    assert r.placement == "rf" and r.offset == (0.5, 0.5) and r.stride == (1, 1)


def test_one_compiled_program_per_shape(images):
    from rfjax.memory import compile_count

    C.cam(gap_dense, images, top_k=2, placement="resize")
    size = compile_count()
    C.cam(gap_dense, images[::-1].copy(), top_k=2, placement="resize")
    assert compile_count() == size
    C.cam(gap_dense, images[:2], top_k=2, placement="resize")
    assert compile_count() == size + 1


# --------------------------------------------------------------------------- placement


def test_resize_placement_is_jax_bilinear_resize(images):
    r = C.grad_cam(gap_dense, images, top_k=2, placement="resize")
    want = jax.image.resize(jnp.asarray(r.maps), (3, 2, 32, 32), "bilinear")
    np.testing.assert_allclose(r.upsampled, np.asarray(want), rtol=1e-5, atol=1e-6)
    assert r.offset == (32 / 26, 32 / 26) and r.stride == (32 / 13, 32 / 13) and r.rf is None


# A network with a large, asymmetric offset: crop 20 rows and 6 columns off the top left,
# then average 4x4 blocks. Cell (i, j) averages rows [20 + 4i, 24 + 4i) and columns
# [6 + 4j, 10 + 4j): RF size 4, stride 4, offset (22, 8). Features 11 x 14 on 64 x 64.
def cropped(x):
    f = lax.reduce_window(x[:, 20:, 6:, :], 0.0, lax.add, (1, 4, 4, 1), (1, 4, 4, 1), "VALID") / 16
    return f, f.mean(axis=(1, 2)) @ jnp.ones((1, 1))


def test_rf_placement_is_measured_for_the_layer():
    r = C.cam(cropped, np.zeros((1, 64, 64, 1), np.float32), classes=0)
    assert r.placement == "rf" and r.feature_shape == (11, 14)
    assert r.offset == (22, 8) and r.stride == (4, 4)
    assert r.rf.size == (4, 4)


def test_rf_placement_puts_a_dot_where_it_is_and_resize_does_not():
    dot = (41, 17)  # pixel (row, column); its centre is (41.5, 17.5)
    x = np.zeros((1, 64, 64, 1), np.float32)
    x[0, dot[0], dot[1]] = 1.0
    rf = C.cam(cropped, x, classes=0)
    rs = C.cam(cropped, x, classes=0, placement="resize")
    centre = np.array(dot) + 0.5
    assert np.abs(rf.peaks()[0, 0] - centre).max() <= 2  # within half a stride
    assert np.abs(rs.peaks()[0, 0] - centre).max() >= 8  # plain resize is shifted


def test_rf_placement_reconstructs_a_linear_image_exactly():
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    ramp = (0.7 * yy - 0.3 * xx)[None, :, :, None].astype(np.float32)
    rf = C.cam(cropped, ramp, classes=0)
    rs = C.cam(cropped, ramp, classes=0, placement="resize")
    inside = (slice(22, 62), slice(8, 60))  # pixel centres between the outermost RF centres (22..62, 8..60)
    np.testing.assert_allclose(rf.upsampled[0, 0][inside], ramp[0, :, :, 0][inside], atol=1e-3)
    assert np.abs(rs.upsampled[0, 0][inside] - ramp[0, :, :, 0][inside]).mean() > 3


def test_explicit_rf_and_auto_fallback_to_resize():
    known = rfjax.receptive_field(lambda x: cropped(x)[0], (64, 64, 1))
    r = C.cam(cropped, np.ones((64, 64, 1), np.float32), classes=0, rf=known)
    assert r.rf is known and r.offset == (22, 8)

    def global_layer(x):  # every cell sees the whole input: no RF centre
        f = jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape[:1] + (4, 4, x.shape[3]))
        return f, f.mean(axis=(1, 2))

    r = C.grad_cam(global_layer, np.ones((1, 16, 16, 2), np.float32), classes=0)
    assert r.placement == "resize"
    with pytest.raises(RFError, match="placement='resize'"):
        C.grad_cam(global_layer, np.ones((1, 16, 16, 2), np.float32), classes=0, placement="rf")


def test_place_helper_matches_the_result():
    r = C.cam(cropped, np.random.default_rng(2).uniform(size=(2, 64, 64, 1)).astype(np.float32), classes=0)
    np.testing.assert_allclose(C.place(r.maps, (64, 64), r.offset, r.stride), r.upsampled, rtol=1e-6)


# --------------------------------------------------------------------------- localisation


def test_localisation_metrics():
    m = np.zeros((20, 30))
    m[2:6, 3:9] = 1.0  # largest region
    m[15:17, 20:22] = 0.8
    m[10, 10] = 0.1  # below 0.3 of the max
    assert C.cam_box(m) == (2.0, 3.0, 6.0, 9.0)
    assert C.cam_box(np.zeros((4, 4))) is None
    assert C.box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert C.box_iou((0, 0, 2, 2), None) == 0.0
    assert C.pointing_game([[3, 4], [30, 30]], [[2, 3, 6, 9], [0, 0, 10, 10]]) == 0.5


# --------------------------------------------------------------------------- bad input


def test_cam_refuses_a_head_that_is_not_gap_dense_and_names_grad_cam(images):
    with pytest.raises(RFError, match=r"grad_cam\(model, images, layer=0\)"):
        C.cam(not_gap, images)
    assert C.grad_cam(not_gap, images).maps.shape == (3, 1, 13, 13)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": 5}, r"index 5, outside the model's 5 classes"),
        ({"classes": [[0], [9], [1]]}, "index 9"),
        ({"classes": -1}, "index -1"),
        ({"classes": 1.5}, "integer class indices"),
        ({"classes": [[0], [1]]}, r"one row per image \(3, k\)"),
        ({"top_k": 6}, "between 1 and the model's 5 classes"),
        ({"layer": 1}, "not a spatial feature map"),
        ({"layer": 0, "logits": 0}, "class scores of shape"),
        ({"layer": "conv9"}, "not one of the model's outputs"),
        ({"method": "nope"}, "not a registered CAM method"),
        ({"placement": "nearest"}, "placement='nearest' is not one of"),
    ],
)
def test_bad_arguments(images, kwargs, match):
    method = kwargs.pop("method", "grad_cam")
    with pytest.raises(RFError, match=match):
        C.class_activation_maps(gap_dense, images, method=method, **kwargs)


def test_bad_images():
    with pytest.raises(RFError, match="NHWC batch"):
        C.cam(gap_dense, np.zeros((32, 32), np.float32))
    with pytest.raises(RFError, match="dtype bool"):
        C.cam(gap_dense, np.zeros((1, 32, 32, 3), bool))
    with pytest.raises(RFError, match="dtype complex64"):
        C.cam(gap_dense, np.zeros((1, 32, 32, 3), np.complex64))
    with pytest.raises(RFError, match="failed on images of shape"):
        C.cam(gap_dense, np.zeros((1, 32, 32, 5), np.float32))


def test_logits_independent_of_layer(images):
    def detached(x):
        f, y = gap_dense(x)
        return f, lax.stop_gradient(y)

    with pytest.raises(RFError, match="do not depend on layer"):
        C.grad_cam(detached, images)


# --------------------------------------------------------------------------- Keras


@pytest.fixture(scope="module")
def keras_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(3)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((24, 24, 3)),
            L.Conv2D(8, 3, activation="relu", name="c1"),
            L.MaxPooling2D(2, name="pool"),
            L.Conv2D(12, 3, activation="relu", name="last_conv"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dropout(0.1, name="drop"),
            L.Dense(3, name="scores"),
            L.Softmax(name="probs"),
        ]
    )


def test_keras_model_cam_matches_keras_features_and_weights(keras_model):

    feature, dense = converters.keras_cam_layers(keras_model)
    assert (feature, dense) == ("last_conv", "scores")
    x = np.random.default_rng(4).uniform(size=(2, 24, 24, 3)).astype(np.float32)
    model = converters.from_keras(keras_model, outputs=[feature, dense])
    r = C.cam(model, x, layer=feature, logits=dense, top_k=2)
    keras = pytest.importorskip("keras")
    f = keras.Model(keras_model.inputs, keras_model.get_layer(feature).output).predict(x, verbose=0)
    w = keras_model.get_layer(dense).get_weights()[0]
    want = np.einsum("nijk,kc->ncij", f, w)
    for n in range(2):
        np.testing.assert_allclose(r.maps[n], want[n, r.classes[n]], rtol=1e-3, atol=1e-4)
    assert r.placement == "rf" and r.rf.size == (8, 8) and r.offset == (4, 4) and r.stride == (2, 2)


def test_keras_cam_layers_refuses_models_without_gap_dense_logits():
    keras = pytest.importorskip("keras")
    L = keras.layers
    flat = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(2, 3), L.Flatten(), L.Dense(2)])
    with pytest.raises(RFError, match="no GlobalAveragePooling2D.*grad_cam"):
        converters.keras_cam_layers(flat)
    soft = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(2, 3, name="f"),
            L.GlobalAveragePooling2D(),
            L.Dense(2, activation="sigmoid", name="d"),
        ]
    )
    with pytest.raises(RFError, match="activation 'sigmoid'"):  # a softmax is split off instead
        converters.keras_cam_layers(soft)


# --------------------------------------------------------------------------- pictures


def test_cam_overlay_draws_image_thresholded_maps_titles_and_boxes(images, tmp_path):
    from matplotlib.image import AxesImage

    from rfjax.plot_cam import cam_overlay

    r = C.cam(gap_dense, images, top_k=2)
    path = tmp_path / "cam.png"
    fig = cam_overlay(
        r, images, image=1, class_names=["a", "b", "c", "d", "e"], box=(4, 5, 20, 22), save=path
    )
    axes = fig.axes
    assert len(axes) == 3
    assert axes[0].get_title() == "image 1"
    for j in range(2):
        name = "abcde"[r.classes[1, j]]
        assert axes[j + 1].get_title() == f"{name} p={r.probabilities[1, j]:.2f}"
        ims = [a for a in axes[j + 1].get_children() if isinstance(a, AxesImage)]
        assert ims[0].get_extent() == [0, 32, 32, 0]
        np.testing.assert_allclose(np.asarray(ims[0].get_array()), images[1])
        cam_im = next(a for a in ims if a.get_gid() == "cam")
        drawn = cam_im.get_array()
        want = r.normalised()[1, j]
        np.testing.assert_array_equal(np.ma.getmaskarray(drawn), want < 0.3)
        np.testing.assert_allclose(drawn.compressed(), want[want >= 0.3], rtol=1e-6)
        peak = next(c for c in axes[j + 1].collections if c.get_gid() == "peak")
        np.testing.assert_allclose(peak.get_offsets()[0], r.peaks()[1, j][::-1])
        cam_rect = next(p for p in axes[j + 1].patches if p.get_gid() == "cam-box")
        t, left, b, right = C.cam_box(r.upsampled[1, j])
        assert (cam_rect.get_x(), cam_rect.get_y(), cam_rect.get_width(), cam_rect.get_height()) == (
            left,
            t,
            right - left,
            b - t,
        )
    for ax in axes:
        gt = next(p for p in ax.patches if p.get_gid() == "box")
        assert (gt.get_x(), gt.get_y(), gt.get_width(), gt.get_height()) == (5, 4, 17, 16)
    assert path.stat().st_size > 0
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (360, 960)


def test_cam_overlay_bad_arguments(images, tmp_path):
    from rfjax.plot_cam import cam_overlay

    r = C.cam(gap_dense, images)
    with pytest.raises(RFError, match="outside the batch of 3"):
        cam_overlay(r, images, image=3)
    with pytest.raises(RFError, match="threshold"):
        cam_overlay(r, images, threshold=1.5)
    with pytest.raises(RFError, match="pass the 3 images"):
        cam_overlay(r, images[:2])
    with pytest.raises(RFError, match="does not exist"):
        cam_overlay(r, images, save=os.path.join(tmp_path, "missing", "x.png"))


@pytest.mark.parametrize("head", ["softmax_layer", "fused_softmax", "logits"])
def test_a_keras_model_picks_its_cam_layer_and_logits(head):
    import keras
    from keras import layers

    keras.utils.set_random_seed(2)
    inp = keras.Input((12, 12, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = layers.Conv2D(5, 3, activation="relu", name="features")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(3, name="scores", activation="softmax" if head == "fused_softmax" else None)(x)
    if head == "softmax_layer":
        out = layers.Softmax(name="probs")(out)
    model = keras.Model(inp, out)
    assert converters.from_keras(model).cam_layers() == ("features", "scores")
    images = np.random.default_rng(0).uniform(size=(2, 12, 12, 3)).astype(np.float32)
    picked = rfjax.grad_cam(model, images, placement="resize")
    # Keras' own pre-softmax scores and feature maps, by GradientTape (independent of rfjax)
    import tensorflow as tf

    feats = keras.Model(inp, model.get_layer("features").output)
    dense = model.get_layer("scores")
    with tf.GradientTape() as tape:
        a = feats(images)
        tape.watch(a)
        y = tf.matmul(tf.reduce_mean(a, axis=(1, 2)), dense.kernel) + dense.bias
        top = tf.argmax(y, axis=1)
        chosen = tf.gather(y, top, batch_dims=1)
    g = tape.gradient(chosen, a).numpy()
    want = np.maximum(np.einsum("nijk,nk->nij", a.numpy(), g.mean(axis=(1, 2))), 0)
    assert picked.layer == "features"
    np.testing.assert_array_equal(picked.classes[:, 0], top.numpy())
    np.testing.assert_allclose(picked.maps[:, 0], want, rtol=1e-4, atol=1e-6)
