"""Memory planning (issue 11, point 3): every program is sized before it runs.

Expected values are independent of the planner: the maps of an unchunked run, the
kernel's own ``MemAvailable``, and XLA's memory analysis of the chunked program.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import rfjax
from rfjax import memory
from rfjax.errors import RFMemoryError

DN = ("NHWC", "HWIO", "NHWC")
RNG = np.random.default_rng(0)
K1 = RNG.normal(size=(3, 3, 3, 64)).astype(np.float32)
K2 = RNG.normal(size=(3, 3, 64, 64)).astype(np.float32) / 20


def wide(x):
    """A wide network: two 3x3 convolutions with 64 channels."""
    h = jnp.tanh(lax.conv_general_dilated(x, K1, (1, 1), "SAME", dimension_numbers=DN))
    return lax.conv_general_dilated(h, K2, (2, 2), "SAME", dimension_numbers=DN)


def test_default_budget_is_a_share_of_the_memory_the_kernel_says_is_free():
    with open("/proc/meminfo") as f:
        free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    budget = memory.default_budget()
    assert budget is not None
    assert abs(budget - memory.BUDGET_FRACTION * free) < 0.1 * free  # the machine is shared: 10% slack


def _largest_program(monkeypatch, run) -> int:
    """Bytes of the largest program compiled while ``run()`` runs (XLA's analysis)."""
    sizes = []
    real = memory.compiled

    def spy(jitted, *args):
        exe = real(jitted, *args)
        sizes.append(memory.program_bytes(exe))
        return exe

    monkeypatch.setattr(memory, "compiled", spy)
    memory.clear()
    run()
    monkeypatch.setattr(memory, "compiled", real)
    return max(sizes)


def test_little_free_memory_chunks_the_program_with_the_same_maps(monkeypatch):
    x = np.random.default_rng(1).uniform(size=(24, 24, 3)).astype(np.float32)
    whole = rfjax.gradient_maps(wide, x, strategy="dense")
    full = _largest_program(monkeypatch, lambda: rfjax.gradient_maps(wide, x, strategy="dense"))
    chunks = []
    real_plan = memory.plan_chunks

    def spy(compile_for, n, budget, **kw):
        size, exe = real_plan(compile_for, n, budget, **kw)
        chunks.append((n, size, memory.program_bytes(exe), budget))
        return size, exe

    monkeypatch.setattr(memory, "plan_chunks", spy)
    # pretend only a little memory is free: a third of what the one-call program takes
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: int(full / 3 / memory.BUDGET_FRACTION))
    small = rfjax.gradient_maps(wide, x, strategy="dense")
    np.testing.assert_allclose(small.maps, whole.maps, rtol=1e-6, atol=1e-7)
    (n, size, used, budget), *_ = chunks
    assert n == 144 and 1 <= size < n and used <= budget


def test_one_cell_over_the_free_memory_is_one_sentence(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 64 * 1024)
    with pytest.raises(
        RFMemoryError, match=r"needs about .* but only .* of memory is free.*smaller input_shape"
    ) as e:
        rfjax.gradient_maps(wide, np.ones((24, 24, 3), np.float32))
    assert e.value.needed > e.value.budget


def test_receptive_field_stays_exact_when_memory_is_short(monkeypatch):
    want = rfjax.receptive_field(wide, (32, 32, 3))
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 12 * 2**20)
    got = rfjax.receptive_field(wide, (32, 32, 3))
    assert (got.size, got.stride, got.offset) == (want.size, want.stride, want.offset)


def classifier(x):
    f = jnp.tanh(lax.conv_general_dilated(x, K1, (1, 1), "VALID", dimension_numbers=DN))
    return f, f.mean(axis=(1, 2))[:, :10]


def test_cam_and_effective_rf_split_images_under_max_memory(monkeypatch):
    images = np.random.default_rng(2).uniform(size=(6, 20, 20, 3)).astype(np.float32)
    whole = rfjax.grad_cam(classifier, images, top_k=2, placement="resize")
    full = _largest_program(
        monkeypatch, lambda: rfjax.grad_cam(classifier, images, top_k=2, placement="resize")
    )
    part = rfjax.grad_cam(classifier, images, top_k=2, placement="resize", max_memory=full // 2)
    np.testing.assert_allclose(part.maps, whole.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(part.classes, whole.classes)
    e_whole = rfjax.effective_rf(lambda x: classifier(x)[0], images, rf=None)
    e_part = rfjax.effective_rf(lambda x: classifier(x)[0], images, rf=None, max_memory=600_000)
    np.testing.assert_allclose(e_part.map, e_whole.map, rtol=1e-5, atol=1e-7)
    with pytest.raises(RFMemoryError, match=r"max_memory=1,000 bytes is too small for one image"):
        rfjax.grad_cam(classifier, images, top_k=2, placement="resize", max_memory=1000)
