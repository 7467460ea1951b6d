"""Layer sweeps against the closed-form calculator, exports and the sweep plot."""

import csv
import json

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from rfjax import HW, RFError
from rfjax.analytic import Layer, analytic_sweep
from rfjax.layer_sweep import plot_layers, save_rows, sweep_layers

DN = ("NHWC", "HWIO", "NHWC")
# A small VGG-style chain with ReLU and max pooling (the sweep must prepare it), a
# strided 'same' conv and a non-square kernel.
CHAIN = [
    Layer.conv(3, padding="same", name="c1"),
    Layer.conv((3, 5), padding="same", name="c2"),
    Layer.pool(2, kind="max_pool", name="p1"),
    Layer.conv(3, stride=2, padding="same", name="c3"),
    Layer.conv(3, name="c4"),
    Layer.pool(2, kind="max_pool", name="p2"),
]


def chain_dict(x):
    out = {}
    hw = x.shape[1:3]
    for layer in CHAIN:
        pads = layer.padding_pairs(hw)
        if layer.kind == "conv":
            w = jnp.ones(tuple(layer.kernel) + (x.shape[-1], 3), jnp.float32) - 0.7  # mixed signs
            x = jax.nn.relu(lax.conv_general_dilated(x, w, layer.stride, pads, dimension_numbers=DN))
        else:
            window = (1,) + tuple(layer.kernel) + (1,)
            x = lax.reduce_window(
                x, -jnp.inf, lax.max, window, (1,) + tuple(layer.stride) + (1,), ((0, 0),) + pads + ((0, 0),)
            )
        hw = x.shape[1:3]
        out[layer.name] = x
    return out


@pytest.fixture(scope="module")
def rows():
    return sweep_layers(chain_dict, (44, 40, 1))


def test_every_layer_matches_the_closed_form(rows):
    want = analytic_sweep(CHAIN, (44, 40))
    assert [r.layer for r in rows] == [layer.name for layer in CHAIN]
    for row, rf in zip(rows, want):
        assert row.status == "ok"
        assert (row.size, row.stride, row.offset, row.padding, row.output_shape) == (
            rf.size,
            rf.stride,
            rf.offset,
            rf.padding,
            rf.output_shape,
        ), row.layer


def test_rf_past_the_input_is_marked_not_measured():
    rows = sweep_layers(chain_dict, (14, 14, 1), layers=["c1", "p2"])
    assert rows[0].status == "ok" and rows[0].size == HW(3, 3)
    assert rows[1].status == "larger" and rows[1].size is None


def test_exports_round_trip(rows, tmp_path):
    save_rows(rows, tmp_path / "s.csv")
    save_rows(rows, tmp_path / "s.json")
    with open(tmp_path / "s.csv") as f:
        table = list(csv.DictReader(f))
    records = json.loads((tmp_path / "s.json").read_text())
    assert [r["layer"] for r in table] == [r["layer"] for r in records] == [r.layer for r in rows]
    assert float(table[3]["size_w"]) == records[3]["size_w"] == rows[3].size.w
    with pytest.raises(RFError, match=r"path=.*must end in .csv or .json"):
        save_rows(rows, tmp_path / "s.txt")
    with pytest.raises(RFError, match=r"path=.*cannot be written"):
        save_rows(rows, tmp_path / "missing" / "s.csv")


def test_plot_shows_size_by_depth_and_the_input(rows, tmp_path):
    fig = plot_layers(rows, save=tmp_path / "s.png")
    ax = fig.axes[0]
    line = next(ln for ln in ax.lines if ln.get_gid() == "size-w")  # c2's 3x5 kernel: h and w differ
    assert list(line.get_ydata()) == [r.size.w for r in rows]
    inp = next(ln for ln in ax.lines if ln.get_gid() == "input-size-h")
    assert inp.get_ydata()[0] == 44
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "c1",
        "p1",
        "c3",
        "p2",
    ]  # where the stride changes
    assert (tmp_path / "s.png").stat().st_size > 0


def test_non_dict_function_is_refused():
    with pytest.raises(RFError, match="must return a dict"):
        sweep_layers(lambda x: x, (8, 8, 1))


def test_a_layer_that_cannot_be_measured_is_recorded_and_the_sweep_goes_on(tmp_path):
    def padded(x):
        pad = jnp.pad(x, ((0, 0), (0, 2), (0, 2), (0, 0)))  # the last two rows/columns see no input
        return {
            "pad": pad,
            "conv": lax.conv_general_dilated(
                pad, jnp.ones((3, 3, 1, 1)), (1, 1), "VALID", dimension_numbers=DN
            ),
        }

    rows = sweep_layers(padded, (12, 12, 1))
    assert [(r.layer, r.status) for r in rows] == [("pad", "error"), ("conv", "ok")]
    assert "is zero for" in rows[0].error
    assert rows[1].size == HW(3, 3)
    save_rows(rows, tmp_path / "rows.csv")
    with open(tmp_path / "rows.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["status"] for r in got] == ["error", "ok"] and got[0]["error"].startswith("the input gradient")


def test_converted_spatial_shapes_are_keras_own_and_a_size_the_model_cannot_run_is_one_error():
    import keras

    import converters
    from rfjax.errors import RFCallError

    inp = keras.Input((None, None, 3))
    a = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="a")(inp)
    b = keras.layers.Conv2D(4, 5, name="b")(a)
    g = keras.layers.GlobalAveragePooling2D(name="g")(b)
    model = converters.from_keras(keras.Model(inp, [b, g]), input_shape=(19, 23, 3))
    shapes = model.spatial_shapes((19, 23, 3))
    want = keras.Model(inp, [a, b]).compute_output_shape((1, 19, 23, 3))  # Keras' own shapes
    for name, w in zip(("a", "b"), want):  # one channel in the RF copy's trace
        assert shapes[name] == (1, w[1], w[2], 1)
    assert len(shapes["g"]) == 2
    rows = sweep_layers(model, (19, 23, 3))
    assert [r.layer for r in rows] == ["a", "b"]  # the pooled layer is not spatial
    fixed = keras.Input((8, 8, 3))
    head = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Conv2D(2, 3, name="c")(fixed)))
    dense = converters.from_keras(keras.Model(fixed, head))
    with pytest.raises(RFCallError, match=r"^the model cannot run on a 10x10 input \(.*check input_shape"):
        sweep_layers(dense, (10, 10, 3))  # the dense head was built for 8x8
