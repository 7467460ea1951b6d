"""TensorFlow functions and SavedModel signatures, converted to JAX through tf2jax.

`tf2jax <https://github.com/google-deepmind/tf2jax>`_ turns the graph of a traced
``tf.function`` into a JAX function op by op (its registry of op converters lives in
``tf2jax/_src/ops.py``). This module wraps the result as a
:class:`rfjax.contract.ConvertedModel` (:class:`TFModel`): ``apply(params, x)``
returning ``{output name: array}``, ``params``, ``output_names``, ``layer_names``,
``input_shape``, ``with_outputs`` and ``prepared``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from converters._registry import check_name
from rfjax._types import check_input_shape
from rfjax.contract import ConvertedModel
from rfjax.errors import RFError
from rfjax.prepare import KERNEL_NAMES, ONE_NAMES, ZERO_NAMES, linearize, prepare_params

_DOCS = "see 'TensorFlow functions and SavedModels' in the README for the supported ops"
_ROLES = KERNEL_NAMES + ZERO_NAMES + ONE_NAMES

Shape = tuple[int | None, int | None, int | None]


def _import_tf() -> tuple[Any, Any]:
    try:
        import tensorflow as tf
        import tf2jax
    except ImportError as e:
        raise RFError(
            f"from_tf needs tensorflow and tf2jax ({e}); install them with pip install 'rfjax[keras]'."
        ) from e
    return tf, tf2jax


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if lines[0] == "in user code:":  # an error while TF traces the function: its last line says what
        return lines[-1]
    return f"{type(e).__name__}: {lines[0]}"


def _named_outputs(out: Any, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Flatten a function's outputs to ``{name: tensor}``: dict keys are kept (joined
    with ``/`` when nested), a single tensor is ``output_0`` and sequence items are
    ``output_<i>``, as in SavedModel signatures."""
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (list, tuple)):
        items = [(f"output_{i}" if not path else str(i), v) for i, v in enumerate(out)]
    else:
        return {"/".join(path) if path else "output_0": out}
    named: dict[str, Any] = {}
    for key, value in items:
        named.update(_named_outputs(value, (*path, key)))
    return named


class _Source:
    """A single-input TF function and its tf2jax conversions.

    ``fixed`` sources (a tf.function with an input signature, a concrete function, a
    SavedModel signature) are converted once for their own input spec, whose unknown
    dimensions stay dynamic. A tf.function without an input signature is traced anew
    for every input shape it is applied to.
    """

    def __init__(self, call: Callable, spec: Any, fixed: bool, owner: Any = None):
        tf, _ = _import_tf()
        self._wrapper = tf.function(lambda x: _named_outputs(call(x)))
        self.spec, self.fixed = spec, fixed
        self._owner = owner  # a loaded SavedModel: its signatures hold only weak references to the variables
        self._converted: dict[Any, Callable] = {}

    def convert(self, shape: Shape) -> tuple[Callable, dict[str, Any]]:
        """The tf2jax function for inputs of ``(H, W, C)`` ``shape``, and its variables."""
        tf, tf2jax = _import_tf()
        spec = self.spec if self.fixed else tf.TensorSpec((None, *shape), self.spec.dtype, name="x")
        x = jax.ShapeDtypeStruct((1, *shape), spec.dtype.as_numpy_dtype)
        try:
            fn, params = tf2jax.convert(self._wrapper, spec)
            params = {k: jnp.asarray(v) for k, v in params.items()}
            jax.eval_shape(fn, params, x)  # tf2jax converts nested functions on first use
        except RFError:
            raise
        except Exception as e:  # tf2jax and the traced TF code raise many kinds
            unsupported = re.search(r"Unsupported operations in graph: \[(.*?)\]", str(e))
            if unsupported:
                ops = unsupported.group(1).replace("'", "")
                raise RFError(f"TensorFlow op(s) {ops} have no tf2jax converter; {_DOCS}.") from e
            raise RFError(
                f"the TensorFlow function could not be converted with tf2jax ({_first_line(e)}); {_DOCS}."
            ) from e
        self._converted[None if self.fixed else tuple(shape)] = fn
        return fn, params

    def at(self, shape: tuple[int, int, int]) -> Callable:
        """The converted function for an ``(H, W, C)`` input (converted on first use)."""
        if self.fixed:
            static = tuple(self.spec.shape)[1:]
            if any(s is not None and s != v for s, v in zip(static, shape)):
                raise RFError(
                    f"the input is {shape} but the function's signature fixes it to {static} (H, W, C)."
                )
        key = None if self.fixed else tuple(shape)
        if key not in self._converted:
            self.convert(shape)
        return self._converted[key]


