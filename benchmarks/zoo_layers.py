"""The zoo layer sweep: every spatial layer of all 17 keras.applications models, one fresh process.

    .venv/bin/python benchmarks/zoo_layers.py                            # all 17 models
    .venv/bin/python benchmarks/zoo_layers.py --models VGG16 MobileNet   # some of them
    .venv/bin/python benchmarks/zoo_layers.py --readme docs/benchmarks.md  # and the bench:zoo_layers block

What it runs. It writes the spec ``benchmarks/results/zoo_layers_spec.json`` (the models
and 224x224x3 input of :mod:`benchmarks.zoo`'s spec, each ``"grow": true, "layers": "all"``)
and runs ONE fresh child process ``python -m rfjax.cli sweep SPEC --out
benchmarks/results/zoo_layers.jsonl --quiet`` (an old out file is deleted first unless
``--resume``; a resumed run's wall time covers only what was left). Timed from outside:
interpreter start, imports, Keras building (``weights=None``, no top), conversion,
compilation and measurement. Peak RSS is the child's ``ru_maxrss``
(``getrusage(RUSAGE_CHILDREN)`` after it ends; the parent starts no other child).

How to read it. One table row per model: the spatial layers swept (rows of the sweep),
their status (``ok``: size/stride/padding measured; ``global``: every cell sees the whole
input; ``larger``: the RF reaches past ``--max-input``, so only a lower bound is known;
``error``), then the exactness check of the ``ok`` rows, then the seconds the model took
inside the sweep (its first row's unit start to its last row, from the rows' ``seconds``
field; the next model's Keras build runs ahead on a thread during it, so builds are
mostly hidden and the per-model seconds add up to less than the wall time).

The exactness check (in this parent process, after the sweep, not timed). Each model
is built and converted again as the sweep builds it (``converters.from_keras``,
``weights=None``, like :func:`rfjax.arch_sweep.keras_application`), and each ``ok`` row
(matched to its layer by position, the row's ``depth``: auto-numbered Keras names
differ between processes) is compared with two closed forms computed from the layer
configs, never from a measurement:

* **exact closed form** (:func:`closed_form`, written here): Araujo et al.'s arithmetic
  carried as an interval per axis. Cell ``i`` of a layer sees input pixels
  ``[i*J + lo, i*J + hi)``; a window (convolution, pooling; kernel ``k``, stride ``s``,
  dilation ``d``, 'same' padding split as TF/XLA split it for this input size) maps
  ``(J, lo, hi)`` to ``(s*J, lo - p*J, hi + ((k-1)*d - p)*J)``, zero-padding and
  cropping shift the interval, per-pixel layers keep it, and a merge (Add, Concatenate,
  Multiply, ...) takes the hull of its local inputs (global branches such as
  squeeze-and-excitation are left out, as the sweep measures the local path). So RF size
  ``hi - lo``, stride ``J`` and effective padding ``-lo``. It **applies** to a row whose
  every ancestor has a geometry it knows (all layers of the 17 models) and whose merges
  join inputs of one stride; it is exact for branched graphs too, paths centred alike or
  not. A row is **exact** when its size, stride and padding (both axes) equal it; any
  other row is a failure and is printed.
* **rf_bound** (:meth:`rfjax.contract.ConvertedModel.rf_bound`, converters/_geometry.py:
  a merge takes the largest size and stride of its inputs, which is the union's size
  only when the paths are centred alike). Rows are counted as equal to / below / above
  it. On a row with no merge of two local paths among its ancestors (a chain), the
  bound is exact, so a different size or stride is a failure. Above the bound on a
  branched row means paths centred differently (the hull is wider than the widest
  path): not a failure when the exact closed form agrees.

Writes ``benchmarks/results/zoo_layers.json`` and ``zoo_layers.md``; ``--readme FILE``
replaces the ``<!-- bench:zoo_layers:start/end -->`` block of FILE. Exit status 1 when
the sweep failed, a model failed, or any checked row is not exact.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.run import header_line, machine, replace_in_readme
from benchmarks.zoo import START, ZOO

#: The issue's targets for the whole zoo (all 17 models).
TARGET_WALL_S = 300.0
TARGET_RSS_GIB = 8.0

# ---------------------------------------------------------------- the exact closed form

_WINDOWS = {  # class -> (kernel key, strides key, dilation key or None)
    "Conv2D": ("kernel_size", "strides", "dilation_rate"),
    "DepthwiseConv2D": ("kernel_size", "strides", "dilation_rate"),
    "SeparableConv2D": ("kernel_size", "strides", "dilation_rate"),
    "MaxPooling2D": ("pool_size", "strides", None),
    "AveragePooling2D": ("pool_size", "strides", None),
}
_PER_PIXEL = {
    "BatchNormalization", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout",
    "LayerNormalization", "LayerScale", "Normalization", "Rescaling", "Dense", "Identity",
}  # fmt: skip
_MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "CustomScaleLayer"}
_GLOBAL_POOLS = {"GlobalAveragePooling2D", "GlobalMaxPooling2D"}
GLOBAL = "global"  # a node that sees the input through global pooling only


def _pair(v: Any, default: int | None = None) -> tuple[int, int]:
    if v is None:
        if default is None:
            raise ValueError("missing")
        return (default, default)
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _edges(v: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras padding/cropping: int, (h, w) or ((top, bottom), (left, right))."""
    if isinstance(v, int):
        return ((v, v), (v, v))
    h, w = v
    return (_pair(h), _pair(w))


