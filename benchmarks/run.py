"""Time every way of computing all output cells' input gradients, one fresh process each.

    .venv/bin/python benchmarks/run.py                       # the README network, 5 repeats
    .venv/bin/python benchmarks/run.py --repeats 9 --readme docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --networks resnet50 vgg16 mobilenetv2   # 224x224, 49 cells
    .venv/bin/python benchmarks/run.py --ways tf_jacobian_pfor rfjax_gradient_maps

Each (network, way) runs in its own child process, so that

* "first call" includes tracing and compilation (TF graph tracing, XLA, jax.jit),
  but not imports or building the model ("setup", kept in the JSON);
* "steady median" is the median of ``--repeats`` further calls;
* "peak RSS" is the child's own ``ru_maxrss``: everything that process ever held,
  the imported libraries included (a TF child carries TensorFlow; an rfjax child
  carries only JAX for the README network, and TensorFlow too for the
  ``keras.applications`` networks, which it converts; the RSS before the first call is
  kept in the JSON as ``rss_setup_mib``).

Results go to ``benchmarks/results/<network>.json`` and ``<network>.md``; with
``--readme FILE`` the Markdown table also replaces the text between
``<!-- bench:<network>:start -->`` and ``<!-- bench:<network>:end -->`` in FILE.
The children's answers are cross-checked (gradient sums and the support of cell
(0, 0); the fitted RF) and a mismatch is reported.

Networks are entries of :data:`NETWORKS`; ways are entries of :data:`WAYS`.

The ``receptivefield_pkg`` way is the ``receptivefield`` package (fornaxai/receptivefield
0.5.0, the reference tool; :mod:`benchmarks.rfpkg_way`): its ``compute()``, which backprops
3 single cells (not all cells), on ``tf_keras`` in a child with ``TF_USE_LEGACY_KERAS=1``.
It is not a declared dependency: pip >= 24.1 refuses the 0.5.0 wheel's metadata
(``pillow (>=6.2.*)``). Install it with an older pip, into this venv::

    .venv/bin/pip --version        # must be < 24.1 (23.2.1 here)
    .venv/bin/pip install receptivefield==0.5.0 "tf_keras~=2.21.0"   # tf_keras minor = TF's

(neither replaces tensorflow, keras, numpy or jax), or into a separate venv, which the
harness uses for this way when the main one lacks the packages::

    python3.11 -m venv .venv-rf && .venv-rf/bin/pip install "pip<24.1"
    .venv-rf/bin/pip install "tensorflow~=2.21.0" "tf_keras~=2.21.0" receptivefield==0.5.0

Without either, the way's row says "not runnable: ..." and the other ways run as usual.

The ``receptivefield_pkg_torch`` way is the same package's PyTorch API on the torchvision
networks (:mod:`benchmarks.rfpkg_torch_way`): its ``compute()`` in a child of this venv (it
needs no TensorFlow); install it with ``pip install receptivefield==0.5.0`` or with
``pip install --target DIR receptivefield==0.5.0 --no-deps`` and ``RECEPTIVEFIELD_TARGET=DIR``.
Its RF is compared with ``rfjax_torch_receptive_field`` (``rfjax.receptive_field`` of the
converted module, ``grow=True``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RESULT_TAG = "BENCH-RESULT "


# --------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Network:
    """A network to time. ``tf_model()`` builds the Keras model (constant weights);
    ``keras_app`` names the ``keras.applications`` model that the rfjax ways convert with
    :func:`converters.from_keras` (``None`` for the README network, which has a native JAX port).
    A PyTorch network has no ``tf_model`` and names its torchvision feature extractor in
    ``torch_model`` (:func:`benchmarks.torch_ways.feature_extractor`)."""

    title: str
    input_shape: tuple[int, int, int]
    tf_model: Callable[[], Any] | None
    keras_app: str | None = None
    torch_model: str | None = None


def _readme_tf():
    from benchmarks import tf_ways

    return tf_ways.readme_net()


def _application(name: str) -> Callable[[], Any]:
    def build():
        from benchmarks import tf_ways

        return tf_ways.keras_application(name)

    return build


NETWORKS: dict[str, Network] = {
    "readme_net": Network("receptivefield README network", (96, 96, 3), _readme_tf),
    # keras.applications at 224 (weights=None, no top, constant weights, ReLU and max pooling kept)
    "resnet50": Network(
        "ResNet50 (keras.applications, no top)", (224, 224, 3), _application("ResNet50"), "ResNet50"
    ),
    "vgg16": Network("VGG16 (keras.applications, no top)", (224, 224, 3), _application("VGG16"), "VGG16"),
    "mobilenetv2": Network(
        "MobileNetV2 (keras.applications, no top)", (224, 224, 3), _application("MobileNetV2"), "MobileNetV2"
    ),
}
NETWORKS.update(
    {
        # torchvision at 224 (weights=None, no classifier, constant weights, ReLU and max pooling kept)
        f"torch_{short}": Network(f"{title} (torchvision, {cut})", (224, 224, 3), None, torch_model=name)
        for short, name, title, cut in [
            ("resnet50", "resnet50", "ResNet-50", "up to layer4"),
            ("mobilenetv2", "mobilenet_v2", "MobileNetV2", "features"),
            ("vgg16", "vgg16", "VGG16", "features"),
        ]
    }
)
DEFAULT_NETWORKS = ("readme_net",)


@dataclasses.dataclass(frozen=True)
class Way:
    """``kind`` is ``"tf"``, ``"rfjax"``, ``"rfpkg"`` (the ``receptivefield`` package,
    :mod:`benchmarks.rfpkg_way`, run under ``TF_USE_LEGACY_KERAS=1``), ``"torch"`` (a
    PyTorch way, :mod:`benchmarks.torch_ways`), ``"rfjax_torch"`` (rfjax on the module
    converted by :func:`converters.from_torch`) or ``"rfpkg_torch"`` (the package's
    PyTorch API, :mod:`benchmarks.rfpkg_torch_way`); ``setup(network_name)`` returns the
    zero-argument call that is timed (its result is summarised for the cross-check)."""

    kind: str
    label: str


WAYS: dict[str, Way] = {
    "tf_per_cell_tape": Way("tf", "TF: GradientTape per cell (Python loop)"),
    "tf_batched_tape": Way("tf", "TF: one tape over a batch of one-hot masks"),
    "tf_jacobian_pfor": Way("tf", "TF: tape.jacobian (pfor)"),
    "tf_batched_tape_xla": Way("tf", "TF: batched tape, tf.function(jit_compile=True)"),
    "rfjax_gradient_maps": Way("rfjax", "rfjax.gradient_maps (all cells, strategy auto)"),
    "rfjax_gradient_maps_dense": Way("rfjax", "rfjax.gradient_maps (all cells, strategy dense)"),
    "rfjax_receptive_field": Way("rfjax", "rfjax.receptive_field (RF fit)"),
    "receptivefield_pkg": Way("rfpkg", "receptivefield 0.5.0 package: compute() (3 single cells, tf_keras)"),
    "torch_per_cell_autograd": Way("torch", "PyTorch: autograd.grad per cell (Python loop)"),
    "torch_vmap_vjp": Way("torch", "PyTorch: torch.func.vmap over torch.func.vjp"),
    "torch_jacobian_vectorize": Way("torch", "PyTorch: autograd.functional.jacobian(vectorize=True)"),
    "rfjax_torch_gradient_maps": Way("rfjax_torch", "rfjax.gradient_maps on from_torch (strategy auto)"),
    "rfjax_torch_gradient_maps_dense": Way(
        "rfjax_torch", "rfjax.gradient_maps on from_torch (strategy dense)"
    ),
    "rfjax_torch_receptive_field": Way("rfjax_torch", "rfjax.receptive_field on from_torch (RF fit, grow)"),
    "receptivefield_pkg_torch": Way(
        "rfpkg_torch", "receptivefield 0.5.0 package: PyTorch compute() (3 single cells)"
    ),
}
_TORCH_KINDS = ("torch", "rfjax_torch", "rfpkg_torch")
# eager Python loops with nothing to compile, minutes per call: timed once (first call only)
_ONCE = ("torch_per_cell_autograd",)
# the ways a converted keras.applications model has (the RF fit of those is the zoo sweep's job)
_APP_WAYS = ("rfjax_gradient_maps", "rfjax_gradient_maps_dense")


def ways_for(network: Network) -> list[str]:
    if network.torch_model is not None:
        return [w for w, spec in WAYS.items() if spec.kind in _TORCH_KINDS]
    return [
        w
        for w, spec in WAYS.items()
        if spec.kind not in _TORCH_KINDS
        and (spec.kind in ("tf", "rfpkg") or network.keras_app is None or w in _APP_WAYS)
    ]


def baseline_kind(network: Network) -> str:
    """The kind of way the ratios are taken against: PyTorch for a torchvision network."""
    return "torch" if network.torch_model is not None else "tf"


# what a child's setup measured besides the timed call (e.g. the conversion), kept in its JSON
_EXTRA: dict[str, float] = {}


def _torch_setup(net: Network, way: str) -> Callable[[], Any]:
    from benchmarks import torch_ways

    assert net.torch_model is not None
    if WAYS[way].kind == "rfpkg_torch":
        from benchmarks import rfpkg_torch_way

        return rfpkg_torch_way.setup(net.input_shape, net.torch_model)
    module = torch_ways.feature_extractor(net.torch_model)
    if WAYS[way].kind == "torch":
        fn = torch_ways.WAYS[way]
        return lambda: fn(module)
    t0 = time.perf_counter()
    converted = torch_ways.converted(module)
    _EXTRA["conversion_s"] = time.perf_counter() - t0
    if way == "rfjax_torch_receptive_field":
        return lambda: torch_ways.rfjax_receptive_field(converted)
    strategy = "dense" if way.endswith("_dense") else "auto"
    return lambda: torch_ways.rfjax_gradient_maps(converted, strategy=strategy)


def _setup(network_name: str, way: str) -> Callable[[], Any]:
    net = NETWORKS[network_name]
    if WAYS[way].kind in _TORCH_KINDS:
        return _torch_setup(net, way)
    if WAYS[way].kind == "rfpkg":
        from benchmarks import rfpkg_way

        return rfpkg_way.setup(net.input_shape, net.keras_app)
    if WAYS[way].kind == "tf":
        from benchmarks import tf_ways

        assert net.tf_model is not None
        model = net.tf_model()
        fn = tf_ways.WAYS[way]
        return lambda: fn(model)
    from benchmarks import rfjax_ways

    if net.keras_app is not None:
        converted = rfjax_ways.keras_application(net.keras_app, net.input_shape)
        strategy = "dense" if way.endswith("_dense") else "auto"
        return lambda: rfjax_ways.gradient_maps_of(converted, strategy=strategy)
    params = rfjax_ways.readme_params()
    fn = rfjax_ways.WAYS[way]
    return lambda: fn(params)


def _summary(result: Any) -> dict:
    """What the parent compares across ways: gradient maps or a fitted RF."""
    import numpy as np

    if hasattr(result, "size") and hasattr(result, "stride") and hasattr(result, "offset"):
        rf = {
            "size": [float(v) for v in result.size],
            "stride": [float(v) for v in result.stride],
            "offset": [float(v) for v in result.offset],
        }
        if getattr(result, "note", ""):
            rf["note"] = result.note
        return {"rf": rf}
    g = np.asarray(result)
    nz = np.abs(g[0, 0]) > 0
    rows, cols = np.flatnonzero(nz.any(1)), np.flatnonzero(nz.any(0))
    return {
        "maps": {
            "shape": list(g.shape),
            "sum": float(g.astype(np.float64).sum()),
            "support00": [int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1]
            if rows.size
            else None,
        }
    }


# --------------------------------------------------------------------------- child


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(network_name: str, way: str, repeats: int) -> None:
    t0 = time.perf_counter()
    call = _setup(network_name, way)
    setup_s = time.perf_counter() - t0
    rss_setup = _rss_mib()
    t0 = time.perf_counter()
    result = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    out = {
        "setup_s": setup_s,
        "first_call_s": first,
        "times_s": times,
        "steady_median_s": statistics.median(times) if times else None,
        "rss_setup_mib": rss_setup,
        "peak_rss_mib": _rss_mib(),
        "check": _summary(result),
        **_EXTRA,
    }
    print(RESULT_TAG + json.dumps(out), flush=True)


# --------------------------------------------------------------------------- parent


def _version(*dists: str) -> str:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        mem_gib = None
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "tensorflow": _version("tensorflow", "tensorflow-cpu"),
        "keras": _version("keras"),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "torchax": _version("torchax"),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def header_line(m: dict) -> str:
    mem = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores{mem}; {m['os']}; Python {m['python']}; "
        f"jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, tensorflow {m['tensorflow']}, "
        f"keras {m['keras']}; {m['date']}."
    )


def run_way(network_name: str, way: str, repeats: int, timeout: float) -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    python = sys.executable
    if WAYS[way].kind == "rfpkg":
        from benchmarks import rfpkg_way  # imports no TensorFlow

        python, why = rfpkg_way.interpreter()
        if python is None:
            return {"skipped": True, "error": why}  # "error" too, for readers of the JSON that know only that
        env.update(rfpkg_way.LEGACY_ENV)
    else:
        env.pop("TF_USE_LEGACY_KERAS", None)
    if WAYS[way].kind == "rfpkg_torch":
        from benchmarks import rfpkg_torch_way  # imports no torch

        path, why = rfpkg_torch_way.import_path()
        if path is None:
            return {"skipped": True, "error": why}
        if path:  # the package only in a --target folder: on the child's path, after the repo
            env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], path])
    if way in _ONCE:
        repeats = 0
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--child",
        network_name,
        way,
        "--repeats",
        str(repeats),
    ]
    return run_child(cmd, env, timeout, RESULT_TAG)


def run_child(cmd: list[str], env: dict, timeout: float, tag: str) -> dict:
    """Run a benchmark child process; its result is the JSON on the stdout line starting
    with ``tag``, else ``{"error": ...}`` (timeout, or the last line it printed)."""
    try:
        proc = subprocess.run(
            cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(tag):
            return json.loads(line[len(tag) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}


def cross_check(results: dict[str, dict]) -> list[str]:
    """Disagreements between the ways' answers (empty when they all agree)."""
    problems = []
    maps = {w: r["check"]["maps"] for w, r in results.items() if "check" in r and "maps" in r["check"]}
    if maps:
        ref_way, ref = next(iter(maps.items()))
        for w, m in maps.items():
            if m["shape"] != ref["shape"]:
                problems.append(f"{w}: shape {m['shape']} != {ref_way}'s {ref['shape']}")
            elif abs(m["sum"] - ref["sum"]) > 1e-4 * max(abs(ref["sum"]), 1e-30):
                problems.append(f"{w}: gradient sum {m['sum']:.7g} != {ref_way}'s {ref['sum']:.7g}")
            if m["support00"] != ref["support00"]:
                problems.append(
                    f"{w}: support of cell (0, 0) {m['support00']} != {ref_way}'s {ref['support00']}"
                )
    # a noted RF is known to be of clipped supports (the receptivefield package at an input
    # smaller than the RF): it is shown with its note, not compared
    rfs = {
        w: r["check"]["rf"]
        for w, r in results.items()
        if "rf" in r.get("check", {}) and not r["check"]["rf"].get("note")
    }
    if len(rfs) > 1:
        ref_way, ref = next(iter(rfs.items()))
        for w, rf in rfs.items():
            for key in ("size", "stride", "offset"):
                if any(abs(a - b) > 1e-3 for a, b in zip(rf[key], ref[key])):
                    problems.append(f"{w}: RF {key} {rf[key]} != {ref_way}'s {ref[key]}")
    for w, r in results.items():
        rf = r.get("check", {}).get("rf")
        if rf and maps and not rf.get("note"):  # a noted answer is known to be of clipped supports
            ref = next(iter(maps.values()))
            if ref["support00"]:
                r0, r1, c0, c1 = ref["support00"]
                # with no padding (offset = size / 2) cell (0, 0)'s RF starts at the input's
                # corner and is not clipped, so its support's extent is the RF size
                unpadded = all(abs(o - z / 2) < 1e-6 for o, z in zip(rf["offset"], rf["size"]))
                if unpadded and (r0, c0) == (0, 0) and [float(r1 - r0), float(c1 - c0)] != rf["size"]:
                    problems.append(
                        f"{w}: RF size {rf['size']} != support extent of cell (0, 0) {[r1 - r0, c1 - c0]}"
                    )
    return problems


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(network_name: str, results: dict[str, dict], m: dict, repeats: int, problems: list[str]) -> str:
    net = NETWORKS[network_name]
    base = baseline_kind(net)
    base_name = "PyTorch" if base == "torch" else "TF"
    tf_steady = [
        r["steady_median_s"] for w, r in results.items() if WAYS[w].kind == base and r.get("steady_median_s")
    ]
    fastest_tf = min(tf_steady) if tf_steady else None
    h, w_, c = net.input_shape
    header = header_line(m)
    if base == "torch":
        header += f" torch {m.get('torch')}, torchvision {m.get('torchvision')}, torchax {m.get('torchax')}."
    lines = [
        f"**{net.title}**, {h}x{w_}x{c} input, all output cells; constant weights, all-ones input.",
        "",
        header,
        "",
        f"| way | first call s | steady median s | peak RSS MiB | ratio vs fastest {base_name} way |",
        "|---|---:|---:|---:|---:|",
    ]
    for way, r in results.items():
        if r.get("skipped"):
            lines.append(f"| {WAYS[way].label} | {r['error']} | | | |")
            continue
        if "error" in r:
            lines.append(f"| {WAYS[way].label} | error: {r['error']} | | | |")
            continue
        steady = r.get("steady_median_s")
        ratio = f"{steady / fastest_tf:.2f}" if (steady and fastest_tf) else "—"
        lines.append(
            f"| {WAYS[way].label} | {_fmt(r['first_call_s'])} | {_fmt(steady)} | {r['peak_rss_mib']:.0f} | {ratio} |"
        )
    lines += [
        "",
        (
            f"Each way runs in a fresh process: first call includes tracing/compilation; steady = median of {repeats} "
            "further calls; peak RSS = the process's ru_maxrss (imported libraries included); "
            f"ratio = steady median / the fastest {base_name} way's (below 1 is faster)."
        ),
    ]
    conversions = [r["conversion_s"] for r in results.values() if "conversion_s" in r]
    if conversions:
        lines += [
            "",
            (
                "Conversion (converters.from_torch at 224, torchax's trace included), not in the rfjax "
                f"rows: {min(conversions):.1f} s."
            ),
        ]
    rf_rows = {w: r["check"]["rf"] for w, r in results.items() if "rf" in r.get("check", {})}
    if "check" in results.get("receptivefield_pkg", {}):
        lines += [
            "",
            (
                "The receptivefield package (0.5.0, on tf_keras with TF_USE_LEGACY_KERAS=1) backprops 3 single "
                "cells per compute(), not all cells, with linear activations and average pooling; its offset is "
                "already in rfjax's convention (RF centre of cell (0, 0) in pixel-edge coordinates), "
                "so no +0.5 is added."
            ),
        ]
    if "check" in results.get("receptivefield_pkg_torch", {}):
        lines += [
            "",
            (
                "The receptivefield package's PyTorch API (0.5.0) backprops 3 single cells per compute(), not "
                "all cells, on the module with linear activations (ReLU/ReLU6 -> Identity) and average pooling "
                "(MaxPool2d -> AvgPool2d), all-zeros input; its answer is (row, col) and its offset already in "
                "rfjax's convention. An answer with a note (clipped supports) is not cross-checked."
            ),
        ]
    if rf_rows:
        lines += [
            "",
            "RF answers (row, col): "
            + "; ".join(
                f"{WAYS[w].label}: size {rf['size']}, stride {rf['stride']}, offset {rf['offset']}"
                + (f" ({rf['note']})" if rf.get("note") else "")
                for w, rf in rf_rows.items()
            ),
        ]
    if problems:
        lines += ["", "**The ways disagree:** " + "; ".join(problems)]
    return "\n".join(lines) + "\n"


