"""Figures of the chapter on the official model: the views and windows of the official
evaluation, codeword maps on images of any size, and a segmented photo with its legend
(the numbers come from :mod:`encnet_lite.pretrained` and :mod:`encnet_lite.inference`)."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from ..data import colorize
from .data import add_class_legend, legend_height, to_rgb
from .style import COLUMN_INCHES, FONT_PT, SMALL_PT


def plot_official_views(views: Sequence, image_size: Sequence[int]):
    """One panel per view (:class:`~encnet_lite.pretrained.OfficialView`), all on the same
    pixel scale: the view (grey), its windows (outlines) and the black padding each
    window gets beyond the view's border (hatched). ``image_size``: ``(H, W)`` of the
    original image, for the title."""
    cols = 3
    rows = -(-len(views) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN_INCHES, 2.3 * rows + 0.5), squeeze=False)
    crop = max(v.crop for v in views)
    extent_w = max(max(v.width, v.cols[-1][0] + crop) for v in views)
    extent_h = max(max(v.height, v.rows[-1][0] + crop) for v in views)
    colours = plt.get_cmap("tab10")
    for ax, view in zip(axes.flat, views):
        ax.add_patch(Rectangle((0, 0), view.width, view.height, facecolor="0.8",
                               edgecolor="0.3"))
        for n, ((r0, _), (c0, _)) in enumerate((r, c) for r in view.rows for c in view.cols):
            ax.add_patch(Rectangle((c0, r0), crop, crop, fill=False, linewidth=1.4,
                                   edgecolor=colours(n % 10)))
        for r0, _ in view.rows:  # the padding: window area beyond the view's border
            for c0, _ in view.cols:
                _hatch_padding(ax, view, r0, c0, crop)
        ax.set_xlim(0, extent_w)
        ax.set_ylim(extent_h, 0)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=SMALL_PT)
        ax.set_title(f"scale {view.scale:g}: {view.height} x {view.width}\n"
                     f"{view.windows} window{'s' * (view.windows > 1)}", fontsize=SMALL_PT)
    for ax in axes.flat[len(views):]:
        ax.set_axis_off()
    h, w = image_size
    fig.suptitle(f"official views of a {h}x{w} image: windows of {crop} px, black padding "
                 "hatched", fontsize=FONT_PT)
    fig.tight_layout()
    return fig


def _hatch_padding(ax, view, r0: int, c0: int, crop: int) -> None:
    """Hatch the part of the window at ``(r0, c0)`` that lies beyond the view."""
    right, bottom = c0 + crop, r0 + crop
    if right > view.width:
        ax.add_patch(Rectangle((view.width, r0), right - view.width, crop, fill=False,
                               hatch="///", linewidth=0, edgecolor="0.35"))
    if bottom > view.height:
        ax.add_patch(Rectangle((c0, view.height), min(right, view.width) - c0,
                               bottom - view.height, fill=False, hatch="///", linewidth=0,
                               edgecolor="0.35"))


def plot_codeword_winners(images: Sequence[torch.Tensor], assignments: Sequence[torch.Tensor],
                          masks: Sequence[torch.Tensor], palette, code: int,
                          titles: Optional[Sequence[str]] = None):
    """One row per image (sizes may differ): the image, its ground truth, the winning
    codeword argmax_k a_ik of each stride-8 cell, and codeword ``code``'s weights a_ik.
    ``images``: normalised ``(3, H, W)``; ``assignments``: ``(h, w, K)``; ``masks``: ``(H, W)``.
    """
    n = len(images)
    aspect = float(np.mean([im.shape[-2] / im.shape[-1] for im in images]))  # height / width
    fig, axes = plt.subplots(n, 4, figsize=(COLUMN_INCHES, n * aspect * COLUMN_INCHES / 4.6 + 0.6),
                             squeeze=False, layout="constrained")
    k = assignments[0].shape[-1]
    for i, (image, a, mask) in enumerate(zip(images, assignments, masks)):
        a = a.detach().float().cpu()
        rgb = to_rgb(image)
        extent = (0, rgb.shape[1], rgb.shape[0], 0)
        winner = a.argmax(-1).numpy()
        row = axes[i]
        row[0].imshow(rgb)
        row[1].imshow(colorize(mask.cpu().numpy(), palette), interpolation="nearest")
        row[2].imshow(winner, cmap="nipy_spectral", vmin=0, vmax=max(k - 1, 1),
                      interpolation="nearest", extent=extent)
        heat = row[3].imshow(a[..., code].numpy(), cmap="magma", vmin=0, vmax=1,
                             interpolation="nearest", extent=extent)
        row[0].set_ylabel(titles[i] if titles else f"image {i}", fontsize=SMALL_PT)
        row[2].set_xlabel(f"{len(np.unique(winner))} of {k} win", fontsize=SMALL_PT)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], ("image", "ground truth", r"argmax$_k\, a_{ik}$",
                                   f"$a_{{ik}}$, codeword {code}")):
        ax.set_title(title, fontsize=SMALL_PT)
    fig.colorbar(heat, ax=axes[:, 3].tolist(), shrink=0.8, aspect=25)
    return fig


def plot_segmentation(rgb: np.ndarray, labels: np.ndarray, classes: Sequence[str], palette,
                      alpha: float = 0.55, most: int = 10):
    """A photo beside its predicted classes blended over it, with a legend naming the
    ``most`` largest classes. ``rgb: (H, W, 3)`` uint8, ``labels: (H, W)`` class ids."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    ids = [int(c) for c in np.argsort(-counts, kind="stable")[:most] if counts[c]]
    height = COLUMN_INCHES / 2 * rgb.shape[0] / rgb.shape[1] + 0.4 + legend_height(len(ids))
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_INCHES, height))
    axes[0].imshow(rgb)
    axes[0].set_title("photo", fontsize=FONT_PT)
    axes[1].imshow(rgb)
    axes[1].imshow(colorize(labels, palette), alpha=alpha, interpolation="nearest")
    axes[1].set_title("predicted classes", fontsize=FONT_PT)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    add_class_legend(fig, classes, palette, ids)
    fig.subplots_adjust(bottom=legend_height(len(ids)) / height + 0.02)
    return fig
