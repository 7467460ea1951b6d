"""Memory planning: every compiled program is sized before it runs.

XLA aborts the whole process when an allocation fails on the CPU, and raises a bare
``RESOURCE_EXHAUSTED`` error on accelerators, so rfjax never runs a program it has not
sized first. The size is XLA's own memory analysis of the compiled executable
(arguments + outputs + temporaries); the budget is a fraction of the memory actually
available now (:func:`available_bytes`) unless the caller passes ``max_memory``.

A batch axis (output-cell slots for the engine, images for CAM, inputs for the
effective RF) is split into equal chunks that fit: :func:`plan_chunks` compiles the
program for the whole batch first and only when that does not fit compiles one more
(a single item) to fix the affine model ``bytes(n) = base + n * per_item``. When even
one item does not fit, :class:`RFMemoryError` says how much it needs.

Compiled executables are cached per jitted function and argument shapes
(:func:`compiled`), so a planned program is compiled once, as ``jax.jit`` would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax

from rfjax.contract import on_clear
from rfjax.errors import RFMemoryError

#: share of the available memory one compiled program may take by default (the rest is
#: left to the arrays the caller already holds and to the host copies of results)
BUDGET_FRACTION = 0.5


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_available() -> int | None:
    """Bytes left under a cgroup v2 memory limit (containers), if one is set."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_bytes(device: Any = None) -> int | None:
    """Memory free for new buffers on ``device`` (default: the first local device):
    the allocator's limit minus what is in use on accelerators; on the CPU the
    kernel's ``MemAvailable``, capped by a container's cgroup limit. ``None`` when the
    platform tells nothing."""
    device = jax.local_devices()[0] if device is None else device
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not found:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            return None
    return min(found)


def default_budget() -> int | None:
    """The default budget of one compiled program: :data:`BUDGET_FRACTION` of
    :func:`available_bytes`, read at the time of the call (``None``: unknown)."""
    free = available_bytes()
    return None if free is None else int(free * BUDGET_FRACTION)


def check_budget(max_memory: Any) -> int | None:
    """``max_memory`` as an int number of bytes (``None`` stays ``None``)."""
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, int | float) or max_memory <= 0:
        from rfjax.errors import RFError

        raise RFError(f"max_memory must be a positive number of bytes, not {max_memory!r}.")
    return int(max_memory)


def program_bytes(executable: Any) -> int:
    """Bytes XLA reserves for one call of a compiled executable: arguments, outputs
    and temporaries (0 where the backend gives no analysis)."""
    mem = executable.memory_analysis()
    if mem is None:  # pragma: no cover - backends without memory analysis
        return 0
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


_COMPILED: dict[tuple, Any] = {}
_MAX_COMPILED = 256
_STATS = {"compiles": 0}


def _shape_key(args: tuple) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    return (tree, tuple((tuple(getattr(v, "shape", ())), str(getattr(v, "dtype", type(v)))) for v in leaves))


def compiled(jitted: Any, *args: Any) -> Any:
    """The compiled executable of ``jitted`` for the shapes of ``args`` (arrays or
    ``jax.ShapeDtypeStruct``), cached."""
    key = (jitted, _shape_key(args))
    if key not in _COMPILED:
        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = jitted.lower(*args).compile()
        _STATS["compiles"] += 1
    return _COMPILED[key]


def compile_count() -> int:
    """How many programs rfjax has compiled in this process (for checking reuse)."""
    return _STATS["compiles"]


def clear() -> None:
    """Drop every cached executable."""
    _COMPILED.clear()


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{math.ceil(n / 2**20)} MiB"


def equal_chunk(n: int, chunk: int, multiple: int = 1) -> int:
    """The chunk size that splits ``n`` items into equal chunks of at most ``chunk``
    (the least padding), rounded up to a ``multiple`` (devices to shard over)."""
    size = max(1, min(chunk, n))
    size = math.ceil(n / math.ceil(n / size))
    return math.ceil(size / multiple) * multiple


def plan_chunks(
    compile_for: Callable[[int], Any],
    n: int,
    budget: int | None,
    *,
    what: str,
    fix: str,
    given: bool = False,
    multiple: int = 1,
) -> tuple[int, Any]:
    """``(chunk, executable)``: the largest equal chunk of ``n`` items whose compiled
    program (``compile_for(chunk)``) fits in ``budget`` bytes, and that program.

    ``what`` names one item in the refusal (e.g. ``"one output cell"``); ``fix`` says
    what to do; ``given``: the budget is the user's ``max_memory`` (the refusal then says
    how far to raise it). With ``budget=None`` the whole batch runs in one call. Raises
    :class:`RFMemoryError` when one item alone does not fit.
    """
    size = equal_chunk(n, n, multiple)
    exe = compile_for(size)
    if budget is None:
        return size, exe
    full = program_bytes(exe)
    if full <= budget:
        return size, exe
    one = program_bytes(compile_for(multiple)) if size != multiple else full
    if one > budget:
        raise RFMemoryError(_refusal(what, fix, one, budget, given), needed=one, budget=budget)
    per_item = max((full - one) / max(size - multiple, 1), 1.0)
    chunk = max(multiple, int((budget - one) // per_item) + multiple)
    while True:  # the affine model is an estimate: shrink until the compiled program fits
        size = equal_chunk(n, chunk, multiple)
        exe = compile_for(size)
        if program_bytes(exe) <= budget or size <= multiple:
            return size, exe
        chunk = max(multiple, size // 2)


def _refusal(what: str, fix: str, needed: int, budget: int, given: bool) -> str:
    if given:
        return (
            f"max_memory={budget:,} bytes is too small for {what} (one needs about {_gib(needed)}); "
            f"raise max_memory to at least {math.ceil(needed / 2**20)} MiB, or {fix}."
        )
    return (
        f"{what} needs about {_gib(needed)} but only {_gib(budget / BUDGET_FRACTION)} of memory is free "
        f"(one program may take {BUDGET_FRACTION:.0%}); {fix}, or pass max_memory= if more will be free."
    )


def check_fits(executable: Any, budget: int | None, *, what: str, fix: str, given: bool) -> Any:
    """``executable`` when it fits in ``budget`` bytes, else :class:`RFMemoryError`."""
    need = program_bytes(executable)
    if budget is not None and need > budget:
        raise RFMemoryError(_refusal(what, fix, need, budget, given), needed=need, budget=budget)
    return executable


on_clear(_COMPILED.clear)
