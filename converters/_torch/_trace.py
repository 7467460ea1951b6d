"""Tracing a PyTorch module to one jaxpr through torchax, every module's output named.

The module (an eval-mode deep copy: the user's module is never touched) runs under
torchax on JAX tracers; forward hooks record every submodule's output under its
qualified path as PyTorch names it (``"layer3.5.relu"``; a module called again gives
``"layer3.5.relu:1"``, ``":2"``, ...), and the module's own result is ``"output"``
(a dict result keeps its keys; tuple and list items are ``"output/0"``, ...). The
program is traced NCHW and returns NHWC maps, so the boundary follows rfjax's
conventions. One trace per mode and input shape is kept.

Modes: ``"plain"`` (the module as it computes), ``"rf"`` (the RF copy of
:class:`~converters._torch._rfmode.RFMode`, then :func:`rfjax.prepare.linearize`),
``"one"`` (the one-channel RF copy; when the forward selects channels or keeps a
max the full-channel ``"rf"`` trace is used instead, see :attr:`Source.fallbacks`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchax
from jax.extend import core as jcore
from torchax.tensor import OperatorNotFound

from converters._torch import _jaxpr
from converters._torch._rfmode import NotCollapsible, RFMode
from rfjax.errors import RFError
from rfjax.prepare import linearize


class Traced(NamedTuple):
    """One traced program: ``jaxpr(params leaves..., x) -> [maps]`` named ``names``;
    ``outputs`` are the names of the module's own result."""

    jaxpr: jcore.ClosedJaxpr
    names: tuple[str, ...]
    outputs: tuple[str, ...]


