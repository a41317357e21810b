"""What the encoding layer learned: where each codeword sits on an image and which
classes use it (the statistics come from :mod:`encnet_lite.context`)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..data import colorize
from .data import to_rgb
from .style import COLUMN_INCHES, FONT_PT, SMALL_PT, grid


def plot_codeword_maps(image: torch.Tensor, assignments: torch.Tensor,
                       mask: Optional[torch.Tensor] = None, palette=None,
                       code: Optional[int] = None, alpha: float = 0.6):
    """Where the encoding layer's codewords sit on an image.

    Panels: the image, its ground truth (when ``mask: (H, W)`` and ``palette`` are given),
    the most probable codeword argmax_k a_ik of each stride-8 cell, and (when ``code`` is
    given) codeword ``code``'s weights over the image. ``image: (3, H, W)`` normalised,
    ``assignments: (h, w, K)`` for that image.
    """
    a = assignments.detach().float().cpu()
    rgb = to_rgb(image)
    k = a.shape[-1]
    extent = (0, rgb.shape[1], rgb.shape[0], 0)
    panels = 2 + (mask is not None) + (code is not None)
    rows, cols = grid(panels, max_cols=2 if panels == 4 else 3)  # four panels: 2 x 2
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN_INCHES, rows * COLUMN_INCHES / cols
                                                  + 0.4 * rows))
    axes = list(np.ravel(axes))
    ax = axes.pop(0)
    ax.imshow(rgb)
    ax.set_title("image", fontsize=FONT_PT)
    if mask is not None:
        ax = axes.pop(0)
        ax.imshow(colorize(mask.cpu().numpy(), palette), interpolation="nearest")
        ax.set_title("ground truth", fontsize=FONT_PT)
    winner = a.argmax(-1).numpy()
    ax = axes.pop(0)
    ax.imshow(winner, cmap="tab20" if k <= 20 else "nipy_spectral", vmin=0, vmax=max(k - 1, 1),
              interpolation="nearest", extent=extent)
    ax.set_title(f"argmax$_k$ $a_{{ik}}$ ({len(np.unique(winner))} of K={k} win)", fontsize=FONT_PT)
    if code is not None:
        ax = axes.pop(0)
        ax.imshow(rgb)
        heat = ax.imshow(a[..., code].numpy(), cmap="magma", vmin=0, vmax=1, alpha=alpha,
                         interpolation="bilinear", extent=extent)
        ax.set_title(f"$a_{{ik}}$ of codeword {code}", fontsize=FONT_PT)
        fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04)
    for ax in fig.axes[:panels]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_winner_maps(image: torch.Tensor, mask: torch.Tensor, palette,
                     assignments: Mapping[str, torch.Tensor]):
    """The same image seen by several encoding layers: the image, its ground truth, and for
    each ``{label: (h, w, K)}`` of ``assignments`` the winning codeword argmax_k a_ik of
    each stride-8 cell, titled with how many codewords win somewhere. Two panels to a row.
    ``image: (3, H, W)`` normalised, ``mask: (H, W)`` labels.
    """
    rgb = to_rgb(image)
    extent = (0, rgb.shape[1], rgb.shape[0], 0)
    panels = 2 + len(assignments)
    rows, cols = grid(panels)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(COLUMN_INCHES, rows * (COLUMN_INCHES / cols + 0.4)))
    axes = list(axes.flat)
    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=FONT_PT)
    axes[1].imshow(colorize(mask.cpu().numpy(), palette), interpolation="nearest")
    axes[1].set_title("ground truth", fontsize=FONT_PT)
    for ax, (label, a) in zip(axes[2:], assignments.items()):
        k = a.shape[-1]
        winner = a.detach().float().cpu().argmax(-1).numpy()
        ax.imshow(winner, cmap="tab20" if k <= 20 else "nipy_spectral", vmin=0,
                  vmax=max(k - 1, 1), interpolation="nearest", extent=extent)
        ax.set_title(f"{label}: {len(np.unique(winner))} of K={k} win", fontsize=FONT_PT)
    for ax in axes[panels:]:
        fig.delaxes(ax)
    for ax in axes[:panels]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_class_codewords(usage: torch.Tensor, classes: Sequence[str]):
    """The class x codeword matrix ``usage: (num_classes, K)`` twice, stacked: as it is, and
    relative to each codeword's mean over the classes (:func:`plot_codeword_usage`); one
    row per class present, so the figure grows with the number of classes."""
    present = int((usage.sum(1) > 0).sum())
    fig, axes = plt.subplots(2, 1, figsize=(COLUMN_INCHES, 2 * (0.28 * present + 1.5)))
    plot_codeword_usage(usage, classes, ax=axes[0])
    plot_codeword_usage(usage, classes, relative=True, ax=axes[1])
    return fig


def plot_codeword_usage(usage: torch.Tensor, classes: Sequence[str], relative: bool = False,
                        ax=None):
    """Heatmap of ``usage: (num_classes, K)`` from :func:`encnet_lite.context.codeword_usage`
    (classes x codewords); absent classes are skipped.

    ``relative=True`` subtracts each codeword's mean over the present classes, so a
    codeword that every class uses alike fades out and class preferences stand out.
    """
    present = [c for c in range(usage.shape[0]) if usage[c].sum() > 0]
    data = usage[present]
    if relative:
        data = data - data.mean(0, keepdim=True)
    data = data.numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(min(0.28 * usage.shape[1] + 3, COLUMN_INCHES),
                                      0.28 * len(present) + 1.5))
    if relative:
        lim = max(float(np.abs(data).max()), 1e-6)
        im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        title = "class's mean assignment minus all classes' mean, per codeword"
    else:
        im = ax.imshow(data, aspect="auto", cmap="viridis")
        title = "mean assignment of each class's pixels to each codeword"
    ax.set_yticks(range(len(present)), [classes[c] for c in present], fontsize=SMALL_PT)
    ax.set_xlabel("codeword k")
    ax.set_title(title, fontsize=FONT_PT)
    ax.figure.colorbar(im, ax=ax, fraction=0.03)
    ax.figure.tight_layout()
    return ax.figure


HEALTH_LABELS = {
    "live_codewords": "live codewords (win >= 1 % of positions)",
    "assignment_perplexity": "assignment perplexity",
    "largest_scale_share": "share won by the largest-scale codeword",
}


def plot_codeword_health(histories: Mapping[str, Sequence[Mapping]],
                         keys: Sequence[str] = ("live_codewords", "largest_scale_share"),
                         num_codes: Optional[int] = None):
    """The codeword health during training: one panel per key of ``keys``, one line per run.

    ``histories``: ``{label: epoch records}`` as in ``metrics.jsonl`` (records without the
    key, e.g. FCN runs or epochs without validation, are skipped; a key that no record has
    gets no panel). ``num_codes`` draws the ceiling K on the live-codewords panel.
    """
    # A key no run records (the largest-scale share of a layer with one shared factor)
    # would be an empty panel: leave it out.
    keys = [k for k in keys if any(k in r for records in histories.values() for r in records)]
    # One panel to a row (their titles are long); a run keeps its colour in every panel.
    fig, axes = plt.subplots(len(keys), 1, figsize=(COLUMN_INCHES, 2.6 * len(keys)),
                             squeeze=False, sharex=True)
    for ax, key in zip(axes.flat, keys):
        for j, (label, records) in enumerate(histories.items()):
            points = [(r["epoch"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=label, color=f"C{j}")
        if key == "live_codewords" and num_codes:
            ax.axhline(num_codes, color="grey", ls="--", lw=1, label=f"K = {num_codes}")
        if key == "largest_scale_share":
            ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(HEALTH_LABELS.get(key, key), fontsize=FONT_PT)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=SMALL_PT, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
