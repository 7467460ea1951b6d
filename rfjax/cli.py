"""The ``rfjax`` command line.

``rfjax demo`` needs no model file and no download: it builds the README network of
the ``receptivefield`` package natively in Flax, prints its RF and saves two figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from rfjax.errors import RFError


def _demo(args: argparse.Namespace) -> int:
    import rfjax
    import rfjax.plot
    from rfjax.models import readme_net

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RFError(f"--out {out} cannot be created ({e.strerror}); pass a writable folder.") from None
    model = readme_net(seed=args.seed)
    shape = (args.size, args.size, 3)
    t0 = time.perf_counter()
    rf = rfjax.receptive_field(model, shape)
    t1 = time.perf_counter()
    print("README network of `receptivefield` (Flax), input", "x".join(map(str, shape)))
    print(f"  {rf}")
    print(f"  fitted on {rf.cells_used} grid lines ({rf.cells_clipped} clipped) in {t1 - t0:.2f} s (incl. compile)")
    maps = rfjax.gradient_maps(rfjax.prepare.linearize(model), np.ones(shape, np.float32))
    centre = (rf.output_shape.h // 2, rf.output_shape.w // 2)
    f1 = out / "gradient_at_centre.png"
    f2 = out / "rf_grid.png"
    rfjax.plot.gradient_at(maps, centre, rf, save=f1)
    rfjax.plot.rf_grid(rf, _demo_image(shape), save=f2)
    print(f"  all {maps.maps.shape[0] * maps.maps.shape[1]} cells' gradient maps: {maps.maps.shape}")
    print(f"  wrote {f1} and {f2}")
    return 0


def _demo_image(shape: tuple[int, int, int]) -> np.ndarray:
    """A generated picture (no download): soft colour gradients and a few discs."""
    h, w, _ = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.6 + 0.4 * yy, 0.7 - 0.3 * xx, 0.8 - 0.2 * yy * xx], axis=-1)
    for cy, cx, r, col in ((0.3, 0.3, 0.12, (0.9, 0.4, 0.2)), (0.65, 0.7, 0.18, (0.2, 0.5, 0.8))):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[disc] = col
    return img.astype(np.float32)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rfjax",
        description="Receptive fields of convolutional networks: every output cell's input gradient "
        "in one jit-compiled JAX program, and the RF size/stride/offset fitted from all of them.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "demo",
        help="RF of the receptivefield README network (built in Flax, no download) and two figures",
        description="Builds the README network of the receptivefield package in Flax, prints its RF "
        "(expected: offset 17, stride 4, size 34 on 96x96) and writes gradient_at_centre.png and rf_grid.png.",
    )
    d.add_argument("--out", default="rfjax-demo", help="folder for the figures (default: ./rfjax-demo)")
    d.add_argument("--size", type=int, default=96, help="input height and width in pixels (default: 96)")
    d.add_argument("--seed", type=int, default=0, help="seed of the (irrelevant) initial weights")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rfjax`` command; returns the exit code (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except RFError as e:
        print(f"rfjax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
