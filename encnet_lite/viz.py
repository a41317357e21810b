"""Plotting helpers the chapters call: palettes, overlays, dataset figures, widgets.

Each helper draws one figure with matplotlib and returns it; chapters call them plainly
(a static figure for the built site) and then wrap them in ``ipywidgets.interact``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

# --- datasets (encnet_lite.data) --------------------------------------------------------


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """Normalised ``(3, H, W)`` tensor -> ``(H, W, 3)`` float array in [0, 1] for imshow."""
    from .data import denormalize

    return denormalize(image.detach().cpu().float()).permute(1, 2, 0).numpy()


def show_samples(dataset, indices: Sequence[int], titles: Optional[Sequence[str]] = None,
                 size: float = 2.4, legend: bool = True):
    """Images (top row) and their colour-coded masks (bottom row; ignore = white)."""
    from .data import colorize

    indices = list(indices)
    fig, axes = plt.subplots(2, len(indices), figsize=(size * len(indices), 2 * size + 0.4),
                             squeeze=False)
    present = set()
    for col, i in enumerate(indices):
        image, mask = dataset[i]
        axes[0, col].imshow(to_rgb(image))
        axes[1, col].imshow(colorize(mask.numpy(), dataset.palette), interpolation="nearest")
        axes[0, col].set_title(titles[col] if titles else f"#{i}", fontsize=9)
        present |= set(mask.unique().tolist())
    for ax in axes.ravel():
        ax.set_axis_off()
    if legend:
        _legend(fig, dataset.classes, dataset.palette, sorted(present))
    fig.tight_layout()
    return fig


def _legend(fig, classes, palette, ids):
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.asarray(palette[c]) / 255)
               for c in ids if c < len(classes)]
    names = [classes[c] for c in ids if c < len(classes)]
    if 255 in ids:
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="0.5"))
        names.append("ignore (255)")
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.subplots_adjust(bottom=0.12)


def plot_class_frequency(counts: np.ndarray, classes: Sequence[str],
                         palette: Optional[np.ndarray] = None, title: str = "", ax=None,
                         log: bool = False, skip_empty: bool = True):
    """Bar chart of each class's share of labelled pixels, most frequent first (classes
    with no pixel left out when ``skip_empty``)."""
    counts = np.asarray(counts, dtype=float)
    share = counts / max(counts.sum(), 1.0)
    order = [i for i in np.argsort(-share, kind="stable") if share[i] > 0 or not skip_empty]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.22 * len(order) + 1.5), 3.2))
    colors = None if palette is None else np.asarray(palette)[order] / 255
    ax.bar(range(len(order)), 100 * share[order], color=colors, edgecolor="0.3", linewidth=0.3)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([classes[i] for i in order], rotation=90, fontsize=8)
    ax.set_ylabel("% of labelled pixels")
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def show_scene_construction(dataset, index: int, half_rf: int = 30):
    """One ContextScenes layout rendered as every scene kind, with the cue band, the
    look-alike boxes and the tiny FCN's receptive field (``2 * half_rf + 1`` px) drawn around
    the look-alike pixel closest to the cue."""
    from .data import colorize

    kinds = dataset.scene_kinds
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.0 * len(kinds), 6.2), squeeze=False)
    for k, name in enumerate(kinds):
        scene = dataset.render(index, kind=k)
        axes[0, k].imshow(scene.image)
        axes[1, k].imshow(colorize(scene.mask, dataset.palette), interpolation="nearest")
        r0, r1 = scene.band
        look_rows = np.nonzero(np.isin(scene.mask, dataset.context_classes).any(1))[0]
        row = look_rows.min() if r0 == 0 else look_rows.max()  # look-alike row nearest the cue
        col = int(np.nonzero(np.isin(scene.mask[row], dataset.context_classes))[0].mean())
        for ax in axes[:, k]:
            ax.add_patch(plt.Rectangle((col - half_rf - 0.5, row - half_rf - 0.5),
                                       2 * half_rf + 1, 2 * half_rf + 1, fill=False,
                                       edgecolor="red", linewidth=1.5, linestyle="--"))
            ax.plot([col], [row], "r+")
            ax.set_axis_off()
        axes[0, k].set_title(f"as a {name}", fontsize=10)
        axes[1, k].set_title(f"label: {dataset.classes[dataset.context_classes[k]]}", fontsize=10)
    fig.suptitle(f"same layout, three kinds: red = {2 * half_rf + 1} px receptive field",
                 fontsize=10)
    fig.tight_layout()
    return fig


# --- encoding layer (encnet_lite.encoding) ----------------------------------------------


def plot_assignment_map(codewords: torch.Tensor, smoothing, points: Optional[torch.Tensor] = None,
                        extent: float = 3.0, resolution: int = 160, ax=None, title=None):
    """Soft assignments of the plane to 2-D ``codewords`` (K, 2) at smoothing factor(s) s.

    Every location is painted with the codewords' colours mixed by its assignment
    weights a_k (pure colour = hard assignment, muddy = shared). ``smoothing`` is the
    paper's s > 0 (a float or K values); the layer's ``scale`` is -s. Optional
    ``points`` (N, 2) are drawn with their own mixed colours.
    """
    from .encoding import soft_assignment

    codewords = torch.as_tensor(codewords, dtype=torch.float64)
    k = codewords.shape[0]
    scale = -torch.as_tensor(smoothing, dtype=torch.float64).expand(k)
    colours = torch.tensor(plt.get_cmap("tab10").colors[:k], dtype=torch.float64)  # (K, 3)
    axis = torch.linspace(-extent, extent, resolution, dtype=torch.float64)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([gx.ravel(), gy.ravel()], -1)[None]  # (1, R*R, 2)
    image = (soft_assignment(grid, codewords, scale)[0] @ colours).reshape(resolution,
                                                                           resolution, 3)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.imshow(image.numpy(), origin="lower", extent=(-extent, extent, -extent, extent))
    if points is not None:
        points = torch.as_tensor(points, dtype=torch.float64)
        mix = soft_assignment(points[None], codewords, scale)[0] @ colours
        ax.scatter(points[:, 0], points[:, 1], c=mix.numpy(), s=18, edgecolors="k",
                   linewidths=0.6)
    ax.scatter(codewords[:, 0], codewords[:, 1], c=colours.numpy(), marker="*", s=260,
               edgecolors="k", linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is None:
        s = torch.as_tensor(smoothing).flatten()
        title = f"s = {float(s[0]):.3g}" if s.numel() == 1 else "s = " + ", ".join(
            f"{float(v):.2g}" for v in s)
    ax.set_title(title, fontsize=10)
    return ax.figure


def plot_smoothing_sweep(codewords: torch.Tensor, smoothings: Sequence[float],
                         points: Optional[torch.Tensor] = None, size: float = 2.8, **kwargs):
    """One :func:`plot_assignment_map` panel per smoothing factor, side by side."""
    fig, axes = plt.subplots(1, len(smoothings), figsize=(size * len(smoothings), size + 0.3),
                             squeeze=False)
    for ax, s in zip(axes[0], smoothings):
        plot_assignment_map(codewords, s, points=points, ax=ax, **kwargs)
    fig.tight_layout()
    return fig


def plot_encoding_benchmark(result: dict):
    """Bars of forward+backward time and extra peak memory from benchmarks/encoding.py's JSON."""
    batches = sorted({r["batch"] for r in result["rows"]})
    impls = ["default", "reference"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in zip(axes, ("time_ms", "extra_peak_mib"),
                              ("forward+backward time (ms)", "extra peak memory (MiB)")):
        for j, impl in enumerate(impls):
            rows = {r["batch"]: r for r in result["rows"] if r["impl"] == impl}
            xs = np.arange(len(batches)) + (j - 0.5) * 0.38
            values = [rows[b].get(key, np.nan) for b in batches]
            ax.bar(xs, values, width=0.36, label=impl, color=f"C{j}")
            for x, b, v in zip(xs, batches, values):
                if "skipped" in rows[b]:
                    ax.text(x, 0.03, "skipped", rotation=90, ha="center", va="bottom",
                            fontsize=8, transform=ax.get_xaxis_transform())
                else:
                    ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel(label)
    axes[0].legend(frameon=False, loc="upper left")
    fig.suptitle(f"encoding layer, D={result['shape']['D']}, K={result['shape']['K']}, "
                 f"{result['shape']['H']}x{result['shape']['W']}, {result['device_name']}",
                 fontsize=10)
    fig.tight_layout()
    return fig


# --- featuremap attention and SE-loss (encnet_lite.context, encnet_lite.losses) ----------


def plot_gate_forms(gammas: Optional[torch.Tensor] = None, ax=None):
    """Channel gain as a function of the gate: ``gamma`` (paper, ``x * gamma``) vs
    ``1 + gamma`` (official, ``relu(x + x * gamma)``); ``gammas`` (any shape) adds a
    histogram of actual gate values."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.2))
    g = np.linspace(0, 1, 101)
    ax.plot(g, g, label=r"paper: $x\,\gamma$ (gain $\gamma$)")
    ax.plot(g, 1 + g, label=r"official: relu$(x + x\,\gamma)$ (gain $1+\gamma$)")
    ax.axhline(1.0, color="0.6", linewidth=0.8, linestyle=":")
    if gammas is not None:
        values = torch.as_tensor(gammas).detach().float().flatten().numpy()
        twin = ax.twinx()
        twin.hist(values, bins=40, range=(0, 1), color="0.75", alpha=0.6)
        twin.set_yticks([])
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.set_xlabel(r"gate $\gamma_c$")
    ax.set_ylabel("gain applied to channel $c$")
    ax.set_ylim(0, 2.05)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
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
        _, ax = plt.subplots(figsize=(7.0, 3.6))
    im = ax.imshow(values[:, channels], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                   interpolation="nearest")
    bounds = np.flatnonzero(np.diff(sorted_kinds)) + 0.5
    for b in bounds:
        ax.axhline(b, color="white", linewidth=1.5)
    edges = np.concatenate([[-0.5], bounds, [len(sorted_kinds) - 0.5]])
    ax.set_yticks((edges[:-1] + edges[1:]) / 2, [kind_names[g] for g in groups])
    ax.set_xlabel(f"channel ({len(channels)} of {values.shape[1]}, grouped by the kind "
                  "that opens them most)")
    ax.set_title(title, fontsize=10)
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
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


def plot_presence(image: torch.Tensor, mask: torch.Tensor, classes: Sequence[str],
                  palette: np.ndarray, targets: torch.Tensor,
                  probs: Optional[torch.Tensor] = None):
    """Image, mask and the presence vector built from it (bars: target 0/1; dots: the
    predicted presence probabilities ``probs`` if given)."""
    from .data import colorize

    fig, axes = plt.subplots(1, 3, figsize=(10.0, 3.0),
                             gridspec_kw={"width_ratios": [1, 1, 1.6]})
    axes[0].imshow(to_rgb(image))
    axes[1].imshow(colorize(mask.cpu().numpy(), palette), interpolation="nearest")
    for ax, name in zip(axes[:2], ("image", "mask")):
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    t = torch.as_tensor(targets).float().cpu().numpy()
    colors = np.asarray(palette)[: len(classes)] / 255
    axes[2].bar(range(len(classes)), t, color=colors, edgecolor="0.3")
    if probs is not None:
        axes[2].plot(range(len(classes)), torch.as_tensor(probs).detach().cpu().numpy(), "ko",
                     label="predicted")
        axes[2].legend(frameon=False, fontsize=8)
    axes[2].set_xticks(range(len(classes)), classes, rotation=45, fontsize=8)
    axes[2].set_ylim(0, 1.1)
    axes[2].set_title("presence target $t_c$", fontsize=10)
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
    ax.legend(frameon=False, fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
