"""EncNet and the FCN baseline, and their builders.

Both models map ``images: (B, 3, H, W)`` (any H, W) to a dict of named outputs, logits
upsampled bilinearly to ``(H, W)``:

================  =====================  ==========================================
key               shape                  when
================  =====================  ==========================================
``main``          (B, classes, H, W)     always
``aux``           (B, classes, H, W)     training mode, ``aux=True`` (stage-3 FCN head)
``se``            (B, classes)           EncNet with ``se_loss=True`` (train and eval)
``gamma``, ``e``  (B, head_channels)     EncNet (channel gates and encoded context)
================  =====================  ==========================================

``se`` is returned in eval mode too (it costs one small linear layer): chapters read the
predicted class presence ``sigmoid(se)`` at test time.

``align_corners`` chooses how the stride-8 logits are upsampled: ``False`` (torchvision's
convention, the default here) treats pixels as squares, ``True`` (the official
PyTorch-Encoding code, for the main and the auxiliary logits) pins the corner pixels'
centres together. The weights are the same either way; the PASCAL presets use ``True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import ResNetBackbone, TinyBackbone
from .heads import EncHead, FCNHead

__all__ = [
    "FCN", "EncNet", "SegmentationModel",
    "encnet_resnet50", "encnet_resnet101", "encnet_resnet50s", "encnet_resnet101s", "encnet_tiny",
    "fcn_resnet50", "fcn_resnet101", "fcn_resnet50s", "fcn_resnet101s", "fcn_tiny",
    "align_corners_disagreement",
]

PathLike = Optional[Union[str, Path]]


def upsample(logits: Tensor, size, align_corners: bool = False) -> Tensor:
    """Bilinear upsampling of ``(B, C, h, w)`` logits to ``size = (H, W)``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class SegmentationModel(nn.Module):
    """What FCN and EncNet share: ``backbone``, ``head``, optional ``aux`` head on ``c3``."""

    backbone: nn.Module
    head: nn.Module
    aux: Optional[nn.Module]
    align_corners: bool = False  # how the logits are upsampled (module docstring)

    def param_groups(self, lr: Optional[float] = None,
                     head_lr_mult: float = 10.0) -> List[Dict]:
        """Optimizer groups ``[{"name": "backbone", ...}, {"name": "head", ...}]``.

        "head" holds every non-backbone parameter (head and auxiliary head). With ``lr``,
        each group also gets its ``lr`` (the head ``lr * head_lr_mult``, the official 10x),
        ready for ``torch.optim.SGD(model.param_groups(lr), lr=lr, ...)``.
        """
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        groups = [
            {"name": "backbone", "params": [p for p in self.backbone.parameters()]},
            {"name": "head", "params": [p for p in self.parameters()
                                        if id(p) not in backbone_ids]},
        ]
        if lr is not None:
            groups[0]["lr"], groups[1]["lr"] = lr, lr * head_lr_mult
        return groups

    def _aux(self, feats: Dict[str, Tensor], out: Dict[str, Tensor], size) -> None:
        if self.training and self.aux is not None:
            out["aux"] = upsample(self.aux(feats["c3"]), size, self.align_corners)


class FCN(SegmentationModel):
    """The FCN baseline: dilated backbone + :class:`FCNHead` on ``c4`` (+ aux on ``c3``).

    ``forward(images: (B, 3, H, W)) -> {"main"[, "aux"]}`` (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, aux: bool = True,
                 align_corners: bool = False) -> None:
        super().__init__()
        ch = backbone.out_channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.backbone = backbone
        self.head = FCNHead(ch["c4"], num_classes)
        self.aux = FCNHead(ch["c3"], num_classes) if aux else None

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        size = images.shape[-2:]
        feats = self.backbone(images)
        out = {"main": upsample(self.head(feats["c4"]), size, self.align_corners)}
        self._aux(feats, out, size)
        return out


class EncNet(SegmentationModel):
    """EncNet: dilated backbone + :class:`EncHead` on ``c4`` (+ auxiliary FCN head on ``c3``).

    Args:
        backbone: returns ``{"c2", "c3", "c4"}`` and has ``out_channels``.
        num_classes: classes of the segmentation (and of the SE branch).
        aux: auxiliary FCN head on ``c3`` (training mode only).
        se_loss: SE branch predicting class presence from the encoded context.
        lateral: lateral connections from ``c2`` and ``c3`` into the head.
        num_codes: K, codewords of the encoding layer.
        head_channels: width of the head; ``gamma`` and ``e`` have this size.
        encoder: the encoding layer's variant (:data:`encnet_lite.encoding.VARIANTS`).
        align_corners: upsampling convention of the logits (see the module docstring).

    ``forward(images: (B, 3, H, W)) -> {"main", "gamma", "e"[, "se"][, "aux"]}``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, aux: bool = True,
                 se_loss: bool = True, lateral: bool = False, num_codes: int = 32,
                 head_channels: int = 512, encoder: str = "official",
                 align_corners: bool = False) -> None:
        super().__init__()
        ch = backbone.out_channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.backbone = backbone
        self.head = EncHead(ch["c4"], num_classes, channels=head_channels, num_codes=num_codes,
                            se_loss=se_loss,
                            lateral_channels=(ch["c2"], ch["c3"]) if lateral else None,
                            encoder=encoder)
        self.aux = FCNHead(ch["c3"], num_classes) if aux else None

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        size = images.shape[-2:]
        feats = self.backbone(images)
        logits, ctx = self.head(feats)
        out = {"main": upsample(logits, size, self.align_corners), "gamma": ctx.gamma,
               "e": ctx.e}
        if ctx.se is not None:
            out["se"] = ctx.se
        self._aux(feats, out, size)
        return out

    def assignments(self, images: Tensor) -> Tensor:
        """Soft assignments of the head's descriptors to the K codewords.

        ``images: (B, 3, H, W) -> (B, h, w, K)`` with ``(h, w)`` the stride-8 grid; each
        position's K weights sum to 1.
        """
        x = self.head.features(self.backbone(images))
        b, _, h, w = x.shape
        return self.head.encode.assignments(x).reshape(b, h, w, -1)


