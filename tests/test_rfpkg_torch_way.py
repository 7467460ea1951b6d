"""The receptivefield package's PyTorch API as the benchmark runs it
(``benchmarks/rfpkg_torch_way.py``): its input-shape and answer axis conventions, on a
small asymmetric network whose RF is worked out by hand."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks folder is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import rfpkg_torch_way


def _net() -> torch.nn.Module:
    """conv (3, 7) stride (2, 1) -> ReLU -> max pool 2x2 stride 2 -> conv (5, 1) stride (1, 3),
    no padding, constant positive weights, zero biases.

    Rows: size 3, jump 2; pool: 3 + 1 * 2 = 5, jump 4; conv: 5 + 4 * 4 = 21, jump 4.
    Cols: size 7, jump 1; pool: 7 + 1 * 1 = 8, jump 2; conv: 8 + 0 * 2 = 8, jump 6.
    No padding: offset = size / 2 = (10.5, 4)."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, (3, 7), stride=(2, 1)),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(2, 2, (5, 1), stride=(1, 3)),
    )
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(0.1)
                m.bias.zero_()
    return net.eval()


def test_linearised_swaps_relu_and_max_pool_keeping_the_grid():
    net = _net()
    x = torch.ones((1, 1, 60, 100))
    shape = net(x).shape
    lin = rfpkg_torch_way.linearised(net)
    kinds = [type(m) for m in lin.modules()]
    assert torch.nn.ReLU not in kinds and torch.nn.MaxPool2d not in kinds
    (pool,) = (m for m in lin.modules() if isinstance(m, torch.nn.AvgPool2d))
    assert (pool.kernel_size, pool.stride, pool.padding) == (2, 2, 0)
    assert lin(x).shape == shape == (1, 2, 10, 16)


@pytest.fixture
def package(monkeypatch):
    """The package importable (from ``$RECEPTIVEFIELD_TARGET`` too), and logging restored
    afterwards: its import runs ``logging.config.fileConfig``, which sets the root logger
    to INFO with its own handler and disables every logger that exists then."""
    target = os.environ.get(rfpkg_torch_way.TARGET_ENV)
    if target:
        monkeypatch.syspath_prepend(target)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    disabled = [lg.disabled for lg in loggers]
    try:
        yield pytest.importorskip("receptivefield.pytorch")
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        for lg, was in zip(loggers, disabled):
            lg.disabled = was


def test_package_answer_is_row_col_on_an_asymmetric_input(package):
    net = rfpkg_torch_way.linearised(_net())
    seen = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    rf = rfpkg_torch_way.estimator_call(net, (60, 100, 1))()
    assert set(seen) == {(1, 1, 60, 100)}  # the package was given (W, H, C) = (100, 60, 1)
    assert rf.size == (21.0, 8.0)
    assert rf.stride == (4.0, 6.0)
    assert rf.offset == (10.5, 4.0)
    assert rf.note == ""  # the measured cells' RFs lie inside the 60x100 input
