"""The layer-sweep figure: what is drawn, in data coordinates, from hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest

from rfjax import HW, RFError
from rfjax.layer_plot import FIGSIZE, MAX_TICKS, plot_layers, plot_sweep, stage_ticks
from rfjax.layer_sweep import LayerRF


def _row(depth, size, stride, *, status="ok", global_=False, input_shape=(64, 64)):
    ok = status == "ok"
    return LayerRF(
        layer=f"l{depth}",
        depth=depth,
        status=status,
        size=HW(*size) if ok else None,
        stride=HW(*stride) if ok else None,
        offset=HW(0.5, 0.5) if ok else None,
        padding=HW(0, 0) if ok else None,
        input_shape=HW(*input_shape),
        output_shape=HW(8, 8),
        global_=global_,
    )


# three stages (stride 1, 2, 4), square RFs; the last layer reaches past the input
SQUARE = [
    _row(0, (3, 3), (1, 1)),
    _row(1, (5, 5), (1, 1)),
    _row(2, (6, 6), (2, 2)),
    _row(3, (10, 10), (2, 2)),
    _row(4, (14, 14), (4, 4), global_=True),
    _row(5, None, None, status="larger", input_shape=(256, 256)),
]


def _line(ax, gid):
    found = [ln for ln in ax.lines if ln.get_gid() == gid]
    assert len(found) == 1, [ln.get_gid() for ln in ax.lines]
    return found[0]


def test_square_rfs_are_one_series_on_a_log_axis_with_ticks_at_stage_boundaries():
    fig = plot_layers(SQUARE)
    ax = fig.axes[0]
    size = _line(ax, "size")
    np.testing.assert_array_equal(size.get_xdata(), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(size.get_ydata(), [3, 5, 6, 10, 14, np.nan])
    assert not [ln for ln in ax.lines if ln.get_gid() in ("size-h", "size-w")]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["l0", "l2", "l4"]  # where the stride changes
    assert list(ax.get_xticks()) == [0, 2, 4]
    assert _line(ax, "input-size").get_ydata()[0] == 64  # the requested input, not the last size tried
    larger = _line(ax, "larger")
    assert list(larger.get_xdata()) == [5] and list(larger.get_ydata()) == [256]
    glob = _line(ax, "global")
    assert list(glob.get_xdata()) == [4] and list(glob.get_ydata()) == [14]


def test_stride_is_a_step_line_on_a_second_log2_axis():
    fig = plot_layers(SQUARE)
    right = fig.axes[1]
    stride = _line(right, "stride")
    assert stride.get_drawstyle() == "steps-post"
    np.testing.assert_array_equal(stride.get_ydata(), [1, 1, 2, 2, 4, np.nan])
    assert right.get_yscale() == "log"


def test_h_and_w_are_drawn_apart_only_when_they_differ():
    rows = [_row(0, (3, 5), (1, 1), input_shape=(40, 30)), _row(1, (7, 9), (2, 1), input_shape=(40, 30))]
    fig = plot_layers(rows)
    ax, right = fig.axes
    assert list(_line(ax, "size-h").get_ydata()) == [3, 7]
    assert list(_line(ax, "size-w").get_ydata()) == [5, 9]
    assert list(_line(right, "stride-h").get_ydata()) == [1, 2]
    assert list(_line(right, "stride-w").get_ydata()) == [1, 1]
    assert _line(ax, "input-size-h").get_ydata()[0] == 40 and _line(ax, "input-size-w").get_ydata()[0] == 30


def test_the_figure_has_one_size_and_few_ticks_at_any_depth(tmp_path):
    deep = [_row(d, (1 + 2 * d, 1 + 2 * d), (2 ** (d // 3), 2 ** (d // 3))) for d in range(300)]
    small, big = plot_layers(SQUARE[:3]), plot_layers(deep, save=tmp_path / "deep.png")
    assert tuple(small.get_size_inches()) == tuple(big.get_size_inches()) == FIGSIZE
    assert len(big.axes[0].get_xticks()) <= MAX_TICKS
    assert stage_ticks(deep)[0] == 0 and len(stage_ticks(deep)) == MAX_TICKS
    assert (tmp_path / "deep.png").stat().st_size > 0


def test_no_rows_and_an_unwritable_path_are_one_sentence(tmp_path):
    with pytest.raises(RFError, match="rows is empty"):
        plot_layers([])
    with pytest.raises(RFError, match=r"save=.*cannot be written"):
        plot_layers(SQUARE, save=tmp_path / "missing" / "p.png")


def test_stage_ticks_leave_out_a_change_too_close_to_the_last_tick():
    # 100 layers; the stride changes at depth 1 (too close to the first tick) and at 50
    rows = [_row(d, (3, 3), (1 if d == 0 else 2 if d < 50 else 4,) * 2) for d in range(100)]
    assert stage_ticks(rows) == [0, 50]


def _sweep_row(arch, layer, depth, size, *, shape=(224, 224, 3), status="ok", global_=False):
    row = {"key": f"{arch}|{layer}", "arch": arch, "input": list(shape), "layer": layer, "depth": depth}
    row.update(status=status, size_h=size[0] if size else None, size_w=size[1] if size else None)
    return row | {"global": global_}


def test_sweep_figure_has_one_line_per_architecture_ending_at_its_final_layer():
    rows = [
        _sweep_row("Deep", "c2", 2, (9, 11)),  # out of order: drawn by depth
        _sweep_row("Deep", "c0", 0, (3, 3)),
        _sweep_row("Deep", "c1", 1, (5, 5)),
        _sweep_row("Deep", "c3", 3, None, status="larger"),  # not measured: left out
        _sweep_row("Flat", "f0", 0, (7, 7), global_=True),
        {"arch": "Broken", "input": [224, 224, 3], "status": "error", "error": "no"},
    ]
    fig = plot_sweep(rows)
    ax = fig.axes[0]
    deep = _line(ax, "arch:Deep")
    assert list(deep.get_xdata()) == [0, 1, 2] and list(deep.get_ydata()) == [3, 5, 11]  # larger of h, w
    assert list(_line(ax, "arch:Flat").get_ydata()) == [7]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["Deep: 11", "Flat: 7 (global)"]  # largest final RF first
    assert ax.get_yscale() == "log" and tuple(fig.get_size_inches()) == FIGSIZE


def test_sweep_figure_names_the_input_when_an_architecture_has_several():
    rows = [_sweep_row("Net", "c", 0, (5, 5)), _sweep_row("Net", "c", 0, (5, 5), shape=(96, 96, 3))]
    ax = plot_sweep(rows).axes[0]
    assert {ln.get_gid() for ln in ax.lines if ln.get_gid()} == {"arch:Net 224x224x3", "arch:Net 96x96x3"}
    with pytest.raises(RFError, match="no measured layer rows"):
        plot_sweep([{"arch": "Broken", "input": [1, 1, 1], "status": "error"}])