def _history(obj: Any) -> list[str]:
    """The layer names feeding one inbound node of a Keras functional config."""
    found: list[str] = []
    if isinstance(obj, dict):
        hist = (
            obj.get("config", {}).get("keras_history")
            if obj.get("class_name") == "__keras_tensor__"
            else None
        )
        if hist is not None:
            return [hist[0]]
        for v in obj.values():
            found += _history(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found += _history(v)
    return found


# a node's state per axis: (n cells, J stride, lo, hi); the node carries (h axis, w axis, merged)
Axis = tuple[int, int, int, int]


def _window(axis: Axis, k: int, s: int, d: int, padding: str) -> Axis:
    n, j, lo, hi = axis
    keff = (k - 1) * d + 1
    if padding == "valid":
        out, before = (n - keff) // s + 1, 0
    elif padding == "same":
        out = math.ceil(n / s)
        before = max((out - 1) * s + keff - n, 0) // 2
    else:
        raise ValueError(f"padding {padding!r}")
    return (out, j * s, lo - before * j, hi + (keff - 1 - before) * j)


def _apply(cls: str, cfg: dict, ins: list[Any]) -> Any:
    """One layer's output state from its inputs' (``None``: unknown geometry)."""
    if cls in _GLOBAL_POOLS:
        return GLOBAL
    local = [b for b in ins if b is not GLOBAL]
    if not local:
        return GLOBAL
    if any(b is None for b in local) or cfg.get("data_format", "channels_last") != "channels_last":
        return None
    if cls in _MERGES:
        h, w = [b[0] for b in local], [b[1] for b in local]
        if len({(a[0], a[1]) for a in h}) > 1 or len({(a[0], a[1]) for a in w}) > 1:
            return None  # inputs of different sizes or strides
        hull = tuple((a[0][0], a[0][1], min(x[2] for x in a), max(x[3] for x in a)) for a in (h, w))
        return (*hull, len(local) > 1 or any(b[2] for b in local))
    if len(local) != 1:
        return None
    (h, w, merged) = local[0]
    if cls in _PER_PIXEL:
        return local[0]
    if cls in _WINDOWS:
        kk, sk, dk = _WINDOWS[cls]
        k = _pair(cfg[kk])
        s = _pair(cfg.get(sk), None) if cfg.get(sk) is not None else k
        d = _pair(cfg.get(dk), 1) if dk else (1, 1)
        pad = str(cfg.get("padding", "valid")).lower()
        return (_window(h, k[0], s[0], d[0], pad), _window(w, k[1], s[1], d[1], pad), merged)
    if cls == "ZeroPadding2D":
        (t, b), (left, r) = _edges(cfg["padding"])
        return (
            (h[0] + t + b, h[1], h[2] - t * h[1], h[3] - t * h[1]),
            (w[0] + left + r, w[1], w[2] - left * w[1], w[3] - left * w[1]),
            merged,
        )
    if cls == "Cropping2D":
        (t, b), (left, r) = _edges(cfg["cropping"])
        return (
            (h[0] - t - b, h[1], h[2] + t * h[1], h[3] + t * h[1]),
            (w[0] - left - r, w[1], w[2] + left * w[1], w[3] + left * w[1]),
            merged,
        )
    return None  # Reshape on a local path, up-sampling, transposed convolutions, ...


def closed_form(config: dict, input_hw: tuple[int, int]) -> dict[str, Any]:
    """``{layer name: ((n, J, lo, hi) per axis h, w, merged) | "global" | None}`` of a Keras
    functional model's ``get_config()`` for an ``input_hw`` input. Nested ``Sequential``
    layers are walked in order, their layers named ``outer/inner`` (as converters names them)."""
    state: dict[str, Any] = {}
    inputs = config["input_layers"]
    for inp in [inputs] if isinstance(inputs[0], str) else inputs:  # one input: [name, 0, 0]
        state[inp[0]] = ((input_hw[0], 1, 0, 1), (input_hw[1], 1, 0, 1), False)
    for layer in config["layers"]:
        name, cls = layer["name"], layer["class_name"]
        if name in state:
            continue
        ins = [state.get(src) for node in layer["inbound_nodes"] for src in _history(node)]
        if cls == "Sequential":
            cur = ins[0] if len(ins) == 1 else None
            for inner in layer["config"]["layers"]:
                if inner["class_name"] == "InputLayer":
                    continue
                cur = _apply(inner["class_name"], inner["config"], [cur])
                state[f"{name}/{inner['config']['name']}"] = cur
            state[name] = cur
            continue
        state[name] = _apply(cls, layer["config"], ins)
    return state


# ---------------------------------------------------------------- the check


def _build(name: str) -> tuple[Any, Any]:
    """``(keras model, converted)`` built as :func:`rfjax.arch_sweep.keras_application` builds it."""
    import keras

    import converters

    build = getattr(keras.applications, name)
    model = None
    if not name.startswith("NASNet"):  # NASNet decides its graph from static sizes at build time
        try:
            model = build(weights=None, include_top=False, input_shape=(None, None, START[2]))
        except ValueError:
            model = None
    if model is None:
        model = build(weights=None, include_top=False, input_shape=START)
    return model, converters.from_keras(model, input_shape=START)


def _stem(name: str) -> str:
    return re.sub(r"_\d+$", "", name)


def check_model(name: str, rows: list[dict]) -> dict:
    """Compare the ``ok`` rows of one model with the exact closed form and with rf_bound."""
    import keras

    keras.backend.clear_session()
    model, converted = _build(name)
    layers = [n for n in converted.layer_names if n != converted.input_name]
    forms: dict[tuple[int, int], dict] = {}
    out: dict[str, Any] = {
        "checked": 0, "exact": 0, "not_applicable": 0, "bound_equal": 0, "bound_below": 0,
        "bound_above": 0, "bound_none": 0, "chain_rows": 0, "failures": [], "above_bound": [],
    }  # fmt: skip
    for row in rows:
        if row.get("status") != "ok":
            continue
        depth = row.get("depth")
        if not isinstance(depth, int) or depth >= len(layers) or _stem(layers[depth]) != _stem(row["layer"]):
            out["failures"].append(f"{name} {row['layer']}: no layer at depth {depth} of the rebuilt model")
            continue
        layer = layers[depth]
        hw = (int(row["input_shape_h"]), int(row["input_shape_w"]))
        if hw not in forms:
            forms[hw] = closed_form(model.get_config(), hw)
        form = forms[hw].get(layer)
        got = {f"{k}_{a}": row[f"{k}_{a}"] for k in ("size", "stride", "padding") for a in "hw"}
        chain = False
        if form is None or form == GLOBAL:
            out["not_applicable"] += 1
        else:
            (_, jh, loh, hih), (_, jw, low, hiw), merged = form
            want = {"size_h": hih - loh, "size_w": hiw - low, "stride_h": jh, "stride_w": jw}
            want |= {"padding_h": -loh, "padding_w": -low}
            out["checked"] += 1
            chain = not merged
            out["chain_rows"] += chain
            if all(got[k] == v for k, v in want.items()):
                out["exact"] += 1
            else:
                diff = ", ".join(f"{k} {got[k]:g} (closed form {v})" for k, v in want.items() if got[k] != v)
                out["failures"].append(f"{name} {row['layer']}: {diff}")
        bound = converted.rf_bound(layer)
        if bound is None:
            out["bound_none"] += 1
            continue
        size, stride = (got["size_h"], got["size_w"]), (got["stride_h"], got["stride_w"])
        b_size, b_stride = (bound.size.h, bound.size.w), (bound.stride.h, bound.stride.w)
        if size == b_size and stride == b_stride:
            out["bound_equal"] += 1
        elif all(g <= b for g, b in zip(size + stride, b_size + b_stride)):
            out["bound_below"] += 1
        else:
            out["bound_above"] += 1
            out["above_bound"].append(
                f"{name} {row['layer']}: size {size} stride {stride}, bound {b_size} {b_stride}"
            )
        if chain and (size != b_size or stride != b_stride):
            out["failures"].append(f"{name} {row['layer']} (chain): size {size} stride {stride} != rf_bound")
    return out


# ---------------------------------------------------------------- the sweep


def run_sweep(models: list[str], spec: Path, out: Path, resume: bool, max_input: int | None) -> dict:
    """Write the spec, run one fresh ``rfjax sweep`` child, time it from outside."""
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        json.dumps(
            {"architectures": [{"name": n, "grow": True, "layers": "all"} for n in models]}, indent=None
        )
        + "\n"
    )
    if not resume:
        for f in [out, *out.parent.glob(out.name + ".p*")]:
            f.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "rfjax.cli", "sweep", str(spec), "--out", str(out), "--quiet"]
    if max_input is not None:
        cmd += ["--max-input", str(max_input)]
    root = str(HERE.parent)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=root)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": wall,
        "peak_rss_gib": rss,
        "returncode": proc.returncode,
        "resumed": resume,
        "stdout_tail": proc.stdout[-1000:],
        "stderr_tail": proc.stderr[-3000:] if proc.returncode else "",
    }