def _single_input(fn: Any, structure: Any) -> tuple[Callable, Any]:
    """``(call(x), spec)`` for a function whose inputs ``(args, kwargs)`` hold exactly
    one tensor spec (other entries are Python values passed through unchanged)."""
    tf, _ = _import_tf()
    flat = tf.nest.flatten(structure)
    slots = [i for i, v in enumerate(flat) if isinstance(v, tf.TensorSpec)]
    if len(slots) != 1:
        raise RFError(
            f"the function takes {len(slots)} tensor inputs; from_tf converts functions of one NHWC image batch."
        )

    def call(x):
        leaves = list(flat)
        leaves[slots[0]] = x
        args, kwargs = tf.nest.pack_sequence_as(structure, leaves)
        return fn(*args, **kwargs)

    return call, flat[slots[0]]


def _load_signature(path: str | os.PathLike, signature: str) -> tuple[Any, Any]:
    tf, _ = _import_tf()
    path = os.fspath(path)
    if not (os.path.isdir(path) and tf.saved_model.contains_saved_model(path)):
        raise RFError(f"no SavedModel at {path!r}: pass a directory written by tf.saved_model.save.")
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as e:  # corrupt protos, missing variable files
        raise RFError(f"{path!r} could not be loaded as a SavedModel ({_first_line(e)}).") from e
    signatures = dict(loaded.signatures)
    if signature not in signatures:
        has = (
            f"it has {sorted(signatures)}"
            if signatures
            else "it has none (pass a restored function instead, e.g. tf.saved_model.load(path).__call__)"
        )
        raise RFError(f"the SavedModel at {path!r} has no signature {signature!r}; {has}.")
    return loaded, signatures[signature]


def _source(fn_or_path: Any, input_shape: tuple[int, int, int] | None, signature: str) -> _Source:
    tf, _ = _import_tf()
    owner = None
    if isinstance(fn_or_path, (str, os.PathLike)):
        owner, fn_or_path = _load_signature(fn_or_path, signature)
    if hasattr(fn_or_path, "get_concrete_function"):  # a tf.function
        if fn_or_path.input_signature is None:
            if input_shape is None:
                raise RFError(
                    "the tf.function has no input signature; pass input_shape=(H, W, C) to from_tf."
                )
            return _Source(fn_or_path, tf.TensorSpec((None, *input_shape), tf.float32, name="x"), fixed=False)
        call, spec = _single_input(fn_or_path, (tuple(fn_or_path.input_signature), {}))
    elif hasattr(fn_or_path, "structured_input_signature"):  # a concrete function or a signature
        call, spec = _single_input(fn_or_path, fn_or_path.structured_input_signature)
    else:
        raise RFError(
            f"fn_or_path must be a tf.function, a concrete function or a SavedModel directory, not {type(fn_or_path).__name__}."
        )
    if spec.shape.rank is not None and spec.shape.rank != 4:
        raise RFError(f"the function's input has shape {spec.shape}; from_tf needs an NHWC batch (rank 4).")
    if not spec.dtype.is_floating:
        raise RFError(f"the function's input is {spec.dtype.name}; RF gradients need a floating-point input.")
    shape = (None, None, None, None) if spec.shape.rank is None else spec.shape
    return _Source(call, tf.TensorSpec(shape, spec.dtype, name="x"), fixed=True, owner=owner)


