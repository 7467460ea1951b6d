"""Tests of rfjax.plot: what is drawn, in data coordinates, against closed-form RF values."""

from __future__ import annotations

import os

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from rfjax._types import HW, GradientMaps, ReceptiveField
from rfjax.errors import RFError
from rfjax.plot import gradient_at, rf_grid

# The receptivefield README net: 96x96 input, 16x16 grid, size 34, stride 4, offset 17.
README = ReceptiveField(
    size=HW(34, 34),
    stride=HW(4, 4),
    offset=HW(17, 17),
    padding=HW(0, 0),
    input_shape=HW(96, 96),
    output_shape=HW(16, 16),
    name="feature_grid",
)

# Non-square: every h value differs from its w value, so swapped axes are caught.
# Last cell (5, 6) is centred at (5.5 + 5*4, 3.5 + 6*2) = (25.5, 15.5): rows [20, 31) overhang H = 30.
SKEW = ReceptiveField(
    size=HW(11, 7),
    stride=HW(4, 2),
    offset=HW(5.5, 3.5),
    padding=HW(0, 0),
    input_shape=HW(30, 20),
    output_shape=HW(6, 7),
    name="skew",
)

# 'same' padding: offset 0.5 with size 9 (padding 4): cell (0, 0) starts at -4, outside the image.
SAME = ReceptiveField(
    size=HW(9, 9),
    stride=HW(1, 1),
    offset=HW(0.5, 0.5),
    padding=HW(4, 4),
    input_shape=HW(12, 12),
    output_shape=HW(12, 12),
)


def _patch(fig: Figure, gid: str) -> Rectangle:
    found = [p for p in fig.axes[0].patches if p.get_gid() == gid]
    assert len(found) == 1, [p.get_gid() for p in fig.axes[0].patches]
    return found[0]


def _box(r: Rectangle) -> tuple[float, float, float, float]:
    """(x, y, width, height) of a drawn rectangle, data coordinates (x = column, y = row)."""
    x, y = r.get_xy()
    return (float(x), float(y), float(r.get_width()), float(r.get_height()))


def _legend(fig: Figure) -> list[str]:
    leg = fig.axes[0].get_legend()
    assert leg is not None
    return [t.get_text() for t in leg.get_texts()]


# ------------------------------------------------------------------------------ rf_grid


def test_rf_grid_readme_rectangles_and_anchors() -> None:
    fig = rf_grid(README)
    assert isinstance(fig, Figure)
    assert _box(_patch(fig, "rf-0-0")) == (0.0, 0.0, 34.0, 34.0)
    assert _box(_patch(fig, "rf-8-8")) == (32.0, 32.0, 34.0, 34.0)
    # last cell (15, 15): centre 17 + 60 = 77, spans [60, 94)
    assert _box(_patch(fig, "rf-15-15")) == (60.0, 60.0, 34.0, 34.0)
    assert _legend(fig)[:3] == ["cell (0, 0)", "cell (8, 8)", "cell (15, 15)"]
    colours = {_patch(fig, g).get_edgecolor() for g in ("rf-0-0", "rf-8-8", "rf-15-15")}
    assert len(colours) == 3

    anchors = [
        c for c in fig.axes[0].collections if isinstance(c, PathCollection) and c.get_gid() == "anchors"
    ]
    assert len(anchors) == 1
    pts = anchors[0].get_offsets()
    assert pts.shape == (16 * 16, 2)
    ii, jj = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    expected = np.stack([17 + 4 * jj.ravel(), 17 + 4 * ii.ravel()], axis=1)
    np.testing.assert_array_equal(np.asarray(pts), expected)

    # blank canvas of the input size, in continuous coordinates
    (im,) = [a for a in fig.axes[0].get_images() if isinstance(a, AxesImage)]
    assert tuple(im.get_extent()) == (0, 96, 96, 0)
    assert im.get_array().shape[:2] == (96, 96)


