"""Architecture sweeps that survive a crash: one JSON line per finished measurement.

``sweep(specs, out)`` measures the RF of chosen layers of many architectures at one or
more input sizes. Each finished ``(architecture, layer, input size)`` is appended to
``out`` as one JSON line, flushed and fsync-ed, so a crash or Ctrl-C loses nothing
finished; a re-run with the same file skips what is done. An architecture that fails
is recorded with its error and the sweep goes on. The first line of the file names
the format version, so a file from another sweep version is refused, not mixed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rfjax.errors import RFError, RFTooLarge

FORMAT = "rfjax-sweep/1"
_SPEC_KEYS = ("name", "layers", "input_sizes", "grow")


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture of a sweep.

    Attributes:
      name: a ``keras.applications`` model name (``"ResNet50"``), a path to a
        ``.keras``/``.h5`` file, or any label when ``build`` is given.
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
        raise RFError(f"spec file {os.fspath(path)!r} cannot be read ({e.strerror}); check the path.") from None
    except json.JSONDecodeError as e:
        raise RFError(f"spec file {os.fspath(path)!r} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    if not isinstance(data, dict) or "architectures" not in data:
        raise RFError(f"spec file {os.fspath(path)!r} needs a top-level key 'architectures' with a list of entries.")
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
        archs.append(Arch(entry["name"], tuple(layers) if layers else None, sizes, None, bool(entry.get("grow", False))))
    return archs


def keras_application(name: str, input_shape: tuple[int, int, int]) -> Any:
    """Build ``keras.applications.<name>(weights=None, include_top=False)`` offline and
    convert it (every layer requestable)."""
    import keras

    import converters

    names = [n for n in dir(keras.applications) if n[:1].isupper()]
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "see dir(keras.applications)."
        raise RFError(f"architecture {name!r} is not in keras.applications; {hint}")
    model = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=input_shape)
    return converters.from_keras(model)


def _build(arch: Arch, shape: tuple[int, int, int]) -> Any:
    if arch.build is not None:
        return arch.build(shape)
    if arch.name.endswith((".keras", ".h5")):
        import converters

        return converters.from_keras(arch.name, input_shape=shape)
    return keras_application(arch.name, shape)


def _key(arch: str, layer: str | None, shape: Sequence[int]) -> str:
    return f"{arch}|{layer}|{'x'.join(map(str, shape))}"


def read_rows(out: str | os.PathLike) -> list[dict]:
    """The finished rows of a sweep file (a torn last line from a crash is dropped)."""
    path = Path(out)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
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

    def __init__(self, out: Path, n_rows: int):
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

    def _write(self, record: dict) -> None:
        pos = self.f.seek(0, os.SEEK_END)
        try:
            self.f.write((json.dumps(record) + "\n").encode())
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            self.f.truncate(pos)
            raise RFError(
                f"writing out={os.fspath(self.path)!r} failed ({e.strerror}); every finished row before it is "
                "saved: free space and run the same sweep again to resume."
            ) from None

    def append(self, record: dict) -> None:
        self._write(record)

    def close(self) -> None:
        self.f.close()


def sweep(
    archs: Sequence[Arch | str],
    out: str | os.PathLike,
    *,
    progress: bool = True,
    max_input: int = 1024,
) -> list[dict]:
    """Measure every ``(architecture, layer, input size)``, appending to ``out``.

    Args:
      archs: :class:`Arch` entries or bare ``keras.applications`` names.
      out: the JSON-lines file; re-running with the same file resumes.
      progress: show a progress bar (tqdm) with the current architecture and ETA.

    Returns:
      All rows in the file (finished before and now), as dicts with ``arch``,
      ``layer``, ``input``, ``status`` and the RF fields, or ``error``.
    """
    from tqdm.auto import tqdm

    from rfjax.sweep import sweep_layers

    archs = [Arch(a) if isinstance(a, str) else a for a in archs]
    path = Path(out)
    rows = read_rows(path)
    done = {r["key"] for r in rows}
    log = _Log(path, len(rows))
    bar = tqdm(archs, unit="arch", disable=not progress)
    try:
        for arch in bar:
            bar.set_postfix_str(arch.name)
            for shape in arch.input_sizes:
                arch_key = _key(arch.name, None, shape)
                wanted = arch.layers
                if wanted is not None and all(_key(arch.name, lay, shape) in done for lay in wanted):
                    continue
                if arch_key in done:
                    continue  # recorded as failed before; delete its line to retry
                t0 = time.perf_counter()
                try:
                    model = _build(arch, shape)
                    layers = list(wanted) if wanted is not None else list(getattr(model, "output_names", [])) or None
                    todo = [lay for lay in layers if _key(arch.name, lay, shape) not in done] if layers else None

                    def record(row, arch=arch, shape=shape, t0=t0):
                        rec = {"key": _key(arch.name, row.layer, shape), "arch": arch.name, "input": list(shape)}
                        rec.update(row.as_dict())
                        rec["seconds"] = round(time.perf_counter() - t0, 3)
                        log.append(rec)
                        rows.append(rec)
                        done.add(rec["key"])

                    sweep_layers(model, shape, layers=todo, grow=arch.grow, max_input=max_input, on_row=record)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except RFError as e:
                    if "writing out=" in str(e):
                        raise
                    _fail(log, rows, done, arch_key, arch, shape, e)
                except RFTooLarge as e:  # pragma: no cover - sweep_layers records these as rows
                    _fail(log, rows, done, arch_key, arch, shape, e)
                except Exception as e:  # noqa: BLE001 - a failing architecture must not stop the sweep
                    _fail(log, rows, done, arch_key, arch, shape, e)
    finally:
        bar.close()
        log.close()
    return rows


def _fail(log: _Log, rows: list, done: set, key: str, arch: Arch, shape, e: BaseException) -> None:
    rec = {"key": key, "arch": arch.name, "input": list(shape), "layer": None, "status": "error",
           "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]}
    log.append(rec)
    rows.append(rec)
    done.add(key)
