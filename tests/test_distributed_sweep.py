"""Architecture sweeps as several processes of one jax.distributed job (on this machine)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest
from jax import lax

from rfjax.analytic import Layer, analytic_rf
from rfjax.arch_sweep import Arch, read_rows, shard_path, sweep
from rfjax.cli import main

keras = pytest.importorskip("keras")
layers = keras.layers

# name -> (Keras layers, measured layer -> its analytic chain, input sizes)
NETS = {
    "valid": (
        lambda: [layers.Conv2D(2, 3, name="c1"), layers.Conv2D(2, 3, name="c2")],
        {"c1": [Layer.conv(3)], "c2": [Layer.conv(3), Layer.conv(3)]},
        [[16, 16, 1], [17, 15, 1]],
    ),
    "strided_same": (
        lambda: [
            layers.Conv2D(2, 5, strides=2, padding="same", name="c1"),
            layers.AveragePooling2D(2, name="p1"),
        ],
        {"p1": [Layer.conv(5, 2, padding="same"), Layer.pool(2)]},
        [[20, 20, 1]],
    ),
    "dilated": (
        lambda: [
            layers.Conv2D(2, 3, dilation_rate=2, name="c1"),
            layers.Conv2D(2, 3, padding="same", name="c2"),
        ],
        {"c2": [Layer.conv(3, dilation=2), Layer.conv(3, padding="same")]},
        [[18, 18, 1]],
    ),
    "maxpool": (
        lambda: [
            layers.Conv2D(2, 3, strides=2, name="c1"),
            layers.Conv2D(2, 3, name="c2"),
            layers.MaxPooling2D(2, name="p1"),
        ],
        {"p1": [Layer.conv(3, 2), Layer.conv(3), Layer.pool(2, kind="max_pool")]},
        [[24, 24, 1]],
    ),
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """Four tiny Keras conv nets (random weights) saved as .keras files, and a spec naming them."""
    folder = tmp_path_factory.mktemp("nets")
    entries = []
    for name, (build, chains, sizes) in NETS.items():
        path = folder / f"{name}.keras"
        keras.Sequential([keras.Input((None, None, 1)), *build()]).save(path)
        entries.append({"name": str(path), "layers": list(chains), "input_sizes": sizes})
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"architectures": entries}))
    return spec


def expected_rows(spec_path) -> dict:
    """(arch, layer, input) -> the closed-form RF of that layer's chain."""
    out = {}
    for entry in json.loads(spec_path.read_text())["architectures"]:
        chains = NETS[os.path.basename(entry["name"]).removesuffix(".keras")][1]
        for layer, chain in chains.items():
            for size in entry["input_sizes"]:
                out[(entry["name"], layer, tuple(size))] = analytic_rf(chain, size)
    return out


FIELDS = ("size", "stride", "offset", "padding")


def measured(row: dict) -> list:
    return [(row[f"{f}_h"], row[f"{f}_w"]) for f in FIELDS]


def analytic(rf) -> list:
    return [tuple(getattr(rf, f)) for f in FIELDS]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "rfjax.cli", *args]
    return subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_share_the_work_and_merge_each_row_once(spec, tmp_path):
    out = tmp_path / "sweep.jsonl"
    done = run_cli("sweep", str(spec), "--out", str(out), "--processes", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "7 rows measured, 0 architectures failed" in done.stdout
    rows = read_rows(out)
    keys = [(r["arch"], r["layer"], tuple(r["input"])) for r in rows]
    want = expected_rows(spec)
    assert sorted(keys) == sorted(want)  # every (arch, layer, size) exactly once
    assert {r["process"] for r in rows} == {0, 1}  # both processes did work
    assert not list(tmp_path.glob("sweep.jsonl.p*"))  # shards merged into the one file
    for r, key in zip(rows, keys):
        assert r["status"] == "ok" and measured(r) == analytic(want[key]), key

    before = out.read_bytes()
    plot = tmp_path / "depth.png"
    again = run_cli("sweep", str(spec), "--out", str(out), "--processes", "2", "--quiet", "--plot", str(plot))
    assert again.returncode == 0, again.stderr[-2000:]
    assert out.read_bytes() == before  # resumed: nothing new measured, nothing duplicated
    assert f"plot: {plot}" in again.stdout and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DN = ("NHWC", "HWIO", "NHWC")


def valid_convs(k: int, calls: list):
    """build(input_shape) -> a dict-valued JAX function: two k x k valid convs."""

    def build(shape):
        calls.append((k, shape))

        def fn(x):
            a = lax.conv_general_dilated(
                x, jnp.ones((k, k, x.shape[-1], 2)), (1, 1), "VALID", dimension_numbers=DN
            )
            b = lax.conv_general_dilated(a, jnp.ones((k, k, 2, 2)), (1, 1), "VALID", dimension_numbers=DN)
            return {"a": a, "b": b}

        return fn

    return build


def test_a_crashed_process_shard_is_resumed_and_merged(tmp_path):
    calls: list = []
    archs = [
        Arch("k3", ("a", "b"), ((20, 20, 1), (21, 19, 1)), valid_convs(3, calls)),
        Arch("k5", ("a", "b"), ((24, 24, 1),), valid_convs(5, calls)),
    ]
    out = tmp_path / "s.jsonl"
    # process 1 of 2 finishes its share (unit 1 of k3, 21x19) and its job dies before the merge
    sweep(archs, out, progress=False, process_index=1, process_count=2)
    assert calls == [(3, (21, 19, 1))] and shard_path(out, 1).exists() and not out.exists()
    with open(shard_path(out, 1), "ab") as f:
        f.write(b'{"key": "k5|a|24x24x1", "sta')  # a write torn by the crash
    calls.clear()
    rows = sweep(archs, out, progress=False)  # one process resumes the whole sweep
    assert calls == [(3, (20, 20, 1)), (5, (24, 24, 1))]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 6 and not shard_path(out, 1).exists()
    assert {r["process"] for r in rows if r["input"] == [21, 19, 1]} == {1}
    for r in rows:
        chain = [Layer.conv(3 if r["arch"] == "k3" else 5)] * (1 if r["layer"] == "a" else 2)
        assert measured(r) == analytic(analytic_rf(chain, r["input"])), r["key"]
    assert read_rows(out) == rows and len(out.read_text().splitlines()) == 1 + 6


def test_rerun_without_named_layers_adds_nothing(spec, tmp_path):
    """Layers left out: a model's outputs (or a function's dict keys) are known only once it
    is built, so a re-run must neither record a failure nor append a row twice."""
    calls: list = []
    archs = [
        Arch(str(spec.parent / "valid.keras"), None, ((16, 16, 1),)),
        Arch("k3", None, ((20, 20, 1),), valid_convs(3, calls)),
    ]
    out = tmp_path / "s.jsonl"
    first = sweep(archs, out, progress=False)
    assert [(r["layer"], r["status"]) for r in first] == [("c2", "ok"), ("a", "ok"), ("b", "ok")]
    before = out.read_bytes()
    assert sweep(archs, out, progress=False) == first and out.read_bytes() == before


def test_bad_process_flags_are_one_sentence_with_exit_code_2(spec, tmp_path, capsys):
    out = str(tmp_path / "s.jsonl")
    bad = [
        (["--processes", "0"], "--processes 0 must be at least 1"),
        (["--coordinator", "localhost:1234"], "go together"),
        (["--processes", "2", "--process-id", "0"], "leave out --coordinator"),
        (
            ["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
            "must look like host:port",
        ),
        (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"], "between 0 and 1"),
    ]
    for flags, message in bad:
        assert main(["sweep", str(spec), "--out", out, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rfjax: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(out)