# ---------------------------------------------------------------------------- builders
#
# ``weights="NAME"`` (keyword only) returns a published model from the catalogue of
# :mod:`encnet_lite.weights`, as torchvision's builders do: downloaded (cached, verified),
# converted and loaded strictly, in eval mode, with ``model.weights_meta`` attached.


def _resnet(depth: int, pretrained_backbone: bool, weights_path: PathLike,
            output_stride: int, stem: Optional[str] = None) -> ResNetBackbone:
    return ResNetBackbone(depth, output_stride=output_stride, pretrained=pretrained_backbone,
                          weights_path=weights_path, stem=stem or "plain")


def _published(weights: str, model: str, depth: int, stem: Optional[str],
               num_classes: Optional[int], backbone_args: Dict, kwargs: Dict) -> nn.Module:
    """``load_weights(weights)`` after checking that it is the model this builder makes and
    that no argument contradicts it (an argument equal to the entry's value is accepted)."""
    from ..weights import check_builder_args, load_weights

    check_builder_args(weights, model, depth, stem, num_classes, backbone_args, kwargs)
    loaded = load_weights(weights)
    if "align_corners" in kwargs:  # the one setting the weights leave free (upsampling)
        loaded.align_corners = kwargs["align_corners"]
    return loaded


def _classes(num_classes: Optional[int], builder: str) -> int:
    if num_classes is None:
        raise TypeError(f"{builder}() needs num_classes (or weights='NAME' of a published "
                        "model, which brings its own: encnet_lite.weights.CATALOGUE)")
    return num_classes


def _build(model: str, depth: int, stem: Optional[str], num_classes: Optional[int],
           pretrained_backbone: bool, weights_path: PathLike, output_stride: int,
           weights: Optional[str], kwargs: Dict) -> nn.Module:
    """What every ResNet builder does: the published ``weights``, or ``model`` ("encnet" |
    "fcn") on a fresh (optionally ImageNet-initialised) dilated ResNet-``depth``."""
    if weights is not None:
        return _published(weights, model, depth, stem, num_classes,
                          {"pretrained_backbone": pretrained_backbone,
                           "weights_path": weights_path, "output_stride": output_stride}, kwargs)
    backbone = _resnet(depth, pretrained_backbone, weights_path, output_stride, stem)
    cls = EncNet if model == "encnet" else FCN
    return cls(backbone, _classes(num_classes, f"{model}_resnet{depth}"), **kwargs)


def _fcn_kwargs(aux: bool, align_corners: Optional[bool]) -> Dict:
    """``align_corners=None``: FCN's default (False), or the published entry's value."""
    return {"aux": aux} if align_corners is None else {"aux": aux, "align_corners": align_corners}


def encnet_resnet50(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                    weights_path: PathLike = None, output_stride: int = 8, *,
                    stem: Optional[str] = None, weights: Optional[str] = None,
                    **kwargs) -> EncNet:
    """EncNet on a dilated ResNet-50. ``pretrained_backbone=True``: ImageNet weights via
    torchvision (a clear error offline; ``weights_path=`` reads a local file instead).
    ``stem``: ``"plain"`` (default), ``"deep64"`` (official resnet50s) or ``"deep32"``
    (ResNetV1c), see :class:`ResNetBackbone`. ``weights="EncNet_ResNet50s_PContext"`` (any
    ResNet-50 EncNet of :data:`encnet_lite.weights.CATALOGUE`): the published model, in
    eval mode. ``kwargs`` go to :class:`EncNet` (``aux``, ``se_loss``, ``lateral``...)."""
    return _build("encnet", 50, stem, num_classes, pretrained_backbone, weights_path,
                         output_stride, weights, kwargs)


