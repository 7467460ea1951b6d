"""Architecture sweeps that survive a crash: one JSON line per finished measurement.

``sweep(specs, out)`` measures the RF of chosen layers of many architectures at one or
more input sizes. Each finished ``(architecture, layer, input size)`` is appended to
``out`` as one JSON line, flushed and fsync-ed, so a crash or Ctrl-C loses nothing
finished; a re-run with the same file skips what is done. An architecture that fails
is recorded with its error and the sweep goes on. The first line of the file names
the format version, so a file from another sweep version is refused, not mixed.

Past one process, the same call runs as process ``k`` of ``n`` of a ``jax.distributed``
job (see :mod:`rfjax.distributed`): process ``k`` takes every ``n``-th ``(architecture,
input size)``, writes its rows to its own shard ``out.p<k>`` (one writer per file, so the
crash guarantees above hold unchanged), and after a barrier process 0 folds the shards
into ``out``. Resuming reads ``out`` and every shard, so nothing finished is redone,
whatever the number of processes of the earlier run.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from rfjax.contract import clear_caches, resolve_model
from rfjax.errors import RFError, RFWriteError, cause
from rfjax.growth import MAX_INPUT
from rfjax.rowlog import RowLog, read_log

FORMAT = "rfjax-sweep/2"  # 2: input_shape is the requested size, measured_shape where it was measured
_SPEC_KEYS = ("name", "layers", "input_sizes", "grow")
#: The input size of an architecture whose sizes are not given: ImageNet's ``(H, W, C)``.
DEFAULT_INPUT = (224, 224, 3)


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture of a sweep.

    Attributes:
      name: a ``keras.applications`` model name (``"ResNet50"``), ``"torchvision:<name>"``
        or ``"timm:<name>"`` (final features), a path to a ``.keras``/``.h5`` file, or
        any label when ``build`` is given.
      layers: layer names to measure; ``None`` for the model's outputs (use
        ``include_top=False`` names such as ``"conv5_block3_out"`` for zoo models);
        ``"all"`` for every spatial layer of a converted model (one row per layer).
      input_sizes: ``(H, W, C)`` shapes to measure at ('same' padding makes the
        offset depend on the input size).
      build: optional ``input_shape -> model`` (a converted model, or anything
        :func:`rfjax.receptive_field` accepts that returns a dict of feature maps).
      grow: grow the input when an RF reaches past it.
    """

    name: str
    layers: tuple[str, ...] | Literal["all"] | None = None
    input_sizes: tuple[tuple[int, int, int], ...] = (DEFAULT_INPUT,)
    build: Callable[[tuple[int, int, int]], Any] | None = None
    grow: bool = False


