"""Diagrams drawn from the model itself: EncNet's architecture and the Context Encoding
Module's data flow.

Every shape and stride on the diagrams comes from :func:`encnet_geometry`, which traces
the model (forward hooks on a small probe input) and scales the spatial sizes to the
diagram's input size; dilations are read from the backbone's convolutions. Nothing is
typed by hand, so the pictures stay true when the model changes.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from torch import nn

from ..models.analysis import trace_shapes

# Diagram block -> the submodule whose output it shows ("stem" depends on the backbone).
TRACED = {
    "stage1": "backbone.layer1",
    "stage2": "backbone.layer2",
    "stage3": "backbone.layer3",
    "stage4": "backbone.layer4",
    "head_conv": "head.conv",
    "codes": "head.encode.encoding",
    "context": "head.encode",
    "logits": "head.classifier",
    "aux": "aux",
}
COLOURS = {"input": "#e8e8e8", "backbone": "#cfe2f3", "head": "#d9ead3", "cem": "#fce5cd",
           "loss": "#f4cccc", "aux": "#ead1dc"}
FONT = 9.5


def _stem_name(model: nn.Module) -> str:
    modules = dict(model.named_modules())
    for name in ("backbone.maxpool", "backbone.stem"):
        if name in modules:
            return name
    raise ValueError("the model's backbone has neither `maxpool` (ResNet) nor `stem` (tiny); "
                     "encnet_geometry needs an EncNet built by encnet_lite.models")


def _stage_dilation(stage: nn.Module) -> int:
    """The largest dilation among a stage's convolutions (1 = not dilated)."""
    return max((m.dilation[0] for m in stage.modules() if isinstance(m, nn.Conv2d)), default=1)


def encnet_geometry(model: nn.Module, size: int = 480, probe: int = 64) -> Dict[str, dict]:
    """Shapes of EncNet's blocks for a ``size x size`` input, traced on a ``probe`` input.

    Returns ``{block: {"channels", "stride", "hw", "dilation"?}}`` for ``input``, ``stem``,
    ``stage1..4``, ``head_conv``, ``context``, ``logits``, ``aux`` (when the model has an
    auxiliary head), ``main`` (the upsampled output), plus ``codes`` ``{"num_codes",
    "channels"}``, ``e``/``gamma`` ``{"channels"}`` and ``se`` ``{"classes"}`` (absent
    without an SE branch). ``stride`` = input size / block size on the probe;
    ``hw`` = ceil(size / stride), exact when ``size`` is a multiple of the output stride.
    """
    if probe % 32 or probe < 32:
        raise ValueError(f"probe must be a positive multiple of 32 (exact strides), got {probe}")
    traced = copy.deepcopy(model).train()  # training mode runs the aux head; a copy keeps
    names = [_stem_name(model)] + list(TRACED.values())  # the caller's BN statistics as they are
    if getattr(model, "aux", None) is None:
        names.remove("aux")
    rows = dict(trace_shapes(traced, torch.zeros(2, 3, probe, probe), names))
    geo: Dict[str, dict] = {"input": {"channels": 3, "stride": 1, "hw": size}}
    for key, name in [("stem", names[0])] + list(TRACED.items()):
        shape = rows.get(name)
        if key in ("codes", "context") or shape is None:
            continue
        stride = probe // shape[-1]
        geo[key] = {"channels": shape[1], "stride": stride, "hw": math.ceil(size / stride)}
    for i in range(1, 5):
        geo[f"stage{i}"]["dilation"] = _stage_dilation(getattr(model.backbone, f"layer{i}"))
    k, c = rows[TRACED["codes"]][1:]
    geo["codes"] = {"num_codes": k, "channels": c}
    context = rows[TRACED["context"]]
    geo["e"] = {"channels": context["e"][1]}
    geo["gamma"] = {"channels": context["gamma"][1]}
    if "se" in context:
        geo["se"] = {"classes": context["se"][1]}
    main = rows["output"]["main"]
    geo["main"] = {"channels": main[1], "stride": probe // main[-1], "hw": size}
    return geo


def default_geometry(size: int = 480, num_classes: int = 59) -> Dict[str, dict]:
    """:func:`encnet_geometry` of the paper's model: EncNet on a dilated ResNet-50 (output
    stride 8, K = 32, 512-channel head) for PASCAL-Context's ``num_classes`` = 59."""
    from ..models import encnet_resnet50

    torch.manual_seed(0)  # the weights do not matter, only the shapes
    return encnet_geometry(encnet_resnet50(num_classes), size=size)


def shape_text(block: dict) -> str:
    """``"C × H × W"`` of a traced block."""
    return f"{block['channels']} × {block['hw']} × {block['hw']}"


# ------------------------------------------------------------------------------ drawing


def _box(ax, x: float, y: float, lines: Sequence[str], colour: str, w: float = 1.5,
         h: float = 0.8, bold_first: bool = True) -> FancyBboxPatch:
    """A rounded box centred at (x, y) with one line of text per entry (first in bold)."""
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                           facecolor=colour, edgecolor="#444444", linewidth=0.9)
    ax.add_patch(patch)
    step = min(0.29, h / (len(lines) + 0.4))  # line height in data units (about 1 unit = 47 pt)
    top = y + step * (len(lines) - 1) / 2
    for i, line in enumerate(lines):
        ax.text(x, top - i * step, line, ha="center", va="center", fontsize=FONT,
                fontweight="bold" if (i == 0 and bold_first) else "normal")
    return patch