def encnet_resnet101(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                     weights_path: PathLike = None, output_stride: int = 8, *,
                     stem: Optional[str] = None, weights: Optional[str] = None,
                     **kwargs) -> EncNet:
    """EncNet on a dilated ResNet-101 (see :func:`encnet_resnet50`)."""
    return _build("encnet", 101, stem, num_classes, pretrained_backbone, weights_path,
                         output_stride, weights, kwargs)


def encnet_resnet50s(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                     weights_path: PathLike = None, output_stride: int = 8, *,
                     weights: Optional[str] = None, **kwargs) -> EncNet:
    """EncNet on the official deep-stem ResNet-50 (``resnet50s``): :func:`encnet_resnet50`
    with ``stem="deep64"``; ``pretrained_backbone=True`` loads the official ImageNet
    ``resnet50s`` weights (:data:`encnet_lite.weights.IMAGENET_BACKBONES`)."""
    return _build("encnet", 50, "deep64", num_classes, pretrained_backbone, weights_path,
                         output_stride, weights, kwargs)


def encnet_resnet101s(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                      weights_path: PathLike = None, output_stride: int = 8, *,
                      weights: Optional[str] = None, **kwargs) -> EncNet:
    """EncNet on the official deep-stem ResNet-101 (see :func:`encnet_resnet50s`)."""
    return _build("encnet", 101, "deep64", num_classes, pretrained_backbone, weights_path,
                         output_stride, weights, kwargs)


def fcn_resnet50(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                 weights_path: PathLike = None, output_stride: int = 8, aux: bool = True,
                 align_corners: Optional[bool] = None, *, stem: Optional[str] = None,
                 weights: Optional[str] = None) -> FCN:
    """The FCN baseline on a dilated ResNet-50 (see :func:`encnet_resnet50`;
    ``weights="FCN_ResNet50s_ADE"`` is the published one)."""
    kwargs = _fcn_kwargs(aux, align_corners)
    return _build("fcn", 50, stem, num_classes, pretrained_backbone, weights_path, output_stride,
                      weights, kwargs)


def fcn_resnet101(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                  weights_path: PathLike = None, output_stride: int = 8, aux: bool = True,
                  align_corners: Optional[bool] = None, *, stem: Optional[str] = None,
                  weights: Optional[str] = None) -> FCN:
    """The FCN baseline on a dilated ResNet-101 (see :func:`encnet_resnet50`)."""
    kwargs = _fcn_kwargs(aux, align_corners)
    return _build("fcn", 101, stem, num_classes, pretrained_backbone, weights_path, output_stride,
                      weights, kwargs)


def fcn_resnet50s(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                  weights_path: PathLike = None, output_stride: int = 8, aux: bool = True,
                  align_corners: Optional[bool] = None, *, weights: Optional[str] = None) -> FCN:
    """The FCN baseline on the official deep-stem ResNet-50 (see :func:`encnet_resnet50s`)."""
    kwargs = _fcn_kwargs(aux, align_corners)
    return _build("fcn", 50, "deep64", num_classes, pretrained_backbone, weights_path,
                      output_stride, weights, kwargs)


def fcn_resnet101s(num_classes: Optional[int] = None, pretrained_backbone: bool = False,
                   weights_path: PathLike = None, output_stride: int = 8, aux: bool = True,
                   align_corners: Optional[bool] = None, *, weights: Optional[str] = None) -> FCN:
    """The FCN baseline on the official deep-stem ResNet-101 (see :func:`encnet_resnet50s`)."""
    kwargs = _fcn_kwargs(aux, align_corners)
    return _build("fcn", 101, "deep64", num_classes, pretrained_backbone, weights_path,
                      output_stride, weights, kwargs)


def encnet_tiny(num_classes: int, head_channels: int = 64, **kwargs) -> EncNet:
    """EncNet on :class:`TinyBackbone` (trains on a CPU); ``kwargs`` go to :class:`EncNet`."""
    return EncNet(TinyBackbone(), num_classes, head_channels=head_channels, **kwargs)


def fcn_tiny(num_classes: int, aux: bool = True, align_corners: bool = False) -> FCN:
    """The FCN baseline on :class:`TinyBackbone`: the context-blind reference."""
    return FCN(TinyBackbone(), num_classes, aux, align_corners)


@torch.no_grad()
def align_corners_disagreement(model: SegmentationModel, images: Tensor) -> float:
    """Share of the pixels of ``images: (B, 3, H, W)`` whose argmax class differs between
    ``align_corners=False`` and ``True``: the same weights, the same stride-8 logits, only
    the upsampling differs. The model is run as it is (call ``eval()`` first)."""
    before = model.align_corners
    try:
        labels = []
        for flag in (False, True):
            model.align_corners = flag
            labels.append(model(images)["main"].argmax(1))
    finally:
        model.align_corners = before
    return float((labels[0] != labels[1]).float().mean())
