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
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rfjax.errors import RFError, RFTooLarge

FORMAT = "rfjax-sweep/1"
_SPEC_KEYS = ("name", "layers", "input_sizes", "grow")


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture of a sweep.

    Attributes:
      name: a ``keras.applications`` model name (``"ResNet50"``), ``"torchvision:<name>"``
        or ``"timm:<name>"`` (final features), a path to a ``.keras``/``.h5`` file, or
        any label when ``build`` is given.
      layers: layer names to measure; ``None`` for the model's outputs (use
        ``include_top=False`` names such as ``"conv5_block3_out"`` for zoo models).
      input_sizes: ``(H, W, C)`` shapes to measure at ('same' padding makes the
        offset depend on the input size).
      build: optional ``input_shape -> model`` (a converted model, or anything
        :func:`rfjax.receptive_field` accepts that returns a dict of feature maps).
      grow: grow the input when an RF reaches past it.
    """

    name: str
    layers: tuple[str, ...] | None = None
    input_sizes: tuple[tuple[int, int, int], ...] = ((224, 224, 3),)
    build: Callable[[tuple[int, int, int]], Any] | None = None
    grow: bool = False


def load_spec(path: str | os.PathLike) -> list[Arch]:
    """Read a JSON spec: ``{"architectures": [{"name": ..., "layers": [...],
    "input_sizes": [[H, W, C], ...], "grow": false}, ...]}``."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise RFError(
            f"spec file {os.fspath(path)!r} cannot be read ({e.strerror}); check the path."
        ) from None
    except json.JSONDecodeError as e:
        raise RFError(
            f"spec file {os.fspath(path)!r} is not valid JSON (line {e.lineno}: {e.msg})."
        ) from None
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
        sizes = tuple(tuple(int(v) for v in s) for s in entry.get("input_sizes", [[224, 224, 3]]))
        if any(len(s) != 3 for s in sizes):
            raise RFError(f"spec entry {i} ({entry['name']}): input_sizes must be [H, W, C] triples.")
        layers = entry.get("layers")
        archs.append(
            Arch(
                entry["name"], tuple(layers) if layers else None, sizes, None, bool(entry.get("grow", False))
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
        for row in _read_file(part):
            if row["key"] not in seen:
                seen.add(row["key"])
                rows.append(row)
    return rows


def _read_file(out: Path) -> list[dict]:
    try:
        lines = out.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RFError(f"out={os.fspath(out)!r} cannot be read ({e.strerror}).") from None
    if not lines or not lines[0].strip():
        return []
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        found = head.get("format") if isinstance(head, dict) else "not a sweep file"
        raise RFError(
            f"out={os.fspath(out)!r} was not written by this sweep version ({found!r}, expected {FORMAT!r}); "
            "pass a new file."
        )
    rows = []
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # an interrupted final write; it is rewritten on the next append
    return rows


class _Log:
    """Append-only JSON-lines writer: every row flushed and fsync-ed; a failed write
    is cut back so the file never ends in half a row."""

    def __init__(self, out: Path):
        self.path = out
        fresh = not out.exists() or out.stat().st_size == 0
        try:
            self.f = open(out, "ab+")  # noqa: SIM115 - held for the whole sweep, closed in close()
        except OSError as e:
            raise RFError(f"out={os.fspath(out)!r} cannot be opened for writing ({e.strerror}).") from None
        if fresh:
            self._write({"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        else:
            self._trim_torn_tail()

    def _trim_torn_tail(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.f.truncate(end)

    def _write(self, *records: dict) -> None:
        pos = self.f.seek(0, os.SEEK_END)
        try:
            self.f.write("".join(json.dumps(r) + "\n" for r in records).encode())
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            self.f.truncate(pos)
            raise RFError(
                f"writing out={os.fspath(self.path)!r} failed ({e.strerror}); every finished row before it is "
                "saved: free space and run the same sweep again to resume."
            ) from None

    def append(self, *records: dict) -> None:
        self._write(*records)

    def close(self) -> None:
        self.f.close()


def sweep(
    archs: Sequence[Arch | str],
    out: str | os.PathLike,
    *,
    progress: bool = True,
    max_input: int = 4096,
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

    from rfjax.layer_sweep import sweep_layers

    index, count, joint = _processes(process_index, process_count)
    archs = [Arch(a) if isinstance(a, str) else a for a in archs]
    path = Path(out)
    done = {r["key"] for r in read_rows(path)}
    log = _Log(path if count == 1 else shard_path(path, index))
    units = [(arch, shape) for arch in archs for shape in arch.input_sizes][index::count]
    bar = tqdm(units, unit="model", disable=not progress)

    def finished(arch: Arch, shape) -> bool:
        if arch.layers is not None and all(_key(arch.name, lay, shape) in done for lay in arch.layers):
            return True
        return _key(arch.name, None, shape) in done  # recorded as failed before; delete its line to retry

    # The next model is built (Keras, conversion) on a thread while this one is measured:
    # XLA compiles and runs without Python's lock, so most of the building is hidden.
    builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rfjax-build")
    ahead: dict[int, Future] = {}

    def build_ahead(i: int) -> None:
        if i < len(units) and i not in ahead and not finished(*units[i]):
            ahead[i] = builder.submit(_build, units[i][0], units[i][1], True)

    try:
        for i, (arch, shape) in enumerate(bar):
            bar.set_postfix_str(f"{arch.name} {'x'.join(map(str, shape))}")
            arch_key = _key(arch.name, None, shape)
            wanted = arch.layers
            if finished(arch, shape):
                ahead.pop(i, None)
                continue
            build_ahead(i)
            build_ahead(i + 1)
            t0 = time.perf_counter()

            def measure(dynamic: bool, arch=arch, shape=shape, t0=t0, wanted=wanted, i=i) -> None:
                prebuilt = ahead.pop(i, None) if dynamic else None
                model = prebuilt.result() if prebuilt is not None else _build(arch, shape, dynamic)
                layers = (
                    list(wanted) if wanted is not None else list(getattr(model, "output_names", [])) or None
                )
                todo = [lay for lay in layers if _key(arch.name, lay, shape) not in done] if layers else None
                if layers and not todo:
                    return  # its outputs, known only once built, were all measured before

                def record(row):
                    rec = {"key": _key(arch.name, row.layer, shape), "arch": arch.name, "input": list(shape)}
                    if rec["key"] in done:
                        return  # a function's layers are known only as it runs: some were measured before
                    rec.update(row.as_dict())
                    rec["process"] = index
                    rec["seconds"] = round(time.perf_counter() - t0, 3)
                    log.append(rec)
                    done.add(rec["key"])

                sweep_layers(model, shape, layers=todo, grow=arch.grow, max_input=max_input, on_row=record)

            try:
                try:
                    measure(dynamic=True)
                except Exception as e:
                    if not _zoo_name(arch) or "writing out=" in str(e):
                        raise
                    # a model that fixes its graph from the input size (NASNet builds with
                    # unknown sizes, then fails at real ones): build it at this size
                    measure(dynamic=False)
            except (KeyboardInterrupt, SystemExit):
                raise
            except RFError as e:
                if "writing out=" in str(e):
                    raise
                _fail(log, done, arch_key, arch, shape, index, e)
            except RFTooLarge as e:  # pragma: no cover - sweep_layers records these as rows
                _fail(log, done, arch_key, arch, shape, index, e)
            except Exception as e:  # noqa: BLE001 - a failing architecture must not stop the sweep
                _fail(log, done, arch_key, arch, shape, index, e)
    finally:
        builder.shutdown(wait=False, cancel_futures=True)
        bar.close()
        log.close()
    if joint:
        from rfjax.distributed import barrier

        barrier(f"rfjax-sweep-finished:{path.name}")
        if index == 0:
            merge_shards(path)
        barrier(f"rfjax-sweep-merged:{path.name}")
    elif count == 1:
        merge_shards(path)  # shards left by an earlier multi-process run
    return read_rows(path)


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
    done = {r["key"] for r in _read_file(path)}
    new = []
    for shard in shards:
        for row in _read_file(shard):
            if row["key"] not in done:
                done.add(row["key"])
                new.append(row)
    log = _Log(path)
    try:
        if new:
            log.append(*new)
    finally:
        log.close()
    for shard in shards:
        shard.unlink(missing_ok=True)
    return len(new)


def _fail(log: _Log, done: set, key: str, arch: Arch, shape, process: int, e: BaseException) -> None:
    rec = {
        "key": key,
        "arch": arch.name,
        "input": list(shape),
        "layer": None,
        "status": "error",
        "process": process,
        "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500],
    }
    log.append(rec)
    done.add(key)
