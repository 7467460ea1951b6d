"""The converter registry: Keras class name -> function building a pure JAX layer.

A converter is a small function ``convert(config, weights, rf) -> (apply, params)``:

* ``config`` is the layer's ``get_config()`` dict (plain data),
* ``weights`` maps the layer's Keras variable names (``kernel``, ``gamma``, ...) to
  numpy arrays,
* ``rf`` asks for the RF-mode variant (linear activations, average pooling, constant
  positive kernels, zero biases, identity normalisation; see :mod:`converters`),
* ``apply(params, *args)`` is a pure JAX function of the layer's call arguments
  (tensors, lists of tensors, constants) and ``params`` is its parameter dict with
  Flax leaf names (``kernel`` in HWIO, ``bias``, ``scale``, ``mean``, ``var``, ...).

Keras layers are keyed by their class name (``"Conv2D"``); raw ``keras.ops`` calls
recorded in a functional graph are keyed ``"ops.<ClassName>"`` (``"ops.Add"``), so
``x + 3.0`` never collides with the ``Add`` merge layer. Layers from other packages
may also be registered under ``"package.module.ClassName"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from rfjax.errors import RFError

Params = dict[str, Any]
Apply = Callable[..., Any]
Converter = Callable[[dict, dict, bool], tuple[Apply, Params]]

_REGISTRY: dict[str, Converter] = {}
_UNREAD: dict[str, frozenset[str]] = {}


def register(
    *names: str, replace: bool = False, unread: Sequence[str] = ()
) -> Callable[[Converter], Converter]:
    """Decorator registering ``convert(config, weights, rf) -> (apply, params)`` under
    one or more Keras class names. A name that is already registered is refused
    (:class:`RFError`) unless ``replace=True``: two converters for one layer would make
    the answer depend on import order.

    The converter must read every config key that changes the layer's result when it
    converts (a key it never reads is refused at conversion, see
    :mod:`converters._honoured`); ``unread`` names the keys of these layers that it may
    leave unread because the weights already fix them (say why next to the call)."""
    taken = [n for n in names if n in _REGISTRY and not replace]
    if taken:
        raise RFError(
            f"converters.register: {taken[0]!r} already has a converter; pass replace=True to replace it."
        )

    def deco(fn: Converter) -> Converter:
        for name in names:
            _REGISTRY[name] = fn
            _UNREAD[name] = frozenset(unread)
        return fn

    return deco


def lookup(keys: tuple[str, ...]) -> Converter | None:
    """The converter of the first key in ``keys`` that is registered, else ``None``."""
    for key in keys:
        if key in _REGISTRY:
            return _REGISTRY[key]
    return None


def unread_keys(keys: tuple[str, ...]) -> frozenset[str]:
    """The keys the converter of the first registered key in ``keys`` may leave unread."""
    for key in keys:
        if key in _REGISTRY:
            return _UNREAD[key]
    return frozenset()


def supported_layers() -> list[str]:
    """Sorted names of every registered converter (Keras layers, then ``ops.*``)."""
    return sorted(_REGISTRY, key=lambda k: (k.startswith("ops."), k.lower()))


def check_name(name: Any, names: Sequence[str], what: str, otherwise: str) -> str:
    """``name`` if it is one of ``names``; else an :class:`RFError` suggesting near names
    (``what``: "layer ... is not in the model"; ``otherwise``: the hint without any)."""
    if isinstance(name, str) and name in names:
        return name
    near = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(map(repr, near))}?" if near else otherwise
    raise RFError(f"{what.format(name=repr(name))}; {hint}")
