"""The encoding layer's collapse onto one codeword, measured on synthetic descriptors.

With the official initialisation (codewords within ``1/sqrt(KD)`` of the origin, one factor
``scale_k`` per codeword) the logits ``scale_k ||x_i - c_k||^2`` of long descriptors are
ranked by ``scale_k ||x_i||^2``: the codeword with the largest ``scale`` wins every position.
The encoding chapter derives this; the functions here make the descriptors it measures it
on (rectified Gaussians, as the BatchNorm + ReLU in front of the layer produces) and collect
the measures of :func:`encnet_lite.context.assignment_health` from them. Trained models are
measured by ``benchmarks/codewords.py``; :func:`codeword_study_tables` lays out its JSON
for the chapter (``(header, rows)`` for :func:`encnet_lite.viz.markdown_table`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .ablation import format_mean_std
from .context import assignment_health, codeword_usage
from .encoding import Encoding

__all__ = ["rectified_descriptors", "material_descriptors", "largest_scale_lead",
           "collapse_norm", "norm_sweep", "variant_usage", "codeword_study_tables"]


def rectified_descriptors(n: int, d: int, generator: Optional[torch.Generator] = None
                          ) -> Tensor:
    """``(1, n, d)`` descriptors ``relu(z)``, ``z`` standard normal: each channel a rectified
    unit Gaussian (mean square 1/2, so ``||x||^2 ~ d/2``), like BN + ReLU outputs."""
    return torch.relu(torch.randn(1, n, d, generator=generator))


def material_descriptors(n: int, d: int, materials: int, noise: float = 0.5,
                         generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Descriptors with structure: each of ``n`` positions belongs to one of ``materials``
    random centres (standard normal in R^d) and is ``relu(centre + noise * z)``.

    Returns ``x: (1, n, d)`` and the positions' materials ``labels: (n,)`` (int64).
    """
    labels = torch.randint(materials, (n,), generator=generator)
    centres = torch.randn(materials, d, generator=generator)
    noisy = centres[labels] + noise * torch.randn(n, d, generator=generator)
    return torch.relu(noisy)[None], labels


def largest_scale_lead(layer: Encoding) -> Tuple[int, float]:
    """``(k*, lead)``: the codeword with the largest ``scale`` and its lead over the next
    largest (0 when several share the largest, e.g. one shared factor)."""
    top2 = layer.smoothing().detach().topk(min(2, layer.num_codes))
    lead = float(top2.values[0] - top2.values[-1])
    return int(top2.indices[0]), lead


def collapse_norm(lead: float, num_codes: int) -> float:
    """The descriptor norm beyond which the largest-scale codeword (``lead`` > 0 ahead of the
    next) wins for *any* descriptor direction and codewords of norm <= 1/sqrt(K), scales in
    [-1, 0]: ``(2 + sqrt(4 + lead)) / (lead sqrt(K))`` (the positive root of
    ``lead t^2 - 4 t / sqrt(K) - 1 / K``); infinite when ``lead`` is 0."""
    if lead <= 0:
        return math.inf
    return (2 + math.sqrt(4 + lead)) / (lead * math.sqrt(num_codes))


@torch.no_grad()
def norm_sweep(layer: Encoding, x: Tensor, multipliers: Sequence[float]
               ) -> List[Dict[str, float]]:
    """The layer's assignments of ``multiplier * x`` (``x: (B, N, D)``) for each multiplier:
    one record per multiplier with ``multiplier``, ``mean_sq_norm`` (mean ``||x_i||^2`` of
    the scaled descriptors) and :func:`~encnet_lite.context.assignment_health`'s measures."""
    records = []
    for lam in multipliers:
        scaled = lam * x
        health = assignment_health(layer.assign(scaled), layer.smoothing())
        records.append({"multiplier": float(lam),
                        "mean_sq_norm": float(scaled.pow(2).sum(-1).mean()), **health})
    return records


def variant_usage(x: Tensor, labels: Tensor, num_labels: int, variants: Sequence[str],
                  num_codes: int, seed: int = 0) -> Dict[str, Dict]:
    """Each variant's layer (``Encoding(D, num_codes, variant)``, built after
    ``torch.manual_seed(seed)``, one training-mode forward on ``x`` first so data-initialised
    variants initialise) assigns ``x: (1, N, D)``, whose positions carry ``labels: (N,)``.

    Returns ``{variant: {"health": assignment_health, "usage": (num_labels, K) mean
    assignment per label (codeword_usage), "favourite": [argmax codeword per label]}}``.
    """
    out = {}
    for variant in variants:
        torch.manual_seed(seed)
        layer = Encoding(x.shape[-1], num_codes, variant=variant)
        with torch.no_grad():
            layer.train()(x)  # k-means (and the shared factor) where the variant uses them
            a = layer.assign(x)  # (1, N, K)
        usage = codeword_usage(a.reshape(1, 1, -1, num_codes), labels.reshape(1, 1, -1),
                               num_labels)
        out[variant] = {"health": assignment_health(a, layer.smoothing()), "usage": usage,
                        "favourite": usage.argmax(1).tolist()}
    return out


def codeword_study_tables(result: dict) -> Dict[str, Tuple[List[str], List[tuple]]]:
    """The tables of ``benchmarks/codewords.py``'s JSON (scores as fractions, e.g. from
    :func:`encnet_lite.ablation.read_result`): ``variants``, one column per variant (seeds,
    live codewords and largest-scale share per seed, val mIoU in % as mean ± std over
    seeds), and ``screen``, the one-seed screening runs (one row per variant and stage)."""
    def per_seed(values, fmt):
        return ", ".join("n/a" if v != v else format(v, fmt) for v in values)

    runs = result["variants"]
    variants = [
        ("seeds", *(", ".join(map(str, r["seeds"])) for r in runs.values())),
        ("live codewords", *(per_seed(r["live_codewords"], ".0f") for r in runs.values())),
        ("top-scale share", *(per_seed(r["largest_scale_share"], ".2f")
                                  for r in runs.values())),
        ("val mIoU (%)", *(format_mean_std(r["mIoU"], percent=True) for r in runs.values())),
    ]
    stages = [s for s in ("screen", "screen_no_se") if s in result]
    screen = [(f"`{name}`" + (" (no SE-loss)" if stage == "screen_no_se" else ""),
               f"{r['live_codewords']:.0f}", f"{100 * r['mIoU']:.1f}")
              for stage in stages for name, r in result[stage]["variants"].items()]
    budget = "; ".join(f"{result[s]['budget']}, seed {result[s]['seed']}" for s in stages)
    return {
        "variants": (["", *(f"`{name}`" for name in runs)], variants),
        "screen": ([f"screened variant ({budget})", "live codewords", "val mIoU (%)"], screen),
    }
