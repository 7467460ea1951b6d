"""The zoo sweep: the final-feature RF of every keras.applications model, in one fresh process.

    .venv/bin/python benchmarks/zoo.py                      # all models, table to stdout
    .venv/bin/python benchmarks/zoo.py --readme docs/benchmarks.md   # and into the bench:zoo block

Per model it times what a sweep pays: building the Keras model (``weights=None``, no
top, dynamic input), converting it (:func:`converters.from_keras`), preparing it (the
one-channel RF copy and the closed-form bound that picks the input size) and measuring
the RF of the last layer (``rfjax.receptive_field(grow=True)``: compilation included).
Published values (Araujo et al., Distill 2019) are checked where they exist. Writes
``benchmarks/results/zoo.json`` and ``zoo.md``; the machine line says where it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.run import header_line, machine, replace_in_readme

ZOO = (
    "VGG16", "VGG19", "ResNet50", "ResNet50V2", "ResNet101", "InceptionV3", "InceptionResNetV2", "Xception",
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "DenseNet121", "NASNetMobile",
    "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny",
)  # fmt: skip
# Distill 2019 (TF-slim nets); ResNet50's padding there is TF-slim's (239), so only size and stride.
PUBLISHED = {
    "VGG16": (212, 32, 90),
    "MobileNet": (315, 32, 126),
    "InceptionV3": (1311, 32, 618),
    "InceptionResNetV2": (3039, 32, 1482),
    "ResNet50": (483, 32, None),
}
START = (224, 224, 3)


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(name: str) -> dict:
    import keras

    import converters
    import rfjax

    row: dict = {"model": name}
    t0 = time.perf_counter()
    kw = {"include_preprocessing": False} if name.startswith(("MobileNetV3", "EfficientNetV2")) else {}
    # NASNet decides its graph from static shapes at build time, so it is built at the start size
    shape = START if name.startswith("NASNet") else (None, None, 3)
    model = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=shape, **kw)
    t1 = time.perf_counter()
    converted = converters.from_keras(model, input_shape=START)
    t2 = time.perf_counter()
    layer = converted.output_names[0]
    converted.prepared(one_channel=True)
    bound = converted.rf_bound(layer)
    t3 = time.perf_counter()
    rf = rfjax.receptive_field(converted, layer=layer, input_shape=START, grow=True)
    t4 = time.perf_counter()
    row.update(
        layer=layer,
        build_s=t1 - t0,
        convert_s=t2 - t1,
        prepare_s=t3 - t2,
        rf_s=t4 - t3,
        size=rf.size.h,
        stride=rf.stride.h,
        padding=rf.padding.h,
        input=(rf.measured_shape or rf.input_shape).h,
        global_=rf.global_,
        bound=None if bound is None else bound.size.h,
        rss_gib=_rss_gib(),
    )
    want = PUBLISHED.get(name)
    if want is not None:
        got = (rf.size.h, rf.stride.h, rf.padding.h)
        row["published"] = all(w is None or g == w for g, w in zip(got, want))
    return row


def markdown(rows: list[dict], m: dict, wall: float) -> str:
    lines = [
        (
            "**Zoo sweep**: the last layer's RF of every `keras.applications` model, one fresh process, "
            f"starting at {START[0]}x{START[1]} with `grow=True`."
        ),
        "",
        header_line(m),
        "",
        (
            "| model | layer | RF size | stride | eff. padding | input used | published | build s | convert s | "
            "prepare s | RF s (compile + run) |"
        ),
        "|---|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error'][:80]} | | | | | | | | | |")
            continue
        pub = {True: "yes", False: "**no**", None: ""}[r.get("published")]
        glob = " (global)" if r["global_"] else ""
        lines.append(
            f"| {r['model']} | `{r['layer']}` | {r['size']:g}{glob} | {r['stride']:g} | {r['padding']:g} | "
            f"{r['input']} | {pub} | {r['build_s']:.2f} | {r['convert_s']:.2f} | {r['prepare_s']:.2f} | {r['rf_s']:.2f} |"
        )
    ok = [r for r in rows if "error" not in r]
    per_model = sum(r["convert_s"] + r["prepare_s"] + r["rf_s"] for r in ok)
    lines += [
        "",
        (
            f"{len(ok)} of {len(rows)} models in {wall:.0f} s wall ({60 * len(ok) / wall:.1f} architectures per "
            f"minute, Keras model building included); conversion + preparation + RF alone {per_model:.0f} s. "
            f"Peak RSS {max((r['rss_gib'] for r in ok), default=0):.1f} GiB. "
            "'(global)': squeeze-and-excitation or other global branches; the size is the local path's."
        ),
    ]
    return "\n".join(lines) + "\n"


def run_sweep(models: list[str], processes: int, workdir: Path) -> dict:
    """The same zoo through the library's own sweep command, timed from outside (a fresh
    interpreter: imports, Keras building, conversion, compilation, RF), with
    ``processes`` workers of one ``jax.distributed`` job (``rfjax sweep --processes``).
    Work goes to the workers round-robin in the given order (heaviest first balances it)."""
    import resource as res

    from rfjax.arch_sweep import read_rows

    spec = workdir / "zoo_spec.json"
    out = workdir / f"zoo_sweep_p{processes}.jsonl"
    for f in [out, *out.parent.glob(out.name + ".p*")]:
        f.unlink(missing_ok=True)
    spec.write_text(json.dumps({"architectures": [{"name": n, "grow": True} for n in models]}))
    cmd = [sys.executable, "-m", "rfjax.cli", "sweep", str(spec), "--out", str(out), "--quiet"]
    cmd += ["--processes", str(processes)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    rows = [r for r in read_rows(out) if r.get("status") == "ok"]
    wrong = []
    for r in rows:
        want = PUBLISHED.get(r["arch"])
        got = (r["size_h"], r["stride_h"], r["padding_h"])
        if want is not None and not all(w is None or g == w for g, w in zip(got, want)):
            wrong.append(f"{r['arch']} {got} != {want}")
    return {
        "processes": processes,
        "wall_s": wall,
        "returncode": proc.returncode,
        "models": len(models),
        "ok": len({r["arch"] for r in rows}),
        "published_checked": sum(r["arch"] in PUBLISHED for r in rows),
        "wrong": wrong,
        "peak_rss_gib_per_worker": res.getrusage(res.RUSAGE_CHILDREN).ru_maxrss / 2**20,
        "rows": rows,
        "stderr_tail": proc.stderr[-2000:] if proc.returncode else "",
    }


def sweep_markdown(runs: list[dict]) -> str:
    lines = [
        "",
        (
            "The same zoo through `rfjax sweep SPEC --processes N` (a fresh interpreter timed from outside: "
            "imports, Keras building, conversion, compilation and RF included; `grow: true` per entry):"
        ),
        "",
        "| workers | wall s | architectures per minute | all exact | published values | peak RSS per worker GiB |",
        "|---:|---:|---:|:-:|:-:|---:|",
    ]
    for r in runs:
        exact = "yes" if r["ok"] == r["models"] and not r["wrong"] else f"**no** ({r['ok']}/{r['models']})"
        pub = "all equal" if not r["wrong"] else "**" + "; ".join(r["wrong"]) + "**"
        lines.append(
            f"| {r['processes']} | {r['wall_s']:.0f} | {60 * r['ok'] / r['wall_s']:.1f} | {exact} | "
            f"{pub} ({r['published_checked']} checked) | {r['peak_rss_gib_per_worker']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    ap.add_argument("--readme", type=Path, help="update the bench:zoo block of this Markdown file")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument(
        "--sweep-processes",
        type=int,
        nargs="*",
        default=[1, 2],
        metavar="N",
        help="also run the zoo through `rfjax sweep --processes N` for each N (default: 1 2; none: skip)",
    )
    args = ap.parse_args(argv)
    m = machine()
    print(header_line(m), flush=True)
    rows, t0 = [], time.perf_counter()
    for name in args.models:
        try:
            row = measure(name)
        except Exception as e:  # noqa: BLE001 - one model's failure is recorded, the sweep goes on
            row = {"model": name, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    wall = time.perf_counter() - t0
    md = markdown(rows, m, wall)
    # heaviest first, so round-robin shares between workers come out even
    cost = {
        r["model"]: sum(r.get(k, 0.0) for k in ("build_s", "convert_s", "prepare_s", "rf_s")) for r in rows
    }
    order = sorted(args.models, key=lambda n: -cost.get(n, 0.0))
    runs = []
    for n in args.sweep_processes:
        runs.append(run_sweep(order, n, args.out))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "rows"}), flush=True)
    if runs:
        md += sweep_markdown(runs)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo.json").write_text(
        json.dumps({"machine": m, "wall_s": wall, "rows": rows, "sweeps": runs}, indent=1) + "\n"
    )
    (args.out / "zoo.md").write_text(md)
    if args.readme is not None and not replace_in_readme(args.readme, "zoo", md):
        return 1
    sweeps_ok = all(r["returncode"] == 0 and r["ok"] == r["models"] and not r["wrong"] for r in runs)
    return 0 if sweeps_ok and all("error" not in r and r.get("published", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