def replace_in_readme(path: Path, network_name: str, text: str) -> bool:
    start, end = f"<!-- bench:{network_name}:start -->", f"<!-- bench:{network_name}:end -->"
    try:
        doc = path.read_text()
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror}; README not updated.", file=sys.stderr)
        return False
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(doc):
        print(f"error: {path} lacks the markers {start} ... {end}; README not updated.", file=sys.stderr)
        return False
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}{end}", doc, count=1))
    print(f"updated {path} between {start} and {end}")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", nargs="+", default=list(DEFAULT_NETWORKS), choices=sorted(NETWORKS))
    ap.add_argument("--ways", nargs="+", choices=list(WAYS), help="default: every way the network has")
    ap.add_argument("--repeats", type=int, default=5, help="steady-state calls after the first (default 5)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per way (default 1800)")
    ap.add_argument("--readme", type=Path, help="update the bench:<network> block of this Markdown file")
    ap.add_argument(
        "--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS.relative_to(ROOT)})"
    )
    ap.add_argument("--child", nargs=2, metavar=("NETWORK", "WAY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if str(ROOT) not in sys.path:  # run as a script: ``benchmarks`` is importable from the repo root
        sys.path.insert(0, str(ROOT))
    if args.child:
        child(args.child[0], args.child[1], args.repeats)
        return 0

    m = machine()
    print(header_line(m))
    status = 0
    for name in args.networks:
        net = NETWORKS[name]
        ways = [w for w in ways_for(net) if args.ways is None or w in args.ways]
        results: dict[str, dict] = {}
        for way in ways:
            print(f"[{name}] {way} ...", end=" ", flush=True)
            r = run_way(name, way, args.repeats, args.timeout)
            results[way] = r
            if r.get("skipped"):
                print(r["error"])
            elif "error" in r:
                status = 1
                print(r["error"])
            else:
                print(
                    f"first {r['first_call_s']:.3f} s, steady {_fmt(r['steady_median_s'])} s, "
                    f"peak RSS {r['peak_rss_mib']:.0f} MiB"
                )
        problems = cross_check(results)
        if problems:
            status = 1
        md = markdown(name, results, m, args.repeats, problems)
        print()
        print(md)
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {
            "network": name,
            "title": net.title,
            "input_shape": list(net.input_shape),
            "machine": m,
            "repeats": args.repeats,
            "ways": {w: {"label": WAYS[w].label, "kind": WAYS[w].kind, **r} for w, r in results.items()},
            "problems": problems,
        }
        (args.out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(md)
        print(f"wrote {args.out / (name + '.json')} and {args.out / (name + '.md')}")
        if args.readme is not None and not replace_in_readme(args.readme, name, md):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
