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


# --- EncNet end to end (encnet_lite.models) -----------------------------------------------


def plot_output_strides(image: torch.Tensor, strides: Sequence[int] = (8, 16, 32)):
    """The image with the grid of feature cells each output stride leaves: one cell = one
    prediction before upsampling."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    fig, axes = plt.subplots(1, len(strides), figsize=(3.2 * len(strides), 3.4), squeeze=False)
    for ax, s in zip(axes[0], strides):
        ax.imshow(rgb)
        for y in np.arange(0, h + 1, s):
            ax.axhline(y - 0.5, color="white", linewidth=0.5, alpha=0.8)
        for x in np.arange(0, w + 1, s):
            ax.axvline(x - 0.5, color="white", linewidth=0.5, alpha=0.8)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"output stride {s}: {-(-h // s)} x {-(-w // s)} cells", fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_encnet_outputs(image: torch.Tensor, outputs: dict, classes: Sequence[str],
                        palette: np.ndarray, index: int = 0):
    """One image's named EncNet outputs: ``main`` (argmax), ``se`` (presence
    probabilities), ``gamma`` (channel gates, sorted) and ``e`` (encoded context)."""
    from .data import colorize

    fig, axes = plt.subplots(1, 5, figsize=(16.0, 3.2),
                             gridspec_kw={"width_ratios": [1, 1, 1.3, 1.3, 1.3]})
    axes[0].imshow(to_rgb(image))
    axes[0].set_title("image", fontsize=10)
    pred = outputs["main"][index].argmax(0).cpu().numpy()
    axes[1].imshow(colorize(pred, palette), interpolation="nearest")
    axes[1].set_title("main: argmax over classes", fontsize=10)
    for ax in axes[:2]:
        ax.set_axis_off()
    if "se" in outputs:
        probs = torch.sigmoid(outputs["se"][index].float()).detach().cpu().numpy()
        axes[2].bar(range(len(classes)), probs, color=np.asarray(palette)[: len(classes)] / 255,
                    edgecolor="0.3")
        axes[2].set_xticks(range(len(classes)), classes, rotation=45, fontsize=8)
        axes[2].set_ylim(0, 1)
    axes[2].set_title("se: sigmoid = P(class present)", fontsize=10)
    gamma = outputs["gamma"][index].float().detach().cpu().sort(descending=True).values
    axes[3].plot(gamma.numpy())
    axes[3].set_ylim(0, 1)
    axes[3].set_xlabel("channel (sorted)")
    axes[3].set_title(f"gamma: {len(gamma)} channel gates", fontsize=10)
    e = outputs["e"][index].float().detach().cpu().numpy()
    axes[4].bar(range(len(e)), e, width=1.0)
    axes[4].set_xlabel("channel")
    axes[4].set_title("e: encoded context", fontsize=10)
    fig.tight_layout()
    return fig


# --- training (encnet_lite.train) ----------------------------------------------------------


def plot_history(runs, keys: Sequence[str] = ("loss", "mIoU"), steps: bool = False):
    """Training curves: one panel per key, one line per run.

    ``runs``: a history (list of per-epoch dicts, ``TrainResult.history``), a run folder
    (its ``metrics.jsonl``; ``steps=True``: ``iterations.jsonl``, x = iteration), a
    ``TrainResult``, or ``{label: any of those}`` to compare runs. Keys: ``loss``, ``main``,
    ``aux``, ``se``, ``lr``, ``pixAcc``, ``mIoU``, ``images_per_s``.
    """
    from pathlib import Path

    from .train import load_history

    def records(run):
        if hasattr(run, "history"):
            run = run.out if steps else run.history
        if isinstance(run, (str, Path)):
            return load_history(run, "iterations.jsonl" if steps else "metrics.jsonl")
        return list(run)

    named = runs if isinstance(runs, dict) else {"": runs}
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    xkey = "iteration" if steps else "epoch"
    for label, run in named.items():
        recs = records(run)
        for ax, key in zip(axes[0], keys):
            pts = [(r[xkey], r[key]) for r in recs if r.get(key) is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker="" if steps else "o", ms=3, label=label or None)
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel(xkey)
        ax.set_title(f"val {key}" if key in ("pixAcc", "mIoU") else key, fontsize=10)
        ax.grid(alpha=0.3)
    if len(named) > 1:
        axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- codewords (what the encoding layer learned; the PASCAL-Context chapter) -----------------


@torch.no_grad()
def codeword_usage(assignments: torch.Tensor, masks: torch.Tensor, num_classes: int,
                   ignore_index: int = 255) -> torch.Tensor:
    """Mean soft assignment of each class's pixels to each codeword.

    ``assignments: (B, h, w, K)`` on the stride-8 grid, ``masks: (B, H, W)`` full size
    (sampled nearest onto the grid) -> ``(num_classes, K)``; row ``c`` sums to 1 when class
    ``c`` occurs, and is 0 otherwise.
    """
    b, h, w, k = assignments.shape
    grid = torch.nn.functional.interpolate(masks[:, None].float(), size=(h, w), mode="nearest")
    labels = grid.long().reshape(-1)
    weights = assignments.reshape(-1, k).float()
    keep = labels != ignore_index
    labels, weights = labels[keep], weights[keep]
    sums = torch.zeros(num_classes, k).index_add_(0, labels.cpu(), weights.cpu())
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1)
    return sums / counts[:, None]


def plot_codeword_maps(image: torch.Tensor, assignments: torch.Tensor,
                       mask: Optional[torch.Tensor] = None, palette=None,
                       code: Optional[int] = None, alpha: float = 0.6):
    """Where the encoding layer's codewords sit on an image.

    Panels: the image, its ground truth (when ``mask: (H, W)`` and ``palette`` are given),
    the most probable codeword argmax_k a_ik of each stride-8 cell, and (when ``code`` is
    given) codeword ``code``'s weights over the image. ``image: (3, H, W)`` normalised,
    ``assignments: (h, w, K)`` for that image.
    """
    from .data import colorize

    a = assignments.detach().float().cpu()
    rgb = to_rgb(image)
    k = a.shape[-1]
    extent = (0, rgb.shape[1], rgb.shape[0], 0)
    panels = 2 + (mask is not None) + (code is not None)
    fig, axes = plt.subplots(1, panels, figsize=(3.1 * panels, 3.3))
    axes = list(axes)
    ax = axes.pop(0)
    ax.imshow(rgb)
    ax.set_title("image", fontsize=10)
    if mask is not None:
        ax = axes.pop(0)
        ax.imshow(colorize(mask.cpu().numpy(), palette), interpolation="nearest")
        ax.set_title("ground truth", fontsize=10)
    winner = a.argmax(-1).numpy()
    ax = axes.pop(0)
    ax.imshow(winner, cmap="tab20" if k <= 20 else "nipy_spectral", vmin=0, vmax=max(k - 1, 1),
              interpolation="nearest", extent=extent)
    ax.set_title(f"argmax$_k$ $a_{{ik}}$ ({len(np.unique(winner))} of K={k} win)", fontsize=10)
    if code is not None:
        ax = axes.pop(0)
        ax.imshow(rgb)
        heat = ax.imshow(a[..., code].numpy(), cmap="magma", vmin=0, vmax=1, alpha=alpha,
                         interpolation="bilinear", extent=extent)
        ax.set_title(f"$a_{{ik}}$ of codeword {code}", fontsize=10)
        fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04)
    for ax in fig.axes[:panels]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_codeword_usage(usage: torch.Tensor, classes: Sequence[str], relative: bool = False,
                        ax=None):
    """Heatmap of :func:`codeword_usage` (classes x codewords); absent classes are skipped.

    ``relative=True`` subtracts each codeword's mean over the present classes, so a
    codeword that every class uses alike fades out and class preferences stand out.
    """
    present = [c for c in range(usage.shape[0]) if usage[c].sum() > 0]
    data = usage[present]
    if relative:
        data = data - data.mean(0, keepdim=True)
    data = data.numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(min(0.28 * usage.shape[1] + 3, 12),
                                      0.28 * len(present) + 1.5))
    if relative:
        lim = max(float(np.abs(data).max()), 1e-6)
        im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        title = "class's mean assignment minus all classes' mean, per codeword"
    else:
        im = ax.imshow(data, aspect="auto", cmap="viridis")
        title = "mean assignment of each class's pixels to each codeword"
    ax.set_yticks(range(len(present)), [classes[c] for c in present], fontsize=8)
    ax.set_xlabel("codeword k")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(im, ax=ax, fraction=0.03)
    ax.figure.tight_layout()
    return ax.figure


def plot_presence_predictions(probabilities: torch.Tensor, targets: torch.Tensor,
                              classes: Sequence[str], ax=None):
    """SE-branch presence probabilities (colour) against the true presence (dots).

    ``probabilities, targets: (B, num_classes)``; one row per image.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(min(0.3 * len(classes) + 2, 14),
                                      0.35 * probabilities.shape[0] + 1.6))
    im = ax.imshow(probabilities.cpu().numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    rows, cols = torch.nonzero(targets.cpu() > 0.5, as_tuple=True)
    ax.scatter(cols.numpy(), rows.numpy(), s=14, c="tab:red", marker="o", label="present")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_ylabel("image")
    ax.set_title("SE branch: predicted presence probability (blue), true presence (red)",
                 fontsize=10)
    ax.legend(loc="upper right", fontsize=8, bbox_to_anchor=(1.0, 1.25))
    ax.figure.colorbar(im, ax=ax, fraction=0.03)
    ax.figure.tight_layout()
    return ax.figure


def codeword_explorer(images: torch.Tensor, masks: torch.Tensor, assignments: torch.Tensor,
                      palette):
    """An ipywidgets explorer over :func:`plot_codeword_maps`: image, codeword, opacity.

    On the static site it shows its first view; in a live kernel the sliders redraw.
    """
    import ipywidgets as widgets

    def show(image: int = 0, codeword: int = 0, opacity: float = 0.6):
        fig = plot_codeword_maps(images[image], assignments[image], masks[image], palette,
                                 code=codeword, alpha=opacity)
        plt.show()
        return fig

    return widgets.interact(
        show,
        image=widgets.IntSlider(0, 0, len(images) - 1, description="image"),
        codeword=widgets.IntSlider(0, 0, assignments.shape[-1] - 1, description="codeword"),
        opacity=widgets.FloatSlider(0.6, min=0.0, max=1.0, step=0.1, description="opacity"),
    )


# --- why context, and the ablation (chapters 01 and 06) ------------------------------------


def show_predictions(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor,
                     classes: Sequence[str], palette: np.ndarray,
                     titles: Optional[Sequence[str]] = None, size: float = 2.4):
    """Image, true mask and predicted mask (rows) for each of ``images: (B, 3, H, W)``
    (columns); ``masks, preds: (B, H, W)`` class ids."""
    from .data import colorize

    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(size * n, 3 * size + 0.5), squeeze=False)
    present = set()
    for col in range(n):
        axes[0, col].imshow(to_rgb(images[col]))
        for row, m in ((1, masks[col]), (2, preds[col])):
            m = m.detach().cpu().numpy()
            axes[row, col].imshow(colorize(m, palette), interpolation="nearest")
            present |= set(np.unique(m).tolist())
        if titles:
            axes[0, col].set_title(titles[col], fontsize=9)
    for row, name in enumerate(("image", "truth", "prediction")):
        axes[row, 0].text(-0.08, 0.5, name, transform=axes[row, 0].transAxes, rotation=90,
                          ha="right", va="center", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    _legend(fig, classes, palette, sorted(present))
    fig.tight_layout()
    return fig


def plot_confusion(matrix, rows: Sequence[str], cols: Sequence[str], ax=None, title: str = "",
                   fmt: str = "{:.0%}"):
    """A (row-normalised) confusion matrix as a heatmap with its numbers; rows = truth."""
    m = np.asarray(matrix, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.8 * len(cols) + 1.8, 0.6 * len(rows) + 1.4))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1.0, m.max()) if fmt.endswith("%}") else None)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if m[i, j] > 0.6 * m.max() else "black")
    ax.set_xticks(range(len(cols)), cols, fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    ax.figure.tight_layout()
    return ax.figure


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
    ax.set_title(title, fontsize=10)
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
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.9))
    for ax in axes:
        ax.imshow(rgb)
        ax.plot([c], [r], "r+", ms=12, mew=2)
        ax.set_axis_off()
    half = window // 2
    axes[0].add_patch(plt.Rectangle((c - half - 0.5, r - half - 0.5), window, window,
                                    fill=False, edgecolor="red", linewidth=2))
    axes[0].set_title(f"FCN: a {window} px window", fontsize=10)
    colors = plt.cm.autumn(np.linspace(0, 0.8, len(bins)))
    for b, color in zip(bins, colors):
        bh, bw = h / b, w / b
        y0, x0 = int(r // bh) * bh, int(c // bw) * bw
        axes[1].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), bw, bh, fill=False,
                                        edgecolor=color, linewidth=2.5 - 0.3 * bins.index(b),
                                        label=f"{b}x{b} bin"))
    axes[1].legend(fontsize=7, loc="lower left", framealpha=0.8)
    axes[1].set_title("pyramid pooling: bin averages", fontsize=10)
    for y in np.arange(0, h + 1, stride):
        axes[2].axhline(y - 0.5, color="white", linewidth=0.4, alpha=0.7)
    for x in np.arange(0, w + 1, stride):
        axes[2].axvline(x - 0.5, color="white", linewidth=0.4, alpha=0.7)
    axes[2].add_patch(plt.Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="red",
                                    linewidth=4))
    axes[2].set_title(f"EncNet: all {(h // stride) * (w // stride)} cells -> e -> gates",
                      fontsize=10)
    fig.tight_layout()
    return fig


