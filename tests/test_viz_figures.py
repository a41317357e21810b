"""The figures test_viz.py leaves out, and the colours every figure paints masks with.

Checked on the artists (Agg backend): the data drawn, colours, limits and titles.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import bars as _bars  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from encnet_lite import viz  # noqa: E402
from encnet_lite.data import colorize  # noqa: E402
from encnet_lite.data.common import voc_palette  # noqa: E402
from encnet_lite.encoding import soft_assignment  # noqa: E402


def _rgb(colour):
    return np.asarray(to_rgba(colour))[:3]


# ------------------------------------------------------------------ palette and colorize


# The 21 colours of PASCAL VOC label PNGs (background, aeroplane, ..., tvmonitor), as the
# devkit's VOClabelcolormap.m produces them: literal values, not a second implementation.
VOC_COLOURS = [
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
    (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
    (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0),
    (0, 192, 0), (128, 192, 0), (0, 64, 128),
]


def test_voc_palette_is_the_devkit_colour_map():
    palette = voc_palette(256)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert [tuple(c) for c in palette[:21].tolist()] == VOC_COLOURS
    assert palette[255].tolist() == [224, 224, 192]  # void, the ignored border
    assert len({tuple(c) for c in palette.tolist()}) == 256  # every label its own colour
    np.testing.assert_array_equal(voc_palette(21), palette[:21])


def test_colorize_looks_up_each_label_and_whitens_ignored_pixels():
    palette = np.array([[10, 20, 30], [200, 100, 0], [0, 255, 7]], dtype=np.uint8)
    mask = np.array([[0, 1, 2], [255, 2, 0]])
    out = colorize(mask, palette)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    expected = [[palette[0], palette[1], palette[2]], [[255, 255, 255], palette[2], palette[0]]]
    np.testing.assert_array_equal(out, expected)
    torch_out = colorize(torch.from_numpy(mask), palette, ignore_color=(1, 2, 3))
    np.testing.assert_array_equal(torch_out[1, 0], [1, 2, 3])
    np.testing.assert_array_equal(torch_out[0], out[0])


def test_to_rgb_undoes_the_imagenet_normalisation_and_moves_channels_last():
    rgb = torch.rand(3, 4, 6)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]  # torchvision's ImageNet values
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out = viz.to_rgb((rgb - mean) / std)
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out, rgb.permute(1, 2, 0).numpy(), atol=1e-6)


# ---------------------------------------------------------------------------- context


def test_plot_gate_forms_draws_both_gains_and_the_gate_histogram():
    gammas = torch.tensor([0.05, 0.1, 0.12, 0.95])
    fig = viz.plot_gate_forms(gammas)
    ax, twin = fig.axes
    paper, official = ax.lines[:2]
    np.testing.assert_allclose(paper.get_ydata(), paper.get_xdata())  # gain gamma
    np.testing.assert_allclose(official.get_ydata(), 1 + official.get_xdata())  # 1 + gamma
    assert (paper.get_xdata()[0], paper.get_xdata()[-1]) == (0.0, 1.0)
    assert ax.get_ylim() == (0.0, 2.05)
    counts = [p.get_height() for p in twin.patches]
    assert len(counts) == 40 and sum(counts) == 4  # 40 bins over [0, 1]
    assert (counts[2], counts[4], counts[38]) == (1, 2, 1)  # 0.05 -> bin 2, 0.1 and 0.12 -> 4
    assert len(viz.plot_gate_forms().axes) == 1  # no histogram without gates


def test_plot_embedding_2d_projects_on_the_principal_components():
    # Two kinds separated along (1, 1, 0); small noise along the other axes.
    gen = torch.Generator().manual_seed(0)
    offset = torch.tensor([3.0, 3.0, 0.0])
    x = torch.cat([offset + 0.1 * torch.randn(5, 3, generator=gen),
                   -offset + 0.1 * torch.randn(5, 3, generator=gen)]).double()
    kinds = torch.tensor([0] * 5 + [1] * 5)
    ax = viz.plot_embedding_2d(x, kinds, ["beach", "street"], title="e").axes[0]
    first, second = (np.asarray(c.get_offsets()) for c in ax.collections)
    assert first.shape == second.shape == (5, 2)
    centred = x - x.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(first), np.abs((centred[:5] @ v[:2].T).numpy()), atol=1e-9)
    # PC 1 separates the kinds: opposite signs, about |offset| = 4.24 from the origin
    assert np.sign(first[:, 0]).tolist() == [np.sign(first[0, 0])] * 5
    assert (np.sign(second[:, 0]) == -np.sign(first[0, 0])).all()
    np.testing.assert_allclose(np.abs(first[:, 0]).mean(), 18 ** 0.5, rtol=0.05)
    assert ax.get_xlabel() == "PC 1 (100% of variance)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["beach", "street"]
    assert ax.get_title() == "e"


def test_plot_presence_draws_targets_as_bars_and_probabilities_as_dots():
    from encnet_lite.data import ContextScenes

    ds = ContextScenes(num_images=1, size=64, seed=0)
    image, mask = ds[0]
    classes = ds.classes
    targets = torch.zeros(len(classes))
    targets[mask.unique()[mask.unique() != 255]] = 1.0
    probs = torch.linspace(0.1, 0.9, len(classes))
    fig = viz.plot_presence(image, mask, classes, ds.palette, targets, probs)
    img_ax, mask_ax, bar_ax = fig.axes
    np.testing.assert_array_equal(mask_ax.images[0].get_array(), colorize(mask, ds.palette))
    np.testing.assert_allclose(img_ax.images[0].get_array(), viz.to_rgb(image))
    bars = _bars(bar_ax)
    assert [b.get_height() for b in bars] == targets.tolist()
    for b, colour in zip(bars, np.asarray(ds.palette) / 255):
        np.testing.assert_allclose(b.get_facecolor()[:3], colour)
    np.testing.assert_allclose(bar_ax.lines[0].get_ydata(), probs.numpy())
    assert [t.get_text() for t in bar_ax.get_xticklabels()] == list(classes)
    assert bar_ax.get_ylim() == (0.0, 1.05)


def test_plot_loss_share_draws_percentages_on_log_axes():
    areas, pixel, se = [10, 100, 1000], [0.01, 0.1, 0.5], [0.2, 0.2, 0.2]
    ax = viz.plot_loss_share(areas, pixel, se, total_pixels=4096, mark=100).axes[0]
    ce_line, se_line, marker = ax.lines
    np.testing.assert_allclose(ce_line.get_xydata(), [[10, 1.0], [100, 10.0], [1000, 50.0]])
    np.testing.assert_allclose(se_line.get_ydata(), [20.0, 20.0, 20.0])
    assert list(marker.get_xdata()) == [100, 100]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_xlabel() == "object area (pixels, of 4096)"


def test_plot_receptive_field_fades_what_the_pixel_does_not_see():
    image = torch.zeros(3, 8, 10)
    support = np.zeros((8, 10), dtype=bool)
    support[2:5, 3:7] = True
    ax = viz.plot_receptive_field(image, support, (3, 4), band=(0, 2), title="rf").axes[0]
    picture, veil = ax.images
    np.testing.assert_allclose(picture.get_array(), viz.to_rgb(image))
    alpha = np.asarray(veil.get_array())[..., 3]
    np.testing.assert_array_equal(alpha, np.where(support, 0.0, 0.45))
    cross = ax.lines[0]
    assert (list(cross.get_xdata()), list(cross.get_ydata())) == ([4], [3])  # (col, row)
    (band,) = ax.patches
    assert (band.get_xy(), band.get_width(), band.get_height()) == ((-0.5, -0.5), 10, 2)
    np.testing.assert_allclose(band.get_edgecolor()[:3], _rgb("tab:blue"))
    assert ax.get_title() == "rf"


def test_plot_context_schemes_outlines_the_window_the_bins_and_the_whole_image():
    image = torch.zeros(3, 48, 64)
    fig = viz.plot_context_schemes(image, (20, 40), window=9, bins=(4, 2, 1), stride=8)
    fcn, ppm, enc = fig.axes
    (window,) = fcn.patches
    assert (window.get_xy(), window.get_width()) == ((40 - 4 - 0.5, 20 - 4 - 0.5), 9)
    # the bins holding pixel (20, 40): 4x4 bins of 12 x 16 px, 2x2 of 24 x 32, the image
    got = [(p.get_xy(), p.get_width(), p.get_height()) for p in ppm.patches]
    assert got == [((31.5, 11.5), 16.0, 12.0), ((31.5, -0.5), 32.0, 24.0),
                   ((-0.5, -0.5), 64.0, 48.0)]
    assert enc.get_title() == "EncNet: all 48 cells -> e"  # 6 x 8 stride-8 cells


def test_plot_smoothing_sweep_draws_one_assignment_map_per_factor():
    codewords = torch.tensor([[-1.0, 0.0], [1.0, 0.5]])
    fig = viz.plot_smoothing_sweep(codewords, [0.1, 10.0], resolution=21, extent=2.0)
    assert [ax.get_title() for ax in fig.axes] == ["s = 0.1", "s = 10"]
    colours = torch.tensor(plt.get_cmap("tab10").colors[:2], dtype=torch.float64)
    axis = torch.linspace(-2.0, 2.0, 21, dtype=torch.float64)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([gx.ravel(), gy.ravel()], -1)[None]
    for ax, s in zip(fig.axes, (0.1, 10.0)):
        a = soft_assignment(grid, codewords.double(), torch.full((2,), -s, dtype=torch.float64))
        expected = (a[0] @ colours).reshape(21, 21, 3).numpy()
        np.testing.assert_allclose(ax.images[0].get_array(), expected, atol=1e-12)
    # the flat factor mixes colours, the sharp one nearly paints pure ones
    spread = [np.ptp(np.asarray(ax.images[0].get_array())[..., 0]) for ax in fig.axes]
    assert spread[1] > 2 * spread[0]


def test_add_class_legend_lists_the_given_classes_in_their_colours_and_the_ignore_label():
    fig = plt.figure()
    palette = np.array([[255, 0, 0], [0, 128, 0], [0, 0, 255]], dtype=np.uint8)
    viz.add_class_legend(fig, ["sky", "grass", "sea"], palette, [2, 0, 255, 7])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["sea", "sky", "ignore (255)"]
    handles = legend.legend_handles
    np.testing.assert_allclose(handles[0].get_facecolor()[:3], [0, 0, 1])
    np.testing.assert_allclose(handles[1].get_facecolor()[:3], [1, 0, 0])
    np.testing.assert_allclose(handles[2].get_facecolor()[:3], [1, 1, 1])


def test_codeword_explorer_first_view_is_the_first_image_and_codeword(monkeypatch):
    pytest.importorskip("ipywidgets")
    drawn = []
    monkeypatch.setattr(plt, "show", lambda: drawn.append(plt.gcf()))
    a = torch.zeros(2, 4, 4, 3)
    a[0, ..., 1] = 1.0  # image 0: codeword 1 everywhere
    a[1, ..., 2] = 1.0
    images, masks = torch.zeros(2, 3, 32, 32), torch.zeros(2, 32, 32, dtype=torch.long)
    widget = viz.codeword_explorer(images, masks, a, np.array([[0, 0, 0]], dtype=np.uint8))
    sliders = {w.description: w for w in widget.widget.children if hasattr(w, "description")}
    assert (sliders["image"].max, sliders["codeword"].max) == (1, 2)
    assert sliders["opacity"].value == pytest.approx(0.6)
    # panels: image, ground truth, winning codeword per cell, the chosen codeword's weights
    fig = drawn[-1]
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), np.ones((4, 4)))
    np.testing.assert_array_equal(fig.axes[3].images[1].get_array(), a[0, ..., 0].numpy())
    assert fig.axes[3].images[1].get_alpha() == pytest.approx(0.6)
    sliders["image"].value = 1  # moving a slider redraws that view
    np.testing.assert_array_equal(drawn[-1].axes[2].images[0].get_array(), np.full((4, 4), 2))
    sliders["codeword"].value = 2
    np.testing.assert_array_equal(drawn[-1].axes[3].images[1].get_array(), np.ones((4, 4)))


# ---------------------------------------------------------------- predictions and outputs


def test_show_predictions_paints_truth_and_prediction_rows_and_lists_their_classes():
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    images = torch.zeros(2, 3, 4, 5)
    masks = torch.tensor([[[0] * 5] * 4, [[1] * 5] * 4])
    masks[0, 0, 0] = 255
    preds = torch.full((2, 4, 5), 2)
    fig = viz.show_predictions(images, masks, preds, ["a", "b", "c"], palette, titles=["x", "y"])
    axes = np.array(fig.axes).reshape(3, 2)
    for col in range(2):
        np.testing.assert_array_equal(axes[1, col].images[0].get_array(),
                                      colorize(masks[col], palette))
        np.testing.assert_array_equal(axes[2, col].images[0].get_array(),
                                      colorize(preds[col], palette))
    assert [axes[0, c].get_title() for c in range(2)] == ["x", "y"]
    assert np.asarray(axes[1, 0].images[0].get_array())[0, 0].tolist() == [255, 255, 255]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c", "ignore (255)"]


def test_plot_encnet_outputs_draws_the_argmax_presence_sorted_gates_and_e():
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    main = torch.zeros(2, 3, 4, 4)
    main[1, 2, :2] = 5.0  # image 1: class 2 on the top half, class 0 below
    outputs = {"main": main, "se": torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, -2.0]]),
               "gamma": torch.tensor([[0.5] * 4, [0.1, 0.9, 0.4, 0.6]]),
               "e": torch.tensor([[0.0] * 4, [1.0, 0.0, 3.0, 2.0]])}
    fig = viz.plot_encnet_outputs(torch.zeros(3, 4, 4), outputs, ["a", "b", "c"], palette,
                                  index=1)
    _, pred_ax, se_ax, gamma_ax, e_ax = fig.axes
    expected = np.zeros((4, 4), dtype=int)
    expected[:2] = 2
    np.testing.assert_array_equal(pred_ax.images[0].get_array(), colorize(expected, palette))
    np.testing.assert_allclose([b.get_height() for b in _bars(se_ax)],
                               torch.sigmoid(outputs["se"][1]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(gamma_ax.lines[0].get_ydata(), [0.9, 0.6, 0.4, 0.1], rtol=1e-6)
    assert [b.get_height() for b in _bars(e_ax)] == [1.0, 0.0, 3.0, 2.0]
    assert gamma_ax.get_title() == "gamma: 4 channel gates"


def test_show_scene_construction_renders_each_kind_and_frames_the_look_alike_pixel():
    from encnet_lite.data import ContextScenes

    ds = ContextScenes(num_images=2, size=64, seed=0)
    fig = viz.show_scene_construction(ds, 1, window=9)
    axes = np.array(fig.axes).reshape(2, len(ds.scene_kinds))
    for k, name in enumerate(ds.scene_kinds):
        scene = ds.render(1, kind=k)
        np.testing.assert_array_equal(axes[0, k].images[0].get_array(), scene.image)
        np.testing.assert_array_equal(axes[1, k].images[0].get_array(),
                                      colorize(scene.mask, ds.palette))
        assert axes[0, k].get_title() == f"as a {name}"
        # the framed pixel is a look-alike pixel; the frame is 9 px centred on it
        (col,), (row,) = axes[0, k].lines[0].get_xdata(), axes[0, k].lines[0].get_ydata()
        assert scene.mask[row, col] in ds.context_classes
        (frame,) = axes[0, k].patches
        assert frame.get_xy() == (col - 4.5, row - 4.5) and frame.get_width() == 9
