"""The ``rfjax`` command line.

``rfjax demo`` needs no model file and no download: it builds the README network of
the ``receptivefield`` package natively in Flax, prints its RF and saves two figures.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from rfjax.errors import RFError
from rfjax.growth import MAX_INPUT


def _demo(args: argparse.Namespace) -> int:
    import rfjax
    import rfjax.plot
    from rfjax.models import readme_net

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RFError(f"--out {out} cannot be created ({e.strerror}); pass a writable folder.") from e
    model = readme_net(seed=args.seed)
    shape = (args.size, args.size, 3)
    t0 = time.perf_counter()
    rf = _one(rfjax.receptive_field(model, shape))
    t1 = time.perf_counter()
    print("README network of `receptivefield` (Flax), input", "x".join(map(str, shape)))
    print(f"  {rf}")
    print(
        f"  fitted on {rf.cells_used} grid lines ({rf.cells_clipped} clipped) in {t1 - t0:.2f} s (incl. compile)"
    )
    maps = _one(rfjax.gradient_maps(rfjax.prepare.linearize(model), np.ones(shape, np.float32)))
    centre = (int(rf.output_shape.h) // 2, int(rf.output_shape.w) // 2)
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


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--input {text!r} must look like 224x224x3 (H x W x C)")
    return parts


def _load_model(spec: str, input_shape: tuple[int, int, int] | None):
    """A ``.keras``/``.h5``/``.onnx`` file, a ``keras.applications`` name (built offline,
    ``weights=None``, ``include_top=False``), or ``torchvision:<name>`` / ``timm:<name>``
    (built offline, final features)."""
    if spec.lower().endswith(".onnx"):
        import converters

        return converters.from_onnx(spec, input_shape=input_shape)
    if spec.startswith(("torchvision:", "timm:")):
        import converters

        return converters.torch_zoo(spec, input_shape or (224, 224, 3))
    if spec.endswith((".keras", ".h5")) or Path(spec).exists():
        import converters

        return converters.from_keras(spec, input_shape=input_shape)
    from rfjax.arch_sweep import DEFAULT_INPUT, keras_application

    return keras_application(spec, input_shape or DEFAULT_INPUT)


def _estimate(args: argparse.Namespace) -> int:
    import rfjax
    import rfjax.plot

    model = _load_model(args.model, args.input)
    layer = args.layer or model.output_names[-1]
    shape = args.input or tuple(model.input_shape)
    rf = _one(rfjax.receptive_field(model, shape, layer=layer, grow=args.grow))
    print(f"{args.model} layer {layer!r}, input {'x'.join(map(str, rf.input_shape))}:")
    print(f"  {rf}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    view = model.prepared().with_outputs([layer])
    centre = (int(rf.output_shape.h) // 2, int(rf.output_shape.w) // 2)
    x = np.ones((int(rf.input_shape.h), int(rf.input_shape.w), shape[2]), np.float32)
    maps = _one(rfjax.gradient_maps(view.apply, x, params=view.params, cells=[centre]), layer)
    rfjax.plot.gradient_at(maps, centre, rf, save=out / "gradient_at_centre.png")
    rfjax.plot.rf_grid(rf, save=out / "rf_grid.png")
    print(f"  wrote {out / 'gradient_at_centre.png'} and {out / 'rf_grid.png'}")
    return 0


def _sweep_layers(args: argparse.Namespace) -> int:
    from rfjax.layer_sweep import plot_layers, save_rows, sweep_layers

    model = _load_model(args.model, args.input)
    shape = args.input or tuple(model.input_shape)
    rows = sweep_layers(model, shape, grow=args.grow)
    for r in rows:
        size = f"{r.size.h:g}x{r.size.w:g}" if r.size else "-"
        stride = f"{r.stride.h:g}x{r.stride.w:g}" if r.stride else "-"
        print(f"{r.depth:4d}  {r.layer:32s} {r.status:7s} size {size:11s} stride {stride}")
    save_rows(rows, args.table)
    plot_layers(rows, save=args.plot)
    print(f"wrote {args.table} and {args.plot}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from rfjax.arch_sweep import load_spec, sweep

    job = (args.coordinator, args.num_processes, args.process_id)
    if args.processes is not None and args.processes < 1:
        raise RFError(f"--processes {args.processes} must be at least 1.")
    if args.processes is not None and any(v is not None for v in job):
        raise RFError(
            "--processes starts its own local job; leave out --coordinator, --num-processes and --process-id."
        )
    if any(v is not None for v in job) and any(v is None for v in job):
        raise RFError(
            "--coordinator, --num-processes and --process-id go together; pass all three on every host."
        )
    archs = load_spec(args.spec)
    if args.processes is not None and args.processes > 1:
        code = _launch_sweep(args)
        return _plot_sweep(args) if code == 0 else code
    if args.coordinator is not None:
        from rfjax.distributed import initialize

        initialize(args.coordinator, args.num_processes, args.process_id)
    if args.max_input < 1:
        raise RFError(f"--max-input {args.max_input} must be a positive number of pixels, e.g. 4096.")
    rows = sweep(archs, args.out, progress=not args.quiet, max_input=args.max_input)
    if args.process_id:
        return 0  # process 0 reports for the whole job
    failed = [r for r in rows if r.get("status") == "error"]
    print(
        f"{len(rows) - len(failed)} rows measured, {len(failed)} architectures failed; all rows are in {args.out}"
    )
    for r in failed:
        print(f"  {r['arch']} {'x'.join(map(str, r['input']))}: {r['error']}")
    return _plot_sweep(args)


def _plot_sweep(args: argparse.Namespace) -> int:
    """``--plot FILE``: RF size against depth per architecture, from the finished --out."""
    if args.plot:
        from rfjax.layer_plot import plot_sweep

        plot_sweep(args.out, save=args.plot)
        print(f"plot: {args.plot}")
    return 0


def _launch_sweep(args: argparse.Namespace) -> int:
    """``--processes N``: N workers of one jax.distributed job on this machine."""
    from rfjax.distributed import launch_local

    def worker(k: int, coordinator: str) -> list[str]:
        argv = [sys.executable, "-m", "rfjax.cli", "sweep", args.spec, "--out", args.out]
        argv += ["--max-input", str(args.max_input)]
        argv += ["--coordinator", coordinator, "--num-processes", str(args.processes), "--process-id", str(k)]
        return argv + (["--quiet"] if args.quiet or k > 0 else [])  # one progress bar: process 0's

    code = launch_local(worker, args.processes)
    if code:
        why = (
            f"was killed by signal {-code}"
            if code < 0
            else f"stopped with exit code {code} (its message is above)"
        )
        print(
            f"rfjax: error: a worker process {why}; the rows finished so far are kept in {args.out} and its "
            "shards, and the same command resumes.",
            file=sys.stderr,
        )
    return code if code >= 0 else 128 - code


def _cam(args: argparse.Namespace) -> int:
    import converters
    import rfjax
    from converters import keras_cam_layers, load_keras
    from rfjax.cam_files import describe, explain_files

    if str(args.model).lower().endswith(".onnx"):
        # the adapter picks the layer (unless --layer) and the pre-softmax logits
        model, feature, logits, dense = converters.from_onnx(args.model), args.layer, None, None
    else:
        keras_model = load_keras(args.model, safe_mode=True)
        feature, dense = (args.layer, None) if args.layer else keras_cam_layers(keras_model)
        whole = converters.from_keras(keras_model)
        # the logits before a final softmax are found by the pipeline (ConvertedModel.pre_softmax)
        logits = dense or whole.output_names[0]
        model = whole.with_outputs([feature, logits])
    explain = functools.partial(
        rfjax.class_activation_maps,
        model,
        method=args.method or ("cam" if dense else "grad_cam"),
        layer=feature,
        logits=logits,
        top_k=args.top_k,
        smooth=args.smooth,
        key=args.seed,
    )
    dims = [int(v) for v in model.input_shape or () if v is not None]
    if len(dims) != 3:
        raise RFError(f"{args.model} has a dynamic input size; save it with a fixed input shape (H, W, C).")
    h, w, c = dims
    run = explain_files(
        explain,
        args.images,
        args.out,
        input_shape=(h, w, c),
        scale=args.scale,
        batch=args.batch,
        progress=not args.quiet,
    )
    for line in describe(run):
        print(line)
    return 0


def _one(result: Any, name: Any = None) -> Any:
    """The single result (``ReceptiveField`` / ``GradientMaps``) of a call that may
    return a dict of them by output name."""
    return result[name] if isinstance(result, dict) else result


_MODEL_HELP = (
    "a .keras/.h5/.onnx file, or a keras.applications name such as VGG16 (built offline, weights=None)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rfjax",
        description="Receptive fields of convolutional networks: every output cell's input gradient "
        "in one jit-compiled JAX program, and the RF size/stride/offset fitted from all of them.",
    )
    p.add_argument(
        "--debug", action="store_true", help="on an error, also print the chain of causes (Python tracebacks)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_estimate, _add_sweep_layers, _add_sweep, _add_cam):
        add(sub)
    return p


def _add_demo(sub: Any) -> None:
    """The ``demo`` command."""
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


def _add_estimate(sub: Any) -> None:
    """The ``estimate`` command."""
    e = sub.add_parser(
        "estimate",
        help="RF of one layer of a Keras model, with figures",
        description="Converts the model to JAX, prepares it for RF estimation (linear activations, average "
        "pooling, constant weights), prints the RF of one layer and writes two figures.",
    )
    e.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    e.add_argument("--layer", help="layer name (default: the model's last output)")
    e.add_argument("--input", type=_shape, help="input size HxWxC, e.g. 224x224x3 (default: the model's)")
    e.add_argument("--grow", action="store_true", help="grow the input when the RF is larger than it")
    e.add_argument(
        "--out", default="rfjax-estimate", help="folder for the figures (default: ./rfjax-estimate)"
    )
    e.set_defaults(func=_estimate)


def _add_sweep_layers(sub: Any) -> None:
    """The ``sweep-layers`` command."""
    sl = sub.add_parser(
        "sweep-layers",
        help="RF of every spatial layer of a Keras model: table and plot",
        description="Measures the RF of every layer with a 4-D output and writes a CSV (or JSON) table and a "
        "plot of RF size against depth.",
    )
    sl.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    sl.add_argument("--input", type=_shape, help="input size HxWxC (default: the model's)")
    sl.add_argument(
        "--grow", action="store_true", help="grow the input for layers whose RF is larger than it"
    )
    sl.add_argument(
        "--table", default="rf_layers.csv", help="output table, .csv or .json (default: rf_layers.csv)"
    )
    sl.add_argument("--plot", default="rf_layers.png", help="output plot (default: rf_layers.png)")
    sl.set_defaults(func=_sweep_layers)


def _add_sweep(sub: Any) -> None:
    """The ``sweep`` command."""
    sw = sub.add_parser(
        "sweep",
        help="RF of chosen layers of many architectures, resumable",
        description='Reads a JSON spec {"architectures": [{"name": "VGG16", "layers": ["block5_pool"], '
        '"input_sizes": [[224, 224, 3]]}, ...]} and appends one JSON line per finished measurement to --out; '
        "run it again with the same --out to resume after a crash.",
    )
    sw.add_argument("spec", metavar="SPEC", help="JSON spec file")
    sw.add_argument(
        "--out", default="rf_sweep.jsonl", help="JSON-lines results file (default: rf_sweep.jsonl)"
    )
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument(
        "--plot", metavar="FILE", help="also draw RF size against depth per architecture (PNG, SVG...)"
    )
    sw.add_argument(
        "--max-input",
        type=int,
        default=MAX_INPUT,
        metavar="N",
        help=f"largest input side a growing entry may reach (default: {MAX_INPUT})",
    )
    sw.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run as N worker processes on this machine (one jax.distributed job)",
    )
    sw.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="multi-host run: address of process 0; every host runs the same command",
    )
    sw.add_argument("--num-processes", type=int, metavar="N", help="multi-host run: processes in the job")
    sw.add_argument("--process-id", type=int, metavar="K", help="multi-host run: this process, 0 .. N-1")
    sw.set_defaults(func=_sweep)


def _add_cam(sub: Any) -> None:
    """The ``cam`` command."""
    from rfjax.activation_maps.methods import methods as rfjax_methods

    c = sub.add_parser(
        "cam",
        help="class activation maps of a Keras or ONNX classifier over your images",
        description="CAM (for GlobalAveragePooling2D + Dense heads) or Grad-CAM (with --layer) overlays for the "
        "top classes of each image, placed at each feature cell's RF centre; images are resized to the model's input.",
    )
    c.add_argument("model", metavar="MODEL", help="a .keras/.h5/.onnx classifier file")
    c.add_argument(
        "images", metavar="IMAGES", nargs="+", help="PNG or JPEG files, folders of them, or glob patterns"
    )
    c.add_argument("--layer", help="explain this conv layer with Grad-CAM instead of the CAM head")
    c.add_argument(
        "--method",
        choices=rfjax_methods(),
        help="the CAM method (default: cam for a GAP + Dense head, grad_cam with --layer)",
    )
    c.add_argument(
        "--smooth", type=int, default=0, help="SmoothGrad: noisy copies per image (default: 0, off)"
    )
    c.add_argument("--seed", type=int, default=0, help="SmoothGrad's random seed (default: 0)")
    c.add_argument("--top-k", type=int, default=3, help="classes per image (default: 3)")
    c.add_argument(
        "--scale", type=float, default=255.0, help="pixel values are [0, 1] times this (default: 255)"
    )
    c.add_argument(
        "--out",
        default="rfjax-cam",
        help="folder for the overlays and cam.jsonl, one row per image; run again to resume (default: ./rfjax-cam)",
    )
    c.add_argument("--batch", type=int, default=16, help="images per compiled call (default: 16)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cam)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rfjax`` command; returns the exit code (0 ok, 2 bad input)."""
    # TensorFlow's start-up chatter, when a converter loads it (also quiets sweep workers)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except RFError as e:
        if args.debug:
            traceback.print_exception(e)
        print(f"rfjax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
