"""Crash-safe result files: append-only JSON lines under a format header.

A long run (an architecture sweep, CAMs over a folder of images) writes each finished row
as one JSON line, fsync-ed, so that a crash loses only the row in progress and a re-run
reads what is done and resumes. The first line is ``{"format": ..., "created": ...}``: a
file written by another tool or another format version is refused rather than mixed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path

from rfjax.errors import RFError, RFWriteError


def _kind(fmt: str) -> str:
    """``"sweep"`` for ``"rfjax-sweep/2"``: how messages name the run that writes ``fmt``."""
    return fmt.split("/")[0].removeprefix("rfjax-")


def read_log(out: str | os.PathLike, fmt: str) -> list[dict]:
    """The rows of ``out`` (``[]`` if it does not exist or is empty); a torn last line from a
    crash is dropped. :class:`RFError` if it was written with another format than ``fmt``."""
    out = Path(out)
    try:
        lines = out.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RFError(f"out={os.fspath(out)!r} cannot be read ({e.strerror}).") from e
    if not lines or not lines[0].strip():
        return []
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or head.get("format") != fmt:
        found = head.get("format") if isinstance(head, dict) else f"not a {_kind(fmt)} file"
        raise RFError(
            f"out={os.fspath(out)!r} was not written by this {_kind(fmt)} version ({found!r}, expected {fmt!r}); "
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


class RowLog:
    """Append-only JSON-lines writer on an unbuffered file descriptor: every row written
    whole, then fsync-ed; a failed write (disk full, I/O error) is cut back so the file
    never ends in half a row, and is one :class:`RFWriteError` sentence. Nothing is
    buffered in Python, so closing cannot fail on data a full disk refused.

    A new (or empty) file gets the header ``{"format": fmt, "created": ...}``; an existing
    one is appended to (read it first with :func:`read_log`, which checks its format)."""

    def __init__(self, out: Path, fmt: str):
        self.path, self.kind = out, _kind(fmt)
        try:
            if out.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(out))
            self.fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RFWriteError(
                f"out={os.fspath(out)!r} cannot be opened for writing ({e.strerror}); pass a writable file path."
            ) from e
        if os.fstat(self.fd).st_size == 0:
            self._write({"format": fmt, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        else:
            self._trim_torn_tail()

    def _trim_torn_tail(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self._cut(end, OSError(errno.EIO, "a torn last line could not be removed"))

    def _cut(self, size: int, cause: OSError) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise RFWriteError(
                f"out={os.fspath(self.path)!r} ends in half a row that could not be removed ({e.strerror}); "
                f"free space and run the same {self.kind} again (the torn line is dropped on reading)."
            ) from cause

    def _write(self, *records: dict) -> None:
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        pos = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            os.fsync(self.fd)
        except OSError as e:
            self._cut(pos, e)
            raise RFWriteError(
                f"writing out={os.fspath(self.path)!r} failed ({e.strerror}); every finished row before it is "
                f"saved: free space and run the same {self.kind} again to resume."
            ) from e

    def append(self, *records: dict) -> None:
        """Write ``records`` (JSON-serialisable dicts), one line each, and fsync."""
        self._write(*records)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