def _arrow(ax, start: Tuple[float, float], end: Tuple[float, float], label: str = "",
           style: str = "-|>", dashed: bool = False) -> FancyArrowPatch:
    arrow = FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, linewidth=1.0,
                            color="#333333", linestyle="--" if dashed else "-",
                            shrinkA=0, shrinkB=0)
    ax.add_patch(arrow)
    if label:
        ax.text((start[0] + end[0]) / 2 + 0.05, (start[1] + end[1]) / 2, label, fontsize=FONT - 1,
                ha="left", va="center", color="#333333")
    return arrow


def _canvas(width: float, height: float, figsize: Tuple[float, float]):
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _stage_lines(geo: Dict[str, dict], i: int) -> List[str]:
    block = geo[f"stage{i}"]
    return [f"Stage {i}", f"stride {block['stride']}", f"dilation {block['dilation']}",
            shape_text(block)]


def architecture_labels(geo: Dict[str, dict]) -> Dict[str, List[str]]:
    """The text of each box of :func:`plot_encnet_architecture`, from a geometry."""
    codes, e = geo["codes"], geo["e"]
    labels = {
        "input": ["Input image", shape_text(geo["input"])],
        "stem": ["Stem", f"stride {geo['stem']['stride']}", shape_text(geo["stem"])],
        **{f"stage{i}": _stage_lines(geo, i) for i in range(1, 5)},
        "head_conv": ["Head conv 3×3", "BN, ReLU", shape_text(geo["head_conv"])],
        "cem": ["Context Encoding Module", f"encoding: K = {codes['num_codes']} codewords",
                f"e: {e['channels']}  →  γ = σ(FC(e)): {geo['gamma']['channels']}",
                f"ReLU(x + x·γ): {shape_text(geo['head_conv'])}"],
        "classifier": ["Classifier", "dropout, 1×1 conv", shape_text(geo["logits"])],
        "main": ["Main output", f"bilinear ×{geo['logits']['stride']}", shape_text(geo["main"])],
    }
    if "se" in geo:
        labels["se"] = ["SE branch: FC(e)", f"{geo['se']['classes']} presence logits",
                        "→ SE-loss (BCE)"]
    if "aux" in geo:
        labels["aux"] = ["Aux FCN head (training)", shape_text(geo["aux"]),
                         f"bilinear ×{geo['aux']['stride']} → aux loss"]
    return labels


