"""Layer sweeps: every spatial layer of a keras.applications model, one fresh process each.

    .venv/bin/python benchmarks/layer_sweep.py                       # the five models below
    .venv/bin/python benchmarks/layer_sweep.py --models ResNet50     # some of them

Per model (``weights=None``, no top) it times building and converting the model, then
``rfjax.sweep_layers(grow=True)`` twice in the same process: the first call compiles
and runs (the cold cost a user pays), the second finds every program compiled and only
runs, so ``compile ~ cold - warm``. It counts the layers measured by a program and those
that took their input's row (``method`` ``"as <layer>"``), and the rows by status.
Writes ``benchmarks/results/layer_sweep.json`` and ``layer_sweep.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MODELS = {
    "VGG16": (224, 224, 3),
    "ResNet50": (224, 224, 3),
    "MobileNetV2": (224, 224, 3),
    "InceptionV3": (299, 299, 3),
    "DenseNet121": (224, 224, 3),
}


def measure(name: str, shape: tuple[int, int, int]) -> dict:
    """One model, in this process: build, convert, sweep cold, sweep warm."""
    import resource

    import keras

    import converters
    import rfjax

    t0 = time.perf_counter()
    model = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(None, None, 3))
    t1 = time.perf_counter()
    converted = converters.from_keras(model, input_shape=shape)
    t2 = time.perf_counter()
    rows = rfjax.sweep_layers(converted, shape, grow=True)
    t3 = time.perf_counter()
    again = rfjax.sweep_layers(converted, shape, grow=True)
    t4 = time.perf_counter()
    assert [r.as_dict() for r in again] == [r.as_dict() for r in rows]
    methods = Counter("as input" if (r.method or "").startswith("as ") else r.method for r in rows)
    return {
        "model": name,
        "input": list(shape),
        "layers": len(rows),
        "status": dict(Counter(r.status for r in rows)),
        "derived": methods.pop("as input", 0),
        "methods": dict(methods),
        "build_s": t1 - t0,
        "convert_s": t2 - t1,
        "cold_s": t3 - t2,
        "warm_s": t4 - t3,
        "compile_s": (t3 - t2) - (t4 - t3),
        "layers_per_s": len(rows) / (t3 - t2),
        "deepest": rows[-1].as_dict(),
        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        (
            "**Layer sweeps**: `rfjax.sweep_layers(model, grow=True)`, every spatial layer, one fresh process per "
            "model (conversion done; compile = cold - warm)."
        ),
        "",
        header,
        "",
        (
            "| model | input | layers | measured / from input | status | cold s | compile s | run s | layers/s | "
            "deepest RF | peak RSS GiB |"
        ),
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error'][:100]} |" + " |" * 9)
            continue
        status = ", ".join(f"{k} {v}" for k, v in sorted(r["status"].items()))
        deep = r["deepest"]
        size = "-" if deep["size_h"] is None else f"{deep['size_h']:g}"
        lines.append(
            f"| {r['model']} | {r['input'][0]} | {r['layers']} | {r['layers'] - r['derived']} / {r['derived']} | "
            f"{status} | {r['cold_s']:.1f} | {r['compile_s']:.1f} | {r['warm_s']:.1f} | {r['layers_per_s']:.1f} | "
            f"{size} | {r['rss_gib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one model, print JSON
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, MODELS[args.one])), flush=True)
        return 0
    from benchmarks.run import header_line, machine

    results = []
    for name in args.models:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", name], capture_output=True, text=True, check=False
        )
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        row = json.loads(found[-1][7:]) if found else {"model": name, "error": proc.stderr.strip()[-300:]}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "deepest"}), flush=True)
    m = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layer_sweep.json").write_text(json.dumps({"machine": m, "rows": results}, indent=1))
    text = markdown(results, header_line(m))
    (args.out / "layer_sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
