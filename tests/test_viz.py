"""The figures draw exactly the numbers they are given (checked on the artists, Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import bars as _bars  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from encnet_lite import viz  # noqa: E402
from encnet_lite.data import ContextScenes  # noqa: E402


def _errorbar_halfwidths(ax):
    """Half lengths of the vertical error-bar segments, in drawing order."""
    out = []
    for coll in ax.collections:
        for seg in coll.get_segments():
            if len(seg) == 2 and seg[0][0] == seg[1][0]:
                out.append(abs(seg[1][1] - seg[0][1]) / 2)
    return out


def test_plot_ablation_draws_the_given_means_stds_seeds_and_cap_in_percent():
    # scores are fractions (ConfusionMatrix.compute); the panel shows percent
    seeds = {"fcn": {"mIoU": [0.60, 0.62, 0.64]}, "encnet": {"mIoU": [0.90, 0.94]}}
    stats = {"fcn": {"mIoU": (0.62, 0.02)}, "encnet": {"mIoU": (0.92, 0.028)}}
    fig = viz.plot_ablation(seeds, stats, {"fcn": "FCN"}, metrics=("mIoU",),
                            caps={"mIoU": 0.70})
    ax = fig.axes[0]
    bars = _bars(ax)
    np.testing.assert_allclose([b.get_height() for b in bars], [62.0, 92.0])
    np.testing.assert_allclose(_errorbar_halfwidths(ax), [2.0, 2.8])
    dots = [line for line in ax.lines if line.get_marker() == "."]
    np.testing.assert_allclose(dots[0].get_ydata(), [60.0, 62.0, 64.0])
    np.testing.assert_allclose(dots[1].get_ydata(), [90.0, 94.0])
    cap = [line for line in ax.lines if line.get_linestyle() == "--"]
    np.testing.assert_allclose(cap[0].get_ydata(), [70.0, 70.0])
    # the lowest seed sets the bottom (10 below it); a percentage axis ends at 100
    assert ax.get_ylim() == pytest.approx((50.0, 100.0))
    assert ax.get_title() == "mIoU (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FCN", "encnet"]
    assert [t.get_text() for t in ax.texts] == ["62.0", "92.0"]
    # one colour per run
    assert bars[0].get_facecolor()[:3] != bars[1].get_facecolor()[:3]


def test_plot_per_class_iou_bars_are_the_given_means_and_highlight_is_shaded():
    classes = ["sky", "boat", "car"]
    stats = {"a": [(0.10, 0.01), (0.20, 0.02), (0.30, 0.0)],  # fractions, drawn in percent
             "b": [(0.50, 0.05), (0.60, 0.005), (0.70, 0.015)]}
    fig = viz.plot_per_class_iou(classes, stats, {"a": "model A"}, highlight=[1])
    ax = fig.axes[0]
    bars = _bars(ax)
    np.testing.assert_allclose([b.get_height() for b in bars],
                               [10.0, 20.0, 30.0, 50.0, 60.0, 70.0])
    # two bars per class, side by side around the class's tick
    centres = [b.get_x() + b.get_width() / 2 for b in bars]
    np.testing.assert_allclose(centres, [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2])
    np.testing.assert_allclose(sorted(_errorbar_halfwidths(ax)),
                               sorted([1.0, 2.0, 0.0, 5.0, 0.5, 1.5]), atol=1e-12)
    shaded = [p for p in ax.patches if p not in bars]
    assert len(shaded) == 1 and shaded[0].get_facecolor()[:3] == to_rgba("gold")[:3]
    np.testing.assert_allclose(shaded[0].get_extents().x0, ax.transData.transform((0.55, 0))[0])
    weights = [t.get_fontweight() for t in ax.get_xticklabels()]
    assert weights[1] == "bold" and weights[0] != "bold"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["model A", "b"]
    assert ax.get_ylim() == (0.0, 100.0)  # a percentage axis ends at 100
    assert "shaded" in ax.get_title()
    # two-word class names break onto two lines; without a highlight, no "shaded" in the title
    ax = viz.plot_per_class_iou(["day sky", "bat"], {"a": stats["a"][:2]}, {}).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["day\nsky", "bat"]
    assert ax.get_title() == "per-class IoU"


def test_plot_k_sweep_draws_means_errors_and_each_seed():
    stats = [(0.64, 0.005), (0.80, 0.10), (0.94, 0.01)]  # fractions, drawn in percent
    seeds = [[0.635, 0.645], [0.70, 0.90], [0.93, 0.95]]
    fig = viz.plot_k_sweep([0, 16, 32], stats, seeds, cap=0.66)
    ax = fig.axes[0]
    mean_line = ax.lines[0]
    np.testing.assert_allclose(mean_line.get_ydata(), [64.0, 80.0, 94.0])
    np.testing.assert_allclose(_errorbar_halfwidths(ax), [0.5, 10.0, 1.0])
    dots = [line for line in ax.lines if line.get_marker() == "."]
    for dot, per_seed in zip(dots, seeds):
        np.testing.assert_allclose(dot.get_ydata(), 100 * np.asarray(per_seed))
    assert [list(d.get_xdata()) for d in dots] == [[0, 0], [1, 1], [2, 2]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["K = 0 (FCN)", "K = 16", "K = 32"]
    cap = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(cap) == 1 and list(cap[0].get_ydata()) == pytest.approx([66.0, 66.0])


def test_plot_history_plots_given_records_and_skips_missing_values():
    a = [{"epoch": 1, "loss": 2.0, "mIoU": None}, {"epoch": 2, "loss": 1.0, "mIoU": 0.5}]
    b = [{"epoch": 1, "loss": 3.0, "mIoU": 0.2}]
    fig = viz.plot_history({"a": a, "b": b}, keys=("loss", "mIoU"))
    loss_ax, miou_ax = fig.axes
    assert [list(line.get_xydata().ravel()) for line in loss_ax.lines] == [
        [1.0, 2.0, 2.0, 1.0], [1.0, 3.0]]
    assert [list(line.get_xydata().ravel()) for line in miou_ax.lines] == [
        [2.0, 0.5], [1.0, 0.2]]
    assert miou_ax.get_title() == "val mIoU" and loss_ax.get_title() == "loss"
    assert [t.get_text() for t in miou_ax.get_legend().get_texts()] == ["a", "b"]


def test_plot_history_takes_an_object_with_a_history_and_iterations():
    class Result:
        history = [{"epoch": 1, "loss": 4.0}, {"epoch": 2, "loss": 3.0}]

    ax = viz.plot_history(Result(), keys=("loss",)).axes[0]
    assert list(ax.lines[0].get_ydata()) == [4.0, 3.0]
    assert ax.get_legend() is None  # one run: no legend
    steps = [{"iteration": i, "lr": 0.1 / (i + 1)} for i in range(5)]
    ax = viz.plot_history(steps, keys=("lr",), steps=True).axes[0]
    assert ax.get_xlabel() == "iteration" and list(ax.lines[0].get_xdata()) == list(range(5))


def test_plot_codeword_usage_shows_present_classes_and_centres_relative_rows():
    usage = torch.tensor([[0.7, 0.3], [0.0, 0.0], [0.1, 0.9]])
    fig, axes = plt.subplots(1, 2)
    viz.plot_codeword_usage(usage, ["sky", "boat", "car"], ax=axes[0])
    viz.plot_codeword_usage(usage, ["sky", "boat", "car"], relative=True, ax=axes[1])
    absolute = axes[0].images[0].get_array()
    np.testing.assert_allclose(absolute, [[0.7, 0.3], [0.1, 0.9]])  # "boat" is absent
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["sky", "car"]
    relative = axes[1].images[0]
    np.testing.assert_allclose(relative.get_array(), [[0.3, -0.3], [-0.3, 0.3]], atol=1e-6)
    np.testing.assert_allclose(relative.get_clim(), (-0.3, 0.3), atol=1e-6)  # symmetric
    assert relative.get_cmap().name == "RdBu_r"


def test_plot_confusion_writes_each_cell_and_colours_by_value():
    m = np.array([[0.9, 0.1], [0.25, 0.75]])
    ax = viz.plot_confusion(m, ["sky", "sea"], ["sky", "sea"]).axes[0]
    assert [t.get_text() for t in ax.texts] == ["90%", "10%", "25%", "75%"]
    # dark cells get white text, light ones black
    assert [t.get_color() for t in ax.texts] == ["white", "black", "black", "white"]
    np.testing.assert_allclose(ax.images[0].get_array(), m)


def test_plot_class_frequency_bars_are_shares_in_percent_most_frequent_first():
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    ax = viz.plot_class_frequency(np.array([10, 0, 30]), ["a", "b", "c"], palette).axes[0]
    bars = _bars(ax)
    assert [b.get_height() for b in bars] == [75.0, 25.0]  # "b" has no pixel: left out
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c", "a"]
    assert bars[0].get_facecolor() == to_rgba((0, 0, 1))


def test_show_samples_paints_masks_with_the_palette():
    ds = ContextScenes(num_images=2, size=64, seed=0)
    fig = viz.show_samples(ds, [0, 1], legend=False)
    image, mask = ds[1]
    drawn = np.asarray(fig.axes[3].images[0].get_array())  # bottom row, second column
    expected = np.asarray(ds.palette)[mask.numpy().clip(max=len(ds.palette) - 1)]
    labelled = mask.numpy() != ds.ignore_index
    np.testing.assert_array_equal(drawn[labelled][:, :3], expected[labelled])
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), viz.to_rgb(image))


def test_markdown_table_rows():
    table = viz.markdown_table(["a", "b"], [(1, "x"), (2.5, "y")])
    assert table.data == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |"


def test_markdown_table_keeps_pipes_inside_cells():
    from markdown_it import MarkdownIt  # the parser myst-nb renders outputs with

    table = viz.markdown_table(["t", "mean ||x||²"], [(0.1, "a|b")])
    html = MarkdownIt("commonmark").enable("table").render(table.data)
    assert html.count("<th>") == 2 and html.count("<td>") == 2
    assert "<th>mean ||x||²</th>" in html and "<td>a|b</td>" in html



def test_plot_assignment_map_paints_each_codewords_region_in_its_colour():
    codewords = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    ax = viz.plot_assignment_map(codewords, 10.0, resolution=41, extent=3.0).axes[0]
    image = np.asarray(ax.images[0].get_array())  # (R, R, 3), origin lower
    colours = np.asarray(plt.get_cmap("tab10").colors[:2])
    mid = image.shape[0] // 2
    # at a large smoothing factor the assignment is hard: pure colours left and right...
    np.testing.assert_allclose(image[mid, 2], colours[0], atol=1e-6)
    np.testing.assert_allclose(image[mid, -3], colours[1], atol=1e-6)
    # ...and an even mix on the bisector between the two codewords
    np.testing.assert_allclose(image[mid, mid], colours.mean(0), atol=1e-6)
    stars = ax.collections[-1]
    np.testing.assert_allclose(stars.get_offsets(), codewords.numpy())
    assert ax.get_title() == "s = 10"


def test_plot_codeword_maps_shows_the_argmax_and_one_codewords_weights():
    a = torch.zeros(4, 4, 3)
    a[..., 0], a[:2, :, 0], a[:2, :, 2] = 1.0, 0.2, 0.8  # top rows: codeword 2, bottom: 0
    image = torch.zeros(3, 32, 32)
    fig = viz.plot_codeword_maps(image, a, code=2)
    winner, heat = fig.axes[1].images[0], fig.axes[2].images[1]
    np.testing.assert_array_equal(winner.get_array(), a.argmax(-1).numpy())
    assert "2 of K=3 win" in fig.axes[1].get_title()
    np.testing.assert_allclose(heat.get_array(), a[..., 2].numpy())
    assert heat.get_extent() == [0, 32, 32, 0]  # the stride-8 grid covers the whole image
    assert heat.get_clim() == (0, 1)


def test_plot_presence_predictions_marks_the_present_classes():
    probs = torch.tensor([[0.9, 0.1, 0.4], [0.2, 0.8, 0.7]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    ax = viz.plot_presence_predictions(probs, targets, ["a", "b", "c"]).axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), probs.numpy())
    dots = ax.collections[0].get_offsets()  # (column = class, row = image)
    assert sorted(map(tuple, np.asarray(dots).tolist())) == [(0, 0), (1, 1), (2, 1)]


def test_plot_encoding_benchmark_bars_and_skipped_labels():
    result = {"shape": {"D": 512, "K": 32, "H": 60, "W": 60}, "device_name": "cpu x",
              "rows": [{"batch": 1, "impl": "default", "time_ms": 10.0, "extra_peak_mib": 20.0},
                       {"batch": 1, "impl": "reference", "time_ms": 500.0,
                        "extra_peak_mib": 900.0},
                       {"batch": 4, "impl": "default", "time_ms": 40.0, "extra_peak_mib": 80.0},
                       {"batch": 4, "impl": "reference", "skipped": "over budget"}]}
    time_ax, memory_ax = viz.plot_encoding_benchmark(result).axes
    heights = [b.get_height() for b in _bars(time_ax)]
    assert heights[:3] == [10.0, 40.0, 500.0] and np.isnan(heights[3])  # default, reference
    assert [b.get_height() for b in _bars(memory_ax)][:3] == [20.0, 80.0, 900.0]
    assert "skipped" in [t.get_text() for t in time_ax.texts]
    assert time_ax.get_yscale() == "log"


def test_plot_gamma_heatmap_groups_rows_by_kind():
    gamma = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])  # kinds 1, 0, 1
    ax = viz.plot_gamma_heatmap(gamma, torch.tensor([1, 0, 1]), ["sea", "sky"]).axes[0]
    drawn = np.asarray(ax.images[0].get_array())
    # rows sorted by kind (the kind-0 image first); channels grouped by the kind opening
    # them most (channel 1 is kind 0's, channel 0 kind 1's)
    np.testing.assert_allclose(drawn, [[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]], atol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sea", "sky"]
    assert [line.get_ydata()[0] for line in ax.lines] == [0.5]  # one boundary between kinds


def test_plot_output_strides_draws_one_cell_per_prediction():
    fig = viz.plot_output_strides(torch.zeros(3, 64, 64), strides=(8, 32))
    fine, coarse = fig.axes
    assert len(fine.lines) == 2 * (64 // 8 + 1) and len(coarse.lines) == 2 * (64 // 32 + 1)
    assert "8 x 8 cells" in fine.get_title() and "2 x 2 cells" in coarse.get_title()


def test_confusion_text_colour_follows_the_cell_colour_not_the_largest_value():
    # all cells light (max 30 % on a 0-100 % scale): dark text everywhere
    m = np.array([[0.3, 0.1], [0.2, 0.25]])
    ax = viz.plot_confusion(m, ["a", "b"], ["a", "b"]).axes[0]
    assert {t.get_color() for t in ax.texts} == {"black"}


def test_figures_fit_the_column_and_keep_their_text_readable():
    from encnet_lite.viz import style

    ds = ContextScenes(num_images=6, size=64, seed=0)
    image = ds[0][0]
    outputs = {"main": torch.randn(1, 7, 64, 64), "se": torch.randn(1, 7),
               "gamma": torch.rand(1, 16), "e": torch.rand(1, 16)}
    masks = torch.stack([ds[i][1] for i in range(6)])
    figures = [viz.show_samples(ds, range(6)),
               viz.show_predictions(torch.stack([ds[i][0] for i in range(6)]), masks, masks,
                                    ds.classes, ds.palette),
               viz.show_scene_construction(ds, 0, window=27),
               viz.plot_context_schemes(image, (32, 32), window=27),
               viz.plot_output_strides(image),
               viz.plot_encnet_outputs(image, outputs, ds.classes, ds.palette)]
    for fig in figures:
        assert fig.get_figwidth() <= style.COLUMN_INCHES + 1e-6
        png = style.figure_png(fig)  # draws it: tick labels exist from then on
        assert style.smallest_text_pt(fig) >= style.SMALL_PT
        # the stamp the site check reads: points at the figure's dpi, in PNG pixels
        assert style.stamped_text_px(png) == pytest.approx(
            style.smallest_text_pt(fig) * fig.dpi / 72, abs=0.01)
        plt.close(fig)


def test_smallest_text_counts_only_drawn_text():
    from encnet_lite.viz import style

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    ax.set_title("title", fontsize=12)
    ax.tick_params(labelsize=7)
    style.figure_png(fig)
    assert style.smallest_text_pt(fig) == 7  # the tick labels
    ax.set_axis_off()  # hidden ticks do not count, the title still does
    assert style.stamped_text_px(style.figure_png(fig)) == pytest.approx(12 * fig.dpi / 72,
                                                                          abs=0.01)
    assert style.stamped_text_px(b"\x89PNG\r\n\x1a\n") is None