def load_spec(path: str | os.PathLike) -> list[Arch]:
    """Read a JSON spec: ``{"architectures": [{"name": ..., "layers": [...],
    "input_sizes": [[H, W, C], ...], "grow": false}, ...]}``."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise RFError(f"spec file {os.fspath(path)!r} cannot be read ({e.strerror}); check the path.") from e
    except json.JSONDecodeError as e:
        raise RFError(f"spec file {os.fspath(path)!r} is not valid JSON (line {e.lineno}: {e.msg}).") from e
    if not isinstance(data, dict) or "architectures" not in data:
        raise RFError(
            f"spec file {os.fspath(path)!r} needs a top-level key 'architectures' with a list of entries."
        )
    archs = []
    for i, entry in enumerate(data["architectures"]):
        if isinstance(entry, str):
            entry = {"name": entry}
        unknown = [k for k in entry if k not in _SPEC_KEYS]
        if unknown:
            near = difflib.get_close_matches(unknown[0], _SPEC_KEYS, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"allowed keys: {', '.join(_SPEC_KEYS)}."
            raise RFError(f"spec entry {i} has an unknown key {unknown[0]!r}; {hint}")
        if "name" not in entry:
            raise RFError(f"spec entry {i} has no 'name'.")
        sizes = tuple(tuple(int(v) for v in s) for s in entry.get("input_sizes", [DEFAULT_INPUT]))
        if any(len(s) != 3 for s in sizes):
            raise RFError(f"spec entry {i} ({entry['name']}): input_sizes must be [H, W, C] triples.")
        layers = entry.get("layers")
        if (
            isinstance(layers, str)
            and layers != "all"
            or (isinstance(layers, list) and not all(isinstance(n, str) for n in layers))
        ):
            raise RFError(f'spec entry {i} ({entry["name"]}): layers must be a list of layer names or "all".')
        archs.append(
            Arch(
                entry["name"],
                layers if layers == "all" else tuple(layers) if layers else None,
                sizes,  # type: ignore[arg-type]  # triples, checked above
                None,
                bool(entry.get("grow", False)),
            )
        )
    return archs


# keras.applications builders that choose their graph from the input size (NASNet's cell
# adjustments compare shapes at build time): built at the size asked for. Others that do
# so too are caught when the dynamic build fails to run, and rebuilt the same way.
_STATIC_ZOO = ("NASNetMobile", "NASNetLarge")


def keras_application(name: str, input_shape: tuple[int, int, int], dynamic: bool = True) -> Any:
    """Build ``keras.applications.<name>(weights=None, include_top=False)`` offline and
    convert it (every layer requestable). ``dynamic``: with unknown spatial sizes, so a
    growing fit can run it larger than ``input_shape`` (else built at ``input_shape``)."""
    import keras

    import converters

    names = [n for n in dir(keras.applications) if n[:1].isupper()]
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "see dir(keras.applications)."
        raise RFError(f"architecture {name!r} is not in keras.applications; {hint}")
    build = getattr(keras.applications, name)
    model = None
    if dynamic and name not in _STATIC_ZOO:
        try:
            model = build(weights=None, include_top=False, input_shape=(None, None, input_shape[2]))
        except ValueError:  # a model that needs known sizes
            model = None
    if model is None:
        model = build(weights=None, include_top=False, input_shape=input_shape)
    return converters.from_keras(model, input_shape=input_shape)


_TORCH_ZOOS = ("torchvision:", "timm:")


def _zoo_name(arch: Arch) -> bool:
    return (
        arch.build is None
        and not arch.name.endswith((".keras", ".h5"))
        and not arch.name.startswith(_TORCH_ZOOS)
    )


def _build(arch: Arch, shape: tuple[int, int, int], dynamic: bool = True) -> Any:
    if arch.build is not None:
        return arch.build(shape)
    if arch.name.endswith((".keras", ".h5")):
        import converters

        return converters.from_keras(arch.name, input_shape=shape)
    if arch.name.startswith(_TORCH_ZOOS):
        import converters

        return converters.torch_zoo(arch.name, shape)
    return keras_application(arch.name, shape, dynamic)


def _key(arch: str, layer: str | None, shape: Sequence[int]) -> str:
    return f"{arch}|{layer}|{'x'.join(map(str, shape))}"


def shard_path(out: str | os.PathLike, process: int) -> Path:
    """The file process ``process`` of a multi-process sweep writes: ``out.p<process>``."""
    return Path(f"{os.fspath(out)}.p{process}")


def _shards(out: Path) -> list[Path]:
    pattern = re.compile(re.escape(out.name) + r"\.p(\d+)")
    folder = out.parent
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = sorted((int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name)))
    return [folder / name for _, name in found]


def read_rows(out: str | os.PathLike) -> list[dict]:
    """The finished rows of a sweep: those of ``out`` and of per-process shards not merged
    yet (``out.p0``, ``out.p1``, ...), each key once; a torn last line from a crash is dropped."""
    path = Path(out)
    rows, seen = [], set()
    for part in [path, *_shards(path)]:
        for row in read_log(part, FORMAT):
            if row["key"] not in seen:
                seen.add(row["key"])
                rows.append(row)
    return rows


@dataclasses.dataclass
class _Run:
    """One process's share of a sweep in progress: the keys finished (by any process, before
    or now), the log it appends to, its process index and the sweep's options."""

    done: set[str]
    log: RowLog
    index: int
    max_input: int

    def finished(self, arch: Arch, shape: Sequence[int]) -> bool:
        named = arch.layers is not None and arch.layers != "all"
        if named and all(_key(arch.name, lay, shape) in self.done for lay in arch.layers or ()):
            return True
        # recorded as failed before: delete its line to retry
        return _key(arch.name, None, shape) in self.done

    def record(self, arch: Arch, shape: Sequence[int], t0: float, row: Any) -> None:
        """Append one measured :class:`~rfjax.layer_sweep.LayerRF` row (timed from ``t0``)."""
        rec: dict[str, Any] = {
            "key": _key(arch.name, row.layer, shape),
            "arch": arch.name,
            "input": list(shape),
        }
        if rec["key"] in self.done:
            return  # a function's layers are known only as it runs: some were measured before
        rec.update(row.as_dict())
        rec["process"] = self.index
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        self.log.append(rec)
        self.done.add(rec["key"])

    def fail(self, arch: Arch, shape: Sequence[int], e: BaseException) -> None:
        """Append the one error row of an architecture that failed at ``shape``."""
        key = _key(arch.name, None, shape)
        rec = {
            "key": key,
            "arch": arch.name,
            "input": list(shape),
            "layer": None,
            "status": "error",
            "process": self.index,
            "error": cause(e, limit=500),
        }
        self.log.append(rec)
        self.done.add(key)


class _Ahead:
    """Builds the next model (Keras, conversion) on a thread while this one is measured:
    XLA compiles and runs without Python's lock, so most of the building is hidden."""

    def __init__(self, units: list[tuple[Arch, tuple[int, int, int]]], finished: Callable[..., bool]):
        self.units, self.finished = units, finished
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfjax-build")
        self.futures: dict[int, Future] = {}

    def submit(self, i: int) -> None:
        if i < len(self.units) and i not in self.futures and not self.finished(*self.units[i]):
            self.futures[i] = self.pool.submit(_build, *self.units[i], True)

    def take(self, i: int) -> Future | None:
        return self.futures.pop(i, None)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def sweep(
    archs: Sequence[Arch | str],
    out: str | os.PathLike,
    *,
    progress: bool = True,
    max_input: int = MAX_INPUT,
    process_index: int | None = None,
    process_count: int | None = None,
) -> list[dict]:
    """Measure every ``(architecture, layer, input size)``, appending to ``out``.

    Args:
      archs: :class:`Arch` entries or bare ``keras.applications`` names.
      out: the JSON-lines file; re-running with the same file resumes.
      progress: show a progress bar (tqdm) with the current architecture and ETA.
      process_index, process_count: this process's share of the work, ``(architecture,
        input size)`` number ``i`` going to process ``i % process_count``; by default
        ``jax.process_index()`` and ``jax.process_count()``, so after
        ``rfjax.distributed.initialize(...)`` every process of the job calls the same
        ``sweep``. Given by hand without ``jax.distributed`` (independent jobs), each
        process leaves its shard ``out.p<k>`` and a later one-process run merges them.

    Returns:
      All rows finished so far (before and now, by every process), as dicts with
      ``arch``, ``layer``, ``input``, ``process``, ``status`` and the RF fields, or
      ``error``.
    """
    from tqdm.auto import tqdm

    index, count, joint = _processes(process_index, process_count)
    archs_: list[Arch] = [Arch(a) if isinstance(a, str) else a for a in archs]
    path = Path(out)
    done = {r["key"] for r in read_rows(path)}
    log = RowLog(path if count == 1 else shard_path(path, index), FORMAT)
    run = _Run(done, log, index, max_input)
    units = [(arch, shape) for arch in archs_ for shape in arch.input_sizes][index::count]
    bar = tqdm(units, unit="model", disable=not progress)
    ahead = _Ahead(units, run.finished)
    try:
        for i, (arch, shape) in enumerate(bar):
            bar.set_postfix_str(f"{arch.name} {'x'.join(map(str, shape))}")
            if run.finished(arch, shape):
                ahead.take(i)
                continue
            ahead.submit(i)
            ahead.submit(i + 1)
            _sweep_unit(run, ahead.take(i), arch, shape)
    finally:
        ahead.shutdown()
        bar.close()
        log.close()
    _merge_after(path, index, count, joint)
    return read_rows(path)


def _sweep_unit(run: _Run, prebuilt: Future | None, arch: Arch, shape: tuple[int, int, int]) -> None:
    """Measure one ``(architecture, input size)``; any failure but a failed write becomes
    its error row, and the sweep goes on. Afterwards rfjax's caches are cleared: the
    compiled programs of one model serve no other, and kept for every model of a zoo
    they grew one process past 23 GiB before the eighth of 17 all-layer sweeps."""
    t0 = time.perf_counter()
    try:
        _sweep_unit_uncleared(run, prebuilt, arch, shape, t0)
    finally:
        clear_caches()
        gc.collect()


def _sweep_unit_uncleared(
    run: _Run, prebuilt: Future | None, arch: Arch, shape: tuple[int, int, int], t0: float
) -> None:
    try:
        try:
            model = prebuilt.result() if prebuilt is not None else _build(arch, shape, True)
            _measure(run, arch, shape, model, t0)
        except RFWriteError:
            raise
        except Exception:
            if not _zoo_name(arch):
                raise
            # a model that fixes its graph from the input size (NASNet builds with
            # unknown sizes, then fails at real ones): build it at this size
            _measure(run, arch, shape, _build(arch, shape, False), t0)
    except RFWriteError:
        raise
    except Exception as e:  # noqa: BLE001 - a failing architecture must not stop the sweep
        run.fail(arch, shape, e)


def _measure(run: _Run, arch: Arch, shape: tuple[int, int, int], model: Any, t0: float) -> None:
    """Sweep the layers of ``model`` not measured yet, appending each row as it comes."""
    from rfjax.layer_sweep import sweep_layers

    converted = resolve_model(model, shape)
    if arch.layers == "all":
        if converted is None:
            raise RFError(
                f'{arch.name}: layers "all" needs a converted model (Keras, PyTorch, ONNX), not a function.'
            )
        layers: list[str] | None = [n for n in converted.layer_names if n != converted.input_name]
    elif arch.layers is not None:
        layers = list(arch.layers)
    else:
        layers = list(converted.output_names) if converted is not None else None
    todo = [lay for lay in layers if _key(arch.name, lay, shape) not in run.done] if layers else None
    if layers and not todo:
        return  # its layers, known only once built, were all measured before
    # depth = the layer's place among all the layers asked for, also when a resumed run sweeps only the rest
    place = {lay: i for i, lay in enumerate(layers or ())}

    def on_row(row: Any) -> None:
        run.record(arch, shape, t0, dataclasses.replace(row, depth=place.get(row.layer, row.depth)))

    rows = sweep_layers(
        model if converted is None else converted,
        shape,
        layers=todo,
        grow=arch.grow,
        max_input=run.max_input,
        on_row=on_row,
    )
    if (
        arch.layers == "all"
        and not rows
        and not any(_key(arch.name, lay, shape) in run.done for lay in layers or ())
    ):
        raise RFError(f'{arch.name} has no spatial layer to sweep (layers: "all"); name the layers instead.')


def _merge_after(path: Path, index: int, count: int, joint: bool) -> None:
    """Fold the shards into ``path`` once every process is done (process 0 of a job, or a
    one-process run finding shards of an earlier multi-process one)."""
    if joint:
        from rfjax.distributed import barrier

        barrier(f"rfjax-sweep-finished:{path.name}")
        if index == 0:
            merge_shards(path)
        barrier(f"rfjax-sweep-merged:{path.name}")
    elif count == 1:
        merge_shards(path)  # shards left by an earlier multi-process run


def _processes(index: int | None, count: int | None) -> tuple[int, int, bool]:
    """``(process index, process count, whether they form a jax.distributed job)``."""
    import jax

    job = jax.process_count()
    if job > 1 and (count not in (None, job) or index not in (None, jax.process_index())):
        raise RFError(
            f"process_index={index!r}, process_count={count!r} differ from this jax.distributed job's "
            f"({jax.process_index()} of {job}); leave them out to use the job's."
        )
    index = jax.process_index() if index is None else index
    count = job if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RFError(f"process_count={count!r} must be a positive int.")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise RFError(f"process_index={index!r} must be between 0 and {count - 1} (process_count - 1).")
    return index, count, job > 1


def merge_shards(out: str | os.PathLike) -> int:
    """Fold the per-process shards ``out.p<k>`` into ``out`` and delete them.

    Rows already in ``out`` are skipped, so a merge cut short by a crash is simply run
    again; a one-process :func:`sweep`, and process 0 of a job, end with one. Returns
    the number of rows added.
    """
    path = Path(out)
    shards = _shards(path)
    if not shards:
        return 0
    done = {r["key"] for r in read_log(path, FORMAT)}
    new = []
    for shard in shards:
        for row in read_log(shard, FORMAT):
            if row["key"] not in done:
                done.add(row["key"])
                new.append(row)
    log = RowLog(path, FORMAT)
    try:
        if new:
            log.append(*new)
    finally:
        log.close()
    for shard in shards:
        shard.unlink(missing_ok=True)
    return len(new)
