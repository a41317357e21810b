"""Why context matters and what the Context Encoding Module outputs: receptive fields,
context schemes, output strides, the channel gates gamma, the encoded context e and the
SE-loss's presence vector (:mod:`encnet_lite.context`, :mod:`encnet_lite.losses`)."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..data import colorize
from .data import to_rgb
from .style import COLUMN_INCHES, FONT_PT, SMALL_PT


def plot_receptive_field(image: torch.Tensor, support, pixel: Sequence[int],
                         band: Optional[Sequence[int]] = None, title: str = "", ax=None):
    """The input pixels one output pixel depends on (``support: (H, W)`` bool, e.g. from
    :func:`encnet_lite.models.input_support`) outlined in red on the image; ``pixel = (row,
    col)``; ``band = (row0, row1)`` outlines the scene cue in blue."""
    support = np.asarray(support, dtype=bool)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.0, 4.0))
    ax.imshow(to_rgb(image))
    veil = np.zeros(support.shape + (4,))
    veil[~support] = (1.0, 1.0, 1.0, 0.45)  # fade what the pixel does not see
    ax.imshow(veil)
    ax.contour(support.astype(float), levels=[0.5], colors="red", linewidths=1.5)
    ax.plot([pixel[1]], [pixel[0]], "r+", ms=12, mew=2)
    if band is not None:
        w = support.shape[1]
        ax.add_patch(plt.Rectangle((-0.5, band[0] - 0.5), w, band[1] - band[0], fill=False,
                                   edgecolor="tab:blue", linewidth=2, linestyle="--"))
    ax.set_title(title, fontsize=FONT_PT)
    ax.set_axis_off()
    ax.figure.tight_layout()
    return ax.figure


def plot_context_schemes(image: torch.Tensor, pixel: Sequence[int], window: int,
                         bins: Sequence[int] = (6, 3, 2, 1), stride: int = 8):
    """Three ways a pixel's prediction gets context: a local window of ``window`` px (FCN;
    ASPP widens such windows), the pyramid-pooling bins containing the pixel (PSPNet: one
    average per bin, appended to the pixel's features), and the whole image summarised into
    one vector (EncNet: every stride-``stride`` descriptor feeds the encoding)."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    r, c = pixel
    fig, axes = plt.subplots(1, 3, figsize=(COLUMN_INCHES, 2.9))
    for ax in axes:
        ax.imshow(rgb)
        ax.plot([c], [r], "r+", ms=12, mew=2)
        ax.set_axis_off()
    half = window // 2
    axes[0].add_patch(plt.Rectangle((c - half - 0.5, r - half - 0.5), window, window,
                                    fill=False, edgecolor="red", linewidth=2))
    axes[0].set_title(f"FCN: a {window} px window", fontsize=SMALL_PT)
    colors = plt.cm.autumn(np.linspace(0, 0.8, len(bins)))
    for b, color in zip(bins, colors):
        bh, bw = h / b, w / b
        y0, x0 = int(r // bh) * bh, int(c // bw) * bw
        axes[1].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), bw, bh, fill=False,
                                        edgecolor=color, linewidth=2.5 - 0.3 * bins.index(b),
                                        label=f"{b}x{b} bin"))
    axes[1].legend(fontsize=SMALL_PT, loc="lower left", framealpha=0.85, handlelength=1.2,
                   borderpad=0.3, labelspacing=0.25)
    axes[1].set_title("pyramid pooling: bins", fontsize=SMALL_PT)
    for y in np.arange(0, h + 1, stride):
        axes[2].axhline(y - 0.5, color="white", linewidth=0.4, alpha=0.7)
    for x in np.arange(0, w + 1, stride):
        axes[2].axvline(x - 0.5, color="white", linewidth=0.4, alpha=0.7)
    axes[2].add_patch(plt.Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="red",
                                    linewidth=4))
    axes[2].set_title(f"EncNet: all {(h // stride) * (w // stride)} cells -> e",
                      fontsize=SMALL_PT)
    fig.tight_layout()
    return fig


