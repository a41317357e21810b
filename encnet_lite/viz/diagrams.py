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
from .style import COLUMN_INCHES, SMALL_PT, TITLE_PT

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
FONT = SMALL_PT  # the convention's smallest text: every label of the diagrams
LINE = 0.18  # inches between the lines of a box (9.5 pt text, 13 pt apart)


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
    return encnet_geometry(encnet_resnet50(num_classes=num_classes), size=size)


def shape_text(block: dict) -> str:
    """``"C × H × W"`` of a traced block."""
    return f"{block['channels']} × {block['hw']} × {block['hw']}"


# ------------------------------------------------------------------------------ drawing


def _box(ax, x: float, y: float, lines: Sequence[str], colour: str, w: float = 2.1,
         h: Optional[float] = None, bold_first: bool = True) -> FancyBboxPatch:
    """A rounded box centred at (x, y) (inches) with one line of text per entry (first in
    bold); its height fits the lines unless ``h`` is given."""
    h = LINE * len(lines) + 0.12 if h is None else h
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                           facecolor=colour, edgecolor="#444444", linewidth=0.9)
    ax.add_patch(patch)
    top = y + LINE * (len(lines) - 1) / 2
    for i, line in enumerate(lines):
        ax.text(x, top - i * LINE, line, ha="center", va="center", fontsize=FONT,
                fontweight="bold" if (i == 0 and bold_first) else "normal")
    return patch


def _arrow(ax, start: Tuple[float, float], end: Tuple[float, float], label: str = "",
           style: str = "-|>", dashed: bool = False, rad: float = 0.0,
           label_at: Optional[Tuple[float, float]] = None) -> FancyArrowPatch:
    arrow = FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, linewidth=1.0,
                            color="#333333", linestyle="--" if dashed else "-",
                            shrinkA=0, shrinkB=0, connectionstyle=f"arc3,rad={rad}")
    ax.add_patch(arrow)
    if label:
        x, y = label_at or ((start[0] + end[0]) / 2 + 0.05, (start[1] + end[1]) / 2)
        ax.text(x, y, label, fontsize=FONT, ha="left", va="center", color="#333333")
    return arrow


