"""Dataset figures: images and colour-coded masks, class frequencies, how a scene is built.

Also :func:`to_rgb` and :func:`add_class_legend`, which the other figure modules share.
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..cue_support import closest_lookalike_pixel
from ..data import colorize, denormalize
from .style import COLUMN_INCHES, FONT_PT, SMALL_PT


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """Normalised ``(3, H, W)`` tensor -> ``(H, W, 3)`` float array in [0, 1] for imshow."""
    return denormalize(image.detach().cpu().float()).permute(1, 2, 0).numpy()


def add_class_legend(fig, classes, palette, ids):
    """One legend row of class colours under the figure (``ids``: the classes to list)."""
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.asarray(palette[c]) / 255)
               for c in ids if c < len(classes)]
    names = [classes[c] for c in ids if c < len(classes)]
    if 255 in ids:
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="0.5"))
        names.append("ignore (255)")
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=SMALL_PT,
               frameon=False, bbox_to_anchor=(0.5, -0.02), handlelength=1.2,
               columnspacing=1.0)
    fig.subplots_adjust(bottom=0.12)


def legend_height(num_entries: int, per_row: int = 5) -> float:
    """Inches that :func:`add_class_legend` needs under a figure for ``num_entries``."""
    return 0.15 + 0.22 * -(-num_entries // per_row) if num_entries else 0.0


def show_samples(dataset, indices: Sequence[int], titles: Optional[Sequence[str]] = None,
                 size: float = 2.4, legend: bool = True):
    """Images (top row) and their colour-coded masks (bottom row; ignore = white).

    Panels are ``size`` inches, shrunk so that the figure fits the page width.
    """
    indices = list(indices)
    size = min(size, COLUMN_INCHES / len(indices))
    pairs = [dataset[i] for i in indices]
    present = sorted(set().union(*(set(mask.unique().tolist()) for _, mask in pairs)))
    below = legend_height(len(present)) if legend else 0.0
    height = 2 * size + 0.3 + below
    fig, axes = plt.subplots(2, len(indices), figsize=(size * len(indices), height),
                             squeeze=False)
    for col, (i, (image, mask)) in enumerate(zip(indices, pairs)):
        axes[0, col].imshow(to_rgb(image))
        axes[1, col].imshow(colorize(mask.numpy(), dataset.palette), interpolation="nearest")
        axes[0, col].set_title(titles[col] if titles else f"#{i}", fontsize=SMALL_PT)
    for ax in axes.ravel():
        ax.set_axis_off()
    if legend:
        add_class_legend(fig, dataset.classes, dataset.palette, present)
    fig.tight_layout(rect=(0, below / height, 1, 1), h_pad=0.4)  # room for the legend
    return fig


def plot_class_frequency(counts: np.ndarray, classes: Sequence[str],
                         palette: Optional[np.ndarray] = None, title: str = "", ax=None,
                         log: bool = False, skip_empty: bool = True):
    """Bar chart of each class's share of labelled pixels, most frequent first (classes
    with no pixel left out when ``skip_empty``)."""
    counts = np.asarray(counts, dtype=float)
    share = counts / max(counts.sum(), 1.0)
    order = [i for i in np.argsort(-share, kind="stable") if share[i] > 0 or not skip_empty]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(COLUMN_INCHES, max(4.0, 0.22 * len(order) + 1.5)), 3.2))
    colors = None if palette is None else np.asarray(palette)[order] / 255
    ax.bar(range(len(order)), 100 * share[order], color=colors, edgecolor="0.3", linewidth=0.3)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([classes[i] for i in order], rotation=90, fontsize=SMALL_PT)
    ax.set_ylabel("% of labelled pixels")
    ax.set_xlim(-0.6, len(order) - 0.4)
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 100)  # a share: the axis ends at 100 %
    ax.set_title(title, fontsize=FONT_PT)
    ax.figure.tight_layout()
    return ax.figure


def show_scene_construction(dataset, index: int, window: int):
    """One ContextScenes layout rendered as every scene kind, with the cue band, the
    look-alike boxes and a square receptive field ``window`` px wide (e.g.
    ``models.receptive_field(fcn)``) drawn around the look-alike pixel closest to the cue."""
    kinds = dataset.scene_kinds
    side = min(3.0, COLUMN_INCHES / len(kinds))
    # constrained layout keeps each label title clear of the image row above it
    fig, axes = plt.subplots(2, len(kinds), figsize=(side * len(kinds), 2 * side + 1.0),
                             squeeze=False, layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08)
    before = window // 2  # px of the window above / left of the pixel
    row, col = closest_lookalike_pixel(dataset, index)  # the same layout in every kind
    for k, name in enumerate(kinds):
        scene = dataset.render(index, kind=k)
        axes[0, k].imshow(scene.image)
        axes[1, k].imshow(colorize(scene.mask, dataset.palette), interpolation="nearest")
        for ax in axes[:, k]:
            ax.add_patch(plt.Rectangle((col - before - 0.5, row - before - 0.5),
                                       window, window, fill=False,
                                       edgecolor="red", linewidth=1.5, linestyle="--"))
            ax.plot([col], [row], "r+")
            ax.set_axis_off()
        axes[0, k].set_title(f"as a {name}", fontsize=FONT_PT)
        axes[1, k].set_title(f"label: {dataset.classes[dataset.context_classes[k]]}", fontsize=FONT_PT)
    fig.suptitle(f"same layout, three kinds: red = {window} px receptive field", fontsize=FONT_PT)
    return fig