def plot_output_strides(image: torch.Tensor, strides: Sequence[int] = (8, 16, 32)):
    """The image with the grid of feature cells each output stride leaves: one cell = one
    prediction before upsampling."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    side = min(3.2, COLUMN_INCHES / len(strides))
    fig, axes = plt.subplots(1, len(strides), figsize=(side * len(strides), side + 0.3),
                             squeeze=False)
    for ax, s in zip(axes[0], strides):
        ax.imshow(rgb)
        for y in np.arange(0, h + 1, s):
            ax.axhline(y - 0.5, color="white", linewidth=0.5, alpha=0.8)
        for x in np.arange(0, w + 1, s):
            ax.axvline(x - 0.5, color="white", linewidth=0.5, alpha=0.8)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"stride {s}: {-(-h // s)} x {-(-w // s)} cells", fontsize=SMALL_PT)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_gate_forms(gammas: Optional[torch.Tensor] = None, ax=None):
    """Channel gain as a function of the gate: ``gamma`` (paper, ``x * gamma``) vs
    ``1 + gamma`` (official, ``relu(x + x * gamma)``); ``gammas`` (any shape) adds a
    histogram of actual gate values."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.2))
    g = np.linspace(0, 1, 101)
    ax.plot(g, g, label=r"paper: $X\,\gamma$ (gain $\gamma$)")
    ax.plot(g, 1 + g, label=r"official: ReLU$(X + X\,\gamma)$ (gain $1+\gamma$)")
    ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    if gammas is not None:
        values = torch.as_tensor(gammas).detach().float().flatten().numpy()
        twin = ax.twinx()
        twin.hist(values, bins=40, range=(0, 1), color="0.75", alpha=0.6)
        twin.set_yticks([])
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.set_xlabel(r"gate $\gamma_d$")  # the book's notation: d indexes channels
    ax.set_ylabel("gain applied to channel $d$")
    ax.set_ylim(0, 2.05)
    ax.legend(frameon=False, fontsize=SMALL_PT, loc="upper left")
    ax.figure.tight_layout()
    return ax.figure


def _sorted_by_kind(values, kinds):
    values = torch.as_tensor(values).detach().float().cpu().numpy()
    kinds = torch.as_tensor(kinds).cpu().numpy()
    order = np.argsort(kinds, kind="stable")
    return values[order], kinds[order]


def plot_gamma_heatmap(gamma, kinds, kind_names: Sequence[str], ax=None, title: str = "",
                       max_channels: Optional[int] = None):
    """Heatmap of ``gamma: (N, C)``, one row per image grouped by scene ``kinds: (N,)``.

    Channels are ordered by the kind whose mean gate is highest there, then by how much
    the kinds disagree, so class-dependent gating shows up as blocks; ``max_channels``
    keeps only the most kind-dependent channels.
    """
    values, sorted_kinds = _sorted_by_kind(gamma, kinds)
    groups = np.unique(sorted_kinds)
    means = np.stack([values[sorted_kinds == g].mean(0) for g in groups])  # (G, C)
    spread = means.max(0) - means.min(0)
    channels = np.arange(values.shape[1])
    if max_channels is not None:
        channels = np.argsort(-spread, kind="stable")[:max_channels]
    channels = sorted(channels, key=lambda c: (means[:, c].argmax(), -spread[c]))
    if ax is None:
        _, ax = plt.subplots(figsize=(COLUMN_INCHES, 3.6))
    im = ax.imshow(values[:, channels], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                   interpolation="nearest")
    bounds = np.flatnonzero(np.diff(sorted_kinds)) + 0.5
    for b in bounds:
        ax.axhline(b, color="white", linewidth=1.5)
    edges = np.concatenate([[-0.5], bounds, [len(sorted_kinds) - 0.5]])
    ax.set_yticks((edges[:-1] + edges[1:]) / 2, [kind_names[g] for g in groups])
    ax.set_xlabel(f"channel ({len(channels)} of {values.shape[1]}, grouped by the kind "
                  "that opens them most)", fontsize=SMALL_PT)
    ax.set_title(title, fontsize=FONT_PT)
    ax.figure.colorbar(im, ax=ax, label=r"$\gamma$", fraction=0.04)
    ax.figure.tight_layout()
    return ax.figure


def plot_embedding_2d(features, kinds, kind_names: Sequence[str], ax=None, title: str = ""):
    """Scatter of the first two principal components of ``features: (N, D)``, coloured by
    ``kinds: (N,)``; the axis labels give each component's share of the variance."""
    x = torch.as_tensor(features).detach().double().cpu()
    x = x - x.mean(0)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].T).numpy()
    share = (s.pow(2) / s.pow(2).sum().clamp_min(1e-12)).numpy()
    kinds = torch.as_tensor(kinds).cpu().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(3.8, 3.4))
    for g in np.unique(kinds):
        pts = xy[kinds == g]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, label=kind_names[g], alpha=0.8)
    ax.set_xlabel(f"PC 1 ({100 * share[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * share[1]:.0f}%)")
    for axis in (ax.xaxis, ax.yaxis):  # few ticks, small values as "x 1e-4" on the axis
        axis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    ax.legend(frameon=False, fontsize=SMALL_PT)
    ax.set_title(title, fontsize=FONT_PT)
    ax.figure.tight_layout()
    return ax.figure


