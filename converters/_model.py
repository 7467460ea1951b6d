"""The converted model: a graph description turned into one pure JAX function."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters import _collapse
from converters._activations import activation_name
from converters._geometry import rf_bounds
from converters._graph import Graph, Ref, map_refs, refs_in
from converters._honoured import Tracked, ignored, tracked
from converters._registry import check_name, lookup, supported_layers, unread_keys
from rfjax._types import HW
from rfjax.contract import ConvertedModel, RFBound
from rfjax.errors import RFError, RFUnhandledSetting
from rfjax.prepare import support_only


def _build(
    graph: Graph, rf: bool, one_channel: bool = False
) -> tuple[dict[str, Callable], dict[str, dict[str, jax.Array]]]:
    """One JAX function and parameter dict per layer, through the converter registry
    (``one_channel``: the RF-mode rewrite of :mod:`converters._collapse`)."""
    fns, params = {}, {}
    for key, layer in graph.layers.items():
        convert = lookup(layer.lookup)
        if convert is None:
            raise RFError(
                f"layer {key!r} of class {layer.class_name} has no converter; supported: "
                f"{', '.join(supported_layers())} (add one with converters.register({layer.class_name!r}))."
            )
        cfg, weights = layer.config, layer.weights
        if one_channel:
            cfg, weights = _collapse.config(cfg), {k: _collapse.weight(w) for k, w in weights.items()}
        seen = tracked(cfg)
        try:
            fns[key], p = convert(seen, weights, rf)
            if one_channel:
                fns[key] = _collapse.wrap(layer.class_name, cfg, fns[key])
            if not rf:  # the plain conversion reads every setting that changes the result
                _check_honoured(key, layer.class_name, seen, unread_keys(layer.lookup))
        except RFUnhandledSetting:
            raise
        except RFError as e:
            raise RFError(f"layer {key!r} ({layer.class_name}): {e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise RFError(
                f"layer {key!r} ({layer.class_name}) could not be converted ({type(e).__name__}: {e})."
            ) from e
        if p:
            params[key] = {k: _host_array(v) for k, v in p.items()}
    # one transfer for the whole tree: jnp.asarray per weight compiled a conversion
    # program per weight shape (0.9 s of InceptionV3's 1.1 s conversion)
    return fns, jax.device_put(params)


def _check_honoured(key: str, class_name: str, config: Tracked, unread: frozenset[str]) -> None:
    """Refuse (:class:`RFUnhandledSetting`) the settings of layer ``key`` that its converter
    did not read (see :mod:`converters._honoured`)."""
    missed = ignored(config, unread)
    if missed:
        settings = ", ".join(f"{k}={dict.__getitem__(config, k)!r}" for k in missed)
        raise RFUnhandledSetting(
            f"layer {key!r} ({class_name}) sets {settings}, which its converter does not implement; "
            f"convert a model without it, or register a converter that handles it "
            f"(converters.register({class_name!r}, replace=True)).",
            key,
            missed,
        )


def _host_array(v: Any) -> Any:
    """A weight as a host array in JAX's default precision (float64 -> float32)."""
    if isinstance(v, jax.Array):
        return v
    a = np.asarray(v)
    if a.dtype == np.float64:
        return a.astype(np.float32)
    return a


#: side of the square input at which a model with a dynamic input size is traced to find
#: its spatial layers (:meth:`KerasModel.cam_layers`)
CAM_TRACE_SIDE = 128


