"""Class activation maps over many image files (folders, globs, lists): resumable.

:func:`explain_files` reads the images in fixed-size batches (one compiled program for
all of them), runs a CAM function on each batch and appends one JSON line per image to
``<out>/cam.jsonl`` (classes, probabilities, peaks, the best class's box, the overlay's
file), fsync-ed as it goes (:mod:`rfjax.rowlog`): a re-run with the same ``out`` skips
the images already done. Files that are not images, or cannot be read, are skipped and
listed at the end; the rest are finished.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rfjax.activation_maps.metrics import cam_box
from rfjax.activation_maps.result import CAMResult
from rfjax.errors import RFError, RFUnreadableImage
from rfjax.rowlog import RowLog, read_log

FORMAT = "rfjax-cam/1"
#: file suffixes read as images (matplotlib reads PNG itself, JPEG through Pillow)
SUFFIXES = (".png", ".jpg", ".jpeg")
#: the results file inside ``out``
LOG_NAME = "cam.jsonl"


class Skipped(NamedTuple):
    """A file left out: its path and why, in a few words."""

    path: str
    reason: str


class FilesRun(NamedTuple):
    """What :func:`explain_files` did.

    Attributes:
      rows: one dict per finished image (this run's and earlier runs'), in file order.
      skipped: files left out (not images, unreadable), in the order met.
      new: how many of ``rows`` this run computed.
      log: the JSON-lines file holding the rows.
    """

    rows: list[dict]
    skipped: list[Skipped]
    new: int
    log: Path


def image_files(sources: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Skipped]]:
    """The image files named by ``sources`` and the other files met.

    Each source is a file, a folder (its files, not its subfolders) or a glob pattern
    (``"shots/**/*.jpg"``, recursive). Images are the files with a suffix in
    :data:`SUFFIXES` (any case), each once, in the order given (folders and globs sorted).
    :class:`RFError` for a source that names nothing."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    for source in sources:
        found = _expand(source)
        if not found:
            raise RFError(
                f"{os.fspath(source)!r} cannot be read: no such file, folder or matching pattern; "
                "pass image files, folders or glob patterns."
            )
        for path in found:
            if path.suffix.lower() in SUFFIXES:
                files.append(path)
            else:
                skipped.append(Skipped(str(path), f"not an image ({path.suffix or 'no suffix'})"))
    return list(dict.fromkeys(files)), skipped


def _expand(source: str | os.PathLike) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    if path.is_file():
        return [path]
    return sorted(Path(p) for p in glob.glob(os.fspath(source), recursive=True) if Path(p).is_file())


def read_image(
    path: str | os.PathLike, hw: tuple[int, int], channels: int, scale: float = 255.0
) -> np.ndarray:
    """One image file as ``(H, W, channels)`` float32 in ``[0, scale]``, resized (bilinear)
    to ``hw``; grey images are repeated to 3 channels and an alpha channel is dropped
    when the model takes 3. :class:`RFUnreadableImage` when it cannot be read or has
    another channel count."""
    import jax
    import matplotlib.image

    try:
        img = np.asarray(matplotlib.image.imread(Path(path)), np.float32)
    except (OSError, ValueError, SyntaxError) as e:
        raise RFUnreadableImage(
            f"image {os.fspath(path)!r} cannot be read ({type(e).__name__}); pass PNG or JPEG files."
        ) from e
    if img.dtype.kind == "f" and img.max() > 1.0:
        img = img / 255.0
    img = img[..., None] if img.ndim == 2 else img
    if channels == 3 and img.shape[-1] in (1, 4):
        img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
    if img.ndim != 3 or img.shape[-1] != channels:
        raise RFUnreadableImage(
            f"image {os.fspath(path)!r} has {img.shape[-1]} channels but the model takes {channels}; convert it first."
        )
    return np.asarray(jax.image.resize(img, (hw[0], hw[1], channels), "bilinear")) * scale


def image_row(result: CAMResult, n: int, path: str, overlay: str | None) -> dict:
    """The JSON row of image ``n`` of ``result``: its classes, probabilities, the peak of each
    class's map (``(row, column)`` on the input) and the box of the best class's map
    (``(top, left, bottom, right)`` where it exceeds 0.3 of its maximum, or ``None``)."""
    box = cam_box(result.upsampled[n, 0])
    return {
        "image": path,
        "classes": [int(k) for k in result.classes[n]],
        "probabilities": [float(p) for p in result.probabilities[n]],
        "peaks": np.asarray(result.peaks()[n], float).round(3).tolist(),
        "box": None if box is None else list(box),
        "overlay": overlay,
    }