def plot_presence(image: torch.Tensor, mask: torch.Tensor, classes: Sequence[str],
                  palette: np.ndarray, targets: torch.Tensor,
                  probs: Optional[torch.Tensor] = None):
    """Image, mask and the presence vector built from it (bars: target 0/1; dots: the
    predicted presence probabilities ``probs`` if given)."""
    fig, axes = plt.subplots(1, 3, figsize=(COLUMN_INCHES, 2.6),
                             gridspec_kw={"width_ratios": [1, 1, 1.6]})
    axes[0].imshow(to_rgb(image))
    axes[1].imshow(colorize(mask.cpu().numpy(), palette), interpolation="nearest")
    for ax, name in zip(axes[:2], ("image", "mask")):
        ax.set_title(name, fontsize=FONT_PT)
        ax.set_axis_off()
    t = torch.as_tensor(targets).float().cpu().numpy()
    colors = np.asarray(palette)[: len(classes)] / 255
    axes[2].bar(range(len(classes)), t, color=colors, edgecolor="0.3")
    if probs is not None:
        axes[2].plot(range(len(classes)), torch.as_tensor(probs).detach().cpu().numpy(), "ko",
                     label="predicted")
        # outside the axes: inside, the marker sits on a bar and reads as a second dot
        axes[2].legend(frameon=False, fontsize=SMALL_PT, loc="upper left",
                       bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2, handletextpad=0.2)
    axes[2].set_xticks(range(len(classes)), classes, rotation=45, fontsize=SMALL_PT)
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title(r"presence target $\tau_c$", fontsize=FONT_PT)
    fig.tight_layout()
    return fig


def plot_loss_share(areas, pixel_shares, se_shares, total_pixels: int, mark: Optional[int] = None,
                    ax=None):
    """Share of a loss that one object's class carries, against the object's area in
    pixels: the per-pixel CE (grows with the area) vs the SE-loss (flat)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.loglog(areas, 100 * np.asarray(pixel_shares), "o-", label="per-pixel CE")
    ax.loglog(areas, 100 * np.asarray(se_shares), "s-", label="SE-loss")
    if mark is not None:
        ax.axvline(mark, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel(f"object area (pixels, of {total_pixels})")
    ax.set_ylabel("object's share of the loss (%)")
    ax.legend(frameon=False, fontsize=SMALL_PT)
    ax.figure.tight_layout()
    return ax.figure


def plot_encnet_outputs(image: torch.Tensor, outputs: dict, classes: Sequence[str],
                        palette: np.ndarray, index: int = 0):
    """One image's named EncNet outputs: ``main`` (argmax), ``se`` (presence
    probabilities), ``gamma`` (channel gates, sorted) and ``e`` (encoded context)."""
    fig = plt.figure(figsize=(COLUMN_INCHES, 5.4))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    axes = [*top.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.3]}),
            *bottom.subplots(1, 2)]
    axes[0].imshow(to_rgb(image))
    axes[0].set_title("image", fontsize=FONT_PT)
    pred = outputs["main"][index].argmax(0).cpu().numpy()
    axes[1].imshow(colorize(pred, palette), interpolation="nearest")
    axes[1].set_title("main: argmax", fontsize=FONT_PT)
    for ax in axes[:2]:
        ax.set_axis_off()
    if "se" in outputs:
        probs = torch.sigmoid(outputs["se"][index].float()).detach().cpu().numpy()
        axes[2].bar(range(len(classes)), probs, color=np.asarray(palette)[: len(classes)] / 255,
                    edgecolor="0.3")
        axes[2].set_xticks(range(len(classes)), classes, rotation=45, fontsize=SMALL_PT)
        axes[2].set_ylim(0, 1)
    axes[2].set_title("se: P(class present)", fontsize=FONT_PT)
    gamma = outputs["gamma"][index].float().detach().cpu().sort(descending=True).values
    axes[3].plot(gamma.numpy())
    axes[3].set_ylim(0, 1)
    axes[3].set_xlabel("channel (sorted)")
    axes[3].set_title(f"gamma: {len(gamma)} channel gates", fontsize=FONT_PT)
    e = outputs["e"][index].float().detach().cpu().numpy()
    axes[4].bar(range(len(e)), e, width=1.0)
    axes[4].set_xlabel("channel")
    axes[4].set_title("e: encoded context", fontsize=FONT_PT)
    for sub_fig in (top, bottom):
        sub_fig.subplots_adjust(wspace=0.35, bottom=0.22)
    return fig


def plot_presence_predictions(probabilities: torch.Tensor, targets: torch.Tensor,
                              classes: Sequence[str], ax=None):
    """SE-branch presence probabilities (colour) against the true presence (dots).

    ``probabilities, targets: (B, num_classes)``; one row per image.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(min(0.3 * len(classes) + 2, COLUMN_INCHES),
                                      0.35 * probabilities.shape[0] + 1.6))
    im = ax.imshow(probabilities.cpu().numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    rows, cols = torch.nonzero(targets.cpu() > 0.5, as_tuple=True)
    ax.scatter(cols.numpy(), rows.numpy(), s=14, c="tab:red", marker="o", label="present")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=SMALL_PT)
    ax.set_ylabel("image")
    ax.set_title("SE branch: P(present) (blue), truly present (red)", fontsize=FONT_PT)
    ax.legend(loc="upper right", fontsize=SMALL_PT, bbox_to_anchor=(1.0, 1.25))
    ax.figure.colorbar(im, ax=ax, fraction=0.03)
    ax.figure.tight_layout()
    return ax.figure