def _canvas(height: float, title: str):
    """A figure ``COLUMN_INCHES`` wide and ``height`` inches tall whose data units are
    inches (so boxes and text keep their size), with ``title`` on top."""
    fig = plt.figure(figsize=(COLUMN_INCHES, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, COLUMN_INCHES)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.text(COLUMN_INCHES / 2, height - 0.05, title, ha="center", va="top",
            fontsize=TITLE_PT, linespacing=1.3)
    return fig, ax


def _stage_lines(geo: Dict[str, dict], i: int) -> List[str]:
    block = geo[f"stage{i}"]
    return [f"Stage {i}", f"stride {block['stride']}, dilation {block['dilation']}",
            shape_text(block)]


def architecture_labels(geo: Dict[str, dict]) -> Dict[str, List[str]]:
    """The text of each box of :func:`plot_encnet_architecture`, from a geometry."""
    codes, e = geo["codes"], geo["e"]
    labels = {
        "input": ["Input image", shape_text(geo["input"])],
        "stem": ["Stem", f"stride {geo['stem']['stride']}", shape_text(geo["stem"])],
        **{f"stage{i}": _stage_lines(geo, i) for i in range(1, 5)},
        "head_conv": ["Head conv 3×3", "BN, ReLU", shape_text(geo["head_conv"])],
        "cem": ["Context Encoding", f"K = {codes['num_codes']} codewords",
                f"e: {e['channels']}, γ = σ(FC(e)): {geo['gamma']['channels']}",
                "ReLU(X + X⊗γ)", shape_text(geo["head_conv"])],
        "classifier": ["Classifier", "dropout, 1×1 conv", shape_text(geo["logits"])],
        "main": ["Main output", f"bilinear ×{geo['logits']['stride']}", shape_text(geo["main"])],
    }
    if "se" in geo:
        labels["se"] = ["SE branch: FC(e)", f"{geo['se']['classes']} presence logits",
                        "→ SE-loss (BCE)"]
    if "aux" in geo:
        labels["aux"] = ["Aux FCN head", "(training only)", shape_text(geo["aux"]),
                         f"bilinear ×{geo['aux']['stride']} → aux loss"]
    return labels


def plot_encnet_architecture(geo: Optional[Dict[str, dict]] = None, title: Optional[str] = None):
    """EncNet's architecture with traced tensor shapes (one sample, channels × height ×
    width), ``COLUMN_INCHES`` wide.

    ``geo`` comes from :func:`encnet_geometry` (default: :func:`default_geometry`, the
    paper's ResNet-50 model on a 480 × 480 crop). Backbone in the left column (top to
    bottom), head in the right column (bottom to top), auxiliary head (beside stage 3) and
    SE branch in the middle. Returns the figure; its boxes carry ``gid`` = block name.
    """
    geo = default_geometry() if geo is None else geo
    labels = architecture_labels(geo)
    stride = geo["stage4"]["stride"]
    title = title or (f"EncNet, {geo['input']['hw']} × {geo['input']['hw']} input, output "
                      f"stride {stride}\n(shapes: channels × height × width, traced from the "
                      "model)")
    fig, ax = _canvas(6.0, title)
    left, mid, right, w, wm = 1.15, 3.4, 5.65, 2.1, 1.9
    y = [5.0 - 0.86 * r for r in range(6)]  # the backbone's rows, top to bottom
    row = ["input", "stem", "stage1", "stage2", "stage3", "stage4"]
    boxes = {}
    for key, yy in zip(row, y):
        colour = COLOURS["input"] if key == "input" else COLOURS["backbone"]
        boxes[key] = _box(ax, left, yy, labels[key], colour, w=w)
    for a, b in zip(row, row[1:]):
        _arrow(ax, (left, _bottom(boxes[a])), (left, _top(boxes[b])))
    head = {"head_conv": COLOURS["head"], "cem": COLOURS["cem"],
            "classifier": COLOURS["head"], "main": COLOURS["input"]}
    yy, below = y[5], None
    for key, colour in head.items():  # stacked upwards from stage 4's row
        height = LINE * len(labels[key]) + 0.12
        if below is not None:
            yy = _top(boxes[below]) + 0.2 + height / 2
        boxes[key] = _box(ax, right, yy, labels[key], colour, w=w)
        if below is not None:
            _arrow(ax, (right, _top(boxes[below])), (right, _bottom(boxes[key])))
        below = key
    _arrow(ax, (left + w / 2, y[5]), (right - w / 2, y[5]), label="c4",
           label_at=(mid - 0.15, y[5] + 0.14))
    if "aux" in labels:
        boxes["aux"] = _box(ax, mid, y[4], labels["aux"], COLOURS["aux"], w=wm)
        _arrow(ax, (left + w / 2, y[4]), (mid - wm / 2, y[4]), dashed=True, label="c3",
               label_at=(left + w / 2 + 0.03, y[4] + 0.14))
    if "se" in labels:
        cem = boxes["cem"]
        se_y = boxes["classifier"].get_y() + boxes["classifier"].get_height() / 2 + 0.1
        boxes["se"] = _box(ax, mid, se_y, labels["se"], COLOURS["loss"], w=wm)
        start = (right - w / 2, cem.get_y() + cem.get_height() * 0.6)
        _arrow(ax, start, (mid + wm / 2 - 0.3, _bottom(boxes["se"])), label="e",
               label_at=(right - w / 2 - 0.22, start[1] - 0.05))
    for key, patch in boxes.items():
        patch.set_gid(key)
    return fig


def _top(patch: FancyBboxPatch) -> float:
    return patch.get_y() + patch.get_height()


def _bottom(patch: FancyBboxPatch) -> float:
    return patch.get_y()


def pipeline_labels(geo: Dict[str, dict]) -> Dict[str, List[str]]:
    """The text of each box of :func:`plot_context_encoding_pipeline`, from a geometry
    (the book's notation: D channels, K codewords, N = hw positions)."""
    d, k = geo["codes"]["channels"], geo["codes"]["num_codes"]
    hw = geo["head_conv"]["hw"]
    n = hw * hw
    labels = {
        "features": ["Feature map X", "D × h × w", f"{d} × {hw} × {hw}"],
        "descriptors": ["1×1 conv, BN, ReLU", f"N = h·w = {n}",
                        r"descriptors $x_i \in \mathbb{R}^D$"],
        "codewords": ["Codebook", r"$c_k$: K × D = " + f"{k} × {d}",
                      r"$s_k$: K = " + f"{k}"],
        "residuals": ["Residuals", r"$r_{ik} = x_i - c_k$", "N × K × D"],
        "assign": ["Soft assignment",
                   r"$a_{ik} = \mathrm{softmax}_k(-s_k \Vert r_{ik} \Vert^2)$", "N × K"],
        "aggregate": ["Aggregate", r"$e_k = \Sigma_i\, a_{ik}\, r_{ik}$", f"K × D = {k} × {d}"],
        "e": ["Encoded context e", "BN, ReLU, mean over K", f"D = {geo['e']['channels']}"],
        "gamma": ["FC + sigmoid", r"$\gamma = \sigma(W_\gamma e + b_\gamma)$",
                  f"D = {geo['gamma']['channels']}"],
        "attention": ["Channel attention", r"$\mathrm{ReLU}(X + X \otimes \gamma)$",
                      f"{d} × {hw} × {hw}"],
    }
    if "se" in geo:
        labels["se"] = ["SE branch: FC", f"{geo['se']['classes']} presence logits",
                        "→ SE-loss (BCE)"]
    return labels


def plot_context_encoding_pipeline(geo: Optional[Dict[str, dict]] = None,
                                   title: Optional[str] = None):
    """The Context Encoding Module's data flow with its tensor shapes (one sample),
    ``COLUMN_INCHES`` wide.

    Left column (top to bottom): descriptors, residuals to the codewords, soft assignments,
    aggregation ``e_k``; middle: the codebook and the encoded context ``e``; right column
    (bottom to top): the SE branch, the gates ``gamma`` and the channel attention on ``X``.
    ``geo`` as for :func:`plot_encnet_architecture`. Returns the figure; boxes carry
    ``gid`` = block.
    """
    geo = default_geometry() if geo is None else geo
    labels = pipeline_labels(geo)
    title = title or ("Context Encoding Module: the data flow\n(shapes traced from the "
                      "model)")
    fig, ax = _canvas(5.2, title)
    (left, wl), (mid, wm), (right, wr) = (1.65, 2.4), (3.86, 1.72), (5.79, 1.82)
    y = [4.2 - 0.86 * r for r in range(5)]
    boxes = {}
    for key, yy in zip(["features", "descriptors", "residuals", "assign", "aggregate"], y):
        colour = COLOURS["input"] if key == "features" else COLOURS["cem"]
        boxes[key] = _box(ax, left, yy, labels[key], colour, w=wl)
    for a, b in zip(["features", "descriptors", "residuals", "assign"],
                    ["descriptors", "residuals", "assign", "aggregate"]):
        _arrow(ax, (left, _bottom(boxes[a])), (left, _top(boxes[b])))
    _arrow(ax, (left - wl / 2, y[2]), (left - wl / 2, y[4]), dashed=True, rad=0.35,
           label=r"$r_{ik}$", label_at=(0.0, y[3] + 0.3))
    boxes["codewords"] = _box(ax, mid, (y[2] + y[3]) / 2, labels["codewords"],
                              COLOURS["backbone"], w=wm)
    _arrow(ax, (mid - wm / 2, (y[2] + y[3]) / 2 + 0.15), (left + wl / 2, y[2]))
    _arrow(ax, (mid - wm / 2, (y[2] + y[3]) / 2 - 0.15), (left + wl / 2, y[3]))
    boxes["e"] = _box(ax, mid, y[4], labels["e"], COLOURS["cem"], w=wm)
    _arrow(ax, (left + wl / 2, y[4]), (mid - wm / 2, y[4]))
    boxes["attention"] = _box(ax, right, y[0], labels["attention"], COLOURS["head"], w=wr)
    boxes["gamma"] = _box(ax, right, y[2], labels["gamma"], COLOURS["cem"], w=wr)
    _arrow(ax, (left + wl / 2, y[0]), (right - wr / 2, y[0]), label="X",
           label_at=(mid - 0.05, y[0] + 0.14))
    _arrow(ax, (right, _top(boxes["gamma"])), (right, _bottom(boxes["attention"])),
           label="γ", label_at=(right + 0.06, (y[0] + y[2]) / 2))
    _arrow(ax, (mid + wm / 2, _top(boxes["e"]) - 0.1), (right - 0.3, _bottom(boxes["gamma"])))
    if "se" in labels:
        boxes["se"] = _box(ax, right, y[4], labels["se"], COLOURS["loss"], w=wr)
        _arrow(ax, (mid + wm / 2, y[4]), (right - wr / 2, y[4]))
    for key, patch in boxes.items():
        patch.set_gid(key)
    return fig
