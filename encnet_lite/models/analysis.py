"""Looking inside the models: receptive fields, tensor shapes, parameter counts."""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .segmentation import FCN, EncNet, fcn_resnet50

__all__ = ["conv_macs", "count_parameters", "dilations", "input_support", "output_stride_rows",
           "receptive_field", "shape_rows", "trace_shapes"]


def _pair(v: Union[int, Sequence[int]]) -> int:
    """Square kernels only: the first of a pair."""
    return v if isinstance(v, int) else v[0]


def _chain_receptive_field(module: nn.Module, rf: int = 1, jump: int = 1) -> Tuple[int, int]:
    """Walk convs and pools in registration order (= forward order in these models) and
    grow ``rf`` by ``(k - 1) * dilation * jump`` per layer; ``jump`` is the product of the
    strides so far. Residual shortcuts (``downsample``) are skipped: they run in parallel
    to the main path and cover a subset of its window."""
    for name, m in module.named_modules():
        if "downsample" in name.split("."):
            continue
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _pair(m.kernel_size), _pair(m.stride)
            d = _pair(getattr(m, "dilation", 1))
            rf += (k - 1) * d * jump
            jump *= s
    return rf, jump


def receptive_field(model_or_backbone: nn.Module, upsampled: bool = True) -> Union[int, float]:
    """Theoretical receptive field (px, one side of the square window).

    - a backbone: of its last feature map ``c4``;
    - an :class:`FCN`: of the class scores at full resolution, the book's one figure for
      "what a prediction can see". The head's logits on the stride-``s`` grid see a window
      of ``r`` px (``upsampled=False``); bilinear upsampling mixes the two nearest cells
      along each axis, which widens it by exactly one stride: ``r + s``
      (:func:`input_support` measures the same window pixel by pixel);
    - an :class:`EncNet`: ``math.inf``: the encoding layer sums over the whole image.

    The tiny FCN: 44 px on its stride-8 logits, 52 px at full resolution. The dilated
    ResNet-50 FCN (output stride 8): far larger than any training crop.
    """
    if isinstance(model_or_backbone, EncNet):
        return math.inf
    if isinstance(model_or_backbone, FCN):
        rf, jump = _chain_receptive_field(model_or_backbone.backbone)
        rf, jump = _chain_receptive_field(model_or_backbone.head, rf, jump)
        return rf + jump if upsampled else rf
    return _chain_receptive_field(model_or_backbone)[0]