def summarise(name: str, rows: list[dict]) -> dict:
    status = Counter(r.get("status") for r in rows if r.get("layer") is not None)
    fail = [r for r in rows if r.get("layer") is None]
    secs = [r["seconds"] for r in rows if isinstance(r.get("seconds"), (int, float))]
    return {
        "model": name,
        "layers": sum(status.values()),
        "status": dict(status),
        "global_branch": sum(bool(r.get("global")) for r in rows if r.get("status") == "ok"),
        "model_error": fail[0]["error"] if fail else None,
        "layer_errors": [
            f"{name} {r['layer']}: {r.get('error')}" for r in rows if r.get("status") == "error"
        ],
        "larger": [r["layer"] for r in rows if r.get("status") == "larger"],
        "seconds": max(secs) if secs else None,
        "deepest": max((r["size_h"] for r in rows if r.get("status") == "ok"), default=None),
    }


def markdown(results: list[dict], sweep: dict, m: dict, full: bool) -> str:
    lines = [
        (
            "**Zoo layer sweep**: every spatial layer of every `keras.applications` model, one fresh "
            f'`rfjax sweep` process (`"grow": true, "layers": "all"`, {START[0]}x{START[1]} input).'
        ),
        "",
        header_line(m),
        "",
        (
            "| model | layers | ok | global | larger | error | exact / checked | = rf_bound | < rf_bound | "
            "> rf_bound | deepest RF | s in sweep |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tot: Counter = Counter()
    for r in results:
        if r["model_error"]:
            lines.append(f"| {r['model']} | error: {r['model_error'][:100]} |" + " |" * 10)
            continue
        st, c = r["status"], r["check"]
        exact = f"{c['exact']} / {c['checked']}" + ("" if c["exact"] == c["checked"] else " **!**")
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        deep = "" if r["deepest"] is None else f"{r['deepest']:g}"
        lines.append(
            f"| {r['model']} | {r['layers']} | {st.get('ok', 0)} | {st.get('global', 0)} | {st.get('larger', 0)} | "
            f"{st.get('error', 0)} | {exact} | {c['bound_equal']} | {c['bound_below']} | {c['bound_above']} | "
            f"{deep} | {secs} |"
        )
        tot.update(layers=r["layers"], ok=st.get("ok", 0), checked=c["checked"], exact=c["exact"])
        tot.update(failures=len(c["failures"]), above=c["bound_above"])
    ok_models = sum(not r["model_error"] for r in results)
    wall, rss = sweep["wall_s"], sweep["peak_rss_gib"]
    resumed = " (resumed: the wall time covers only the rows not done before)" if sweep["resumed"] else ""
    lines += [
        "",
        (
            f"{ok_models} of {len(results)} models, {tot['layers']} layer rows ({tot['ok']} ok) in "
            f"**{wall:.0f} s wall**{resumed}, peak RSS **{rss:.1f} GiB** (the child process; "
            "imports, Keras building, conversion, compilation and measurement included). "
            f"Exact against the closed form: **{tot['exact']} of {tot['checked']}** checked rows "
            f"({tot['ok'] - tot['checked']} ok rows outside it: global-only or unknown geometry); "
            f"{tot['failures']} failures."
        ),
    ]
    if full:
        yes = {True: "yes", False: "**no**"}
        lines += [
            "",
            (
                f"Targets: wall under {TARGET_WALL_S:.0f} s {yes[wall < TARGET_WALL_S]}; peak RSS under "
                f"{TARGET_RSS_GIB:g} GiB {yes[rss < TARGET_RSS_GIB]}; every checked row exact "
                f"{yes[tot['failures'] == 0 and ok_models == len(results)]}."
            ),
        ]
    lines += [
        "",
        (
            "'exact / checked': `ok` rows whose size, stride and effective padding (both axes) equal the "
            "interval closed form over the Keras layer configs (hull at merges, global branches left out). "
            "'rf_bound': `ConvertedModel.rf_bound` (largest path at merges); '> rf_bound' rows are branched "
            "layers whose paths are centred differently, where the hull is wider. 's in sweep': from the "
            "model's start to its last row (the next model's build runs ahead, hidden)."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO), metavar="MODEL")
    ap.add_argument("--readme", type=Path, help="update the bench:zoo_layers block of this Markdown file")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    ap.add_argument("--resume", action="store_true", help="keep the old out file and sweep only what is left")
    ap.add_argument("--max-input", type=int, help="passed to rfjax sweep (default: its own)")
    ap.add_argument("--no-check", action="store_true", help="skip the closed-form check")
    args = ap.parse_args(argv)
    models = [n for n in ZOO if n in args.models]  # the zoo's order, each once
    spec, out = args.out / "zoo_layers_spec.json", args.out / "zoo_layers.jsonl"
    sweep = run_sweep(models, spec, out, args.resume, args.max_input)
    print(json.dumps({k: v for k, v in sweep.items() if k != "stdout_tail"}), flush=True)
    m = machine()  # after the sweep: no other child before it, so RUSAGE_CHILDREN is the sweep's

    from rfjax.arch_sweep import read_rows

    rows = read_rows(out) if out.exists() else []
    results = []
    for name in models:
        mine = [r for r in rows if r.get("arch") == name]
        res = summarise(name, mine)
        if not mine:
            res["model_error"] = "no rows (the sweep did not reach it)"
        empty = {"checked": 0, "exact": 0, "bound_equal": 0, "bound_below": 0, "bound_above": 0}
        res["check"] = empty | {"failures": [], "above_bound": []}
        if not args.no_check and not res["model_error"]:
            t0 = time.perf_counter()
            try:
                res["check"] = check_model(name, mine)
            except Exception as e:  # noqa: BLE001 - one model's check failing is reported, the rest go on
                res["check"]["failures"] = [f"{name}: check failed: {type(e).__name__}: {e}"]
            res["check_s"] = time.perf_counter() - t0
        results.append(res)
        c = res["check"]
        print(
            json.dumps({k: v for k, v in res.items() if k not in ("check", "layer_errors", "larger")})
            + f" exact {c['exact']}/{c['checked']}",
            flush=True,
        )
        for line in c["failures"] + c["above_bound"] + res["layer_errors"]:
            print("  " + line, flush=True)
    md = markdown(results, sweep, m, full=set(models) == set(ZOO))
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo_layers.json").write_text(
        json.dumps({"machine": m, "sweep": sweep, "models": results}, indent=1) + "\n"
    )
    (args.out / "zoo_layers.md").write_text(md)
    if args.readme is not None and not replace_in_readme(args.readme, "zoo_layers", md):
        return 1
    bad = sweep["returncode"] != 0 or any(r["model_error"] or r["check"]["failures"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
