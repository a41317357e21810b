"""The encoding layer (:mod:`encnet_lite.encoding`): soft assignments of the plane to
codewords, the layer's benchmark, and the tables of the encoding chapter (the benchmark's
JSON, the collapse measures of :mod:`encnet_lite.collapse`) as
``(header, rows)`` for :func:`~encnet_lite.viz.tables.markdown_table` or
:func:`~encnet_lite.viz.tables.text_table`."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..encoding import soft_assignment
from .style import COLUMN_INCHES, FONT_PT, SMALL_PT, grid


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
    ax.set_title(title, fontsize=FONT_PT)
    return ax.figure


def plot_smoothing_sweep(codewords: torch.Tensor, smoothings: Sequence[float],
                         points: Optional[torch.Tensor] = None, size: float = 2.8, **kwargs):
    """One :func:`plot_assignment_map` panel per smoothing factor, side by side."""
    rows, cols = grid(len(smoothings), max_cols=3)  # more than three: stacked in rows
    size = min(size, COLUMN_INCHES / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.3) * rows),
                             squeeze=False)
    for ax in axes.flat[len(smoothings):]:
        fig.delaxes(ax)
    for ax, s in zip(axes.flat, smoothings):
        plot_assignment_map(codewords, s, points=points, ax=ax, **kwargs)
    fig.tight_layout()
    return fig


def plot_encoding_benchmark(result: dict):
    """Bars of forward+backward time and extra peak memory from benchmarks/encoding.py's JSON."""
    batches = sorted({r["batch"] for r in result["rows"]})
    impls = ["default", "reference"]
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_INCHES, 3.2))
    for ax, key, label in zip(axes, ("time_ms", "extra_peak_mib"),
                              ("forward+backward time (ms)", "extra peak memory (MiB)")):
        for j, impl in enumerate(impls):
            rows = {r["batch"]: r for r in result["rows"] if r["impl"] == impl}
            xs = np.arange(len(batches)) + (j - 0.5) * 0.38
            values = [rows[b].get(key, np.nan) for b in batches]
            ax.bar(xs, values, width=0.36, label=impl, color=f"C{j}")
            for x, b, v in zip(xs, batches, values):
                if "skipped" in rows[b]:
                    ax.text(x, 0.08, "skipped", rotation=90, ha="center", va="bottom",
                            fontsize=SMALL_PT, transform=ax.get_xaxis_transform())
                else:
                    ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=SMALL_PT)
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 4)  # room above the tallest bar for its label
        ax.set_xlim(-0.7, len(batches) - 0.3)  # "skipped" clear of the frame
        ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches], fontsize=SMALL_PT)
        ax.set_ylabel(label)
    # below the panels: inside either one it would cover a bar's label
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2,
               frameon=False)
    fig.suptitle(f"encoding layer, D={result['shape']['D']}, K={result['shape']['K']}, "
                 f"{result['shape']['H']}x{result['shape']['W']}, {result['device_name']}",
                 fontsize=FONT_PT)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


Table = Tuple[List[str], List[tuple]]  # (header, rows), for markdown_table or text_table


def encoding_benchmark_tables(result: dict) -> Dict[str, Table]:
    """The tables of ``benchmarks/encoding.py``'s JSON, by name, each narrow enough for a
    phone: ``speed`` (the layer against the six-product floor, fresh and after a small
    call, as layer / floor), ``literal`` (the literal form's extra peak memory, and its
    memory and time over the layer's; blank where it was skipped) and ``split`` (where the
    layer's time beyond the floor goes, and the share of the literal softmax's weights that
    would be subnormal). Times in ms, memory in MiB."""
    speed, literal, split = [], [], []
    for ratio in result["ratios"]:
        b = ratio["batch"]
        rows = {r["impl"]: r for r in result["rows"] if r["batch"] == b}
        new, ref, floor = rows["default"], rows["reference"], rows["floor"]
        speed.append((b, f"{new['time_ms']:.1f}", f"{floor['time_ms']:.1f}",
                      f"{ratio['floor_ratio']:.2f}x", f"{ratio['floor_ratio_after_small']:.2f}x"))
        literal.append((b, f"{new['extra_peak_mib']:.0f}") + (
            ("skipped", "", "") if "skipped" in ref else
            (f"{ref['extra_peak_mib']:.0f}", f"{ratio['memory_ratio']:.0f}x",
             f"{ratio['speedup']:.0f}x")))
        passes = new["passes_over_x_ms"]
        rest = new["time_ms"] - floor["time_ms"] - sum(passes.values())
        split.append((b, f"{passes['norms']:.1f}",
                      f"{passes['norm_gradient']:.1f}", f"{rest:.1f}",
                      f"{100 * new['subnormal_weight_share']:.1f}"))
    return {
        "speed": (["batch", "layer ms", "floor ms", "ratio", "ratio after a small call"],
                  speed),
        "literal": (["batch", "layer MiB", "literal MiB", "× memory", "× time"], literal),
        "split": (["batch", "‖x‖²", "its gradient", "rest", "sub\u00adnormal %"], split),
    }


def norm_sweep_table(records: Sequence[Mapping[str, float]]) -> Table:
    """:func:`encnet_lite.collapse.norm_sweep`'s records as a table, one row per multiplier."""
    rows = [(f"{r['multiplier']:g} ({r['mean_sq_norm']:.1f})", f"{r['live_codewords']:.0f}",
             _share(r["largest_scale_share"]), f"{r['assignment_perplexity']:.1f}")
            for r in records]
    return ["λ (mean ‖x‖²)", "live codewords", "top-scale share", "perplexity"], rows


def variant_usage_table(results: Mapping[str, Mapping]) -> Table:
    """:func:`encnet_lite.collapse.variant_usage`'s results as a table, one row per variant:
    live codewords, each label's favourite codeword, and how many distinct ones."""
    rows = [(f"`{name}`", f"{r['health']['live_codewords']:.0f}",
             ", ".join(map(str, r["favourite"])), len(set(r["favourite"])))
            for name, r in results.items()]
    return ["variant", "live", "favourite codeword of each material", "distinct"], rows


def _share(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"  # NaN: no single largest scale