def plot_ablation(runs: dict, labels: dict, metrics: Sequence[str] = ("miou", "pixacc"),
                  caps: Optional[dict] = None):
    """One panel per metric: mean over seeds (bar), standard deviation (error bar) and each
    seed (dot) for every run in ``runs = {name: {metric: [value per seed]}}``; ``caps =
    {metric: value}`` draws a dashed line (e.g. the context-blind cap)."""
    from .ablation import mean_std

    names = list(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1.5, 3.4),
                             squeeze=False)
    colors = plt.cm.tab10(np.arange(len(names)))
    for ax, metric in zip(axes[0], metrics):
        for i, name in enumerate(names):
            values = np.asarray(runs[name][metric], dtype=float)
            mean, std = mean_std(values)
            ax.bar(i, mean, yerr=std, color=colors[i], alpha=0.75, capsize=4)
            ax.plot(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values,
                    "k.", ms=5)
            ax.text(i, mean + std + 0.5, f"{mean:.1f}", ha="center", va="bottom", fontsize=8)
        if caps and caps.get(metric) is not None:
            ax.axhline(caps[metric], color="0.3", linestyle="--", linewidth=1,
                       label="context-blind cap")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(names)), [labels.get(n, n) for n in names], fontsize=8,
                      rotation=15)
        low = min(np.nanmin(np.asarray(runs[n][metric], dtype=float)) for n in names)
        ax.set_ylim(max(0.0, low - 10), 100 + 3)
        ax.set_title({"miou": "mIoU (%)", "pixacc": "pixAcc (%)"}.get(metric, metric),
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_per_class_iou(classes: Sequence[str], runs: dict, labels: dict,
                       highlight: Sequence[int] = (), ax=None):
    """Per-class IoU, mean over seeds with the standard deviation, one bar group per class;
    ``runs = {name: [[IoU per class] per seed]}``; classes in ``highlight`` (the
    context-dependent ones) get a shaded background."""
    names = list(runs)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 * len(classes) + 2.5, 3.4))
    width = 0.8 / len(names)
    for c in highlight:
        ax.axvspan(c - 0.45, c + 0.45, color="gold", alpha=0.2, lw=0)
    for i, name in enumerate(names):
        per = np.asarray(runs[name], dtype=float)  # (seeds, classes)
        mean = np.nanmean(per, 0)
        std = np.nanstd(per, 0, ddof=1) if len(per) > 1 else np.zeros_like(mean)
        ax.bar(np.arange(len(classes)) + (i - (len(names) - 1) / 2) * width, mean, width,
               yerr=std, capsize=2, label=labels.get(name, name))
    ax.set_xticks(range(len(classes)), classes, fontsize=9)
    for c in highlight:
        ax.get_xticklabels()[c].set_fontweight("bold")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    ax.set_title("per-class IoU (shaded: look-alike classes, decided by the scene only)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def plot_k_sweep(ks: Sequence[int], values: Sequence[Sequence[float]], ax=None,
                 cap: Optional[float] = None, ylabel: str = "mIoU (%)"):
    """A metric against the number of codewords K (categorical axis): mean and standard
    deviation over seeds, and each seed as a dot. ``cap``: a dashed reference line."""
    from .ablation import mean_std

    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 3.2))
    stats = [mean_std(v) for v in values]
    x = np.arange(len(ks))
    ax.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=4)
    for i, v in enumerate(values):
        ax.plot(np.full(len(v), i), v, "k.", ms=4, alpha=0.6)
    if cap is not None:
        ax.axhline(cap, color="0.3", linestyle="--", linewidth=1, label="context-blind cap")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(x, [f"K = {k}" + (" (FCN)" if k == 0 else "") for k in ks], fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title("number of codewords K", fontsize=10)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


# --- tables ---------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]):
    """Rows as a Markdown table: rendered as a real table in Jupyter and on the built site."""
    from IPython.display import Markdown

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return Markdown("\n".join(lines))
