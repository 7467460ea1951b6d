"""Where the time of ``rfjax.gradient_maps`` goes on the README network, and what a
memory budget costs.

Run: ``python benchmarks/where_time_goes.py [--repeats 5] [--json out.json]``

Prints, for all 256 cells of the README network (96x96x3, constant weights):

* the passes of each phase (probe, packed grid lines, packed cells) and their steady
  time, the host-side cutting of packed gradients, and the dense one-pass-per-cell
  program for comparison;
* the input-gradient time of each layer for a batch of 81 cotangents (where XLA
  spends the backward pass);
* peak memory of the compiled program (XLA's memory analysis) and steady time with
  and without a memory budget of a quarter of the unchunked program.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rfjax
from benchmarks.rfjax_ways import README_INPUT, readme_net, readme_params
from rfjax import engine


def steady(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def phases(repeats: int) -> dict:
    params = readme_params()
    x = np.ones((1,) + README_INPUT, np.float32)
    calls: list[int] = []
    original = engine._run_slots

    def counting(*args, **kwargs):
        calls.append(int(args[3][0].shape[0]))
        return original(*args, **kwargs)

    engine._run_slots = counting
    try:
        rfjax.gradient_maps(readme_net, x, params=params)
    finally:
        engine._run_slots = original
    _, _, shapes = engine.output_shapes(readme_net, x, params)
    chans = [np.ones((shapes[0][3],), np.float32)]
    out = {"passes_per_call": calls}
    for n in sorted(set(calls)):
        masks = [np.zeros((n,) + shapes[0][1:3] + (1,), np.float32)]
        out[f"call_{n}_slots_s"] = steady(
            lambda m=masks: engine._run_slots(
                readme_net, params, x, m, chans, input_channels="abs_sum", chunk=None, n_devices=1
            ),
            repeats,
        )
    out["gradient_maps_packed_s"] = steady(lambda: rfjax.gradient_maps(readme_net, x, params=params), repeats)
    out["gradient_maps_dense_s"] = steady(
        lambda: rfjax.gradient_maps(readme_net, x, params=params, strategy="dense"), repeats
    )
    out["host_cut_s"] = out["gradient_maps_packed_s"] - sum(out[f"call_{n}_slots_s"] for n in calls)
    out["receptive_field_s"] = steady(
        lambda: rfjax.receptive_field(readme_net, README_INPUT, params=params), repeats
    )
    return out


def layers(repeats: int, batch: int = 81) -> dict:
    dn = ("NHWC", "HWIO", "NHWC")
    out = {}
    for name, (s, cin, cout, k) in {
        "conv1 5x5 3->32 @96": (96, 3, 32, 5),
        "conv2 3x3 32->32 @92": (92, 32, 32, 3),
        "conv3 3x3 32->64 @45": (45, 32, 64, 3),
        "conv4 3x3 64->64 @43": (43, 64, 64, 3),
        "conv5 3x3 64->128 @20": (20, 64, 128, 3),
        "conv6 3x3 128->128 @18": (18, 128, 128, 3),
    }.items():
        w = jnp.full((k, k, cin, cout), 1.0 / (cin * k), jnp.float32)
        x1 = jnp.ones((1, s, s, cin), jnp.float32)
        ct = jnp.ones((batch, s - k + 1, s - k + 1, cout), jnp.float32)

        def bwd(ct, w=w, x1=x1):
            _, vjp = jax.vjp(
                lambda x: lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn), x1
            )
            return jax.vmap(lambda c: vjp(c[None])[0][0])(ct)

        f = jax.jit(bwd)
        out[name] = steady(lambda f=f, ct=ct: f(ct).block_until_ready(), repeats)
    return out


def memory(repeats: int) -> dict:
    params = readme_params()
    x = np.ones((1,) + README_INPUT, np.float32)
    xb = engine.as_batch(x)
    shapes = [(1, 16, 16, 128)]
    full = engine.memory_per_chunk(readme_net, params, xb, shapes, 81)
    budget = full // 4
    chunk = engine.chunk_for_budget(readme_net, params, xb, shapes, budget, "abs_sum")
    return {
        "program_bytes_81_slots": full,
        "budget_bytes": budget,
        "chunk_slots": chunk,
        "program_bytes_chunk": engine.memory_per_chunk(readme_net, params, xb, shapes, chunk),
        "unchunked_s": steady(lambda: rfjax.gradient_maps(readme_net, x, params=params), repeats),
        "chunked_s": steady(
            lambda: rfjax.gradient_maps(readme_net, x, params=params, max_memory=budget), repeats
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    res = {
        "phases": phases(args.repeats),
        "layers_81_cotangents": layers(args.repeats),
        "memory": memory(args.repeats),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