def explain_files(
    explain: Callable[[np.ndarray], CAMResult],
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    input_shape: tuple[int, int, int],
    scale: float = 255.0,
    batch: int = 16,
    overlays: bool = True,
    progress: bool = True,
) -> FilesRun:
    """CAMs of every image in ``sources``, ``batch`` at a time, resumable.

    Args:
      explain: ``images (batch, H, W, C) -> CAMResult`` (e.g. a
        ``functools.partial(rfjax.class_activation_maps, model, method=..., top_k=3)``).
        Every call gets exactly ``batch`` images (the last batch is padded with copies
        of its last image, whose rows are dropped), so it compiles once.
      sources: files, folders and glob patterns (see :func:`image_files`).
      out: folder for ``cam.jsonl`` and the overlays (``<stem>_cam.png``); created.
      input_shape: the model's ``(H, W, C)``: images are resized to it.
      scale: pixel values are ``[0, 1]`` times this.
      batch: images per call.
      overlays: also draw each image's overlay (:func:`rfjax.plot_cam.cam_overlay`).
      progress: a progress bar (tqdm) over the images.

    Returns:
      :class:`FilesRun`. Rows already in ``out/cam.jsonl`` are not computed again.
    """
    from tqdm.auto import tqdm

    if batch < 1:
        raise RFError(f"batch={batch} must be at least 1.")
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RFError(
            f"out={os.fspath(out)!r} cannot be created ({e.strerror}); pass a writable folder."
        ) from e
    files, skipped = image_files(sources)
    log_path = folder / LOG_NAME
    done = {row["image"]: row for row in read_log(log_path, FORMAT)}
    todo = [f for f in files if str(f) not in done]
    names = overlay_names(files)
    log = RowLog(log_path, FORMAT)
    bar = tqdm(total=len(files), initial=len(files) - len(todo), unit="image", disable=not progress)
    new = 0
    try:
        for chunk in _chunks(todo, batch):
            images, kept = _read_all(chunk, input_shape, scale, skipped)
            if not kept:
                bar.update(len(chunk))
                continue
            targets = [folder / names[p] for p in kept] if overlays else None
            rows = _explain_batch(explain, images, kept, batch, targets, scale)
            log.append(*rows)
            done.update((row["image"], row) for row in rows)
            new += len(rows)
            bar.update(len(chunk))
    finally:
        log.close()
        bar.close()
    rows = [done[str(f)] for f in files if str(f) in done]
    return FilesRun(rows, skipped, new, log_path)


def overlay_names(files: Sequence[Path]) -> dict[Path, str]:
    """``<stem>_cam.png`` per file; files sharing a stem (``a/x.png``, ``b/x.jpg``) get
    ``<stem>_cam.png``, ``<stem>_2_cam.png``, ... in file order."""
    names, seen = {}, dict[str, int]()
    for f in files:
        seen[f.stem] = seen.get(f.stem, 0) + 1
        names[f] = f"{f.stem}_cam.png" if seen[f.stem] == 1 else f"{f.stem}_{seen[f.stem]}_cam.png"
    return names


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_all(
    paths: list[Path], shape: tuple[int, int, int], scale: float, skipped: list[Skipped]
) -> tuple[list[np.ndarray], list[Path]]:
    """The readable images of ``paths`` and their paths; the others go to ``skipped``."""
    images, kept = [], []
    for path in paths:
        try:
            images.append(read_image(path, shape[:2], shape[2], scale))
            kept.append(path)
        except RFUnreadableImage as e:
            skipped.append(Skipped(str(path), str(e)))
    return images, kept


def _explain_batch(
    explain: Callable[[np.ndarray], CAMResult],
    images: list[np.ndarray],
    paths: list[Path],
    batch: int,
    overlays: list[Path] | None,
    scale: float,
) -> list[dict]:
    """Rows (and overlays, to ``overlays[n]``) of one batch, padded to ``batch`` images for
    one compiled shape."""
    stack = np.stack(images + [images[-1]] * (batch - len(images)))
    result = explain(stack)
    rows = []
    for n, path in enumerate(paths):
        target = None
        if overlays is not None:
            from rfjax.plot_cam import cam_overlay

            target = overlays[n]
            cam_overlay(result, stack / scale, image=n, save=target)
        rows.append(image_row(result, n, str(path), None if target is None else str(target)))
    return rows


def describe(run: FilesRun) -> Iterator[str]:
    """Lines summarising ``run`` for a terminal: one per image, then the skipped files."""
    for row in run.rows:
        classes = ", ".join(f"{k} ({p:.2f})" for k, p in zip(row["classes"], row["probabilities"]))
        yield f"{row['image']}: top classes {classes}" + (f" -> {row['overlay']}" if row["overlay"] else "")
    yield f"{run.new} images explained now, {len(run.rows) - run.new} before; rows in {run.log}"
    if run.skipped:
        yield f"{len(run.skipped)} files skipped:"
        for s in run.skipped:
            yield f"  {s.path}: {s.reason}"
