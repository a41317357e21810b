"""The encoding layer (:mod:`encnet_lite.encoding`): soft assignments of the plane to
codewords, and the layer's benchmark."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..encoding import soft_assignment
from .data import PAGE_WIDTH


def plot_assignment_map(codewords: torch.Tensor, smoothing, points: Optional[torch.Tensor] = None,
                        extent: float = 3.0, resolution: int = 160, ax=None, title=None):
    """Soft assignments of the plane to 2-D ``codewords`` (K, 2) at smoothing factor(s) s.

    Every location is painted with the codewords' colours mixed by its assignment
    weights a_k (pure colour = hard assignment, muddy = shared). ``smoothing`` is the
    paper's s > 0 (a float or K values); the layer's ``scale`` is -s. Optional
    ``points`` (N, 2) are drawn with their own mixed colours.
    """
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
    size = min(size, PAGE_WIDTH / len(smoothings))  # side by side within the page width
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
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.2))
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
        ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches], fontsize=8)
        ax.set_ylabel(label)
    axes[0].legend(frameon=False, loc="upper left")
    fig.suptitle(f"encoding layer, D={result['shape']['D']}, K={result['shape']['K']}, "
                 f"{result['shape']['H']}x{result['shape']['W']}, {result['device_name']}",
                 fontsize=10)
    fig.tight_layout()
    return fig
