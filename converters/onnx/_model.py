"""The converted ONNX model: the graph interpreted op by op as one pure JAX function."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from converters._registry import check_name
from converters.onnx import _layout as layout
from converters.onnx._common import static
from converters.onnx._geometry import rf_bounds
from converters.onnx._graph import Graph, Node
from converters.onnx._registry import Ctx, OpSpec, spec, supported_ops
from rfjax._types import HW
from rfjax.contract import ConvertedModel, RFBound
from rfjax.errors import RFError
from rfjax.prepare import support_only

# ops that can pick channels: the one-channel copy would merge what they separate
_CHANNEL_PICKS = ("Slice", "Split", "Gather")
# ops that turn class scores into probabilities (CAMs explain the scores before them)
_SCORE_TAILS = ("Softmax", "LogSoftmax")


def picks_channels(graph: Graph, node: Node) -> bool:
    """Whether ``node`` selects along the channel axis of an image value (or may: the
    axis or the sliced axes are unknown). Image values are taken to be 4-D."""
    c = graph.channel_axis.get(node.inputs[0])
    if c is None:
        return True
    if node.op_type != "Slice":
        return int(node.attrs.get("axis", 0)) % 4 == c
    starts = graph.consts.get(node.inputs[1])
    axes_name = node.inputs[3] if len(node.inputs) > 3 else ""
    axes = graph.consts.get(axes_name) if axes_name else (None if starts is None else range(np.size(starts)))
    return axes is None or c in {int(a) % 4 for a in np.asarray(list(axes)).reshape(-1)}


def check(graph: Graph) -> dict[str, tuple[OpSpec, int]]:
    """``{node name: (op spec, outputs used)}``; refuses unknown ops and attributes."""
    used = {o for n in graph.nodes for o in n.inputs} | set(graph.outputs)
    out = {}
    for node in graph.nodes:
        s = spec(node.op_type) if node.domain in ("", "ai.onnx") else None
        if s is None:
            domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
            raise RFError(
                f"node {node.name!r} of {graph.source} has op type {node.op_type!r}{domain} (opset {graph.opset}), "
                f"which rfjax does not convert; supported: {', '.join(supported_ops())}."
            )
        unknown = sorted(set(node.attrs) - s.attrs)
        if unknown:
            raise RFError(
                f"node {node.name!r} ({node.op_type}) of {graph.source} has attribute(s) {unknown} that rfjax's "
                f"converter does not handle (it handles {sorted(s.attrs)})."
            )
        n_used = max((i + 1 for i, o in enumerate(node.outputs) if o and o in used), default=1)
        out[node.name] = (s, n_used)
    return out


class OnnxModel(ConvertedModel):
    """An ONNX model as a pure JAX function ``x (N, H, W, C) -> {value name: array}``.

    Attributes:
      params: ``{initializer name: float32 array}`` (the file's float initializers).
      output_names: the values :meth:`apply` returns (default: the graph's outputs).
      layer_names: every requestable name: the input, then every node output in
        graph order (node names also work where they differ from their first output).
      input_shape: ``(H, W, C)``.

    The file computes in NCHW; images in and 4-D maps out are NHWC here, and inside
    the image values stay NHWC wherever the ops allow (:mod:`converters.onnx._layout`).
    """

    def __init__(
        self,
        graph: Graph,
        outputs: Sequence[str] | str | None,
        input_shape: tuple[int, int, int],
        *,
        rf: bool = False,
        one_channel: bool = False,
        hold: frozenset[str] = frozenset(),
    ):
        self._graph, self._rf, self._one, self._hold = graph, rf, one_channel and rf, hold
        if "specs" not in graph.cache:
            graph.cache["specs"] = check(graph)
        self._specs = graph.cache["specs"]
        self.params = _device_params(graph)
        self.input_shape = input_shape
        values = [o for n in graph.nodes for o in n.outputs if o]
        self._aliases = {n.name: n.outputs[0] for n in graph.nodes if n.name not in set(values) and n.outputs}
        self.layer_names: tuple[str, ...] = (graph.input, *values, *self._aliases)
        names = (
            graph.outputs if outputs is None else ([outputs] if isinstance(outputs, str) else list(outputs))
        )
        self.output_names: tuple[str, ...] = tuple(self._check_name(n) for n in names)
        if not self.output_names:
            raise RFError("outputs is empty; name at least one value (see .layer_names).")
        self._plan = self._schedule([self._value(n) for n in self.output_names])

    # ------------------------------------------------------------------ the contract
    @property
    def input_name(self) -> str:
        return self._graph.input

    @property
    def rf_mode(self) -> bool:
        """Whether this is the RF copy (see :meth:`prepared`)."""
        return self._rf

    @property
    def has_one_channel(self) -> bool:
        """Whether the one-channel RF copy is exact for this graph: no op picks channels
        of an image tensor (a channel split would be merged) and the copy traces."""
        if "one_channel" not in self._graph.cache:
            self._graph.cache["one_channel"] = self._one_channel_ok()
        return self._graph.cache["one_channel"]

    def apply(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        """Run on an NHWC batch ``(N, H, W, C)``; returns ``{name: array}`` for
        :attr:`output_names` (4-D maps NHWC). Pure and jit-able."""
        env, last = self._run(params, jnp.asarray(x, jnp.float32), self._plan)
        return {n: self._nhwc(env, last, self._value(n)) for n in self.output_names}

    def with_outputs(self, outputs: str | Sequence[str]) -> OnnxModel:
        return self._copy(outputs=outputs)

    def prepared(self, *, one_channel: bool = False) -> OnnxModel:
        """The RF copy, op by op: activations are identities, max pooling is average
        pooling over the same windows, batch normalisation the identity, instance/layer
        normalisations and softmax keep only their global dependence, convolution kernels
        the constant ``1 / (C_in_per_group * sqrt(kh * kw))``, dense layers means, biases
        zero, sums and maxima of two image tensors their mean and products
        ``a * b / stop_gradient(b)``. ``one_channel=True`` (when :attr:`has_one_channel`)
        gives every image tensor one channel: the same supports, far cheaper, with the
        supports-only backward rule after every spreading window."""
        one = one_channel and self.has_one_channel
        if self._rf and self._one == one:
            return self
        return self._copy(rf=True, one_channel=one)

    def held(self) -> OnnxModel:
        """A copy with every :meth:`global_nodes` node held constant (its output, or for
        a normalisation over image axes its statistics)."""
        return self._copy(hold=self.global_nodes())

    def global_nodes(self) -> frozenset[str]:
        """Nodes whose output does not follow the input size while an input does (global
        pooling, a flatten before a dense head), and normalisations whose statistics span
        an image axis. Found by tracing shapes at the input size and at twice it."""
        if "global_nodes" not in self._graph.cache:
            self._graph.cache["global_nodes"] = self._find_global_nodes()
        return self._graph.cache["global_nodes"]

    def depends_globally(self, name: str) -> bool:
        found = self.global_nodes()
        return bool(found) and any(
            n.name in found for n in self._schedule([self._value(self._check_name(name))])
        )

    def rf_bound(self, name: str) -> RFBound | None:
        """Closed-form RF size and stride along local paths (:mod:`converters.onnx._geometry`)."""
        if "rf_bounds" not in self._graph.cache:
            self._graph.cache["rf_bounds"] = rf_bounds(self._graph, self.global_nodes())
        b = self._graph.cache["rf_bounds"].get(self._value(self._check_name(name)))
        return None if b is None else RFBound(HW(b[0], b[1]), HW(b[2], b[3]))

    def cam_layers(self) -> tuple[str, str]:
        """``(feature layer, logits)`` for the CAM family: the logits are the graph's first
        output, or the input of the ``Softmax``/``LogSoftmax`` that ends the graph (CAMs
        explain pre-softmax scores); the feature layer is the last value, in graph order,
        that the logits depend on and that is a spatial map (4-D, its height or width
        following the input size; where the graph runs at one size only, larger than
        1 x 1), i.e. the input of the head's global pooling or flatten."""
        logits = self._graph.outputs[0]
        producer = {o: n for n in self._graph.nodes for o in n.outputs if o}
        while logits in producer and producer[logits].op_type in _SCORE_TAILS:
            logits = producer[logits].inputs[0]
        spatial = self._spatial_values()
        used = {o for n in self._schedule([logits]) for o in n.outputs if o}
        features = [v for v in spatial if v in used]
        if not features:
            raise RFError(
                f"{self._graph.source} has no spatial layer before its output {logits!r}; pass layer= "
                "(a name from .layer_names)."
            )
        return features[-1], logits

    def _spatial_values(self) -> list[str]:
        """4-D values (graph order) whose spatial size follows the input's, or that are
        larger than 1 x 1 where the graph runs at one size only."""
        h, w = int(self.input_shape[0] or 0), int(self.input_shape[1] or 0)
        small = self._shapes(h, w, one_channel=False)
        try:
            large: dict[str, tuple[int, ...]] | None = self._shapes(2 * h, 2 * w, one_channel=False)
        except Exception:  # noqa: BLE001 - a fixed-size head (a flatten before a dense layer)
            large = None
        out = []
        for v in (o for n in self._graph.nodes for o in n.outputs if o):
            shape = small.get(v, ())
            if len(shape) != 4 or v not in self._graph.dynamic:
                continue
            c = self._graph.channel_axis.get(v)
            hw = [d for a, d in enumerate(shape) if a not in (0, 1 if c is None else c)]
            if (large is not None and large.get(v, shape) != shape) or (large is None and max(hw) > 1):
                out.append(v)
        return out

    def spatial_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Every value's shape (NHWC for 4-D ones) at an ``(H, W, C)`` input, traced
        through the one-channel RF copy when it exists (one channel then)."""
        shapes = self._shapes(int(input_shape[0]), int(input_shape[1]))
        out = {}
        for name in self.layer_names:
            s = shapes.get(self._value(name))
            if s is not None and len(s) == 4:
                c = self._graph.channel_axis.get(self._value(name))
                c = 1 if c is None else c
                s = (*s[:c], *s[c + 1 :], s[c])
            if s is not None:
                out[name] = s
        return out

    def __repr__(self) -> str:
        mode = (", rf_mode" if self._rf else "") + (", one_channel" if self._one else "")
        return (
            f"OnnxModel({len(self._graph.nodes)} nodes, input_shape={self.input_shape}, "
            f"outputs={list(self.output_names)}{mode})"
        )

    # ------------------------------------------------------------------ interpreter
    def _run(
        self, params: Any, x: jax.Array, plan: Sequence[Node], supports: bool = True
    ) -> tuple[dict[str, Any], set[str]]:
        """Every value the plan computes, from an NHWC image, and the names of the values
        stored channels-last (the others are in the file's layout)."""
        graph, last = self._graph, set[str]()
        if x.ndim == 4 and not graph.channels_last:
            last.add(graph.input)  # the file's NCHW image, stored NHWC: as given
        if x.ndim == 4 and self._one:
            x = jnp.mean(x, axis=3 if last else graph.channel_axis[graph.input], keepdims=True)
        env: dict[str, Any] = {**graph.consts, **params, graph.input: x}
        for node in plan:
            op, n_used = self._specs[node.name]
            args = [env[i] if i else None for i in node.inputs]
            for k in op.static:
                if k < len(args) and not static(args[k]):
                    raise RFError(
                        f"node {node.name!r} ({node.op_type}) of {graph.source}: input {k} "
                        f"({node.inputs[k]!r}) must be a constant, not computed from the image."
                    )
            ctx = self._ctx(node, op, n_used)
            stored = [i in last for i in node.inputs]
            if (
                node.op_type == "Transpose"
                and ctx.dynamic[0]
                and args[0] is not None
                and np.ndim(args[0]) == 4
            ):
                perm = node.attrs.get("perm") or [3, 2, 1, 0]
                y, y_last = layout.transpose(args[0], stored[0], perm)
                env[node.outputs[0]] = y
                last.update(node.outputs[:1] if y_last else ())
                continue
            on_last = layout.runs_channels_last(node, args, stored, ctx.dynamic)
            args = layout.arguments(node, args, stored, ctx.dynamic, on_last)
            ctx = dataclasses.replace(ctx, channels_last=on_last)
            out = self._call(node, op, ctx, args)
            outs = out if isinstance(out, tuple) else (out,)
            if node.name in self._hold and op.reduces is None:
                outs = tuple(jax.lax.stop_gradient(o) for o in outs)
            elif supports and self._one and op.spreads and _spreads(node, args):
                outs = tuple(support_only(o) for o in outs)
            for name, v in zip(node.outputs, outs):
                if name:
                    env[name] = v
                    last.update((name,) if on_last and np.ndim(v) == 4 else ())
        return env, last

    def _nhwc(self, env: dict[str, Any], last: set[str], name: str) -> Any:
        """Value ``name`` as :meth:`apply` returns it (4-D ones with their channels last)."""
        c = self._graph.channel_axis.get(name)
        if name in last and c in (1, None):
            return _to_nhwc(env[name], 3)  # stored as it is returned
        return _to_nhwc(layout.to_file(env[name], name in last), c)

    def _ctx(self, node: Node, op: OpSpec, n_used: int) -> Ctx:
        dyn = tuple(i in self._graph.dynamic for i in node.inputs)
        held = node.name in self._hold and op.reduces is not None
        return Ctx(
            node.name,
            node.attrs,
            self._rf,
            self._one,
            held,
            dyn,
            self._graph.opset,
            n_used,
            len(node.outputs),
        )

    def _call(self, node: Node, op: OpSpec, ctx: Ctx, args: list) -> Any:
        where = f"node {node.name!r} ({node.op_type}) of {self._graph.source}"
        try:
            return op.fn(ctx, *args)
        except RFError as e:
            raise RFError(f"{where}: {e}") from e
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as e:
            raise RFError(f"{where} could not be converted ({type(e).__name__}: {e}).") from e

    # ------------------------------------------------------------------ helpers
    def _copy(
        self,
        *,
        outputs: str | Sequence[str] | None = None,
        rf: bool | None = None,
        one_channel: bool | None = None,
        hold: frozenset[str] | None = None,
    ) -> OnnxModel:
        """This model with the given settings changed (the graph and its caches shared)."""
        return OnnxModel(
            self._graph,
            self.output_names if outputs is None else outputs,
            self.input_shape,  # type: ignore[arg-type]
            rf=self._rf if rf is None else rf,
            one_channel=self._one if one_channel is None else one_channel,
            hold=self._hold if hold is None else hold,
        )

    def _check_name(self, name: Any) -> str:
        return check_name(
            name, self.layer_names, "value {name} is not in the model", "see .layer_names for its values."
        )

    def _value(self, name: str) -> str:
        return self._aliases.get(name, name)

    def _schedule(self, values: list[str]) -> tuple[Node, ...]:
        """The nodes ``values`` depend on, in graph order."""
        producer = {o: n for n in self._graph.nodes for o in n.outputs if o}
        needed, stack = set(), list(values)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in needed:
                needed.add(node.name)
                stack.extend(i for i in node.inputs if i)
        return tuple(n for n in self._graph.nodes if n.name in needed)

    def _shapes(self, h: int, w: int, one_channel: bool = True) -> dict[str, tuple[int, ...]]:
        """``{value: shape}`` (file layout) of every value at an ``h x w`` input, cached."""
        key = ("shapes", h, w, one_channel)
        if key not in self._graph.cache:
            model = self._copy(rf=True, one_channel=True, hold=frozenset()) if one_channel else self
            x = jax.ShapeDtypeStruct((1, h, w, self.input_shape[2]), jnp.float32)

            def run(x: jax.Array) -> dict[str, Any]:
                env, last = model._run(model.params, x, self._graph.nodes, supports=False)
                return {k: layout.to_file(v, k in last) for k, v in env.items()}

            env = jax.eval_shape(run, x)
            self._graph.cache[key] = {k: tuple(np.shape(v)) for k, v in env.items()}
        return self._graph.cache[key]

    def _find_global_nodes(self) -> frozenset[str]:
        h, w = int(self.input_shape[0] or 0), int(self.input_shape[1] or 0)
        small: dict[str, tuple[int, ...]] | None = None
        large: dict[str, tuple[int, ...]] | None = None
        for one in dict.fromkeys((self.has_one_channel, False)):
            try:
                small, large = self._shapes(h, w, one), self._shapes(2 * h, 2 * w, one)
                break
            except Exception:  # noqa: BLE001, S112 - a fixed-size model has no second size
                continue
        if small is None or large is None:
            return frozenset()
        found = set()
        for node in self._graph.nodes:
            op, _ = self._specs[node.name]
            ins = [i for i in node.inputs if i in self._graph.dynamic]
            if not ins or not any(small[i] != large[i] for i in ins):
                continue
            outs = [o for o in node.outputs if o]
            if all(small[o] == large[o] for o in outs):
                found.add(node.name)
            elif op.reduces is not None:
                axes = op.reduces(self._ctx(node, op, 1), len(small[ins[0]]))
                if any(small[ins[0]][a] != large[ins[0]][a] for a in axes):
                    found.add(node.name)
        return frozenset(found)

    def _one_channel_ok(self) -> bool:
        for node in self._graph.nodes:
            dynamic = node.op_type in _CHANNEL_PICKS and node.inputs[0] in self._graph.dynamic
            if dynamic and picks_channels(self._graph, node):
                return False
        try:
            self._shapes(int(self.input_shape[0] or 0), int(self.input_shape[1] or 0), one_channel=True)
        except RFError:
            return False
        return True


def _spreads(node: Node, args: list) -> bool:
    """Whether a windowed node's window is larger than one pixel (1x1 convolutions and
    windows map supports one to one: no supports-only rule needed)."""
    kernel = node.attrs.get("kernel_shape")
    if kernel is None and node.op_type in ("Conv", "ConvTranspose") and len(args) > 1:
        kernel = np.shape(args[1])[2:]
    return kernel is None or int(np.prod(kernel)) > 1


def _to_nhwc(y: Any, channel_axis: int | None) -> Any:
    """A 4-D value with its channel axis last (axis 1 when unknown, ONNX's layout)."""
    y = jnp.asarray(y)
    y = y.astype(jnp.float32) if jnp.issubdtype(y.dtype, jnp.floating) else y
    return jnp.moveaxis(y, 1 if channel_axis is None else channel_axis, -1) if y.ndim == 4 else y


def _device_params(graph: Graph) -> dict[str, jax.Array]:
    """The float initializers on the device, once per graph (one transfer for the tree)."""
    if "params" not in graph.cache:
        graph.cache["params"] = jax.device_put(graph.params)
    return graph.cache["params"]
