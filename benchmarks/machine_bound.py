"""The machine's measured bound: sustained GFLOP/s of XLA:CPU's and TensorFlow's (oneDNN)
3x3 convolutions on VGG16's layer shapes, in the same run.

Run: ``python benchmarks/machine_bound.py [--repeats 3] [--batch 49] [--json out.json]``
and, to compare XLA:CPU flags, ``--xla-flags "--xla_cpu_use_onednn=true"`` (the XLA
half then runs in a child process with those flags; the TF half in this one).

For every convolution of VGG16 at 224x224 (13 layers, 3x3, stride 1, 'same') it times

* ``forward``: the convolution of one image, ``(1, H, W, Cin) -> (1, H, W, Cout)``;
* ``input_grad``: the input gradient of a batch of ``--batch`` cotangents
  ``(B, H, W, Cout) -> (B, H, W, Cin)``, the convolution that dominates
  ``rfjax.gradient_maps`` (one cotangent per output cell). XLA: ``jax.vmap`` over the
  VJP of ``lax.conv_general_dilated`` with a batch-of-one residual, the form rfjax
  runs; TF: ``tf.raw_ops.Conv2DBackpropInput`` in a ``tf.function``, the kernel
  ``tape.jacobian`` runs.

FLOPs are counted from the shapes alone: ``2 * B * H * W * Cin * Cout * 9`` per call.
The table gives each way's median time and GFLOP/s per layer and over the network
(total FLOPs / total time), and XLA's efficiency relative to oneDNN's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# (H=W, Cin, Cout) of VGG16's 13 convolutions at 224x224.
VGG16_CONVS: tuple[tuple[int, int, int], ...] = (
    (224, 3, 64),
    (224, 64, 64),
    (112, 64, 128),
    (112, 128, 128),
    (56, 128, 256),
    (56, 256, 256),
    (56, 256, 256),
    (28, 256, 512),
    (28, 512, 512),
    (28, 512, 512),
    (14, 512, 512),
    (14, 512, 512),
    (14, 512, 512),
)
KINDS = ("forward", "input_grad")


def flops(kind: str, hw: int, cin: int, cout: int, batch: int) -> float:
    """Multiply-adds x 2 of one call, from the shapes (3x3 kernel, 'same', stride 1)."""
    b = 1 if kind == "forward" else batch
    return 2.0 * b * hw * hw * cin * cout * 9


def _median_time(call: Any, repeats: int) -> float:
    call()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_xla(repeats: int, batch: int) -> dict[str, list[float]]:
    """Median seconds per layer of XLA:CPU's convolutions, ``{kind: [s per layer]}``."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

    fwd = jax.jit(conv)

    @jax.jit
    def input_grad(x, w, dy):
        _, vjp = jax.vjp(lambda x: conv(x, w), x)
        return jax.vmap(lambda d: vjp(d)[0])(dy)

    out: dict[str, list[float]] = {k: [] for k in KINDS}
    rng = np.random.default_rng(0)
    for hw, cin, cout in VGG16_CONVS:
        x = jnp.asarray(rng.standard_normal((1, hw, hw, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32))
        dy = jnp.asarray(rng.standard_normal((batch, 1, hw, hw, cout), np.float32))
        out["forward"].append(_median_time(lambda x=x, w=w: fwd(x, w).block_until_ready(), repeats))
        out["input_grad"].append(
            _median_time(lambda x=x, w=w, dy=dy: input_grad(x, w, dy).block_until_ready(), repeats)
        )
    return out


def time_tf(repeats: int, batch: int) -> dict[str, list[float]]:
    """Median seconds per layer of TensorFlow's (oneDNN) convolutions."""
    import tensorflow as tf

    fwd = tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"), reduce_retracing=True)

    @tf.function(reduce_retracing=True)
    def input_grad(w, dy):
        shape = tf.concat([tf.shape(dy)[:3], tf.shape(w)[2:3]], 0)
        return tf.raw_ops.Conv2DBackpropInput(
            input_sizes=shape, filter=w, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
        )

    out: dict[str, list[float]] = {k: [] for k in KINDS}
    rng = np.random.default_rng(0)
    for hw, cin, cout in VGG16_CONVS:
        x = tf.constant(rng.standard_normal((1, hw, hw, cin), np.float32))
        w = tf.constant(rng.standard_normal((3, 3, cin, cout), np.float32))
        dy = tf.constant(rng.standard_normal((batch, hw, hw, cout), np.float32))
        out["forward"].append(_median_time(lambda x=x, w=w: fwd(x, w).numpy(), repeats))
        out["input_grad"].append(_median_time(lambda w=w, dy=dy: input_grad(w, dy).numpy(), repeats))
    return out


def _xla_in_child(flags: str, repeats: int, batch: int) -> dict[str, list[float]]:
    env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=str(ROOT))
    code = (
        "import json; from benchmarks.machine_bound import time_xla; "
        f"print('XLA-RESULT', json.dumps(time_xla({repeats}, {batch})))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("XLA-RESULT "))
    return json.loads(line.split(" ", 1)[1])


def summarise(times: dict[str, dict[str, list[float]]], batch: int) -> dict[str, Any]:
    """Per kind and way: total seconds and GFLOP/s; XLA's efficiency relative to TF."""
    rows: dict[str, Any] = {}
    for kind in KINDS:
        total_flops = sum(flops(kind, *s, batch) for s in VGG16_CONVS)
        row = {}
        for way, per in times.items():
            secs = sum(per[kind])
            row[way] = {"s": secs, "gflops": total_flops / secs / 1e9}
        row["xla_vs_tf"] = row["xla"]["gflops"] / row["tf"]["gflops"]
        row["gflop"] = total_flops / 1e9
        rows[kind] = row
    return rows


def table(times: dict[str, dict[str, list[float]]], batch: int) -> str:
    lines = [
        "| layer (HxW, Cin->Cout) | kind | XLA s | XLA GFLOP/s | TF s | TF GFLOP/s | XLA/TF |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        for i, s in enumerate(VGG16_CONVS):
            f = flops(kind, *s, batch)
            xs, ts = times["xla"][kind][i], times["tf"][kind][i]
            lines.append(
                f"| {s[0]}x{s[0]}, {s[1]}->{s[2]} | {kind} | {xs:.4f} | {f / xs / 1e9:.0f} | "
                f"{ts:.4f} | {f / ts / 1e9:.0f} | {ts / xs:.2f} |"
            )
    for kind, row in summarise(times, batch).items():
        lines.append(
            f"| all 13 ({row['gflop']:.0f} GFLOP) | {kind} | {row['xla']['s']:.3f} | {row['xla']['gflops']:.0f} | "
            f"{row['tf']['s']:.3f} | {row['tf']['gflops']:.0f} | {row['xla_vs_tf']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--batch", type=int, default=49, help="cotangents per input-gradient call (VGG16: 49 cells)"
    )
    ap.add_argument("--xla-flags", default=None, help="XLA_FLAGS for the XLA half (run in a child process)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.xla_flags is None:
        xla = time_xla(args.repeats, args.batch)
    else:
        xla = _xla_in_child(args.xla_flags, args.repeats, args.batch)
    times = {"xla": xla, "tf": time_tf(args.repeats, args.batch)}
    print(f"load: {os.getloadavg()}, XLA_FLAGS={args.xla_flags or os.environ.get('XLA_FLAGS', '')!r}")
    print(table(times, args.batch))
    if args.json:
        summary = summarise(times, args.batch)
        args.json.write_text(json.dumps({"batch": args.batch, "times": times, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
