"""Which config keys a layer converter honours, and the refusal of those it would ignore.

A converter reads the settings it implements from the layer's ``get_config()``. A key it
never reads is either harmless (the layer's name, initializers, regularizers, training-only
settings, channel counts that the weights already fix) or a setting whose effect the
converter would silently drop (a LoRA rank, a quantization mode, an option added in a later
Keras version). :func:`tracked` hands the converter a config that records every key it
reads; :func:`ignored` names the keys that are neither read nor harmless nor off, so
the conversion can refuse them instead of returning a silently different function.

A converter that needs a setting only inside its ``apply`` must read it when it converts
(close over the value, not over the config): reads made later are not seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Keys that never change the function a layer computes at inference.
HARMLESS = frozenset(
    {
        "name",
        "trainable",
        "dtype",
        "autocast",
        "batch_input_shape",
        "batch_shape",
        "input_shape",
        "sparse",
        "ragged",
        "optional",
        "seed",
        "noise_shape",
        "rate",
        "stddev",
        "l1",
        "l2",
        "momentum",
        "synchronized",
        "renorm",
        "renorm_clipping",
        "renorm_momentum",
        "activity_regularizer",
        "lora_alpha",
        # channel counts and kernel sizes: the weights fix them (a mismatch fails the conversion)
        "filters",
        "units",
        "kernel_size",
    }
)
#: Suffixes of keys that only matter for training (initial values, penalties, clipping).
HARMLESS_SUFFIXES = ("_initializer", "_regularizer", "_constraint")


class Tracked(dict):
    """A layer config (``dict``) that records the keys read from it in :attr:`read`.

    Iterating over it, or copying it, counts as reading every key."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.read: set[str] = set()

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)  # type: ignore[arg-type]
        return super().__contains__(key)

    def _all(self) -> None:
        self.read.update(super().keys())

    def __iter__(self) -> Iterator[Any]:
        self._all()
        return super().__iter__()

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def copy(self) -> dict:
        self._all()
        return dict(super().items())


def tracked(config: dict) -> Tracked:
    """``config`` wrapped so that the keys a converter reads are recorded."""
    return Tracked(config)


def ignored(config: Tracked, unread: frozenset[str] = frozenset()) -> list[str]:
    """Keys of ``config`` that were not read, are not harmless (nor in the converter's own
    ``unread``) and are set (not ``None``, ``False`` or empty: the values that mean "off"
    for an optional feature)."""
    out = []
    for key, value in dict.items(config):
        if key in config.read or key in HARMLESS or key in unread or key.endswith(HARMLESS_SUFFIXES):
            continue
        if value is None or value is False or (isinstance(value, (list, tuple, dict, str)) and not value):
            continue
        out.append(key)
    return sorted(out)