def plot_encnet_architecture(geo: Optional[Dict[str, dict]] = None, title: Optional[str] = None):
    """EncNet's architecture with traced tensor shapes (one sample, ``C × H × W``).

    ``geo`` comes from :func:`encnet_geometry` (default: :func:`default_geometry`, the
    paper's ResNet-50 model on a 480 × 480 crop). Backbone on the top row, head on the
    second (read right to left), SE branch below the Context Encoding Module, auxiliary
    head above stage 3. Returns the figure; its boxes carry ``gid`` = block name.
    """
    geo = default_geometry() if geo is None else geo
    labels = architecture_labels(geo)
    fig, ax = _canvas(13.4, 8.4, figsize=(8.8, 5.5))
    bb_y, head_y, se_y, aux_y = 5.3, 2.85, 0.7, 7.55
    xs = [1.05 + 2.26 * i for i in range(6)]  # 6 boxes of width 2, arrows between them
    row = ["input", "stem", "stage1", "stage2", "stage3", "stage4"]
    for key, x in zip(row, xs):
        colour = COLOURS["input"] if key == "input" else COLOURS["backbone"]
        _box(ax, x, bb_y, labels[key], colour, w=2.0, h=1.35).set_gid(key)
    for a, b in zip(xs, xs[1:]):
        _arrow(ax, (a + 1.0, bb_y), (b - 1.0, bb_y))
    right, cem_x, cls_x, main_x = xs[5], 8.45, 5.1, 2.0
    place = {"head_conv": (right, 2.0, COLOURS["head"]), "cem": (cem_x, 3.4, COLOURS["cem"]),
             "classifier": (cls_x, 2.2, COLOURS["head"]), "main": (main_x, 2.2, COLOURS["input"])}
    for key, (x, w, colour) in place.items():
        _box(ax, x, head_y, labels[key], colour, w=w, h=1.35 if key == "cem" else 1.05).set_gid(key)
    _arrow(ax, (right, bb_y - 0.675), (right, head_y + 0.525), label="c4")
    _arrow(ax, (right - 1.0, head_y), (cem_x + 1.7, head_y))
    _arrow(ax, (cem_x - 1.7, head_y), (cls_x + 1.1, head_y))
    _arrow(ax, (cls_x - 1.1, head_y), (main_x + 1.1, head_y))
    if "se" in labels:
        _box(ax, cem_x, se_y, labels["se"], COLOURS["loss"], w=2.6, h=1.0).set_gid("se")
        _arrow(ax, (cem_x, head_y - 0.675), (cem_x, se_y + 0.5), label="e")
    if "aux" in labels:
        _box(ax, xs[4], aux_y, labels["aux"], COLOURS["aux"], w=3.3, h=1.0).set_gid("aux")
        _arrow(ax, (xs[4], bb_y + 0.675), (xs[4], aux_y - 0.5), label="c3", dashed=True)
    stride = geo["stage4"]["stride"]
    ax.set_title(title or f"EncNet, {geo['input']['hw']} × {geo['input']['hw']} input, "
                 f"output stride {stride} (shapes C × H × W, traced from the model)",
                 fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def pipeline_labels(geo: Dict[str, dict]) -> Dict[str, List[str]]:
    """The text of each box of :func:`plot_context_encoding_pipeline`, from a geometry."""
    c, k = geo["codes"]["channels"], geo["codes"]["num_codes"]
    hw = geo["head_conv"]["hw"]
    n = hw * hw
    labels = {
        "features": ["Feature map x", "C × H × W", f"{c} × {hw} × {hw}"],
        "descriptors": ["1×1 conv, BN, ReLU", f"N = H·W = {n}", r"descriptors $x_i$ of size C"],
        "codewords": ["Codewords and smoothing", r"$c_k$: K × C = " + f"{k} × {c}",
                      r"$s_k$: K = " + f"{k}"],
        "residuals": ["Residuals", r"$r_{ik} = x_i - c_k$", "N × K × C"],
        "assign": ["Soft assignment",
                   r"$a_{ik} = \mathrm{softmax}_k(-s_k \Vert r_{ik} \Vert^2)$", "N × K"],
        "aggregate": ["Aggregate", r"$e_k = \Sigma_i\, a_{ik}\, r_{ik}$", f"K × C = {k} × {c}"],
        "e": ["BN, ReLU, mean over k", r"$e = \mathrm{mean}_k\, \mathrm{ReLU}(\mathrm{BN}(e_k))$",
              f"C = {geo['e']['channels']}"],
        "gamma": ["FC + sigmoid", r"$\gamma = \sigma(W e)$", f"C = {geo['gamma']['channels']}"],
        "attention": ["Channel attention", r"$y = \mathrm{ReLU}(x + x \otimes \gamma)$",
                      f"{c} × {hw} × {hw}"],
    }
    if "se" in geo:
        labels["se"] = ["SE branch: FC", f"{geo['se']['classes']} class-presence logits",
                        "→ SE-loss (BCE)"]
    return labels


def plot_context_encoding_pipeline(geo: Optional[Dict[str, dict]] = None,
                                   title: Optional[str] = None):
    """The Context Encoding Module's data flow with its tensor shapes (one sample).

    Top row: descriptors, residuals to the codewords, soft assignments; bottom row (read
    right to left): aggregation ``e_k``, the encoded context ``e``, the gates ``gamma``
    and the channel attention on ``x``; below ``e``, the SE branch. ``geo`` as for
    :func:`plot_encnet_architecture`. Returns the figure; boxes carry ``gid`` = block.
    """
    geo = default_geometry() if geo is None else geo
    labels = pipeline_labels(geo)
    fig, ax = _canvas(13.0, 7.6, figsize=(8.8, 5.1))
    xs = [1.55 + 3.3 * i for i in range(4)]
    top, bottom, code_y, se_y = 4.4, 2.2, 6.6, 0.55
    w, h = 3.0, 1.1
    for key, x in zip(["features", "descriptors", "residuals", "assign"], xs):
        colour = COLOURS["input"] if key == "features" else COLOURS["cem"]
        _box(ax, x, top, labels[key], colour, w=w, h=h).set_gid(key)
    for key, x in zip(["attention", "gamma", "e", "aggregate"], xs):
        colour = COLOURS["head"] if key == "attention" else COLOURS["cem"]
        _box(ax, x, bottom, labels[key], colour, w=w, h=h).set_gid(key)
    code_x = (xs[2] + xs[3]) / 2
    _box(ax, code_x, code_y, labels["codewords"], COLOURS["backbone"], w=3.6, h=h
         ).set_gid("codewords")
    for a, b in zip(xs, xs[1:]):
        _arrow(ax, (a + w / 2, top), (b - w / 2, top))
        _arrow(ax, (b - w / 2, bottom), (a + w / 2, bottom))
    _arrow(ax, (xs[3], top - h / 2), (xs[3], bottom + h / 2), label=r"$a_{ik}$")
    _arrow(ax, (xs[2] + 0.5, top - h / 2), (xs[3] - 0.9, bottom + h / 2), label=r"$r_{ik}$",
           dashed=True)
    _arrow(ax, (xs[0], top - h / 2), (xs[0], bottom + h / 2), label="x")
    _arrow(ax, (code_x - 0.6, code_y - h / 2), (xs[2] + 0.3, top + h / 2), label=r"$c_k$")
    _arrow(ax, (code_x + 0.6, code_y - h / 2), (xs[3] - 0.3, top + h / 2), label=r"$s_k$")
    if "se" in labels:
        _box(ax, xs[2], se_y, labels["se"], COLOURS["loss"], w=w, h=h * 0.95).set_gid("se")
        _arrow(ax, (xs[2], bottom - h / 2), (xs[2], se_y + h * 0.475), label="e")
    ax.set_title(title or "Context Encoding Module: the data flow (shapes traced from the model)",
                 fontsize=FONT + 1)
    fig.tight_layout()
    return fig
