"""Architecture sweeps: rows as they finish, resume after a crash, clear errors."""

import errno
import json
import os

import jax.numpy as jnp
import pytest
from jax import lax

from rfjax import RFError
from rfjax.arch_sweep import FORMAT, Arch, load_spec, read_rows, sweep
from rfjax.layer_plot import plot_sweep

DN = ("NHWC", "HWIO", "NHWC")


def stack(k: int):
    """build(input_shape) -> a dict-valued JAX function: two k x k valid convs."""

    def build(shape):
        def fn(x):
            w = jnp.ones((k, k, x.shape[-1], 2), jnp.float32)
            a = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)
            b = lax.conv_general_dilated(a, jnp.ones((k, k, 2, 2)), (1, 1), "VALID", dimension_numbers=DN)
            return {"a": a, "b": b}

        calls.append(shape)
        return fn

    return build


calls: list = []


def broken(shape):
    raise ValueError("this architecture cannot be built")


def archs():
    return [
        Arch("k3", ("a", "b"), ((20, 20, 1), (21, 19, 1)), stack(3)),
        Arch("bad", ("a",), ((20, 20, 1),), broken),
        Arch("k5", ("a", "b"), ((24, 24, 1),), stack(5)),
    ]


def test_rows_are_written_and_a_failure_does_not_stop_the_sweep(tmp_path):
    out = tmp_path / "s.jsonl"
    rows = sweep(archs(), out, progress=False)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6  # k3: 2 layers x 2 sizes, k5: 2 layers
    by = {(r["arch"], r["layer"], tuple(r["input"])): r for r in ok}
    assert (
        by[("k3", "b", (21, 19, 1))]["size_h"] == 5 and by[("k5", "b", (24, 24, 1))]["size_w"] == 9
    )  # 1 + 2(k - 1)
    err = [r for r in rows if r["status"] == "error"]
    assert len(err) == 1 and err[0]["arch"] == "bad" and "cannot be built" in err[0]["error"]
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["format"] == FORMAT and len(lines) == 1 + 7
    assert read_rows(out) == rows


def test_rerun_skips_finished_work_and_never_duplicates(tmp_path):
    out = tmp_path / "s.jsonl"
    sweep(archs(), out, progress=False)
    calls.clear()
    rows = sweep(archs(), out, progress=False)
    assert calls == [] and len(rows) == 7
    assert len(out.read_text().splitlines()) == 1 + 7


def test_crash_mid_sweep_keeps_finished_rows_and_resumes(tmp_path):
    out = tmp_path / "s.jsonl"

    def crash(shape):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep([archs()[0], Arch("k5", ("a",), ((24, 24, 1),), crash)], out, progress=False)
    assert len(read_rows(out)) == 4
    with open(out, "ab") as f:  # a write torn by the crash
        f.write(b'{"key": "k5|a|24x24x1", "arch": "k5", "sta')
    rows = sweep(archs(), out, progress=False)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 7
    assert all(json.loads(line) for line in out.read_text().splitlines())


def test_disk_full_keeps_finished_rows_and_says_how_to_resume(tmp_path, monkeypatch):
    out = tmp_path / "s.jsonl"
    real_fsync = os.fsync
    count = {"n": 0}

    def fsync(fd):
        count["n"] += 1
        if count["n"] == 4:  # header + 2 rows, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RFError, match=r"No space left on device.*finished row.*run the same sweep again"):
        sweep(archs(), out, progress=False)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert len(read_rows(out)) == 2 and out.read_bytes().endswith(b"\n")
    assert len(sweep(archs(), out, progress=False)) == 7


def test_file_from_another_sweep_version_is_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text('{"format": "rfjax-sweep/0"}\n')
    with pytest.raises(RFError, match=r"not written by this sweep version.*pass a new file"):
        sweep(archs(), out, progress=False)


def test_spec_file_typos_are_named(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"architectures": [{"name": "VGG16", "layer": ["block5_pool"]}]}))
    with pytest.raises(RFError, match=r"unknown key 'layer'; did you mean 'layers'\?"):
        load_spec(spec)
    spec.write_text("{not json")
    with pytest.raises(RFError, match="is not valid JSON"):
        load_spec(spec)
    spec.write_text(json.dumps({"architectures": [{"name": "VGG16", "input_sizes": [[224, 224]]}]}))
    with pytest.raises(RFError, match=r"input_sizes must be \[H, W, C\]"):
        load_spec(spec)


def test_unknown_architecture_is_recorded_with_near_names(tmp_path):
    rows = sweep([Arch("ResNet5O", ("x",))], tmp_path / "s.jsonl", progress=False)
    assert rows[0]["status"] == "error" and "did you mean ResNet50" in rows[0]["error"]


def test_zoo_names_build_spatially_dynamic_so_a_growing_fit_can_run_them(tmp_path):
    # MobileNet (alpha 1): closed-form final RF 315, stride 32 (Distill 2019 table); at
    # 96x96 the RF reaches past the input, so the row exists only if the grown input ran
    rows = sweep(
        [Arch("MobileNet", ("conv_pw_13_relu",), ((96, 96, 3),), grow=True)],
        tmp_path / "o.jsonl",
        progress=False,
    )
    (row,) = [r for r in rows if r.get("layer") == "conv_pw_13_relu"]
    assert row["status"] == "ok" and (row["size_h"], row["stride_h"]) == (315.0, 32.0)
    assert row["input_shape_h"] == 96 and row["measured_shape_h"] > 315


