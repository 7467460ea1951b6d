"""The CAM family's batch axes sharded over local devices: the same results on 2 devices as
on 1.

Run in a subprocess with ``--xla_force_host_platform_device_count=2`` (two CPU devices);
each call with ``devices=2`` must go through the 2-device mesh (the mesh helper's cache
counts the calls), and its results must equal the 1-device run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rfjax
from rfjax import sharding
from rfjax.errors import RFError

SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, sys
    import numpy as np, jax, jax.numpy as jnp
    import rfjax
    from rfjax import sharding
    assert jax.local_device_count() == 2
    rng = np.random.default_rng(5)
    w1, w2, w3 = (jnp.asarray(rng.normal(size=s) / 3, jnp.float32) for s in [(3, 3, 3, 6), (3, 3, 6, 5), (3, 3, 5, 4)])
    wd = jnp.asarray(rng.normal(size=(3 * 3 * 4, 4)) / 6, jnp.float32)
    conv = lambda z, k: jax.nn.relu(
        jax.lax.conv_general_dilated(z, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )

    def model(x):  # conv -> pool -> conv 'feat' (5 x 5 x 5) -> conv -> flatten -> dense 'scores'
        h = jax.lax.reduce_window(conv(x, w1), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        f = conv(h, w2)
        return {"feat": f, "scores": conv(f, w3).reshape(len(x), -1) @ wd}

    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    kw = dict(layer="feat", logits="scores", top_k=2, placement="resize")
    # maps with no ties for the metrics: ROAD's thresholds then never remove every pixel
    # (a mostly-zero Grad-CAM map does; the imputation is then a singular system)
    grad = rfjax.grad_cam(model, x, devices=1, **kw)
    grad = dataclasses.replace(grad, upsampled=rng.uniform(size=grad.upsampled.shape).astype(np.float32))
    calls = {
        "grad_cam": lambda d: rfjax.grad_cam(model, x, devices=d, **kw).maps,
        "smoothgrad": lambda d: rfjax.smoothgrad(model, x, samples=5, devices=d, **kw).maps,
        "integrated_gradients": lambda d: rfjax.integrated_gradients(model, x, steps=5, devices=d, **kw).maps,
        "score_cam": lambda d: rfjax.score_cam(model, x, devices=d, **kw).maps,
        "ablation_cam": lambda d: rfjax.ablation_cam(model, x, closed_form=False, devices=d, **kw).maps,
        "metrics": lambda d: np.concatenate([
            np.ravel(getattr(m, k))
            for m in [rfjax.cam_metrics(model, x, grad, logits="scores", steps=3, percentiles=(50,), devices=d)]
            for k in ("deletion", "insertion", "road_morf", "road_lerf", "average_drop")
        ]),
        "augmentation_smoothing": lambda d: rfjax.augmentation_smoothing(
            model, x, method="score_cam", shifts=[(0, 0), (2, 0)], devices=d, **kw
        ).upsampled,
    }
    out = {}
    for name, call in calls.items():
        one = call(1)
        rfjax.clear_caches()  # the 2-device programs are built anew, so the mesh is asked for
        two = call(2)
        used = sharding.mesh.cache_info().misses > 0
        out[name] = [float(np.abs(one - two).max()), float(np.abs(one).max()), bool(used)]
    json.dump(out, open(sys.argv[1], "w"))
    """
)


@pytest.mark.slow  # a fresh process compiles every program twice: about 30 s on 2 loaded cores
def test_cam_batches_on_two_devices_equal_one_device(tmp_path):
    path = tmp_path / "out.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, env=env, timeout=600)
    out = json.loads(path.read_text())
    assert len(out) == 7
    for name, (err, scale, used) in out.items():
        assert used, f"{name} with devices=2 did not use the 2-device mesh"
        assert scale > 0, name
        # the sample means add partial sums per device: float32 rounding only
        assert err <= 1e-5 * scale, (name, err, scale)


def test_devices_out_of_range_is_refused_in_one_sentence():
    x = np.random.default_rng(0).uniform(size=(1, 8, 8, 3)).astype(np.float32)

    def fn(z):
        return z, z.mean(axis=(1, 2))

    with pytest.raises(RFError, match=r"devices=5 must be between 1 and the 1 local device"):
        rfjax.grad_cam(fn, x, devices=5, placement="resize")
    with pytest.raises(RFError, match=r"devices=0"):
        sharding.count(0)
    assert sharding.for_items(None, 3) == 1  # one CPU device here
