"""Results of training: predictions, confusion matrices, training curves, the ablation.

These functions draw numbers they are given; the means and standard deviations over
seeds come from :func:`encnet_lite.ablation.mean_std`, the curves from
:func:`encnet_lite.train.load_history`. Scores come as the library keeps them, fractions
(:meth:`~encnet_lite.metrics.ConfusionMatrix.compute`); the ablation plots draw them in
percent.
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..data import colorize
from .data import add_class_legend, legend_height, to_rgb
from .style import COLUMN_INCHES, FONT_PT, SMALL_PT, grid


def show_predictions(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor,
                     classes: Sequence[str], palette: np.ndarray,
                     titles: Optional[Sequence[str]] = None, size: float = 2.4):
    """Image, true mask and predicted mask (rows) for each of ``images: (B, 3, H, W)``
    (columns); ``masks, preds: (B, H, W)`` class ids."""
    n = len(images)
    size = min(size, (COLUMN_INCHES - 0.4) / n)
    present = sorted(set(torch.cat([masks.flatten(), preds.flatten()]).cpu().unique().tolist()))
    below = legend_height(len(present))
    height = 3 * size + 0.3 + below
    fig, axes = plt.subplots(3, n, figsize=(size * n + 0.4, height), squeeze=False)
    for col in range(n):
        axes[0, col].imshow(to_rgb(images[col]))
        for row, m in ((1, masks[col]), (2, preds[col])):
            axes[row, col].imshow(colorize(m.detach().cpu().numpy(), palette),
                                  interpolation="nearest")
        if titles:
            axes[0, col].set_title(titles[col], fontsize=SMALL_PT)
    for row, name in enumerate(("image", "truth", "prediction")):
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90,
                          ha="right", va="center", fontsize=SMALL_PT)
    for ax in axes.ravel():
        ax.set_axis_off()
    add_class_legend(fig, classes, palette, present)
    fig.tight_layout(rect=(0, below / height, 1, 1), h_pad=0.4)  # room for the legend
    return fig


def plot_confusion(matrix, rows: Sequence[str], cols: Sequence[str], ax=None, title: str = "",
                   fmt: str = "{:.0%}"):
    """A (row-normalised) confusion matrix as a heatmap with its numbers; rows = truth."""
    m = np.asarray(matrix, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(COLUMN_INCHES, 0.8 * len(cols) + 1.8),
                                      0.6 * len(rows) + 1.4))
    im = ax.imshow(m, cmap="Blues", vmin=0,
                   vmax=max(1.0, m.max()) if fmt.endswith("%}") else None)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            # text colour from the cell's own colour: light text on dark cells only
            r, g, b, _ = im.cmap(im.norm(m[i, j]))
            dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=SMALL_PT,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), cols, fontsize=SMALL_PT)
    ax.set_yticks(range(len(rows)), rows, fontsize=SMALL_PT)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=FONT_PT)
    ax.figure.tight_layout()
    return ax.figure


def plot_history(runs, keys: Sequence[str] = ("loss", "mIoU"), steps: bool = False):
    """Training curves: one panel per key, one line per run.

    ``runs``: a history (a list of per-epoch records, e.g. ``TrainResult.history`` or
    :func:`encnet_lite.train.load_history` of a run folder; ``steps=True``: per-iteration
    records, x = iteration), or ``{label: history}`` to compare runs. An object with a
    ``history`` attribute (a ``TrainResult``) stands for its history. Keys: ``loss``,
    ``main``, ``aux``, ``se``, ``lr``, ``pixAcc``, ``mIoU``, ``images_per_s``.
    """
    named = runs if isinstance(runs, dict) else {"": runs}
    rows, cols = grid(len(keys))  # more than two panels: stacked in rows
    fig, axes = plt.subplots(rows, cols, figsize=(min(3.4 * cols, COLUMN_INCHES), 3.0 * rows),
                             squeeze=False)
    for ax in axes.flat[len(keys):]:
        fig.delaxes(ax)
    axes = axes.reshape(1, -1)[:, :len(keys)]
    xkey = "iteration" if steps else "epoch"
    for label, run in named.items():
        records = list(getattr(run, "history", run))
        for ax, key in zip(axes[0], keys):
            pts = [(r[xkey], r[key]) for r in records if r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker="" if steps else "o", ms=3, label=label or None)
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel(xkey)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, iterations: whole
        ax.set_title(f"val {key}" if key in ("pixAcc", "mIoU") else key, fontsize=FONT_PT)
        ax.grid(alpha=0.3)
    if len(named) > 1:
        axes[0, -1].legend(fontsize=SMALL_PT)
    fig.tight_layout()
    return fig


def plot_ablation(seeds: dict, stats: dict, labels: dict,
                  metrics: Sequence[str] = ("mIoU", "pixAcc"), caps: Optional[dict] = None):
    """One panel per metric, in percent: mean over seeds (bar), standard deviation (error
    bar) and each seed (dot) for every run.

    ``seeds = {name: {metric: [fraction per seed]}}``, ``stats = {name: {metric: (mean,
    std)}}`` (fractions, e.g. from :func:`encnet_lite.ablation.mean_std`); ``labels = {name:
    tick label}``; ``caps = {metric: fraction}`` draws a dashed line (e.g. the context-blind
    cap).
    """
    names = list(seeds)
    fig, axes = plt.subplots(1, len(metrics),
                             figsize=(min(3.2 * len(metrics) + 1.5, COLUMN_INCHES), 3.4),
                             squeeze=False)
    colors = plt.cm.tab10(np.arange(len(names)))
    for ax, metric in zip(axes[0], metrics):
        for i, name in enumerate(names):
            values = 100 * np.asarray(seeds[name][metric], dtype=float)
            mean, std = (100 * v for v in stats[name][metric])
            ax.bar(i, mean, yerr=std, color=colors[i], alpha=0.75, capsize=4)
            ax.plot(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values,
                    "k.", ms=5)
            ax.text(i, min(mean + std + 0.5, 97.0), f"{mean:.1f}", ha="center",
                    va="bottom", fontsize=SMALL_PT)
        if caps and caps.get(metric) is not None:
            ax.axhline(100 * caps[metric], color="0.3", linestyle="--", linewidth=1,
                       label="context-blind cap")
            ax.legend(fontsize=SMALL_PT, loc="lower right")
        ax.set_xticks(range(len(names)), [labels.get(n, n) for n in names], fontsize=SMALL_PT,
                      rotation=15)
        low = min(np.nanmin(100 * np.asarray(seeds[n][metric], dtype=float)) for n in names)
        ax.set_ylim(max(0.0, low - 10), 100)  # a percentage: the axis ends at 100
        ax.set_title(f"{metric} (%)", fontsize=FONT_PT)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_per_class_iou(classes: Sequence[str], stats: dict, labels: dict,
                       highlight: Sequence[int] = (), ax=None):
    """Per-class IoU, mean over seeds with the standard deviation, one bar group per class.

    ``stats = {name: [(mean, std) per class]}`` (fractions, drawn in percent: e.g.
    :func:`encnet_lite.ablation.mean_std` of each class's IoUs over seeds); classes in
    ``highlight`` (the context-dependent ones) get a shaded background and a bold tick label.
    """
    names = list(stats)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(1.0 * len(classes) + 2.5, COLUMN_INCHES), 3.4))
    width = 0.8 / len(names)
    for c in highlight:
        ax.axvspan(c - 0.45, c + 0.45, color="gold", alpha=0.2, lw=0)
    for i, name in enumerate(names):
        mean, std = 100 * np.asarray(stats[name], dtype=float).reshape(len(classes), 2).T
        ax.bar(np.arange(len(classes)) + (i - (len(names) - 1) / 2) * width, mean, width,
               yerr=std, capsize=2, label=labels.get(name, name))
    # two-word names ("day sky") on two lines, so that neighbouring labels never overlap
    ax.set_xticks(range(len(classes)), [c.replace(" ", "\n") for c in classes],
                  fontsize=SMALL_PT)
    for c in highlight:
        ax.get_xticklabels()[c].set_fontweight("bold")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=SMALL_PT, loc="lower left", framealpha=0.9)
    title = "per-class IoU" + (" (shaded: decided by context)" if len(highlight) else "")
    ax.set_title(title, fontsize=FONT_PT)
    ax.grid(axis="y", alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_k_sweep(ks: Sequence[int], stats: Sequence[Sequence[float]],
                 seeds: Optional[Sequence[Sequence[float]]] = None, ax=None,
                 cap: Optional[float] = None, ylabel: str = "mIoU (%)"):
    """A score against the number of codewords K (categorical axis), in percent.

    ``stats``: ``(mean, std)`` over seeds per K (error bars); ``seeds``: the values per K
    (dots); ``cap``: a dashed reference line; all fractions (e.g. mIoU).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 3.2))
    x = np.arange(len(ks))
    mean, std = 100 * np.asarray(stats, dtype=float).reshape(len(ks), 2).T  # percent
    # one seed per K has no spread: no error bars then, rather than bars of length 0
    ax.errorbar(x, mean, yerr=std if std.any() else None, marker="o", capsize=4)
    for i, v in enumerate(seeds or []):
        ax.plot(np.full(len(v), i), 100 * np.asarray(v, dtype=float), "k.", ms=4, alpha=0.6)
    if cap is not None:
        ax.axhline(100 * cap, color="0.3", linestyle="--", linewidth=1,
                   label="context-blind cap")
        ax.legend(fontsize=SMALL_PT, loc="lower right")
    ax.set_xticks(x, [f"K = {k}" + (" (FCN)" if k == 0 else "") for k in ks], fontsize=SMALL_PT)
    ax.set_ylabel(ylabel)
    if "%" in ylabel:  # a percentage axis ends at 100, however long the error bars
        ax.set_ylim(top=min(ax.get_ylim()[1], 100.0))
    ax.set_title("number of codewords K", fontsize=FONT_PT)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_lookalike_sweep(ranges: Sequence[str], rows: dict, stats: dict, labels: dict,
                         cap: Optional[float] = None, ax=None):
    """A metric of each ablation row against how many look-alike objects an image holds.

    ``ranges``: x tick labels (e.g. ``"2-4"``); ``rows = {name: [values per seed, one list
    per range]}`` (an empty list: not measured at that range); ``stats = {name: [(mean,
    std) per range]}`` (e.g. :func:`encnet_lite.ablation.mean_std`); ``labels = {name: legend}``.
    Each row is a line through its means with one-standard-deviation bars and a dot per
    seed; ``cap``: a dashed reference line (the context-blind mIoU cap). Values are
    fractions (mIoU), drawn in percent.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(min(6.4, COLUMN_INCHES), 4.0))
    x = np.arange(len(ranges))
    for i, (name, per_range) in enumerate(rows.items()):
        offset = (i - (len(rows) - 1) / 2) * 0.08  # side by side, not on top of each other
        have = [j for j, v in enumerate(per_range) if len(v)]
        means = 100 * np.array([stats[name][j][0] for j in have], dtype=float)
        stds = 100 * np.array([stats[name][j][1] for j in have], dtype=float)
        line = ax.errorbar(x[have] + offset, means, yerr=stds,
                           marker="o", capsize=4, label=labels.get(name, name))
        for j in have:
            ax.plot(np.full(len(per_range[j]), x[j] + offset),
                    100 * np.asarray(per_range[j], dtype=float), ".",
                    color=line[0].get_color(), ms=5, alpha=0.7)
    if cap is not None:
        ax.axhline(100 * cap, color="0.3", linestyle="--", linewidth=1,
                   label="context-blind cap")
    ax.set_xticks(x, list(ranges))
    ax.set_xlabel("look-alike objects per image")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(top=100.0)  # a percentage
    # Below the axes: inside, it would hide a point whatever the corner.
    ax.legend(fontsize=SMALL_PT, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure
