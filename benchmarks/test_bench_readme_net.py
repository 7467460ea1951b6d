"""pytest-benchmark suite: every way on the README network, in one run.

    .venv/bin/pytest benchmarks -n 0 -p no:randomly --benchmark-enable

(pyproject adds ``--benchmark-disable``, under which each way runs once, untimed, as a
smoke test.) Pedantic mode with one warm-up round, so the timed rounds exclude tracing
and compilation; all ways share one process (see ``benchmarks/run.py`` for first-call
times and per-way peak memory, which need a process per way).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from benchmarks import rfjax_ways, tf_ways

ROUNDS = 5
GRID = (16, 16, 96, 96)


@pytest.fixture(scope="module")
def tf_model():
    return tf_ways.readme_net()


@pytest.fixture(scope="module")
def jax_params():
    return rfjax_ways.readme_params()


@pytest.fixture(scope="module")
def reference(tf_model):
    return tf_ways.jacobian_pfor(tf_model)


def _bench(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="readme_net")
@pytest.mark.parametrize("way", list(tf_ways.WAYS))
def test_tf(benchmark, tf_model, reference, way):
    maps = _bench(benchmark, lambda: tf_ways.WAYS[way](tf_model))
    assert maps.shape == GRID
    np.testing.assert_allclose(maps, reference, rtol=1e-5, atol=1e-6 * float(reference.max()))


@pytest.mark.benchmark(group="readme_net")
@pytest.mark.parametrize("way", ["rfjax_gradient_maps", "rfjax_gradient_maps_dense"])
def test_rfjax_gradient_maps(benchmark, jax_params, reference, way):
    maps = _bench(benchmark, lambda: rfjax_ways.WAYS[way](jax_params))
    assert maps.shape == GRID
    np.testing.assert_allclose(maps, reference, rtol=1e-5, atol=1e-6 * float(reference.max()))


@pytest.mark.benchmark(group="readme_net")
def test_rfjax_receptive_field(benchmark, jax_params):
    rf = _bench(benchmark, lambda: rfjax_ways.receptive_field(jax_params))
    # the receptivefield package's README answer
    assert tuple(rf.size) == (34, 34) and tuple(rf.stride) == (4, 4) and tuple(rf.offset) == (17, 17)
