"""Score-CAM, Faster-Score-CAM, Ablation-CAM and augmentation smoothing.

Expected values come from Keras itself (features and logits of masked or ablated inputs,
computed by Keras layers, masks by scipy.ndimage.zoom / torch interpolate) written out as
plain loops, and from pytorch-grad-cam (``grad-cam`` package) on a converted PyTorch model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import converters
import rfjax
from rfjax.activation_maps import perturb as P
from rfjax.errors import RFError, RFMemoryError

keras = pytest.importorskip("keras")
L = keras.layers


def _softmax(z, axis=-1):
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


@pytest.fixture(scope="module")
def gap_model():
    """conv -> pool -> conv 'feat' (ReLU, 9 x 9 x 6 on 24 x 24) -> GAP -> dense 'scores'."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((24, 24, 3))
    h = L.Conv2D(8, 3, activation="relu", name="c1")(inp)
    h = L.MaxPooling2D(2, name="pool")(h)
    f = L.Conv2D(6, 3, activation="relu", name="feat")(h)
    y = L.Dense(4, name="scores")(L.GlobalAveragePooling2D(name="gap")(f))
    return keras.Model(inp, y)


@pytest.fixture(scope="module")
def deep_head():
    """'feat' (9 x 9 x 6) followed by conv -> ReLU -> GAP -> dense: not affine in 'feat'.
    Also returns the head alone (the same layer objects) for brute-force ablation."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((24, 24, 3))
    h = L.MaxPooling2D(2)(L.Conv2D(8, 3, activation="relu", name="c1")(inp))
    feat = L.Conv2D(6, 3, activation="relu", name="feat")
    layers = [
        L.Conv2D(5, 3, activation="relu", name="c3"),
        L.GlobalAveragePooling2D(),
        L.Dense(4, name="scores"),
    ]
    f = feat(h)
    y, hin = f, keras.Input((9, 9, 6))
    z = hin
    for layer in layers:
        y, z = layer(y), layer(z)
    return keras.Model(inp, y), keras.Model(hin, z)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).uniform(size=(2, 24, 24, 3)).astype(np.float32)


def _features(model, x, name="feat"):
    return np.asarray(
        keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0), np.float64
    )


def _logits(model, x):
    return np.asarray(model.predict(np.asarray(x, np.float32), verbose=0), np.float64)


def _score_cam_reference(model, x, cls, channels=None, probability=False):
    """Score-CAM by a plain loop over images and channels, masks by scipy zoom (corners)."""
    f = _features(model, x)
    out = []
    for n in range(len(x)):
        ks = np.arange(f.shape[-1])
        if channels is not None:
            ks = np.argsort(-f[n].reshape(-1, f.shape[-1]).var(axis=0), kind="stable")[:channels]
        masked = []
        for k in ks:
            u = ndimage.zoom(f[n, :, :, k], (24 / f.shape[1], 24 / f.shape[2]), order=1, mode="nearest")
            masked.append(x[n] * ((u - u.min()) / (u.max() - u.min() + 1e-8))[..., None])
        y = _logits(model, np.stack(masked))
        s = _softmax(y)[:, cls[n]] if probability else _softmax(y[:, cls[n]], axis=0)
        out.append(np.maximum(np.einsum("ijk,k->ij", f[n][..., ks], s), 0))
    return np.stack(out)


def test_score_cam_matches_a_keras_loop_over_masked_images(gap_model, images):
    model = converters.from_keras(gap_model, outputs=["feat", "scores"])
    r = rfjax.score_cam(model, images, layer="feat", logits="scores", masks="corners")
    cls = np.argmax(_logits(gap_model, images), axis=1)
    np.testing.assert_array_equal(r.classes[:, 0], cls)
    want = _score_cam_reference(gap_model, images, cls)
    np.testing.assert_allclose(r.maps[:, 0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert r.method == "score_cam" and r.upsampled.shape == (2, 1, 24, 24)


def test_faster_score_cam_and_probability_weighting_match_the_loop(gap_model, images):
    model = converters.from_keras(gap_model, outputs=["feat", "scores"])
    r = rfjax.faster_score_cam(
        model,
        images,
        layer="feat",
        logits="scores",
        masks="corners",
        channels=3,
        weighting="probability",
        classes=1,
    )
    want = _score_cam_reference(gap_model, images, [1, 1], channels=3, probability=True)
    np.testing.assert_allclose(r.maps[:, 0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert r.method == "faster_score_cam"


def test_score_cam_placement_masks_are_a_plain_resize_and_chunking_changes_nothing(gap_model, images):
    torch = pytest.importorskip("torch")
    model = converters.from_keras(gap_model, outputs=["feat", "scores"])
    r = rfjax.score_cam(model, images[:1], layer="feat", logits="scores", placement="resize", classes=2)
    f = _features(gap_model, images[:1])
    up = torch.nn.functional.interpolate(
        torch.tensor(f).permute(0, 3, 1, 2), size=(24, 24), mode="bilinear", align_corners=False
    )[0].numpy()  # (K, 24, 24)
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    masked = images[0][None] * ((up - lo) / (hi - lo + 1e-8))[..., None]
    w = _softmax(_logits(gap_model, masked)[:, 2])
    want = np.maximum(np.einsum("ijk,k->ij", f[0], w), 0)
    np.testing.assert_allclose(r.maps[0, 0], want, rtol=1e-4, atol=1e-5 * want.max())
    # 6 channels in equal chunks under a budget that does not fit them all at once
    small = rfjax.score_cam(
        model,
        images[:1],
        layer="feat",
        logits="scores",
        placement="resize",
        classes=2,
        max_memory=_two_channels(model),
    )
    np.testing.assert_allclose(small.maps, r.maps, rtol=1e-5, atol=1e-7)
    with pytest.raises(RFMemoryError, match="max_memory"):
        rfjax.score_cam(model, images[:1], layer="feat", logits="scores", max_memory=1000)


def _two_channels(model) -> int:
    """A budget between the compiled size for 2 and for 6 masked channels."""
    from rfjax import memory
    from rfjax.activation_maps import batched

    s = batched.setup(model, np.zeros((1, 24, 24, 3), np.float32), "feat", "scores", None)
    prog = batched._program(P._masked, s.fn, s.with_params, s.logits_index, "logit")
    aux = (jnp.zeros((1, 9, 9, 6)), jnp.zeros(2), jnp.ones(2))

    def size(t):
        args = (s.x, aux, np.zeros((1, 1), np.int32), np.arange(t))
        st = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), args)
        return memory.program_bytes(memory.compiled(prog, s.params, *st))

    two, six = size(2), size(6)
    assert two < six
    return (two + six) // 2


def test_ablation_cam_closed_form_on_gap_dense_equals_brute_force_ablation(gap_model, images):
    model = converters.from_keras(gap_model, outputs=["feat", "scores"])
    f = _features(gap_model, images)
    wd, bd = (np.asarray(v, np.float64) for v in gap_model.get_layer("scores").get_weights())
    y = f.mean(axis=(1, 2)) @ wd + bd
    r = rfjax.ablation_cam(model, images, layer="feat", logits="scores", top_k=2)
    brute = rfjax.ablation_cam(model, images, layer="feat", logits="scores", top_k=2, closed_form=False)
    for n in range(2):
        for j in range(2):
            c = r.classes[n, j]
            ablated = np.array(
                [(f[n] * (np.arange(6) != k)).mean(axis=(0, 1)) @ wd[:, c] + bd[c] for k in range(6)]
            )
            w = (y[n, c] - ablated) / y[n, c]
            want = np.maximum(np.einsum("ijk,k->ij", f[n], w), 0)
            tol = 1e-5 * max(np.abs(want).max(), 1e-6)
            np.testing.assert_allclose(r.maps[n, j], want, rtol=1e-4, atol=tol)
            np.testing.assert_allclose(brute.maps[n, j], want, rtol=1e-4, atol=tol)


def test_ablation_cam_on_a_deep_head_ablates_with_keras_and_reruns_only_the_head(deep_head, images):
    full, head = deep_head
    model = converters.from_keras(full, outputs=["feat", "scores"])
    r = rfjax.ablation_cam(model, images, layer="feat", logits="scores")
    f = _features(full, images)
    for n in range(2):
        c = r.classes[n, 0]
        y = _logits(head, f[n : n + 1])[0, c]
        ablated = _logits(head, np.stack([f[n] * (np.arange(6) != k) for k in range(6)]))[:, c]
        want = np.maximum(np.einsum("ijk,k->ij", f[n], (y - ablated) / y), 0)
        np.testing.assert_allclose(r.maps[n, 0], want, rtol=1e-4, atol=1e-5 * max(want.max(), 1e-6))
    with pytest.raises(RFError, match="not affine.*closed_form=None"):
        rfjax.ablation_cam(model, images, layer="feat", logits="scores", closed_form=True)
    # the vmapped ablation leaves the layers before 'feat' unbatched: the first convolution
    # sees the images (2, 24, 24, 3), the one after 'feat' a batch of 6 ablations
    s = P.batched.setup(model, images, "feat", "scores", None)
    a = jnp.asarray(f, jnp.float32)
    ev = P._ablator(s.layer_index)
    jaxpr = jax.make_jaxpr(
        jax.vmap(lambda t: ev(s.fn, s.with_params, s.params, jnp.asarray(images), (a,), t)[s.logits_index])
    )(jnp.arange(6))
    convs = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    shapes = [tuple(e.invars[0].aval.shape) for e in convs]
    assert shapes[0] == (2, 24, 24, 3) and any(len(sh) == 4 and sh[0] == 12 for sh in shapes[2:]), shapes


def _equations(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                yield from _equations(inner)


def _moved(x, flip, dy, dx):
    """``x`` flipped left-right (``flip``), then moved down ``dy`` and right ``dx`` pixels,
    edge pixels repeated: a plain loop over pixels."""
    x = x[:, :, ::-1] if flip else x
    h, w = x.shape[1:3]
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = x[:, min(max(i - dy, 0), h - 1), min(max(j - dx, 0), w - 1)]
    return out


def _moved_back(m, dy, dx, flip):
    """Maps ``(..., h, w)`` of a moved copy taken back (a loop over cells), and the cells seen."""
    h, w = m.shape[-2:]
    back, seen = np.zeros_like(m), np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                back[..., i, j], seen[i, j] = m[..., i + dy, j + dx], 1
    return (back[..., ::-1], seen[:, ::-1]) if flip else (back, seen)


def test_augmentation_smoothing_averages_undone_maps_of_flipped_and_shifted_copies(gap_model, images):
    model = converters.from_keras(gap_model, outputs=["feat", "scores"])
    kw = {"layer": "feat", "logits": "scores", "placement": "resize"}
    shifts = [(0, 0), (3, 0), (0, -2)]
    r = rfjax.augmentation_smoothing(model, images, method="grad_cam", shifts=shifts, top_k=2, **kw)
    base = rfjax.grad_cam(model, images, top_k=2, **kw)
    total, count = np.zeros_like(base.upsampled), np.zeros((24, 24))
    for flip in (False, True):
        for dy, dx in shifts:
            m = rfjax.grad_cam(model, _moved(images, flip, dy, dx), classes=base.classes, **kw).upsampled
            back, seen = _moved_back(m, dy, dx, flip)
            total, count = total + back, count + seen
    np.testing.assert_allclose(r.upsampled, total / count, rtol=1e-5, atol=1e-6 * np.abs(total).max())
    np.testing.assert_array_equal(r.classes, base.classes)
    assert r.method == "grad_cam+tta"
    sc = rfjax.augmentation_smoothing(model, images, method="ablation_cam", flip=False, shifts=[(0, 0)], **kw)
    np.testing.assert_allclose(
        sc.upsampled, rfjax.ablation_cam(model, images, **kw).upsampled, rtol=1e-5, atol=1e-6
    )


def test_augmentation_smoothing_averages_feature_maps_of_whole_cell_shifts_and_every_probability(
    gap_model, images
):
    """``maps`` average the copies whose shift is a whole number of cells (the RF stride is
    2 here), flipped ones too (the cell centres 4 + 2 i are mirror-symmetric on 24 pixels);
    ``probabilities`` average every copy's softmax, from Keras' own logits."""
    model = converters.from_keras(gap_model, outputs=["feat", "scores"])
    kw = {"layer": "feat", "logits": "scores", "placement": "rf"}
    shifts = [(0, 0), (2, 0), (0, -4), (3, 0), (1, 2)]
    r = rfjax.augmentation_smoothing(model, images, method="grad_cam", shifts=shifts, top_k=2, **kw)
    # conv 3 -> pool 2 -> conv 3, all valid: cell 0 of 'feat' is centred on pixel 4, stride 2
    assert r.placement == "rf" and tuple(r.offset) == (4.0, 4.0) and tuple(r.stride) == (2.0, 2.0)
    total, count, probabilities = np.zeros_like(r.maps), np.zeros((9, 9)), []
    for flip in (False, True):
        for dy, dx in shifts:
            x = _moved(images, flip, dy, dx)
            probabilities.append(np.take_along_axis(_softmax(_logits(gap_model, x)), r.classes, axis=1))
            if dy % 2 == 0 and dx % 2 == 0:
                m = rfjax.grad_cam(model, x, classes=r.classes, **kw).maps
                back, seen = _moved_back(m, dy // 2, dx // 2, flip)
                total, count = total + back, count + seen
    assert count.max() == 6  # three whole-cell shifts, each flipped and not
    np.testing.assert_allclose(r.maps, total / count, rtol=1e-5, atol=1e-6 * np.abs(total).max())
    np.testing.assert_allclose(r.probabilities, np.mean(probabilities, axis=0), rtol=1e-4, atol=1e-6)
    # input methods: stride 1, every copy is undone exactly, so the maps are the placed maps
    s = rfjax.augmentation_smoothing(
        model, images, method="saliency", shifts=[(0, 0), (1, -3)], logits="scores"
    )
    np.testing.assert_allclose(s.maps, s.upsampled, rtol=1e-6)
    assert np.abs(s.maps - rfjax.saliency(model, images, logits="scores").maps).max() > 1e-3 * s.maps.max()


def test_perturbation_methods_refuse_bad_input_in_one_sentence(gap_model, images):
    model = converters.from_keras(gap_model, outputs=["feat", "scores"])
    kw = {"layer": "feat", "logits": "scores"}
    cases = [
        ({"channels": 0}, "channels=0 must be an integer between 1 and the layer's 6"),
        ({"weighting": "mean"}, "weighting='mean'"),
        ({"masks": "nearest"}, "masks='nearest'"),
        ({"placement": "middle"}, "placement='middle'"),
    ]
    for extra, match in cases:
        with pytest.raises(RFError, match=match):
            rfjax.score_cam(model, images, **kw, **extra)
    with pytest.raises(RFError, match="closed_form='yes'"):
        rfjax.ablation_cam(model, images, closed_form="yes", **kw)
    bad = images.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(RFError, match="NaN"):
        rfjax.score_cam(model, bad, **kw)
    with pytest.raises(RFError, match="out of view"):
        rfjax.augmentation_smoothing(model, images, shifts=[(30, 0)], **kw)
    with pytest.raises(RFError, match="not a registered CAM method"):
        rfjax.augmentation_smoothing(model, images, method="nope", **kw)


def test_grad_cam_reaches_the_logits_of_a_converted_pytorch_model(images):
    """The converted model returns 'features' transposed to NHWC while the logits use the
    NCHW value: the tap steps back through the transpose. On a GAP + linear head Grad-CAM is
    relu(features . fc weights) / (h w), computed here with PyTorch."""
    torch = pytest.importorskip("torch")
    net = _TorchNet.build()
    model = converters.from_torch(net, outputs=["features", "fc"], input_shape=(24, 24, 3))
    r = rfjax.grad_cam(model, images, layer="features", logits="fc", classes=[0, 2])
    with torch.no_grad():
        f = net.features(torch.tensor(images).permute(0, 3, 1, 2)).numpy()  # (N, 6, 9, 9)
    wfc = net.fc.weight.detach().numpy()
    for j, c in enumerate([0, 2]):
        want = np.maximum(np.einsum("nkij,k->nij", f, wfc[c]), 0) / 81
        np.testing.assert_allclose(r.maps[:, j], want, rtol=1e-4, atol=1e-6)
    with pytest.raises(RFError, match="images of different shapes"):
        rfjax.score_cam(model, [images[0], images[0, :20]], layer="features", logits="fc")


# --------------------------------------------------------------------------- pytorch-grad-cam


class _TorchNet:
    @staticmethod
    def build():
        torch = pytest.importorskip("torch")
        nn = torch.nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(
                    nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3), nn.ReLU()
                )
                self.fc = nn.Linear(6, 4)

            def forward(self, x):
                return self.fc(self.features(x).mean(dim=(2, 3)))

        torch.manual_seed(0)
        return Net().eval()


def test_grad_score_and_ablation_cam_match_pytorch_grad_cam(images):
    torch = pytest.importorskip("torch")
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _TorchNet.build()
    model = converters.from_torch(net, outputs=["features", "fc"], input_shape=(24, 24, 3))
    xt = torch.tensor(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        top = net(xt).argmax(dim=1).numpy()
    targets = [ClassifierOutputTarget(int(c)) for c in top]
    kw = {"layer": "features", "logits": "fc", "classes": top[:, None], "placement": "resize"}
    for ours, theirs in (
        # the converted model returns 'features' transposed to NHWC: the tap must reach the logits
        (rfjax.grad_cam(model, images, **kw), pgc.GradCAM(net, [net.features])),
        (rfjax.score_cam(model, images, masks="corners", **kw), pgc.ScoreCAM(net, [net.features])),
        (rfjax.ablation_cam(model, images, closed_form=False, **kw), pgc.AblationCAM(net, [net.features])),
        (rfjax.ablation_cam(model, images, **kw), pgc.AblationCAM(net, [net.features])),
    ):
        want = theirs(input_tensor=xt, targets=targets)  # min-max normalised, cv2-resized
        assert want.std() > 0.05  # a map, not a constant
        got = ours.upsampled[:, 0]
        got = got - got.min(axis=(1, 2), keepdims=True)
        got = got / (got.max(axis=(1, 2), keepdims=True) + 1e-7)
        np.testing.assert_allclose(got, want, atol=2e-4)


def test_perturbation_methods_pick_the_layer_and_the_logits_before_a_softmax():
    import keras
    from keras import layers

    keras.utils.set_random_seed(5)
    inp = keras.Input((14, 14, 3))
    feat = layers.Conv2D(6, 3, activation="relu", name="features")(inp)
    pooled = layers.GlobalAveragePooling2D()(feat)
    soft = keras.Model(inp, layers.Dense(4, activation="softmax", name="scores")(pooled))
    # the same network ending in its logits, built by hand with Keras (no rfjax splitting)
    linear = layers.Dense(4, name="logits")
    plain = keras.Model(inp, linear(pooled))
    linear.set_weights(soft.get_layer("scores").get_weights())
    x = np.random.default_rng(3).uniform(size=(2, 14, 14, 3)).astype(np.float32)
    for method in (rfjax.ablation_cam, rfjax.score_cam):
        picked = method(soft, x, placement="resize")  # layer and logits picked, softmax split
        want = method(plain, x, layer="features", logits="logits", placement="resize")
        assert picked.layer == "features"
        np.testing.assert_array_equal(picked.classes, want.classes)
        np.testing.assert_allclose(picked.maps, want.maps, rtol=1e-5, atol=1e-7)