def _leaves(module: torch.nn.Module) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Floating-point parameters and buffers (the params pytree) and the other buffers
    (integer constants such as ``num_batches_tracked``), by qualified name."""
    floats, others = {}, {}
    named: dict[str, Any] = dict(module.named_parameters())
    named.update(module.named_buffers())
    for name, t in named.items():
        if t.is_floating_point():
            floats[name] = t.detach().cpu().numpy()
        else:
            others[name] = t.detach().cpu()
    return floats, others


def _flatten(value: Any, name: str) -> list[tuple[str, Any]]:
    """``[(name, tensor)]`` for a tensor, dict, tuple or list of them (others: ``[]``)."""
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return []
    return [pair for key, v in items for pair in _flatten(v, f"{name}/{key}" if name else key)]


def _nhwc(t: Any) -> jax.Array:
    a = t.jax()
    return jnp.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


class _Recorder:
    """Forward hooks that name and keep every module's output while one trace runs,
    and know which module was running when an error was raised."""

    def __init__(self, module: torch.nn.Module, channels: int | None):
        self.maps: dict[str, jax.Array] = {}
        self.stack: list[str] = []
        self._calls: dict[str, int] = {}
        self._channels = channels  # checked at the first convolution (None: not checked)
        self._handles = []
        for path, mod in module.named_modules():
            if path:
                self._handles.append(mod.register_forward_pre_hook(functools.partial(self._enter, path)))
                self._handles.append(mod.register_forward_hook(functools.partial(self._leave, path)))

    def _enter(self, path: str, mod: torch.nn.Module, inputs: tuple) -> None:
        self.stack.append(path)
        if self._channels is not None and isinstance(mod, torch.nn.modules.conv._ConvNd):
            takes, self._channels = mod.in_channels, None
            if takes != inputs[0].shape[1]:
                raise RFError(
                    f"the input has {inputs[0].shape[1]} channels but the first convolution {path!r} takes "
                    f"{takes}; pass input_shape=(H, W, {takes})."
                )

    def _leave(self, path: str, mod: torch.nn.Module, inputs: tuple, output: Any) -> None:
        self.stack.pop()
        k = self._calls.get(path, 0)
        self._calls[path] = k + 1
        for key, t in _flatten(output, path if k == 0 else f"{path}:{k}"):
            self.maps[key] = _nhwc(t)

    def where(self) -> str:
        return f"in module {self.stack[-1]!r}" if self.stack else "in the top-level forward"

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _translate(e: Exception, where: str) -> RFError:
    """The one-sentence error for a failed trace (decided on exception types)."""
    version = f"torchax {torchax.__version__}, torch {torch.__version__}"
    if isinstance(e, OperatorNotFound):
        return RFError(
            f"{e} ({where}; {version}): the op cannot be converted to JAX; replace the module or op."
        )
    if isinstance(e, jax.errors.ConcretizationTypeError):
        return RFError(
            f"the forward needs concrete tensor values ({where}): Python control flow or a shape that depends "
            "on tensor values cannot be traced to one JAX program; branch on shapes or module attributes instead."
        )
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return RFError(f"the module could not be traced to JAX ({where}; {version}): {type(e).__name__}: {first}")


class Source:
    """An eval-mode copy of a module and its traced programs (shared by every view)."""

    def __init__(self, module: torch.nn.Module):
        if module.training:
            warnings.warn(
                f"{type(module).__name__} is in training mode; rfjax converts an eval-mode copy (batch-norm "
                "running statistics, no dropout) and leaves the module as it is.",
                stacklevel=4,
            )
        self.module = copy.deepcopy(module).eval()
        floats, self._constants = _leaves(self.module)
        self.params = jax.device_put(floats)
        self.paths = tuple(p for p, _ in self.module.named_modules() if p)
        self.fallbacks: dict[tuple, str] = {}  # one-channel traces that fell back to full channels, and why
        self._traces: dict[tuple, Traced] = {}
        self._cache: dict[Any, Any] = {}
        self._lock = threading.RLock()

    def traced(self, mode: str, shape: tuple[int, ...], params: Any) -> Traced:
        """The program for an NHWC input of ``shape`` in ``mode`` (traced on first use)."""
        key = (mode, tuple(shape))
        with self._lock:
            if key not in self._traces:
                self._traces[key] = self._trace(mode, tuple(shape), params)
            return self._traces[key]

    def _trace(self, mode: str, shape: tuple[int, ...], params: Any) -> Traced:
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        if mode == "one":
            try:
                traced = self._make(mode, x, params)
                found = _jaxpr.max_like(traced.jaxpr.jaxpr)
                if found is None:
                    return traced
                reason = f"the forward keeps a {found} that is not an activation or pooling"
            except NotCollapsible as e:
                reason = str(e)
            except Exception as e:  # noqa: BLE001 - any failure of the collapsed copy: the full copy is exact
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self.fallbacks[shape] = reason
            return self.traced("rf", shape, params)
        return self._make(mode, x, params)

    def _make(self, mode: str, x: jax.ShapeDtypeStruct, params: Any) -> Traced:
        names: list[list[str]] = [[], []]
        fn = self._forward(mode, names)
        fn = linearize(fn) if mode == "rf" else fn
        return Traced(jax.make_jaxpr(fn)(params, x), tuple(names[0]), tuple(names[1]))

    def cache_get(self, key: Any, make: Callable[[], Any]) -> Any:
        """A value computed once per source (prepared parameters, global values)."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def _forward(self, mode: str, names: list[list[str]]) -> Callable:
        env = torchax.default_env()

        def forward(params: Any, x: jax.Array) -> list[jax.Array]:
            x = jnp.transpose(x, (0, 3, 1, 2))
            if mode == "one":
                x = jnp.mean(x, axis=1, keepdims=True)
            recorder = _Recorder(self.module, None if mode == "one" else int(x.shape[1]))
            try:
                with env, RFMode(mode == "one") if mode != "plain" else contextlib.nullcontext():
                    state = dict(env.j2t_iso(dict(params)))
                    state.update(env.to_xla(self._constants))
                    out = torch.func.functional_call(self.module, state, (env.j2t_iso(x),), strict=False)
                    results = _flatten(out, "" if isinstance(out, dict) else "output")
                    if not results:
                        raise RFError(
                            f"the module returns {type(out).__name__}; from_torch needs a tensor, or a dict, "
                            "tuple or list of tensors."
                        )
                    recorder.maps.update((k, _nhwc(t)) for k, t in results)
            except (RFError, NotCollapsible):
                raise
            except Exception as e:
                raise _translate(e, recorder.where()) from e
            finally:
                recorder.close()
            names[:] = [list(recorder.maps), [k for k, _ in results]]
            return list(recorder.maps.values())

        return forward