@torch.no_grad()
def _make_positive(model: nn.Module) -> None:
    """Positive weights, identity BatchNorm: every activation of a positive input is
    positive, so no ReLU hides a dependency and the gradient is nonzero exactly where
    the output depends on the input."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.reset_parameters()
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.abs_().add_(1e-3)
            if m.bias is not None:
                m.bias.abs_()


def input_support(model: nn.Module, size: Tuple[int, int] = (128, 128),
                  pixel: Optional[Tuple[int, int]] = None) -> Tensor:
    """The input pixels that one output pixel depends on: a ``(H, W)`` bool mask.

    Measured on a copy of ``model`` with positive weights (eval mode) by backpropagating
    the output pixel ``pixel = (row, col)`` (default: the centre) of ``main`` (or of a
    plain tensor output) to a ``size`` input. The model itself is not modified.
    Meant for convolutional models (backbones, FCN): in EncNet the saturating sigmoid
    and softmax of a positive-weight copy hide dependencies (its true support is the
    whole image: ``receptive_field(encnet) == inf``).
    """
    probe = copy.deepcopy(model).float().cpu().eval()
    _make_positive(probe)
    x = torch.ones(1, 3, *size, requires_grad=True)
    out = probe(x)
    out = out["main"] if isinstance(out, dict) else out
    row, col = pixel if pixel is not None else (size[0] // 2, size[1] // 2)
    out[0, :, row, col].sum().backward()
    return x.grad[0].abs().sum(0) > 0


def _shapes(value: Any) -> Any:
    """Shapes of a module's output: a tuple, or a dict of them for named outputs."""
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: _shapes(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple
        return {k: _shapes(v) for k, v in zip(value._fields, value) if v is not None}
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    return None


def trace_shapes(model: nn.Module, images: Tensor,
                 names: Sequence[str]) -> List[Tuple[str, Any]]:
    """Run ``model(images)`` and record the output shape of each named submodule.

    ``names`` are qualified names (``"backbone.layer3"``, ``"head.encode.encoding"``).
    Returns ``[(name, shape), ...]`` in call order, then ``("output", {key: shape})``.
    A module called twice appears twice.
    """
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no submodules named {missing}")
    rows: List[Tuple[str, Any]] = []
    hooks = [modules[n].register_forward_hook(
        lambda _m, _inp, out, n=n: rows.append((n, _shapes(out)))) for n in names]
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        for h in hooks:
            h.remove()
    rows.append(("output", _shapes(out)))
    return rows


def _shape_text(shape: Any) -> Any:
    """``(1, C, H, W)`` -> ``"C x H x W"``: the batch dimension dropped (other values as is)."""
    if not isinstance(shape, tuple):
        return shape
    return " x ".join(map(str, shape[1:]))


def shape_rows(trace: Sequence[Tuple[str, Any]], what: Mapping[str, str],
               input_shape: Sequence[int]) -> List[Tuple[str, str, Any]]:
    """Table rows ``(tensor, what, shape)`` of a :func:`trace_shapes` trace.

    The first row is the input ``input_shape = (B, C, H, W)``; then one row per traced
    module, described by ``what[name]``, with its shape as ``"C x H x W"`` (the batch
    dimension dropped). A module with named outputs (a dict or NamedTuple, e.g. the
    Context Encoding Module) gets one row per output, the description on the first
    (``x`` or ``main``); the model's own outputs are called ``output `key` ``. A
    zero-width space after each dot lets a long module name wrap in a narrow table; the
    shapes are written without spaces (``"256×120×120"``) so that they never wrap.
    """
    rows: List[Tuple[str, str, Any]] = [("input", "image", _shape_text(tuple(input_shape)))]
    for name, shape in trace:
        if not isinstance(shape, dict):
            rows.append((name, what[name], _shape_text(shape)))
            continue
        for key, value in shape.items():  # named outputs: one row each
            label = what.get(name, "model output") if key in ("x", "main") else ""
            tensor = f"output `{key}`" if name == "output" else f"{name}.{key}"
            rows.append((tensor, label, _shape_text(value)))
    return [(name.replace(".", ".\u200b"), what_,
             shape.replace(" x ", "×") if isinstance(shape, str) else shape)
            for name, what_, shape in rows]


def dilations(stage: nn.Module) -> str:
    """The distinct dilation rates of the 3x3 convolutions in ``stage``, e.g. ``"1, 2"``."""
    rates = {m.dilation[0] for m in stage.modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    return ", ".join(map(str, sorted(rates)))


def output_stride_rows(strides: Sequence[int] = (32, 16, 8), size: int = 480,
                       num_classes: int = 59) -> List[Dict[str, Any]]:
    """What the output stride changes in a dilated ResNet-50 FCN, one dict per stride.

    Each FCN (no auxiliary head) is built on the ``meta`` device and run on a
    ``(1, 3, size, size)`` input: shapes only, no memory, no arithmetic. Keys:
    ``stride``; ``c4``, the backbone's last map as ``"h x w"``; ``dilation3`` /
    ``dilation4``, the rates of stages 3 and 4 (:func:`dilations`); ``rf_backbone`` and
    ``rf``, the receptive fields (px) of ``c4`` and of the FCN's upsampled class scores
    (:func:`receptive_field`); ``gmacs_backbone`` and ``gmacs``, the multiply-accumulates
    of the backbone and of the whole FCN (:func:`conv_macs`), in billions, to 0.1.
    """
    images = torch.empty(1, 3, size, size, device="meta")
    rows = []
    for stride in strides:
        with torch.device("meta"):
            fcn = fcn_resnet50(num_classes=num_classes, output_stride=stride, aux=False).eval()
        bb = fcn.backbone
        rows.append({
            "stride": stride, "c4": " x ".join(map(str, bb(images)["c4"].shape[-2:])),
            "dilation3": dilations(bb.layer3), "dilation4": dilations(bb.layer4),
            "rf_backbone": receptive_field(bb), "rf": receptive_field(fcn),
            "gmacs_backbone": round(conv_macs(bb, images) / 1e9, 1),
            "gmacs": round(conv_macs(fcn, images) / 1e9, 1)})
    return rows


def count_parameters(module: Optional[nn.Module]) -> int:
    """Number of parameters of ``module`` (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def conv_macs(model: nn.Module, images: Tensor) -> int:
    """Multiply-accumulates of every conv and linear layer in ``model(images)``.

    Counted from the output shapes (``out.numel() * in_channels / groups * k_h * k_w``), so
    it also works on the ``meta`` device for modules that support it (backbones, FCN).
    Elementwise work, pooling and the encoding layer's matrix products are not counted.
    """
    total = 0

    def hook(m: nn.Module, _inp, out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += out.numel() * (m.in_channels // m.groups) * k
        else:
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return total