def test_a_zoo_model_that_fails_when_built_dynamic_is_rebuilt_at_the_input_size(tmp_path, monkeypatch):
    from rfjax import arch_sweep

    built = []

    def fake_application(name, shape, dynamic=True):
        built.append(dynamic)
        if dynamic:  # as NASNet: builds with unknown sizes, then fails on a real input
            return lambda x: {"a": x[:, :3] + x[:, :5]}
        return stack(3)(shape)

    monkeypatch.setattr(arch_sweep, "keras_application", fake_application)
    rows = sweep([Arch("SomeNet", ("a",), ((20, 20, 1),))], tmp_path / "o.jsonl", progress=False)
    assert built == [True, False]
    (row,) = rows
    assert row["status"] == "ok" and row["size_h"] == 3.0


def _small_tmpfs(path) -> bool:
    """Mount a 64 KiB tmpfs at ``path`` (root only); False where mounting is not allowed."""
    import subprocess

    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], check=False, capture_output=True
    )
    return done.returncode == 0


def test_a_really_full_disk_is_one_sentence_and_loses_nothing(tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    if not _small_tmpfs(disk):  # no tmpfs here: a file system whose writes fail past a quota
        real_write, used = os.write, {"n": 0}

        def write(fd, data):
            used["n"] += len(data)
            if used["n"] > 1200:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        disk.mkdir(exist_ok=True)
        monkeypatch.setattr(os, "write", write)
        filler = None
    else:
        filler = disk / "filler"
        filler.write_bytes(b"x" * (60 * 1024))  # one 4 KiB page left: the header and a few rows
    out = disk / "s.jsonl"
    many = [Arch(f"k{k}", ("a", "b"), ((24, 24, 1), (25, 25, 1)), stack(3)) for k in range(12)]
    try:
        with pytest.raises(
            RFError, match=r"writing out=.*s\.jsonl.*No space left on device.*run the same sweep again"
        ):
            sweep(many, out, progress=False)
        kept = read_rows(out)
        assert 0 < len(kept) < 48
        assert out.read_bytes().endswith(b"\n")  # no half row
        if filler is not None:
            filler.unlink()
        else:
            monkeypatch.undo()
        rows = sweep(many, out, progress=False)
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)) == 48 and all(r["status"] == "ok" for r in rows)
    finally:
        if filler is not None:
            import subprocess

            subprocess.run(["umount", str(disk)], check=False)


def test_an_output_path_that_is_a_folder_or_read_only_is_one_sentence(tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(RFError, match=r"out=.*a_folder.*cannot be (read|opened)"):
        sweep(archs()[:1], folder, progress=False)
    if os.geteuid() != 0:  # root writes anywhere: the read-only case needs a normal user
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(RFError, match=r"cannot be opened for writing.*Permission denied"):
            sweep(archs()[:1], locked / "s.jsonl", progress=False)


def test_the_cli_says_disk_full_in_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys):
    from rfjax import cli

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"architectures": [{"name": "NoSuchNet"}]}))
    monkeypatch.setattr(
        os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
    )
    code = cli.main(["sweep", str(spec), "--out", str(tmp_path / "s.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0] and "Traceback" not in err[0]


def test_all_layers_of_a_converted_model_one_row_each_and_resumable(tmp_path):
    import keras

    import converters

    inp = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(2, 3, name="c1")(inp)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(2, 5, name="c2")(x)
    model = keras.Model(inp, x)

    def build(shape):
        return converters.from_keras(model, input_shape=shape)

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"architectures": [{"name": "tiny", "layers": "all"}]}))
    assert load_spec(spec)[0].layers == "all"
    out = tmp_path / "s.jsonl"
    rows = sweep([Arch("tiny", "all", ((20, 20, 1),), build)], out, progress=False)
    by = {r["layer"]: r for r in rows}
    assert set(by) == {"c1", "r1", "c2"}  # every spatial layer, the input left out
    assert by["c1"]["size_h"] == 3 and by["r1"]["size_h"] == 3 and by["c2"]["size_h"] == 7  # 3 + 4
    again = sweep([Arch("tiny", "all", ((20, 20, 1),), build)], out, progress=False)
    assert len(again) == 3 and len(out.read_text().splitlines()) == 1 + 3
    # a crash before the last row: the resumed run measures only c2 and keeps its depth
    out.write_text("\n".join(out.read_text().splitlines()[:-1]) + "\n")
    resumed = {
        r["layer"]: r for r in sweep([Arch("tiny", "all", ((20, 20, 1),), build)], out, progress=False)
    }
    assert [resumed[k]["depth"] for k in ("c1", "r1", "c2")] == [0, 1, 2] and resumed["c2"]["size_h"] == 7
    fig = plot_sweep(out)
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_gid() == "arch:tiny"]
    assert list(line.get_xdata()) == [0, 1, 2] and list(line.get_ydata()) == [3, 3, 7]


def test_layers_all_on_a_plain_function_and_bad_layers_are_one_sentence(tmp_path):
    rows = sweep([Arch("fn", "all", ((20, 20, 1),), stack(3))], tmp_path / "s.jsonl", progress=False)
    assert rows[0]["status"] == "error" and 'layers "all" needs a converted model' in rows[0]["error"]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"architectures": [{"name": "VGG16", "layers": "every"}]}))
    with pytest.raises(RFError, match=r'layers must be a list of layer names or "all"'):
        load_spec(spec)
