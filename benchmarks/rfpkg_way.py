"""The ``receptivefield`` package (fornaxai/receptivefield 0.5.0, the reference tool) as a
benchmark way.

The package needs the Keras 2 API: it reads ``layer.output_shape`` (gone in Keras 3) and
imports ``tensorflow.keras``. With TensorFlow 2.21 it runs on ``tf_keras`` (the legacy
Keras 2 package, its minor version matching TensorFlow's) selected by the process-wide
environment variable ``TF_USE_LEGACY_KERAS=1``, so ``benchmarks/run.py`` runs this way in
a child process with that variable set (see :data:`LEGACY_ENV`, :func:`interpreter`).
Import this module only in such a process; nothing else in the harness imports it.

What is timed is the package's own user call,
``KerasReceptiveField(model_fn, init_weights).compute(input_shape, input_layer, [output_layer])``:
three single-cell backward passes (the grid centre, the cell at centre + (1, 1) and cell
(0, 0)), eager, not all output cells. ``model_fn`` returns a model built once in setup
(the other ways also build their model in setup), so a call does not include building it.

* README network: the package's README code (linear ``Conv2D``, ``AvgPool2D``) with
  ``init_weights=True``, the package's own constant weights.
* ``keras.applications`` networks (``tf_keras.applications``, ``weights=None``, no top):
  the package asks for linear activations and average pooling, so the model is cloned from
  its config with every activation ``linear`` (``ReLU`` layers become linear ``Activation``
  layers) and ``MaxPooling2D`` -> ``AveragePooling2D``; constant kernels as in
  :mod:`benchmarks.tf_ways` (``1 / (fan_in * sqrt(kh * kw))``), zero biases, identity
  batch norms, ``init_weights=False`` (the package's initialiser sets only plain ``Conv2D``
  kernels and would leave depthwise kernels random). Its gradients must be > 0 to count,
  and the input is all zeros, so a ReLU network would give no support at all.

The package's answer, in its own terms: ``x``/``w`` are the row axis (it sums NHWC
gradients over the last spatial axis), so ``(x, y)`` = ``(row, col)`` like rfjax's;
``offset`` = extent of cell (0, 0)'s support minus half the size = the RF centre of cell
(0, 0) in pixel-edge coordinates, the same convention as rfjax (README network: 17 in both,
not 16.5). When the RF of the grid-centre cell or of the cell at centre + (1, 1) reaches
past the input, the package's size and stride come from clipped supports (its docs say:
enlarge the input); the answer's ``note`` says so. At 224x224 that is ResNet50 and
MobileNetV2 (size 224, stride 0) and VGG16 (size 212 right, stride 19 instead of 32).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

LEGACY_ENV = {"TF_USE_LEGACY_KERAS": "1"}
PACKAGE = "receptivefield"
ROOT = Path(__file__).resolve().parent.parent
SEPARATE_VENV = ROOT / ".venv-rf"


def interpreter() -> tuple[str | None, str]:
    """``(python, why)``: the interpreter that can run this way (this one when it has both
    ``receptivefield`` and ``tf_keras``, else ``.venv-rf/bin/python`` when that exists), or
    ``(None, reason)``. Cheap: finds the packages without importing them."""
    missing = [m for m in ("receptivefield", "tf_keras") if importlib.util.find_spec(m) is None]
    if not missing:
        return sys.executable, ""
    alt = SEPARATE_VENV / "bin" / "python"
    if alt.exists():
        return str(alt), ""
    return None, (
        f"not runnable: {' and '.join(missing)} not installed "
        "(pip<24.1: pip install receptivefield==0.5.0 'tf_keras~=2.21.0'; see benchmarks/run.py)"
    )


# --------------------------------------------------------------------------- in the child

# The package's README network (its README code, with layer names); the same chain as
# tf_ways.README_LAYERS.
README_INPUT_LAYER, README_OUTPUT_LAYER = "input_image", "feature_grid"


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError(
            "the receptivefield way needs TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported"
        )
    import tensorflow as tf
    import tf_keras

    if tf.keras.Model is not tf_keras.Model:
        raise RuntimeError(
            "tensorflow.keras is not tf_keras (TensorFlow was imported before TF_USE_LEGACY_KERAS=1)"
        )
    return tf


def readme_model(input_shape) -> Any:
    tf = _tf()
    from tensorflow.keras.layers import AvgPool2D, Conv2D, Input

    act = "linear"
    inp = Input(shape=tuple(input_shape), name=README_INPUT_LAYER)
    x = Conv2D(32, (5, 5), padding="valid", activation=act)(inp)
    x = Conv2D(32, (3, 3), padding="valid", activation=act)(x)
    x = AvgPool2D()(x)
    x = Conv2D(64, (3, 3), activation=act, padding="valid")(x)
    x = Conv2D(64, (3, 3), activation=act, padding="valid")(x)
    x = AvgPool2D()(x)
    x = Conv2D(128, (3, 3), activation=act, padding="valid")(x)
    x = Conv2D(128, (3, 3), activation=act, padding="valid", name=README_OUTPUT_LAYER)(x)
    return tf.keras.Model(inp, x)


def linear_application(name: str, input_shape) -> Any:
    """``tf_keras.applications.<name>`` (no top, ``weights=None``) with linear activations,
    average pooling and constant weights."""
    tf = _tf()
    base = getattr(tf.keras.applications, name)(
        weights=None, include_top=False, input_shape=tuple(input_shape)
    )
    cfg = base.get_config()
    for layer in cfg["layers"]:
        c = layer["config"]
        if layer["class_name"] == "ReLU":
            layer["class_name"] = "Activation"
            layer["config"] = {k: c[k] for k in ("name", "trainable", "dtype") if k in c} | {
                "activation": "linear"
            }
        elif "activation" in c:
            c["activation"] = "linear"
        if layer["class_name"] == "MaxPooling2D":
            layer["class_name"] = "AveragePooling2D"
    model = tf.keras.Model.from_config(cfg)
    _set_constant_weights(model)
    return model


def _set_constant_weights(model) -> None:
    import numpy as np

    for layer in model.layers:
        if not layer.weights:
            continue
        new = []
        for w in layer.weights:
            shape = tuple(w.shape)
            short = w.name.split("/")[-1].split(":")[0]
            if type(layer).__name__ == "BatchNormalization":
                one = short in ("gamma", "moving_variance")
                new.append(np.full(shape, 1.0 if one else 0.0, np.float32))
            elif len(shape) == 4:  # (kh, kw, c_in, c_out) or depthwise (kh, kw, c_in, mult)
                kh, kw, c_in = shape[:3]
                fan = 1 if "depthwise" in short else c_in
                new.append(np.full(shape, 1.0 / (fan * math.sqrt(kh * kw)), np.float32))
            else:  # biases (and anything else without a kernel's shape)
                new.append(np.zeros(shape, np.float32))
        layer.set_weights(new)


def setup(input_shape, keras_app: str | None) -> Callable[[], Any]:
    """Build the model and return the timed call: one ``compute()``, summarised as an object
    with ``size``, ``stride``, ``offset`` (each ``(row, col)``) and ``note``."""
    _tf()
    from receptivefield.keras import KerasReceptiveField

    logging.getLogger().setLevel(logging.WARNING)  # the package sets the root logger to INFO
    if keras_app is None:
        model = readme_model(input_shape)
        input_layer, output_layer, init = README_INPUT_LAYER, README_OUTPUT_LAYER, True
    else:
        model = linear_application(keras_app, input_shape)
        input_layer, output_layer, init = model.layers[0].name, model.layers[-1].name, False
    estimator = KerasReceptiveField(lambda _shape: model, init_weights=init)
    extent = tuple(int(v) for v in input_shape[:2])
    grid = tuple(int(v) for v in model.get_layer(output_layer).output_shape[1:3])

    def call():
        (fm,) = estimator.compute(tuple(input_shape), input_layer, [output_layer])
        rf = fm.rf
        size = tuple(float(v) for v in rf.size)
        stride = tuple(float(v) for v in rf.stride)
        offset = tuple(float(v) for v in rf.offset)
        return types.SimpleNamespace(
            size=size, stride=stride, offset=offset, note=clipped_note(size, stride, offset, grid, extent)
        )

    return call


def clipped_note(size, stride, offset, grid, extent) -> str:
    """A note when the RF of a cell the package measures size and stride on (the grid centre
    and the cell at centre + (1, 1)) reaches past the input, judged from the package's own
    answer: then it reports the clipped supports' size and centroid shift."""
    for sz, st, off, n, ext in zip(size, stride, offset, grid, extent):
        centre_cell = n // 2 - 1 if n % 2 == 0 else n // 2
        for cell in (centre_cell, centre_cell + 1):
            centre = off + cell * st
            if centre - sz / 2 <= 0 or centre + sz / 2 >= ext:
                return (
                    f"the RF of a cell it measures reaches past the {extent[0]}x{extent[1]} input, "
                    "so size/stride are of clipped supports; its docs: enlarge the input"
                )
    return ""
