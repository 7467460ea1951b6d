"""Faithfulness metrics: Average Drop / Increase, Deletion / Insertion, ROAD, and their plot.

Expected values come from Keras predictions on perturbed images built by plain numpy loops
(RISE's blur by torch.conv2d as RISE writes it), from a scipy sparse direct solve of ROAD's
imputation system, and from pytorch-grad-cam's own ROAD classes on a converted PyTorch model.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

import converters
import rfjax
from rfjax.activation_maps import faithfulness as F
from rfjax.errors import RFError

keras = pytest.importorskip("keras")
L = keras.layers
H = W = 20


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(7)
    inp = keras.Input((H, W, 3))
    h = L.MaxPooling2D(2)(L.Conv2D(8, 3, activation="relu", padding="same", name="c1")(inp))
    f = L.Conv2D(6, 3, activation="relu", padding="same", name="feat")(h)
    y = L.Dense(4, name="scores")(L.GlobalAveragePooling2D()(f))
    keras_model = keras.Model(inp, y)
    return keras_model, converters.from_keras(keras_model, outputs=["feat", "scores"])


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).uniform(size=(2, H, W, 3)).astype(np.float32)


def _probs(keras_model, x):
    y = np.asarray(keras_model.predict(np.asarray(x, np.float32), verbose=0), np.float64)
    z = np.exp(y - y.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _norm(m):
    m = m - m.min()
    return m / (m.max() + 1e-7)


def _rise_blur(x):
    """RISE's ``blur``: conv2d with an 11 x 11 gkern(11, 5), padding 5, written with torch."""
    torch = pytest.importorskip("torch")
    inp = np.zeros((11, 11))
    inp[5, 5] = 1
    k = ndimage.gaussian_filter(inp, 5)
    kern = torch.zeros(3, 3, 11, 11, dtype=torch.float64)
    for c in range(3):
        kern[c, c] = torch.tensor(k)
    out = torch.nn.functional.conv2d(
        torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2), kern, padding=5
    )
    return out.permute(0, 2, 3, 1).numpy()


