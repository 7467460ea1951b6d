"""The converted PyTorch module under rfjax's model contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from converters._registry import check_name
from converters._torch import _geometry, _jaxpr, _layout, _params
from converters._torch._trace import Source, Traced
from rfjax._types import HW
from rfjax.contract import ConvertedModel, RFBound
from rfjax.errors import RFError

_MODES = ("plain", "rf", "one")


class TorchModel(ConvertedModel):
    """A ``torch.nn.Module`` as a pure JAX function ``x -> {module path: feature map}``.

    Attributes:
      params: ``{state name: array}``, the module's floating-point parameters and
        buffers under their PyTorch names (``"layer1.0.conv1.weight"``,
        ``"bn1.running_var"``); kernels keep PyTorch's ``(out, in / groups, kh, kw)``.
      output_names: the outputs :meth:`apply` returns.
      layer_names: every requestable output: qualified module paths in call order
        (``"layer4"``, ``"layer3.5.relu"``, ``"features.28"``; a module called again is
        ``"path:1"``, ...) and the module's own result (``"output"``, or its dict keys,
        or ``"output/0"``, ... for tuples).
      input_shape: ``(H, W, C)`` the rfjax engine feeds by default (``None`` entries
        when the conversion had no input shape).

    Inputs are NHWC float32 ``(N, H, W, C)``; the module computes NCHW inside (eval
    mode: batch-norm running statistics, no dropout); 4-D outputs are NHWC.
    """

    def __init__(
        self,
        source: Source,
        input_shape: tuple[int | None, int | None, int | None],
        layer_names: tuple[str, ...],
        outputs: str | Sequence[str],
        *,
        mode: str = "plain",
        hold: bool = False,
        params: Any = None,
    ):
        if mode not in _MODES:
            raise ValueError(f"mode={mode!r} is not one of {_MODES}")
        self._source, self._mode, self._hold = source, mode, hold
        self.input_shape = input_shape
        self.layer_names = layer_names
        self.params = source.params if params is None else params
        names = [outputs] if isinstance(outputs, str) else list(outputs)
        self.output_names: tuple[str, ...] = tuple(self._check_name(n) for n in names)
        if not self.output_names:
            raise RFError("outputs is empty; name at least one module path (see .layer_names).")

    # ------------------------------------------------------------------ the contract
    @property
    def has_one_channel(self) -> bool:
        """PyTorch modules have the one-channel RF copy (full channels where the forward
        selects channels; :attr:`one_channel_fallbacks` says where and why)."""
        return True

    @property
    def one_channel_fallbacks(self) -> dict[tuple, str]:
        """``{input shape: reason}`` for one-channel copies traced with full channels."""
        return dict(self._source.fallbacks)

    @property
    def module(self) -> Any:
        """The eval-mode copy of the module that is traced (not the user's module)."""
        return self._source.module

    def apply(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        """Run the module on an NHWC batch ``(N, H, W, C)``; returns ``{name: array}``
        for :attr:`output_names` (4-D maps NHWC). Pure and jit-able."""
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 4:
            raise RFError(f"x has shape {x.shape}; pass an NHWC batch (N, H, W, C).")
        traced = self._traced(x.shape)
        missing = [n for n in self.output_names if n not in traced.names]
        if missing:
            raise RFError(
                f"{missing[0]!r} gives no tensor for a {tuple(x.shape[1:])} input (its forward is not called, or "
                "returns no tensor); pick another of .layer_names."
            )
        outvars = [traced.jaxpr.jaxpr.outvars[traced.names.index(n)] for n in self.output_names]
        eqns = _jaxpr.live_equations(traced.jaxpr.jaxpr, outvars)
        hold = self._global_values(tuple(x.shape)) if self._hold else frozenset()
        outs = _layout.evaluate(traced.jaxpr, eqns, outvars, jax.tree_util.tree_leaves((params, x)), hold)
        return dict(zip(self.output_names, outs))

    def cam_layers(self) -> tuple[str, str]:
        """``(feature layer, logits)`` for the CAM family: the last top-level module whose
        output is a spatial map (``layer4`` of a ResNet, ``features`` of VGG / MobileNet,
        see :func:`converters._torch._zoo.final_features`) and the module's own result
        (``"output"``), which must be its class scores ``(N, classes)``."""
        from converters._torch._zoo import final_features

        if "output" not in self.layer_names:
            raise RFError(
                "the module returns a dict or several values; pass layer= and logits= (names from .layer_names)."
            )
        return final_features(self), "output"

    def with_outputs(self, outputs: str | Sequence[str]) -> TorchModel:
        """A copy returning other outputs (no new conversion)."""
        return self._copy(outputs=outputs)

    def prepared(self, *, one_channel: bool = False) -> TorchModel:
        """The exact RF copy (see :mod:`converters._torch._rfmode`): activations, norms
        and dropout are the identity, max pooling is average pooling, products of two
        tensors keep the value of the first, kernels are the constant
        ``1 / (C_in * sqrt(kh * kw))`` (per group), biases 0. ``one_channel=True``: one
        channel per layer (same supports, far cheaper), or full channels where the
        forward selects channels."""
        mode = "one" if one_channel else "rf"
        if self._mode == mode:
            return self
        params = self._source.cache_get(
            "prepared", lambda: jax.device_put(_params.prepared(self._source.params))
        )
        return self._copy(mode=mode, params=params)

    def held(self) -> TorchModel:
        """A copy whose :meth:`global_nodes` values are held constant (``stop_gradient``)."""
        return self._copy(hold=True)

    def global_nodes(self) -> frozenset[str]:
        """The outputs that depend on the whole input only (global pooling, the dense
        head after it), found by tracing at the input size and twice it: values whose
        shape stays while their inputs' shapes follow the input, and what is computed
        from them at a fixed size. Empty when the module cannot run at both sizes."""
        traced, found = self._analysis()
        tainted = _jaxpr.downstream(traced.jaxpr.jaxpr, found)
        shapes = self._analysis_shapes()
        return frozenset(
            n
            for n, v in zip(traced.names, traced.jaxpr.jaxpr.outvars)
            if v in tainted and shapes[0].get(n) == shapes[1].get(n)
        )

    def depends_globally(self, name: str) -> bool:
        """Whether ``name`` depends on the whole input through a global value."""
        name = self._check_name(name)
        traced, found = self._analysis()
        if name not in traced.names or not found:
            return False
        return traced.jaxpr.jaxpr.outvars[traced.names.index(name)] in _jaxpr.downstream(
            traced.jaxpr.jaxpr, found
        )

    def rf_bound(self, name: str) -> RFBound | None:
        """RF size and stride of ``name`` along its local paths, in closed form from the
        traced program (see :mod:`converters._torch._geometry`); ``None`` where unknown.
        Used to pick an input large enough for a measurement in one step."""
        name = self._check_name(name)
        if None in self.input_shape:
            return None
        view = self.prepared(one_channel=True)
        traced = view._traced((1, *self.known_input_shape()))
        if name not in traced.names:
            return None
        key = ("bounds", (1, *self.input_shape))
        n_params = len(jax.tree_util.tree_leaves(view.params))
        bounds = self._source.cache_get(key, lambda: _geometry.nhwc_bounds(traced.jaxpr.jaxpr, n_params))
        bound = bounds[traced.names.index(name)]
        return None if bound is None else RFBound(HW(bound[0], bound[1]), HW(bound[2], bound[3]))

    def spatial_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The NHWC shape of every output for an ``(H, W, C)`` input, traced without
        compute through the one-channel RF copy (one channel where it applies)."""
        view = self.prepared(one_channel=True)
        traced = view._traced((1, *(int(v) for v in input_shape)))
        return {n: tuple(v.aval.shape) for n, v in zip(traced.names, traced.jaxpr.jaxpr.outvars)}

    def __repr__(self) -> str:
        mode = {"plain": "", "rf": ", rf_mode", "one": ", rf_mode, one_channel"}[self._mode]
        return (
            f"TorchModel({type(self.module).__name__}, input_shape={self.input_shape}, "
            f"outputs={list(self.output_names)}{mode}{', held' if self._hold else ''})"
        )

    # ------------------------------------------------------------------ internals
    def _copy(self, **changes: Any) -> TorchModel:
        kwargs = {"outputs": self.output_names, "mode": self._mode, "hold": self._hold, "params": self.params}
        kwargs.update(changes)
        return TorchModel(self._source, self.known_input_shape(), self.layer_names, **kwargs)

    def _traced(self, shape: tuple[int, ...]) -> Traced:
        return self._source.traced(self._mode, tuple(int(v) for v in shape), self.params)

    def _global_values(self, shape: tuple[int, ...]) -> frozenset:
        """Values of this mode's program at ``shape`` that do not follow the input size."""

        def find() -> frozenset:
            small = self._traced(shape)
            try:
                large = self._traced((shape[0], 2 * shape[1], 2 * shape[2], shape[3]))
            except RFError:  # a module that runs at one input size only
                return frozenset()
            return _jaxpr.global_values(small, large)

        return self._source.cache_get(("global", self._mode, shape), find)

    def _analysis(self) -> tuple[Traced, frozenset]:
        """The one-channel RF program at :attr:`input_shape` and its global values."""
        if None in self.input_shape:
            raise RFError(
                "the model was converted without input_shape; pass input_shape=(H, W, C) to from_torch."
            )
        view = self.prepared(one_channel=True)
        shape = (1, *self.known_input_shape())
        return view._traced(shape), view._global_values(shape)

    def _analysis_shapes(self) -> tuple[dict, dict]:
        """Output shapes of the one-channel RF program at the input size and twice it."""
        h, w, c = self.known_input_shape()
        return self.spatial_shapes((h, w, c)), self.spatial_shapes((2 * h, 2 * w, c))

    def _check_name(self, name: Any) -> str:
        return check_name(
            name,
            self.layer_names,
            "module {name} is not in the model",
            "see .layer_names for the qualified module paths.",
        )