def test_rf_grid_non_square_axes_not_swapped() -> None:
    fig = rf_grid(SKEW)
    ax = fig.axes[0]
    # cell (0, 0): rows [0, 11), cols [0, 7)  ->  x=0, y=0, width 7, height 11
    assert _box(_patch(fig, "rf-0-0")) == (0.0, 0.0, 7.0, 11.0)
    # centre cell (3, 3): centre (5.5 + 12, 3.5 + 6) = (17.5, 9.5)
    assert _box(_patch(fig, "rf-3-3")) == (6.0, 12.0, 7.0, 11.0)
    # last cell (5, 6): rows [20, 31) overhang H = 30; cols [12, 19)
    assert _box(_patch(fig, "rf-5-6")) == (12.0, 20.0, 7.0, 11.0)

    (anchors,) = [c for c in ax.collections if c.get_gid() == "anchors"]
    pts = np.asarray(anchors.get_offsets())
    assert pts.shape == (6 * 7, 2)
    ii, jj = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
    np.testing.assert_allclose(pts[:, 0], 3.5 + 2 * jj.ravel())  # x: w axis
    np.testing.assert_allclose(pts[:, 1], 5.5 + 4 * ii.ravel())  # y: h axis

    # limits: image extent plus a small margin, y inverted (origin upper); border drawn at the image edge
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert -2 < x0 < 0 and 20 < x1 < 22
    assert 30 < y0 < 32 and -2 < y1 < 0
    assert _box(_patch(fig, "image-border")) == (0.0, 0.0, 20.0, 30.0)


def test_rf_grid_same_padding_extends_beyond_image() -> None:
    fig = rf_grid(SAME, cells=[(0, 0), (11, 0)])
    assert _box(_patch(fig, "rf-0-0")) == (-4.0, -4.0, 9.0, 9.0)
    assert _box(_patch(fig, "rf-11-0")) == (-4.0, 7.0, 9.0, 9.0)
    assert [p.get_gid() for p in fig.axes[0].patches if p.get_gid().startswith("rf-")] == [
        "rf-0-0",
        "rf-11-0",
    ]
    x0, x1 = fig.axes[0].get_xlim()
    assert x0 > -4 and x1 < 16  # limits stay near the image, the overhang is clipped


def test_rf_grid_with_image_and_given_axes() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 20, 3), dtype=np.uint8)
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    out = rf_grid(SKEW, image, cells=[(1, 2)], ax=ax)
    assert out is fig
    (im,) = ax.get_images()
    assert tuple(im.get_extent()) == (0, 20, 30, 0)
    np.testing.assert_array_equal(np.asarray(im.get_array()), image)
    rf_patches = [p for p in ax.patches if p.get_gid().startswith("rf-")]
    assert len(rf_patches) == 1
    # cell (1, 2): centre (9.5, 7.5)  ->  rows [4, 15), cols [4, 11)
    assert _box(rf_patches[0]) == (4.0, 4.0, 7.0, 11.0)
    # a float image and a batch-of-one NHWC image are accepted too
    rf_grid(SKEW, rng.normal(size=(1, 30, 20, 1)))


def test_rf_grid_wrong_image_shape() -> None:
    with pytest.raises(RFError, match=r"image has shape \(20, 30, 3\).*\(30, 20\)"):
        rf_grid(SKEW, np.zeros((20, 30, 3)))
    with pytest.raises(RFError, match=r"image .*\(96, 96\)"):
        rf_grid(README, np.zeros((96, 95)))


def test_rf_grid_bad_cells() -> None:
    with pytest.raises(RFError, match=r"cells has cell \(6, 0\) outside the 6x7 grid"):
        rf_grid(SKEW, cells=[(0, 0), (6, 0)])


# ------------------------------------------------------------------------------ gradient_at

H, W = 10, 12  # input
HO, WO = 2, 3  # grid


def _maps(channels: int | None = None) -> GradientMaps:
    """Full-grid maps; cell (1, 2) has support rows [3, 7), cols [5, 11) (known rectangle)."""
    shape = (HO, WO, H, W) + ((channels,) if channels else ())
    m = np.zeros(shape)
    m[1, 2, 3:7, 5:11] = 1.0
    m[1, 2, 4, 6] = -2.0  # a negative value inside the support
    m[0, 0, 0:2, 0:3] = 0.5
    cells = np.array([(i, j) for i in range(HO) for j in range(WO)])
    return GradientMaps(maps=m, cells=cells, input_shape=HW(H, W), output_shape=HW(HO, WO), name="block3")


def test_gradient_at_support_box_and_heatmap() -> None:
    fig = gradient_at(_maps(), (1, 2))
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # heatmap + colorbar
    # support rows [3, 7), cols [5, 11): x=5, y=3, width 6, height 4
    assert _box(_patch(fig, "support")) == (5.0, 3.0, 6.0, 4.0)
    (im,) = ax.get_images()
    assert tuple(im.get_extent()) == (0, W, H, 0)
    np.testing.assert_array_equal(np.asarray(im.get_array()), _maps().maps[1, 2])
    title = ax.get_title()
    assert "(1, 2)" in title and "block3" in title
    assert not any(p.get_gid() == "rf" for p in ax.patches)

    fig0 = gradient_at(_maps(), (0, 0))
    assert _box(_patch(fig0, "support")) == (0.0, 0.0, 3.0, 2.0)