class KerasModel(ConvertedModel):
    """A Keras model converted to a pure JAX function ``x -> {layer name: feature map}``.

    Attributes:
      params: the parameter pytree, ``{layer name: {leaf: array}}`` with Flax leaf
        names: ``kernel`` (HWIO for convolutions; grouped ``(kh, kw, 1, C * m)`` for
        depthwise ones; ``(C_in, units)`` for dense), ``bias``, ``scale``, ``mean``,
        ``var``, ``depthwise_kernel`` / ``pointwise_kernel`` (SeparableConv2D), ``gamma``
        (LayerScale), ``alpha`` (PReLU). Layers without weights have no entry.
      output_names: the layers :meth:`apply` returns.
      layer_names: every name that can be requested as an output, in graph order.
      input_shape: ``(H, W, C)`` of the input (``None`` for dynamic dimensions).

    Inputs and outputs are NHWC float32 even for ``channels_first`` models, which
    compute in NCHW inside and are transposed at the boundaries (4-D tensors only).
    """

    def __init__(
        self,
        graph: Graph,
        outputs: Sequence[str] | None = None,
        *,
        input_shape: tuple[int | None, ...] | None = None,
        rf: bool = False,
        hold: frozenset[str] = frozenset(),
        one_channel: bool = False,
        _derived: dict | None = None,
    ):
        self._graph, self._rf, self._hold, self._one = graph, rf, hold, one_channel and rf
        # facts derived from the graph (functions and weights per mode, global nodes, closed-form
        # bounds, traced shapes per input size), shared by this model and every copy of it and
        # dropped with the last of them
        self._derived = {} if _derived is None else _derived
        key = ("built", rf, self._one)
        if key not in self._derived:
            self._derived[key] = _build(graph, rf, self._one)
        self._fns: dict[str, Callable] = self._derived[key][0]
        self.params = self._derived[key][1]
        # where the one-channel RF copy applies its supports-only backward rule: after
        # layers that spread a gradient spatially (the rest are identities or means there)
        self._support_layers = (
            frozenset(k for k, lay in graph.layers.items() if _spreads(lay.class_name, lay.config))
            if self._one and self._rf
            else frozenset()
        )
        self.layer_names: tuple[str, ...] = tuple(n.name for n in graph.nodes) + tuple(graph.aliases)
        names = (
            graph.outputs if outputs is None else ([outputs] if isinstance(outputs, str) else list(outputs))
        )
        self.output_names: tuple[str, ...] = tuple(self._check_name(n) for n in names)
        if not self.output_names:
            raise RFError("outputs is empty; name at least one layer (see .layer_names).")
        self.input_shape = input_shape if input_shape is not None else _nhwc_shape(graph)
        self._plan = self._schedule()

    # ------------------------------------------------------------------ public
    @property
    def channels_first(self) -> bool:
        """Whether the Keras model computes in NCHW (inputs/outputs here are NHWC anyway)."""
        return self._graph.channels_first

    @property
    def has_one_channel(self) -> bool:
        """Keras models have the one-channel RF copy (:mod:`converters._collapse`)."""
        return True

    @property
    def input_name(self) -> str:
        """The name of the model's input layer (its output is the input itself)."""
        return self._graph.input

    @property
    def rf_mode(self) -> bool:
        """Whether this is the RF-prepared copy (see :meth:`prepared`)."""
        return self._rf

    def apply(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        """Run the model: ``x`` is an NHWC batch ``(N, H, W, C)``; returns
        ``{name: array}`` for :attr:`output_names` (4-D maps in NHWC). Pure and jit-able."""
        x = jnp.asarray(x, jnp.float32)
        if self._one and x.ndim == 4:
            x = _collapse.input_mean(x)
        if self.channels_first and x.ndim == 4:
            x = jnp.transpose(x, (0, 3, 1, 2))
        env = self._run(params, x, self._plan)
        return {name: self._to_nhwc(_value(env, self._ref(name))) for name in self.output_names}

    def _run(self, params: Any, x: jax.Array, plan: Sequence, supports: bool = True) -> dict[str, list]:
        """Every node's outputs; ``supports=False`` leaves out the one-channel copy's
        supports-only backward rule (for shape traces, where it only costs time)."""
        env: dict[str, list] = {self._graph.input: [x]}
        for node in plan:
            args = map_refs(lambda v: _value(env, v), node.args)
            kwargs = map_refs(lambda v: _value(env, v), node.kwargs)
            out = self._fns[node.layer](params.get(node.layer, {}), *args, **kwargs)
            if node.name in self._hold:
                out = jax.tree.map(jax.lax.stop_gradient, out)
            elif supports and node.layer in self._support_layers:
                out = jax.tree.map(support_only, out)
            env[node.name] = [out] if node.n_outputs == 1 else list(out)
        return env

    def with_outputs(self, outputs: str | Sequence[str]) -> KerasModel:
        """A copy returning other layers (no new walk of the Keras model)."""
        return KerasModel(
            self._graph,
            outputs,
            input_shape=self.input_shape,
            rf=self._rf,
            hold=self._hold,
            one_channel=self._one,
            _derived=self._derived,
        )

    def cam_layers(self) -> tuple[str, str]:
        """``(feature layer, logits)`` for the CAM family: the logits are the model's first
        output, or the input of a final ``Softmax`` / ``Activation("softmax")`` layer (a
        fused ``activation="softmax"`` is split later, see :meth:`pre_softmax`); the feature
        layer is the last layer, in graph order, that the logits depend on and whose output
        is a spatial map (4-D, larger than 1 x 1 at the model's input size, or at
        :data:`CAM_TRACE_SIDE` square when that size is dynamic)."""
        logits = self._graph.outputs[0]
        nodes = {n.name: n for n in self._graph.nodes}
        while logits in nodes and _is_softmax(self._graph.layers[nodes[logits].layer]):
            refs = refs_in((nodes[logits].args, nodes[logits].kwargs))
            if len(refs) != 1:
                break
            logits = refs[0].node
        h, w = (int(v) if v else CAM_TRACE_SIDE for v in self.input_shape[:2])
        shapes = self.spatial_shapes((h, w, 1))
        used = self._ancestors(logits) - {self._graph.input, logits}
        spatial = [
            n.name
            for n in self._graph.nodes
            if n.name in used and len(s := shapes[n.name]) == 4 and s[1] * s[2] > 1
        ]
        if not spatial:
            raise RFError(
                f"the model has no spatial layer before its output {logits!r}; pass layer= (a name from .layer_names)."
            )
        return spatial[-1], logits

    def pre_softmax(self, name: str) -> tuple[KerasModel, str] | None:
        """The logits before output ``name`` when it is a softmax: a ``Softmax`` layer or
        ``Activation("softmax")`` gives the layer feeding it; a layer with a fused
        ``activation="softmax"`` (e.g. ``Dense``) is split: a copy of the model in which
        that layer's activation is linear, same weights (see :meth:`ConvertedModel.pre_softmax`)."""
        key = ("pre_softmax", name, self.output_names, self._rf, self._hold)
        if key not in self._derived:  # the same copy each time: its programs compile once
            self._derived[key] = self._split_softmax(name)
        return self._derived[key]

    def _split_softmax(self, name: str) -> tuple[KerasModel, str] | None:
        ref = self._ref(self._check_name(name))
        node = next(n for n in self._graph.nodes if n.name == ref.node)
        layer = self._graph.layers[node.layer]
        act = activation_name(layer.config.get("activation"))
        if _is_softmax(layer):
            source = refs_in((node.args, node.kwargs))[0]
            if source.index:
                return None
            src = source.node
            return self.with_outputs([src if o == name else o for o in self.output_names]), src
        if act != "softmax" or ref.index:
            return None
        linear = dataclasses.replace(layer, config={**layer.config, "activation": "linear"})
        graph = dataclasses.replace(self._graph, layers={**self._graph.layers, node.layer: linear})
        split = KerasModel(
            graph, self.output_names, input_shape=self.input_shape, rf=self._rf, hold=self._hold
        )
        return split, name

    def global_nodes(self) -> frozenset[str]:
        """Nodes that collapse the spatial axes: global pooling, spatial means, a
        flatten before a dense head. Their output shape does not follow the input
        size, which is how they are found: shapes are traced (no compute) at the input
        size and at twice it. Empty when the model only runs at one input size."""
        if "global_nodes" not in self._derived:
            self._derived["global_nodes"] = self._find_global_nodes()
        return self._derived["global_nodes"]

    def rf_bound(self, name: str) -> RFBound | None:
        """RF size and stride of layer ``name`` along its local paths, in closed form from the layer configs (see
        :mod:`converters._geometry`); ``None`` where a layer's geometry is unknown.
        Used to pick an input large enough for a measurement in one step."""
        if "rf_bounds" not in self._derived:
            self._derived["rf_bounds"] = rf_bounds(self._graph, self.global_nodes())
        bound = self._derived["rf_bounds"].get(self._ref(self._check_name(name)).node)
        return None if bound is None else RFBound(HW(bound[0], bound[1]), HW(bound[2], bound[3]))

    def rf_source(self, name: str) -> str | None:
        """The single input of layer ``name`` when the layer is per-pixel (see
        :func:`_per_pixel`) and that input is itself requestable; ``None`` otherwise."""
        ref = self._ref(self._check_name(name))
        node = next((n for n in self._graph.nodes if n.name == ref.node), None)
        if node is None or ref.index != 0 or node.n_outputs != 1 or node.name == self._graph.input:
            return None
        refs = refs_in((node.args, node.kwargs))
        layer = self._graph.layers[node.layer]
        if (
            len(refs) != 1
            or refs[0].index != 0
            or not _per_pixel(layer.class_name, layer.config, self.channels_first)
        ):
            return None
        return refs[0].node

    def depends_globally(self, name: str) -> bool:
        """Whether layer ``name`` depends on the whole input through a
        :meth:`global_nodes` node (squeeze-and-excitation gates, image-pooling branches)."""
        found = self.global_nodes()
        return bool(found) and any(n in found for n in self._ancestors(self._check_name(name)))

    def held(self) -> KerasModel:
        """A copy in which every :meth:`global_nodes` output is held constant
        (``stop_gradient``): gradients then show the local, convolutional RF of layers
        that also depend on the whole input."""
        return KerasModel(
            self._graph,
            self.output_names,
            input_shape=self.input_shape,
            rf=self._rf,
            hold=self.global_nodes(),
            one_channel=self._one,
            _derived=self._derived,
        )

    def prepared(self, *, one_channel: bool = False) -> KerasModel:
        """The RF-mode copy, built from the stored graph (the Keras model is never touched).

        Every activation (by name, layer or ``keras.ops`` call) is the identity; max
        pooling is average pooling with the same window and padding;
        BatchNormalization, LayerNormalization, RMSNormalization, Normalization,
        Rescaling and Dropout are the identity; Maximum/Minimum merges are averages;
        conv kernels are the constant ``1 / (C_in * sqrt(kh * kw))`` (``C_in`` per group,
        so depthwise kernels get ``1 / sqrt(kh * kw)``), dense kernels ``1 / C_in``,
        biases 0, LayerScale 1. Two magnitude guards keep deep networks inside float32
        without changing any gradient support: sums of tensors (Add) are means, and a
        product of two tensors (squeeze-excitation, hard-swish written with
        ``keras.ops``) is ``a * b / stop_gradient(b)``, which still carries gradient to
        both factors, so a global dependence stays visible.

        ``one_channel=True`` also gives every layer a single channel
        (:mod:`converters._collapse`): the same gradient supports, hence the same RF,
        at a fraction of the cost; feature maps then have one channel.
        """
        if self._rf and self._one == one_channel:
            return self
        return KerasModel(
            self._graph,
            self.output_names,
            input_shape=self.input_shape,
            rf=True,
            hold=self._hold,
            one_channel=one_channel,
            _derived=self._derived,
        )

    def __repr__(self) -> str:
        mode = (", rf_mode" if self._rf else "") + (", one_channel" if self._one else "")
        return (
            f"KerasModel({len(self._graph.nodes)} layers, input_shape={self.input_shape}, "
            f"outputs={list(self.output_names)}{mode})"
        )

    # ------------------------------------------------------------------ internals
    def _check_name(self, name: Any) -> str:
        return check_name(
            name,
            self.layer_names,
            "layer {name} is not in the model",
            "see .layer_names for the model's layers.",
        )

    def _ref(self, name: str) -> Ref:
        return self._graph.aliases.get(name, Ref(name))

    def spatial_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The output shape of every layer for an ``(H, W, C)`` input, traced (no compute)
        through the one-channel RF copy: the same spatial sizes and ranks, one channel,
        NHWC. A sweep and the global-node search share the trace (cached per size).
        Raises what the model raises when it cannot run at that size."""
        shapes = self._node_shapes(int(input_shape[0]), int(input_shape[1]))
        return {name: self._nhwc_shape(_value(shapes, self._ref(name))) for name in self.layer_names}

    def _node_shapes(self, h: int, w: int, one_channel: bool = True) -> dict:
        """``{node: [output shapes]}`` for an ``h x w`` input (cached per size), traced
        through the one-channel RF copy or, with ``one_channel=False``, this model."""
        key = ("node_shapes", h, w, one_channel)
        if key not in self._derived:
            model = self.prepared(one_channel=True) if one_channel else self
            c = 1 if model._one else self.input_shape[2]
            plan = tuple(n for n in self._graph.nodes if n.name != self._graph.input)
            x = jax.ShapeDtypeStruct((1, c, h, w) if self.channels_first else (1, h, w, c), jnp.float32)
            env = jax.eval_shape(lambda x: model._run(model.params, x, plan, supports=False), x)
            self._derived[key] = {k: jax.tree.map(lambda a: tuple(a.shape), v) for k, v in env.items()}
        return self._derived[key]

    def _nhwc_shape(self, shape: Any) -> Any:
        if self.channels_first and isinstance(shape, tuple) and len(shape) == 4:
            return (shape[0], shape[2], shape[3], shape[1])
        return shape

    def _find_global_nodes(self) -> frozenset[str]:
        h, w, c = self.input_shape
        if h is None or w is None or c is None:
            return frozenset()
        plan = tuple(n for n in self._graph.nodes if n.name != self._graph.input)
        small = large = None
        # the one-channel copy's trace has the same spatial shapes and is several times
        # cheaper; the model itself where the copy cannot run
        for one in (True, False):
            try:
                small, large = self._node_shapes(h, w, one), self._node_shapes(2 * h, 2 * w, one)
                break
            except Exception:  # noqa: BLE001, S112 - a fixed-size model (flatten + dense) has no second size
                continue
        if small is None:
            return frozenset()
        found = set()
        for node in plan:
            inputs = [r.node for r in refs_in((node.args, node.kwargs))]
            assert large is not None
            varies = any(small[i] != large[i] for i in inputs)
            if varies and small[node.name] == large[node.name]:
                found.add(node.name)
        return frozenset(found)

    def _ancestors(self, name: str) -> set[str]:
        return self._closure([self._ref(name).node])

    def _closure(self, start: list[str]) -> set[str]:
        """``start`` and every node it depends on."""
        by_name = {n.name: n for n in self._graph.nodes}
        needed, stack = set(), list(start)
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            node = by_name[name]
            stack.extend(r.node for r in refs_in((node.args, node.kwargs)))
        return needed

    def _schedule(self) -> tuple:
        """The nodes the requested outputs depend on, in topological order."""
        needed = self._closure([self._ref(n).node for n in self.output_names])
        return tuple(n for n in self._graph.nodes if n.name in needed and n.name != self._graph.input)

    def _to_nhwc(self, y: Any) -> Any:
        if isinstance(y, (tuple, list)):
            return type(y)(self._to_nhwc(v) for v in y)
        y = jnp.asarray(y, jnp.float32)
        return jnp.transpose(y, (0, 2, 3, 1)) if self.channels_first and y.ndim == 4 else y


def _is_softmax(layer: Any) -> bool:
    """A ``Softmax`` layer (or ``keras.ops.softmax`` call) or ``Activation("softmax")``; not a
    layer with a fused ``activation="softmax"``."""
    return layer.class_name in ("Softmax", "ops.Softmax") or (
        layer.class_name == "Activation" and activation_name(layer.config.get("activation")) == "softmax"
    )


def _spreads(class_name: str, config: dict) -> bool:
    """Convolutions, pooling, resizing: layers whose gradient reaches neighbouring pixels
    (1x1 kernels and windows do not: their RF-mode constant is 1, supports map 1:1)."""
    name = class_name.split(".")[-1]
    if name.startswith("Global") or not any(t in name for t in ("Conv", "Pool", "Sampling", "Resiz")):
        return False
    window = config.get("kernel_size", config.get("pool_size"))
    return window is None or np.prod(np.atleast_1d(window)) > 1


# Keras layers that map each input pixel to the same output pixel, whatever their weights
# (normalisations over channels only, activations, noise and dropout, rescaling).
_PER_PIXEL = frozenset(
    {
        "Activation",
        "BatchNormalization",
        "Dropout",
        "ELU",
        "GaussianDropout",
        "GaussianNoise",
        "Identity",
        "LayerScale",
        "LeakyReLU",
        "Normalization",
        "PReLU",
        "ReLU",
        "Rescaling",
        "SpatialDropout2D",
        "StochasticDepth",
    }
)


def _per_pixel(class_name: str, config: dict, channels_first: bool) -> bool:
    """Whether a layer's output pixel depends on its input pixel alone: a
    :data:`_PER_PIXEL` class (a softmax over channels only), a LayerNormalization over
    channels, or a 1x1 stride-1 convolution (no padding, no window)."""
    channel = ([1], [-3]) if channels_first else ([-1], [3])
    if class_name in ("Softmax", "LayerNormalization"):
        return [int(v) for v in np.atleast_1d(config.get("axis", -1))] in channel
    if class_name in _PER_PIXEL:
        return True
    if class_name in ("Conv2D", "DepthwiseConv2D"):
        ones = [1, 1]
        return [int(v) for v in np.atleast_1d(config.get("kernel_size", 0)) * ones] == ones and [
            int(v) for v in np.atleast_1d(config.get("strides", 1)) * ones
        ] == ones
    return False


def _value(env: dict[str, list], v: Any) -> Any:
    return env[v.node][v.index] if isinstance(v, Ref) else v


def _nhwc_shape(graph: Graph) -> tuple[int | None, ...]:
    shape = graph.input_shape
    if graph.channels_first and len(shape) == 3:
        return (shape[1], shape[2], shape[0])
    return shape
