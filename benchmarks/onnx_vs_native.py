"""ONNX adapter against the native Keras path, in one process (224x224x3 models).

Measures (1) conversion of exported ResNet50 files with ``converters.from_onnx`` (read,
check, parameters on the device), alone and with a shape trace of the whole graph (where
the shape chains fold): a torchvision
ResNet-50 exported by ``torch.onnx.export`` and keras.applications ResNet50 exported by
tf2onnx; (2) all-cells gradient maps (``rfjax.gradient_maps``, input channels summed)
of the Keras model (constant weights, activations and max pooling kept) through
``converters.from_keras`` and through its tf2onnx file, interleaved, same inputs, and
checks the maps agree, for each of ``--networks`` (keras.applications names, default
ResNet50); ``--maps-only`` skips (1). Needs the test extra plus torch/torchvision::

    python benchmarks/onnx_vs_native.py [--repeats 3] [--networks ResNet50,MobileNetV2] [--maps-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: ``benchmarks`` importable


def _export_torch(folder: Path) -> str:
    import torch
    import torchvision

    path = str(folder / "torchvision_resnet50.onnx")
    model = torchvision.models.resnet50(weights=None).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), path, dynamo=False, opset_version=17)
    return path


def _export_keras(model, folder: Path, name: str = "resnet50") -> str:
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((1, 224, 224, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x)), input_signature=spec, opset=17)
    path = str(folder / f"keras_{name.lower()}.onnx")
    onnx.save(proto, path)
    return path


def _time(fn, repeats: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds per call; the process's CPU seconds are appended to ``cpu`` (less
    sensitive than wall time to other processes on a shared machine)."""
    out = []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", default="ResNet50", help="comma-separated keras.applications names")
    parser.add_argument("--maps-only", action="store_true", help="skip the conversion timings")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp())
    # torch first: importing torch after TensorFlow crashed this process (torch 2.14.1, TF 2.21)
    files = {} if args.maps_only else {"torchvision ResNet-50 (torch.onnx.export)": _export_torch(folder)}

    from benchmarks import tf_ways

    keras_models = {n: tf_ways.keras_application(n, (224, 224, 3)) for n in args.networks.split(",")}
    exported = {n: _export_keras(m, folder, n) for n, m in keras_models.items()}
    if not args.maps_only:
        files["keras ResNet50 (tf2onnx)"] = exported.get("ResNet50") or _export_keras(
            tf_ways.keras_application("ResNet50", (224, 224, 3)), folder
        )
        _conversion(files, args.repeats)
    for name, keras_model in keras_models.items():
        _maps(name, keras_model, exported[name], args.repeats)


def _conversion(files: dict[str, str], repeats: int) -> None:
    import converters

    image = jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32)

    def convert_and_trace(path: str):
        model = converters.from_onnx(path)
        return jax.eval_shape(model.apply, model.params, image)  # the shape chains fold here

    for label, path in files.items():
        times = _time(lambda p=path: converters.from_onnx(p).params, repeats)
        traced = _time(lambda p=path: convert_and_trace(p), repeats)
        print(
            f"from_onnx {label}: median {statistics.median(times):.3f} s (min {min(times):.3f}); "
            f"with a shape trace of the whole graph {statistics.median(traced):.3f} s"
        )


def _maps(network: str, keras_model, path: str, repeats: int) -> None:
    import converters
    import rfjax

    native = converters.from_keras(keras_model)
    exported = converters.from_onnx(path)
    x = np.ones((1, 224, 224, 3), np.float32)

    def maps(model):
        (m,) = rfjax.gradient_maps(model.apply, x, params=model.params, input_channels="sum").values()
        return m.maps

    first = {name: _time(lambda m=m: maps(m), 1)[0] for name, m in (("native", native), ("onnx", exported))}
    steady: dict[str, list[float]] = {"native": [], "onnx": []}
    cpu: dict[str, list[float]] = {"native": [], "onnx": []}
    for _ in range(repeats):  # interleaved: both see the same machine load
        for name, m in (("native", native), ("onnx", exported)):
            steady[name] += _time(lambda m=m: maps(m), 1, cpu[name])
    a, b = np.asarray(maps(native)), np.asarray(maps(exported))
    err = float(np.abs(a - b).max() / np.abs(a).max())
    for name, times in steady.items():
        print(
            f"{network} gradient maps {name}: first {first[name]:.2f} s, steady median {statistics.median(times):.3f} s "
            f"(min {min(times):.3f}); CPU time median {statistics.median(cpu[name]):.2f} s"
        )
    ratio = statistics.median(steady["onnx"]) / statistics.median(steady["native"])
    cpu_ratio = statistics.median(cpu["onnx"]) / statistics.median(cpu["native"])
    print(
        f"{network} onnx / native: wall {ratio:.2f}, CPU {cpu_ratio:.2f}; maps {a.shape}, max relative difference {err:.1e}"
    )


if __name__ == "__main__":
    main()
