"""CAMs over folders of image files: rows checked against Keras' own forward pass, resume, skips."""

from __future__ import annotations

import functools
import json

import keras
import matplotlib.image
import numpy as np
import pytest
from keras import layers
from PIL import Image

import converters
import rfjax
from rfjax.cam_files import LOG_NAME, explain_files, image_files, read_image
from rfjax.cli import main

SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            layers.Conv2D(6, 3, activation="relu", name="features"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(4, name="logits"),
        ]
    )


def _explainer(model, calls):
    converted = converters.from_keras(model, outputs=["features", "logits"])
    cam = functools.partial(
        rfjax.class_activation_maps, converted, method="cam", layer="features", logits="logits", top_k=2
    )

    def explain(images):
        calls.append(images.shape)
        return cam(images)

    return explain


def _write(path, img):
    if img.ndim == 2:  # a true one-channel (mode "L") PNG
        Image.fromarray((img * 255).round().astype(np.uint8), mode="L").save(path)
    else:
        matplotlib.image.imsave(path, img)
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "shots"
    d.mkdir()
    for n in range(3):
        _write(d / f"rgb{n}.png", rng.uniform(size=(20, 24, 3)).astype(np.float32))
    _write(d / "grey.png", rng.uniform(size=(20, 24)).astype(np.float32))
    (d / "notes.txt").write_text("not an image")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return d


def test_every_image_gets_keras_classes_and_the_rest_are_listed(classifier, folder, tmp_path):
    calls = []
    run = explain_files(
        _explainer(classifier, calls),
        [folder],
        tmp_path / "out",
        input_shape=SHAPE,
        batch=2,
        scale=1.0,
        progress=False,
    )
    names = [r["image"].split("/")[-1] for r in run.rows]
    assert names == ["grey.png", "rgb0.png", "rgb1.png", "rgb2.png"]  # sorted, readable ones
    assert {s.path.split("/")[-1]: s.reason.split(" ")[0] for s in run.skipped} == {
        "notes.txt": "not",
        "broken.png": "image",
    }
    assert all(shape[0] == 2 for shape in calls)  # one compiled batch shape, last batch padded
    for row in run.rows:
        x = read_image(row["image"], SHAPE[:2], 3, scale=1.0)  # what the run fed the model
        probs = np.asarray(keras.ops.softmax(classifier(x[None])))[0]
        top = np.argsort(-probs)[:2]
        assert row["classes"] == top.tolist()
        np.testing.assert_allclose(row["probabilities"], probs[top], rtol=1e-4, atol=1e-7)
        assert (tmp_path / "out" / (row["image"].split("/")[-1][:-4] + "_cam.png")).stat().st_size > 0


def test_a_rerun_after_a_crash_computes_only_the_missing_images(classifier, folder, tmp_path):
    out = tmp_path / "out"
    first = explain_files(
        _explainer(classifier, []), [folder], out, input_shape=SHAPE, batch=3, progress=False
    )
    log = out / LOG_NAME
    lines = log.read_text().splitlines()
    assert json.loads(lines[0])["format"] == "rfjax-cam/1" and len(lines) == 1 + 4
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # crash while writing the last row
    calls = []
    again = explain_files(
        _explainer(classifier, calls), [folder], out, input_shape=SHAPE, batch=3, progress=False
    )
    assert again.new == 1 and len(calls) == 1
    assert again.rows == first.rows


def test_glob_sources_and_shared_stems_get_distinct_overlays(classifier, tmp_path):
    rng = np.random.default_rng(3)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _write(tmp_path / sub / "x.png", rng.uniform(size=(16, 16, 3)).astype(np.float32))
    files, _ = image_files([str(tmp_path / "**" / "*.png")])
    assert [f.parent.name for f in files] == ["a", "b"]
    run = explain_files(
        _explainer(classifier, []), [str(tmp_path / "**" / "*.png")], tmp_path / "o", input_shape=SHAPE,
        batch=4, progress=False,
    )  # fmt: skip
    assert sorted(r["overlay"].split("/")[-1] for r in run.rows) == ["x_2_cam.png", "x_cam.png"]


def test_grey_files_are_repeated_to_rgb_and_a_wrong_channel_count_is_one_sentence(tmp_path):
    grey = np.random.default_rng(4).uniform(size=(8, 8)).astype(np.float32)
    path = _write(tmp_path / "g.png", grey)
    rgb = read_image(path, (8, 8), 3, scale=1.0)
    assert rgb.shape == (8, 8, 3)
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 2])
    np.testing.assert_allclose(rgb[..., 0], grey, atol=1 / 255)  # PNG keeps 8 bits
    with pytest.raises(rfjax.RFError, match=r"g\.png.* 1 channels but the model takes 2"):
        read_image(path, (8, 8), 2)


def test_the_cli_explains_a_folder_and_lists_what_it_skipped(classifier, folder, tmp_path, capsys):
    model_path = tmp_path / "clf.keras"
    classifier.save(model_path)
    out = tmp_path / "cli"
    assert main(["cam", str(model_path), str(folder), "--out", str(out), "--quiet", "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("top classes") == 4 and "2 files skipped" in text and "notes.txt" in text
    assert main(["cam", str(model_path), str(folder), "--out", str(out), "--quiet"]) == 0
    assert "0 images explained now, 4 before" in capsys.readouterr().out
