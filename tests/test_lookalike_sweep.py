"""The ablation's ordering verdict and the look-alike sweep figure: values, not just no error."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from encnet_lite import ablation, viz  # noqa: E402


def rows(fcn, enc, encnet):
    """The three rows from mIoU in points (written so for reading), as fractions."""
    return {k: {"mIoU": [v / 100 for v in values]}
            for k, values in (("fcn", fcn), ("fcn_enc", enc), ("encnet", encnet))}


def test_a_step_holds_only_when_it_clears_3_points_and_the_spread():
    steps = ablation.ordering_steps(rows([64, 64, 64], [70, 71, 72], [95, 95, 95]))
    assert [(s["lo"], s["hi"]) for s in steps] == [("fcn", "fcn_enc"), ("fcn_enc", "encnet")]
    assert steps[0]["gain"] == pytest.approx(0.07) and steps[0]["spread"] == pytest.approx(0.01)
    assert steps[0]["holds"] and steps[1]["holds"]
    # +10 on average, but one seed of the middle row sits at the FCN's level: inside the spread
    wide = ablation.ordering_steps(rows([64, 64, 64], [64, 65, 93], [95, 95, 95]))
    assert wide[0]["gain"] == pytest.approx(0.10) and not wide[0]["holds"]
    # clear of the spread but under 3 points
    small = ablation.ordering_steps(rows([64, 64, 64], [66, 66, 66], [95, 95, 95]))
    assert small[0]["spread"] == pytest.approx(0, abs=1e-15) and not small[0]["holds"]
    assert ablation.ordering_steps({"fcn": {"mIoU": [0.01]}}) == []  # rows missing: no step


def test_lookalike_sweep_draws_each_rows_means_and_seeds():
    ranges = ["2-4", "3-6", "4-8"]
    points = {"fcn": [[64, 65], [], [63, 64]], "encnet": [[90, 94], [80, 82], [95, 96]]}
    per_seed = {k: [[v / 100 for v in vs] for vs in r] for k, r in points.items()}  # fractions
    stats = {k: [ablation.mean_std(v) if v else None for v in r] for k, r in per_seed.items()}
    fig = viz.plot_lookalike_sweep(ranges, per_seed, stats, {"fcn": "FCN", "encnet": "EncNet"},
                                   cap=0.657)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ranges
    assert ax.get_ylim()[1] == 100.0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == ["EncNet", "FCN", "context-blind cap"]
    means = [c for c in ax.containers]  # one errorbar container per row
    fcn_line = means[0].lines[0]
    np.testing.assert_allclose(fcn_line.get_ydata(), [64.5, 63.5])  # the unmeasured 3-6 skipped
    enc_line = means[1].lines[0]
    np.testing.assert_allclose(enc_line.get_ydata(), [92, 81, 95.5])
    assert fcn_line.get_xdata()[0] < enc_line.get_xdata()[0]  # offset side by side
    dots = [ln for ln in ax.lines if ln.get_linestyle() == "None" and ln.get_marker() == "."]
    assert sorted(float(v) for line in dots for v in line.get_ydata()) == pytest.approx(sorted(
        float(v) for r in points.values() for vs in r for v in vs))  # drawn in percent
    cap = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert cap and cap[0].get_ydata()[0] == pytest.approx(65.7)
