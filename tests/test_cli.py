"""The command line: sub-commands, exit codes, one-sentence errors."""

import csv

import keras
import numpy as np
import pytest
from keras import layers

from rfjax.cli import main


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory):
    """conv5 valid + relu -> maxpool 2 -> conv3 same -> BN -> relu, saved as .keras."""
    path = tmp_path_factory.mktemp("m") / "small.keras"
    model = keras.Sequential(
        [
            keras.Input((40, 40, 3)),
            layers.Conv2D(4, 5, activation="relu", name="c1"),
            layers.MaxPooling2D(2, name="p1"),
            layers.Conv2D(4, 3, padding="same", name="c2"),
            layers.BatchNormalization(name="bn"),
            layers.ReLU(name="r"),
        ]
    )
    model.save(path)
    return path


def test_demo_prints_the_readme_rf_and_writes_figures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "size=(34, 34) stride=(4, 4) offset=(17, 17) padding=(0, 0) grid=16x16" in out
    assert (tmp_path / "rf_grid.png").stat().st_size > 0 and (
        tmp_path / "gradient_at_centre.png"
    ).stat().st_size > 0


def test_estimate_a_keras_file(small_keras, tmp_path, capsys):
    # conv5 (s1) -> pool2 -> conv3 'same': size 1 + 4 + 1 + 2*2 = 10, stride 2, P = 1*2 = 2, offset 3
    assert main(["estimate", str(small_keras), "--layer", "c2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "size=(10, 10) stride=(2, 2) offset=(3, 3) padding=(2, 2) grid=18x18" in out
    assert (tmp_path / "rf_grid.png").exists()


def test_sweep_layers_writes_a_table(small_keras, tmp_path):
    table = tmp_path / "t.csv"
    assert (
        main(["sweep-layers", str(small_keras), "--table", str(table), "--plot", str(tmp_path / "t.png")])
        == 0
    )
    with open(table) as f:
        rows = {r["layer"]: r for r in csv.DictReader(f)}
    assert (
        float(rows["c1"]["size_h"]) == 5
        and float(rows["p1"]["size_h"]) == 6
        and float(rows["r"]["size_w"]) == 10
    )


def test_errors_are_one_sentence_with_exit_code_2(small_keras, tmp_path, capsys):
    assert main(["estimate", str(tmp_path / "missing.keras")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rfjax: error: ") and "missing.keras" in err and len(err.splitlines()) == 1
    assert main(["estimate", str(small_keras), "--layer", "c_2"]) == 2
    assert "did you mean 'c2'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["estimate", str(small_keras), "--input", "40x40"])
    assert e.value.code == 2 and "must look like 224x224x3" in capsys.readouterr().err
    spec = tmp_path / "spec.json"
    spec.write_text('{"architectures": ["VGG16"]}')
    assert main(["sweep", str(spec), "--max-input", "0", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--max-input 0 must be a positive" in capsys.readouterr().err
    assert main([]) == 2


@pytest.fixture(scope="module")
def gap_classifier(tmp_path_factory):
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("c") / "clf.keras"
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(8, 3, activation="relu", name="features"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(5, name="logits"),
        ]
    )
    model.save(path)
    return path


def test_cam_writes_one_overlay_per_image(gap_classifier, tmp_path, capsys):
    import matplotlib.image

    files = []
    for n in range(2):
        img = np.random.default_rng(n).uniform(size=(40, 48, 3)).astype(np.float32)
        files.append(str(tmp_path / f"img{n}.png"))
        matplotlib.image.imsave(files[-1], img)
    assert main(["cam", str(gap_classifier), *files, "--top-k", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("top classes") == 2
    for n in range(2):
        assert (tmp_path / "out" / f"img{n}_cam.png").stat().st_size > 0
    assert main(["cam", str(gap_classifier), str(tmp_path / "nope.png")]) == 2
    assert "cannot be read" in capsys.readouterr().err