def test_gradient_at_channels_summed_as_abs() -> None:
    maps = _maps(channels=3)
    m = maps.maps
    m[..., 1] *= -1.0  # signed sum would cancel channel 0 against channel 1
    fig = gradient_at(maps, (1, 2))
    (im,) = fig.axes[0].get_images()
    np.testing.assert_array_equal(np.asarray(im.get_array()), np.abs(m[1, 2]).sum(axis=-1))
    assert _box(_patch(fig, "support")) == (5.0, 3.0, 6.0, 4.0)


def test_gradient_at_with_rf_and_sparse_cells() -> None:
    full = _maps()
    maps = GradientMaps(
        maps=full.maps[[1, 0], [2, 0]],
        cells=np.array([[1, 2], [0, 0]]),
        input_shape=full.input_shape,
        output_shape=full.output_shape,
        name=None,
    )
    rf = ReceptiveField(
        size=HW(4, 6), stride=HW(3, 4), offset=HW(2, 0), padding=HW(0, 3),
        input_shape=HW(H, W), output_shape=HW(HO, WO),
    )  # fmt: skip
    fig = gradient_at(maps, (1, 2), rf)
    # cell (1, 2): centre (2 + 3, 0 + 8) = (5, 8)  ->  rows [3, 7), cols [5, 11)
    assert _box(_patch(fig, "rf")) == (5.0, 3.0, 6.0, 4.0)
    assert _patch(fig, "rf").get_edgecolor() != _patch(fig, "support").get_edgecolor()
    labels = _legend(fig)
    assert len(labels) == 2 and labels[0].startswith("gradient support") and labels[1].startswith("fitted RF")
    assert "the output" in fig.axes[0].get_title()

    with pytest.raises(
        RFError, match=r"cell \(0, 1\) is inside the 2x3 grid but its gradient was not computed"
    ):
        gradient_at(maps, (0, 1))


def test_gradient_at_zero_map_has_no_box() -> None:
    fig = gradient_at(_maps(), (0, 1))
    assert not any(p.get_gid() == "support" for p in fig.axes[0].patches)
    assert "zero" in fig.axes[0].get_title()


@pytest.mark.parametrize("cell", [(2, 0), (0, 3), (-1, 0), (0.5, 1), (1, 2, 3)])
def test_gradient_at_bad_cell(cell) -> None:
    with pytest.raises(RFError, match=r"cell .* is outside the 2x3 grid"):
        gradient_at(_maps(), cell)


def test_gradient_at_rf_of_other_grid() -> None:
    with pytest.raises(RFError, match=r"^rf is for a \(16, 16\) grid"):
        gradient_at(_maps(), (0, 0), README)


# ------------------------------------------------------------------------------ save


def test_save_png(tmp_path) -> None:
    out = tmp_path / "grid.png"
    fig = rf_grid(README, save=out)
    assert out.is_file() and out.stat().st_size > 0
    pixels = matplotlib.image.imread(out)
    w_in, h_in = fig.get_size_inches()
    assert pixels.shape[:2] == (round(h_in * 100), round(w_in * 100))

    out2 = tmp_path / "grad.png"
    gradient_at(_maps(), (1, 2), save=str(out2))
    assert matplotlib.image.imread(out2).shape[:2] == (480, 640)


def test_save_missing_folder(tmp_path) -> None:
    bad = tmp_path / "nope" / "x.png"
    with pytest.raises(RFError, match=r"save=.*does not exist"):
        rf_grid(README, save=bad)
    with pytest.raises(RFError, match=r"save=.*does not exist"):
        gradient_at(_maps(), (0, 0), save=bad)
    assert not bad.parent.exists()


def test_save_to_folder_path(tmp_path) -> None:
    with pytest.raises(RFError, match=r"save=.*is a folder"):
        rf_grid(README, save=tmp_path)


def test_no_global_figures() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    rf_grid(README)
    gradient_at(_maps(), (1, 2))
    assert plt.get_fignums() == before


def test_save_not_writable_reported(tmp_path, monkeypatch) -> None:
    # the same check as above, runnable as root: the folder is reported as not writable
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(RFError, match=r"save=.*not writable"):
        gradient_at(_maps(), (0, 0), save=tmp_path / "x.png")