def _resolve_shape(source: _Source, input_shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    static = tuple(source.spec.shape)[1:]
    if input_shape is None:
        if any(v is None for v in static):
            raise RFError(
                f"the function's input shape {static} is dynamic; pass input_shape=(H, W, C) to from_tf."
            )
        return static
    if any(s is not None and s != v for s, v in zip(static, input_shape)):
        raise RFError(
            f"input_shape={input_shape} does not match the function's signature {static} (H, W, C)."
        )
    return input_shape


def _role(name: str, leaf: jax.Array) -> str:
    """The Flax-style leaf name :func:`rfjax.prepare.prepare_params` acts on: the last
    part of the TF variable name when it is one (``conv1/kernel``, ``bn/gamma``),
    otherwise ``kernel`` for 2-D and 4-D variables and ``bias`` for 1-D ones."""
    last = name.rsplit("/", 1)[-1].lower()
    if last in _ROLES:
        return last
    if leaf.ndim >= 2:
        return "kernel"
    return "bias" if leaf.ndim == 1 else name


def _prepare(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
    by_role = prepare_params({k: {_role(k, v): v} for k, v in params.items()})
    return {k: next(iter(v.values())) for k, v in by_role.items()}


class TFModel(ConvertedModel):
    """A TensorFlow function converted by tf2jax: ``x -> {output name: feature map}``.

    Attributes:
      params: ``{variable name: array}``, the TF variables the function reads (names
        as tf2jax gives them: the variable's name without ``:0``, made unique).
      output_names: the outputs :meth:`apply` returns.
      layer_names: every output of the function, the names that can be requested.
        Intermediate tensors are not addressable: return them from the function.
      input_shape: ``(H, W, C)`` the rfjax engine feeds by default.

    Inputs and outputs are NHWC, as the TF function computes them.
    """

    def __init__(
        self,
        source: _Source,
        input_shape: tuple[int, int, int],
        outputs: str | Sequence[str] | None = None,
        *,
        rf: bool = False,
        _built: tuple[tuple[str, ...], dict[str, jax.Array]] | None = None,
    ):
        self._source, self._rf = source, rf
        self._shape = input_shape
        self.input_shape = input_shape
        if _built is None:
            fn, params = source.convert(input_shape)
            _built = (tuple(fn.structured_outputs), params)  # type: ignore[attr-defined]  # a tf2jax function
        self.layer_names, self.params = _built
        names = (
            self.layer_names
            if outputs is None
            else ([outputs] if isinstance(outputs, str) else list(outputs))
        )
        self.output_names: tuple[str, ...] = tuple(self._check_name(n) for n in names)
        if not self.output_names:
            raise RFError("outputs is empty; name at least one output (see .layer_names).")
        self._apply = linearize(self._forward) if rf else self._forward

    @property
    def rf_mode(self) -> bool:
        """Whether this is the RF-prepared copy (see :meth:`prepared`)."""
        return self._rf

    def apply(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        """Run the function on an NHWC batch ``(N, H, W, C)``; returns ``{name: array}``
        for :attr:`output_names`. Pure and jit-able."""
        return self._apply(params, x)

    def with_outputs(self, outputs: str | Sequence[str]) -> TFModel:
        """A copy returning other outputs (no new conversion)."""
        return TFModel(
            self._source, self._shape, outputs, rf=self._rf, _built=(self.layer_names, self.params)
        )

    def prepared(self, *, one_channel: bool = False) -> TFModel:
        """The RF-mode copy.

        The converted program is linearised at the jaxpr level
        (:func:`rfjax.prepare.linearize`: ReLU-style ``max``/``min`` become means, max
        pooling becomes average pooling). Variables go through
        :func:`rfjax.prepare.prepare_params` by the last part of their TF name
        (``kernel``, ``bias``, ``gamma``, ``moving_variance``, ...); variables with
        other names count as kernels when 2-D or 4-D (constant positive values) and as
        biases when 1-D (zeros). Name batch-norm variables so, or their scale and
        variance become zero. There is no one-channel copy (``one_channel`` is
        accepted and ignored; :attr:`has_one_channel` is ``False``).
        """
        if self._rf:
            return self
        return TFModel(
            self._source,
            self._shape,
            self.output_names,
            rf=True,
            _built=(self.layer_names, _prepare(self.params)),
        )

    def __repr__(self) -> str:
        mode = ", rf_mode" if self._rf else ""
        return f"TFModel({len(self.params)} variables, input_shape={self.input_shape}, outputs={list(self.output_names)}{mode})"

    def _forward(self, params: Any, x: jax.Array) -> dict[str, jax.Array]:
        x = jnp.asarray(x, self._source.spec.dtype.as_numpy_dtype)
        if x.ndim != 4:
            raise RFError(f"x has shape {x.shape}; pass an NHWC batch (N, H, W, C).")
        h, w, c = (int(v) for v in x.shape[1:])
        outs, _ = self._source.at((h, w, c))(params, x)
        return {name: outs[name] for name in self.output_names}

    def _check_name(self, name: Any) -> str:
        return check_name(
            name,
            self.layer_names,
            "output {name} is not in the function",
            f"its outputs are {list(self.layer_names)}.",
        )


def from_tf(
    fn_or_path: Any,
    input_shape: Sequence[int] | None = None,
    *,
    outputs: str | Sequence[str] | None = None,
    signature: str = "serving_default",
) -> TFModel:
    """Convert a TensorFlow function or a SavedModel signature to a :class:`TFModel`.

    Args:
      fn_or_path: a ``tf.function`` (with or without an input signature), a concrete
        function (``f.get_concrete_function(...)``, ``loaded.signatures[...]``) or a
        SavedModel directory. The function takes one NHWC float image batch; other
        arguments must be Python values fixed in its signature.
      input_shape: ``(H, W, C)``; required when the function has no input signature or
        its height, width or channels are dynamic (``None``).
      outputs: output names to return (default all). Dict outputs keep their keys
        (nested keys joined with ``/``); a single tensor is ``output_0`` and items of
        a tuple ``output_<i>``, as in SavedModel signatures.
      signature: the SavedModel signature to convert (paths only).

    Returns:
      A :class:`TFModel` with ``.params``, ``.apply(params, x)``, ``.prepared()``.

    Raises:
      RFError: a missing or unreadable SavedModel or signature, an op tf2jax cannot
        convert, a missing input shape, or an input that is not one float NHWC tensor.
    """
    shape = None if input_shape is None else check_input_shape(input_shape)
    source = _source(fn_or_path, shape, signature)
    return TFModel(source, _resolve_shape(source, shape), outputs)