def test_average_drop_increase_and_deletion_insertion_match_keras_loops(net, images, monkeypatch):
    keras_model, model = net
    r = rfjax.grad_cam(model, images, layer="feat", logits="scores", placement="resize")
    steps = 7
    m = rfjax.cam_metrics(model, images, r, logits="scores", steps=steps, percentiles=[50])
    cls = r.classes[:, 0]
    base = _probs(keras_model, images)[np.arange(2), cls]
    e = np.stack([_norm(r.upsampled[n, 0]) for n in range(2)])
    scaled = _probs(keras_model, images * e[..., None])[np.arange(2), cls]
    np.testing.assert_allclose(m.score, base, rtol=1e-4)
    np.testing.assert_allclose(
        m.average_drop, 100 * np.maximum(base - scaled, 0) / base, rtol=1e-3, atol=1e-4
    )
    np.testing.assert_array_equal(m.increase, scaled > base)
    per = int(np.ceil(H * W / steps))
    blurred = _rise_blur(images)
    for n in range(2):
        order = np.argsort(-e[n].ravel(), kind="stable")
        dele, ins = [], []
        for i in range(steps + 1):
            gone = np.zeros(H * W, bool)
            gone[order[: i * per]] = True
            gone = gone.reshape(H, W)[..., None]
            dele.append(np.where(gone, 0.0, images[n]))
            ins.append(np.where(gone, images[n], blurred[n]))
        pd = _probs(keras_model, np.stack(dele))[:, cls[n]]
        pi = _probs(keras_model, np.stack(ins))[:, cls[n]]
        np.testing.assert_allclose(m.deletion[n], pd, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m.insertion[n], pi, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(m.deletion_auc[n], np.trapezoid(pd, dx=1 / steps), rtol=1e-4)
        np.testing.assert_allclose(m.insertion_auc[n], np.trapezoid(pi, dx=1 / steps), rtol=1e-4)
    np.testing.assert_allclose(m.fractions, np.minimum(np.arange(steps + 1) * per, H * W) / (H * W))
    summary = m.mean()
    assert summary.deletion_auc == pytest.approx(float(m.deletion_auc.mean()))
    assert summary.increase == pytest.approx(100 * float(m.increase.mean()))
    # equal chunks under a small budget give the same numbers
    plans = []
    plan = rfjax.memory.plan_chunks

    def spy(compile_for, n, budget, **kwargs):
        size, exe = plan(compile_for, n, budget, **kwargs)
        plans.append((n, size, rfjax.memory.program_bytes(exe)))
        return size, exe

    monkeypatch.setattr(rfjax.memory, "plan_chunks", spy)
    small = rfjax.cam_metrics(
        model, images, r, logits="scores", steps=steps, percentiles=[50], max_memory=300_000
    )
    np.testing.assert_allclose(small.deletion, m.deletion, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(small.insertion, m.insertion, rtol=1e-5, atol=1e-7)
    n, size, used = plans[2]  # the deletion + insertion program: 16 steps in chunks
    assert n == 2 * (steps + 1) and 1 <= size < n and used <= 300_000, plans


def _impute_direct(img, keep):
    """ROAD's linear imputation as a scipy sparse direct solve, one equation per removed
    pixel: (sum of in-image neighbour weights) u_i - sum_removed w u_j = sum_kept w v_j."""
    h, w, c = img.shape
    holes = [(i, j) for i in range(h) for j in range(w) if not keep[i, j]]
    index = {p: n for n, p in enumerate(holes)}
    a = sparse.lil_matrix((len(holes), len(holes)))
    b = np.zeros((len(holes), c))
    for n, (i, j) in enumerate(holes):
        for (dy, dx), wt in F.NEIGHBOURS:
            y, x = i + dy, j + dx
            if 0 <= y < h and 0 <= x < w:
                a[n, n] += wt
                if keep[y, x]:
                    b[n] += wt * img[y, x]
                else:
                    a[n, index[(y, x)]] -= wt
    sol = spsolve(sparse.csc_matrix(a), b).reshape(len(holes), c)
    out = img.astype(np.float64).copy()
    for n, (i, j) in enumerate(holes):
        out[i, j] = sol[n]
    return out


def test_road_imputation_solves_the_neighbour_system_and_adds_the_stated_noise(images):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    keep = np.ones((2, H, W), np.float32)
    keep[0, 3:15, 2:12] = 0
    keep[1] = rng.uniform(size=(H, W)) > 0.7  # 70 % removed, scattered
    got = np.asarray(F.impute(jnp.asarray(images), jnp.asarray(keep), 0.0, jax.random.PRNGKey(0)))
    for n in range(2):
        np.testing.assert_allclose(got[n], _impute_direct(images[n], keep[n] > 0), atol=2e-5)
    noisy = np.asarray(F.impute(jnp.asarray(images), jnp.asarray(keep), 0.01, jax.random.PRNGKey(1)))
    diff = (noisy - got)[np.broadcast_to((keep == 0)[..., None], got.shape)]
    assert abs(diff.std() - 0.01) < 1e-3 and abs(diff.mean()) < 1e-3
    np.testing.assert_array_equal(noisy[keep > 0], images[keep > 0])


def test_road_imputation_reaches_the_direct_solve_on_large_holes():
    """The iteration cap (5 * side) is enough for holes the size of the image: one piece
    removed but a 4-pixel strip, a 60x60 hole, and a sparse grid of kept pixels, 64x64."""
    import jax
    import jax.numpy as jnp

    side = 64
    rng = np.random.default_rng(5)
    imgs = rng.uniform(size=(3, side, side, 3)).astype(np.float32)
    keep = np.zeros((3, side, side), np.float32)
    keep[0, :, :4] = 1
    keep[1] = 1
    keep[1, 2:62, 2:62] = 0
    keep[2, ::16, ::16] = 1
    got = np.asarray(F.impute(jnp.asarray(imgs), jnp.asarray(keep), 0.0, jax.random.PRNGKey(0)))
    for n in range(3):
        np.testing.assert_allclose(got[n], _impute_direct(imgs[n], keep[n] > 0), atol=3e-4)


def test_road_matches_pytorch_grad_cam_without_noise():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from test_cam_perturb import _TorchNet

    tnet = _TorchNet.build()
    model = converters.from_torch(tnet, outputs=["features", "fc"], input_shape=(24, 24, 3))
    x = np.random.default_rng(4).uniform(size=(2, 24, 24, 3)).astype(np.float32)
    r = rfjax.grad_cam(model, x, layer="features", logits="fc", placement="resize")
    percentiles = [20, 50, 80]
    m = rfjax.cam_metrics(model, x, r, logits="fc", percentiles=percentiles, noise=0.0, steps=4)
    cams = np.stack([_norm(r.upsampled[n, 0]) for n in range(2)]).astype(np.float32)
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in r.classes[:, 0]]
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    for metric, got in ((ROADMostRelevantFirst, m.road_morf), (ROADLeastRelevantFirst, m.road_lerf)):
        changes = []
        for p in percentiles:
            road = metric(percentile=p)
            road.perturbation.imputer.noise = 0.0
            changes.append(road(xt, cams, targets, tnet))
        np.testing.assert_allclose(got, np.mean(changes, axis=0), atol=2e-5)
    assert np.abs(m.road_morf).max() > 1e-4  # the removals change the score


def test_plot_deletion_insertion_draws_both_curves_with_their_auc(net, images, tmp_path):
    from rfjax.plot_faithfulness import plot_deletion_insertion

    _, model = net
    r = rfjax.grad_cam(model, images, layer="feat", logits="scores")
    m = rfjax.cam_metrics(model, images, r, logits="scores", steps=5, percentiles=[50])
    path = tmp_path / "curves.png"
    fig = plot_deletion_insertion(m, image=1, save=path)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["deletion"].get_ydata(), m.deletion[1])
    np.testing.assert_allclose(lines["insertion"].get_xdata(), m.fractions)
    assert f"{m.insertion_auc[1]:.3f}" in lines["insertion"].get_label()
    assert path.stat().st_size > 1000
    mean = plot_deletion_insertion(m)
    np.testing.assert_allclose(
        {ln.get_gid(): ln for ln in mean.axes[0].get_lines()}["deletion"].get_ydata(), m.deletion.mean(axis=0)
    )
    with pytest.raises(RFError, match="image=5"):
        plot_deletion_insertion(m, image=5)
    with pytest.raises(RFError, match="CAMMetrics"):
        plot_deletion_insertion(r)


def test_cam_metrics_refuses_bad_input_in_one_sentence(net, images):
    _, model = net
    r = rfjax.grad_cam(model, images, layer="feat", logits="scores")
    kw = {"logits": "scores"}
    cases = [
        ({"result": "maps"}, "result must be a CAMResult"),
        ({"images": images[:1]}, "result holds maps of 2 images"),
        ({"steps": 0}, "steps=0"),
        ({"percentiles": [0, 50]}, "percentiles"),
        ({"which": 3}, "which=3"),
        ({"score": "rank"}, "score='rank'"),
    ]
    for extra, match in cases:
        args = dict(images=images, result=r, **kw)
        args.update(extra)
        with pytest.raises(RFError, match=match):
            rfjax.cam_metrics(model, **args)
    grey = images[..., :1]
    with pytest.raises(RFError, match=r"images are grey \(1 channel\) but the model takes 3"):
        rfjax.cam_metrics(model, grey, r, **kw)
