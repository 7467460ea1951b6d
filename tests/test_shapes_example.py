"""The worked example: a small Keras GAP + dense CNN trained on generated shapes, converted to
JAX, explained with CAM, and scored against the shapes' bounding boxes.

The network uses 'valid' convolutions, so its feature grid (10 x 10 on 64 x 64 inputs) covers
only the middle of the image: RF centres 13.5 + 4 i, where a plain resize assumes 3.2 + 6.4 i.
The pointing game and the box IoU are reported for both placements.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import converters
from rfjax import activation_maps as C
from rfjax.datasets import SHAPE_NAMES, shapes
from rfjax.models import shapes_cnn


def test_shapes_are_deterministic_balanced_and_boxed():
    a, b = shapes(40, seed=5), shapes(40, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (40, 64, 64, 3) and a.images.dtype == np.float32
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert np.bincount(a.labels).tolist() == [10, 10, 10, 10] and a.class_names == SHAPE_NAMES
    side = a.boxes[:, 2:] - a.boxes[:, :2]
    assert np.all(side >= 0.25 * 64 - 2) and np.all(side <= 0.45 * 64 + 1)
    assert np.all(a.boxes[:, :2] >= 0) and np.all(a.boxes[:, 2:] <= 64)
    # the pixels of the shape's colour (read at the box centre) span exactly the box
    for img, box in zip(a.images, a.boxes):
        t, left, bt, r = box.astype(int)
        colour = img[(t + bt) // 2, (left + r) // 2]
        rows, cols = np.nonzero((img == colour).all(axis=-1))
        assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (t, left, bt, r)
    assert not np.array_equal(shapes(4, seed=6).images, a.images[:4])


def test_trained_keras_cnn_localises_shapes_with_cam(tmp_path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")

    train, held_out = shapes(2000, seed=1), shapes(200, seed=2)
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    model = shapes_cnn()
    model.compile(
        keras.optimizers.Adam(2e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(train.images, train.labels, batch_size=32, epochs=8, verbose=0)
    trained = time.perf_counter() - start

    feature, dense = C.keras_cam_layers(model)
    assert (feature, dense) == ("features", "logits")
    jax_model = converters.from_keras(model, outputs=[feature, dense])
    np.testing.assert_allclose(
        np.asarray(jax_model(held_out.images[:16])[dense]),
        model.predict(held_out.images[:16], verbose=0),
        atol=1e-3,
    )

    scores = {}
    for placement in ("resize", "rf"):
        r = C.cam(
            jax_model,
            held_out.images,
            layer=feature,
            logits=dense,
            classes=held_out.labels[:, None],
            placement=placement,
        )
        pointing = C.pointing_game(r.peaks()[:, 0], held_out.boxes)
        iou = float(np.mean([C.box_iou(C.cam_box(m), b) for m, b in zip(r.upsampled[:, 0], held_out.boxes)]))
        scores[placement] = (pointing, iou)
        if placement == "rf":
            assert r.placement == "rf" and r.offset == (13.5, 13.5) and r.stride == (4, 4)
            from rfjax.plot_cam import cam_overlay

            top = C.cam(jax_model, held_out.images[:4], layer=feature, logits=dense, top_k=2)
            cam_overlay(
                top,
                held_out.images[:4],
                class_names=SHAPE_NAMES,
                box=held_out.boxes[0],
                save=tmp_path / "shapes.png",
            )
    accuracy = float(np.mean(np.argmax(model.predict(held_out.images, verbose=0), 1) == held_out.labels))
    print(
        f"\ntrained in {trained:.1f} s; held-out accuracy {accuracy:.3f}; pointing game / mean IoU: "
        + ", ".join(f"{k} {p:.3f} / {i:.3f}" for k, (p, i) in scores.items())
    )
    assert accuracy >= 0.85
    assert scores["rf"][0] >= 0.90
    assert scores["rf"][0] > scores["resize"][0] and scores["rf"][1] > scores["resize"][1]
