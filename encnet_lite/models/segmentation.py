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
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WeightsError
from ..weights import WeightsEntry, check_builder_args, fetch_state_dict, fit_state_dict, get_entry
from .backbones import ResNetBackbone, TinyBackbone
from .heads import EncHead, FCNHead

__all__ = [
    "ARCHITECTURES", "FCN", "EncNet", "SegmentationModel", "param_groups",
    "encnet_resnet50", "encnet_resnet101", "encnet_resnet50s", "encnet_resnet101s", "encnet_tiny",
    "fcn_resnet50", "fcn_resnet101", "fcn_resnet50s", "fcn_resnet101s", "fcn_tiny",
    "align_corners_disagreement", "build_published", "load_weights",
]

# None (random), "imagenet" (the ImageNet weights, cached) or a local state-dict file.
WeightsBackbone = Optional[Union[str, Path]]


def upsample(logits: Tensor, size, align_corners: bool = False) -> Tensor:
    """Bilinear upsampling of ``(B, C, h, w)`` logits to ``size = (H, W)``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class SegmentationModel(nn.Module):
    """What FCN and EncNet share: ``backbone``, ``head`` on ``c4``, the optional ``aux`` FCN
    head on ``c3`` (training mode only), and the upsampling of the logits to the input size;
    :func:`param_groups` splits the parameters into backbone and heads.

    A subclass builds its head and implements :meth:`head_outputs`; ``forward(images:
    (B, 3, H, W))`` returns ``{"main", ...head extras[, "aux"]}`` (module docstring).
    ``options``: the keyword options of the class that a config sets
    (:func:`encnet_lite.engine.build_model` reads them off the config by these names).
    """

    options: Tuple[str, ...] = ("aux", "align_corners")

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int, *,
                 aux: bool = True, align_corners: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = align_corners  # how the logits are upsampled (module docstring)
        # Registered in this order (backbone, head, aux): parameter order, and with it the
        # optimizer state of saved checkpoints and the initialisation draws, stay as before.
        self.backbone = backbone
        self.head = head
        self.aux = FCNHead(backbone.out_channels["c3"], num_classes) if aux else None

    def head_outputs(self, feats: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(stride-8 logits (B, classes, h, w), extra outputs by name)`` of the head."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        size = images.shape[-2:]
        feats = self.backbone(images)
        logits, extras = self.head_outputs(feats)
        out = {"main": upsample(logits, size, self.align_corners), **extras}
        if self.training and self.aux is not None:
            out["aux"] = upsample(self.aux(feats["c3"]), size, self.align_corners)
        return out


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 10.0) -> List[Dict]:
    """Optimizer groups of any model with a ``.backbone``: ``{"name": "backbone"}`` at ``lr``
    and ``{"name": "head"}`` (every other parameter: head, auxiliary head) at
    ``lr * head_lr_mult``, as the official recipe (the backbone starts pretrained, the heads
    from scratch). Frozen parameters are left out, and so is a group left empty; each group
    records its ``lr_mult`` for logging. Ready for ``torch.optim.SGD(groups, lr=lr, ...)``."""
    backbone = getattr(model, "backbone", None)
    ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    groups = [{"name": "backbone", "params": [p for p in model.parameters() if id(p) in ids],
               "lr": lr, "lr_mult": 1.0},
              {"name": "head", "params": [p for p in model.parameters() if id(p) not in ids],
               "lr": lr * head_lr_mult, "lr_mult": head_lr_mult}]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    return [g for g in groups if g["params"]]


class FCN(SegmentationModel):
    """The FCN baseline: dilated backbone + :class:`FCNHead` on ``c4`` (+ aux on ``c3``).

    ``forward(images: (B, 3, H, W)) -> {"main"[, "aux"]}`` (see the module docstring).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, aux: bool = True,
                 align_corners: bool = False) -> None:
        head = FCNHead(backbone.out_channels["c4"], num_classes)
        super().__init__(backbone, head, num_classes, aux=aux, align_corners=align_corners)

    def head_outputs(self, feats: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self.head(feats["c4"]), {}


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

    options = SegmentationModel.options + ("se_loss", "lateral", "num_codes", "encoder")

    def __init__(self, backbone: nn.Module, num_classes: int, *, aux: bool = True,
                 se_loss: bool = True, lateral: bool = False, num_codes: int = 32,
                 head_channels: int = 512, encoder: str = "official",
                 align_corners: bool = False) -> None:
        ch = backbone.out_channels
        head = EncHead(ch["c4"], num_classes, channels=head_channels, num_codes=num_codes,
                       se_loss=se_loss, lateral_channels=(ch["c2"], ch["c3"]) if lateral else None,
                       encoder=encoder)
        super().__init__(backbone, head, num_classes, aux=aux, align_corners=align_corners)

    def head_outputs(self, feats: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        logits, ctx = self.head(feats)
        extras = {"gamma": ctx.gamma, "e": ctx.e}
        if ctx.se is not None:
            extras["se"] = ctx.se
        return logits, extras

    def assignments(self, images: Tensor) -> Tensor:
        """Soft assignments of the head's descriptors to the K codewords.

        ``images: (B, 3, H, W) -> (B, h, w, K)`` with ``(h, w)`` the stride-8 grid; each
        position's K weights sum to 1.
        """
        x = self.head.features(self.backbone(images))
        b, _, h, w = x.shape
        return self.head.encode.assignments(x).reshape(b, h, w, -1)


ARCHITECTURES: Dict[str, type] = {"encnet": EncNet, "fcn": FCN}


# ---------------------------------------------------------------------------- builders
#
# Every builder has one keyword-only signature, as torchvision's:
# ``(*, weights=None, weights_backbone=None, num_classes=None, aux=None, **kwargs)``.
# ``weights="NAME"`` returns a published model from the catalogue of
# :mod:`encnet_lite.weights` (downloaded, cached, verified, converted and loaded strictly, in
# eval mode, with ``model.weights_meta`` attached); ``weights_backbone`` initialises the
# backbone only: None (random), "imagenet" (the ImageNet weights, downloaded to the cache on
# first use) or a local ImageNet state-dict file. ``kwargs``: ``output_stride`` and ``stem``
# go to the backbone (ResNets), the rest to the model class (``align_corners``, and EncNet's
# ``se_loss``, ``lateral``, ``num_codes``, ``encoder``, ``head_channels``).


def _published(weights: str, model: str, depth: int, stem: Optional[str],
               num_classes: Optional[int], backbone_args: Dict, kwargs: Dict) -> nn.Module:
    """:func:`load_weights` of ``weights`` after checking that it is the model this builder
    makes and that no argument contradicts it (an argument equal to the entry's value is
    accepted)."""
    check_builder_args(weights, model, depth, stem, num_classes, backbone_args, kwargs)
    loaded = load_weights(weights)
    if "align_corners" in kwargs:  # the one setting the weights leave free (upsampling)
        loaded.align_corners = kwargs["align_corners"]
    return loaded


def _classes(num_classes: Optional[int], builder: str) -> int:
    if num_classes is None:
        raise TypeError(f"{builder}() needs num_classes= (or weights='NAME' of a published "
                        "model, which brings its own: encnet_lite.weights.CATALOGUE)")
    return num_classes


def _backbone_file(weights_backbone: WeightsBackbone) -> Optional[Path]:
    """The local file ``weights_backbone`` names (None for None and "imagenet"), checked."""
    if weights_backbone is None or weights_backbone == "imagenet":
        return None
    if not isinstance(weights_backbone, (str, Path)):  # e.g. True, the old switch
        raise TypeError(f"weights_backbone={weights_backbone!r}: give None, 'imagenet' or "
                        "the path of a local ImageNet state-dict file")
    path = Path(weights_backbone).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights_backbone={str(weights_backbone)!r} is not a file: "
                                "give a local ImageNet state-dict file, 'imagenet' (the "
                                "download cache) or None (random initialisation)")
    return path


def _build(model: str, depth: int, stem: Optional[str], weights: Optional[str],
           weights_backbone: WeightsBackbone, num_classes: Optional[int],
           aux: Optional[bool], kwargs: Dict[str, Any]) -> SegmentationModel:
    """What every ResNet builder does: the published ``weights``, or ``model`` ("encnet" |
    "fcn") on a fresh dilated ResNet-``depth`` (``stem``: fixed by a ``*s`` builder, else
    ``kwargs["stem"]`` or "plain"), initialised by ``weights_backbone``."""
    name = f"{model}_resnet{depth}" + ("s" if stem else "")
    if stem and "stem" in kwargs:
        raise TypeError(f"{name}() has the {stem} stem; for another one use "
                        f"{model}_resnet{depth}(stem=...)")
    stem = stem or kwargs.pop("stem", None)  # None: not chosen ("plain", or the weights')
    output_stride = kwargs.pop("output_stride", 8)
    if aux is not None:
        kwargs["aux"] = aux
    if weights is not None:
        return _published(weights, model, depth, stem, num_classes,
                          {"weights_backbone": weights_backbone,
                           "output_stride": output_stride}, kwargs)
    path = _backbone_file(weights_backbone)
    backbone = ResNetBackbone(depth, output_stride=output_stride, stem=stem or "plain",
                              pretrained=weights_backbone is not None, weights_path=path)
    return ARCHITECTURES[model](backbone, _classes(num_classes, name), **kwargs)


def _build_tiny(model: str, weights: Optional[str], weights_backbone: WeightsBackbone,
                num_classes: Optional[int], aux: Optional[bool],
                kwargs: Dict[str, Any]) -> SegmentationModel:
    """``model`` on :class:`TinyBackbone` (random initialisation: it trains from scratch)."""
    name = f"{model}_tiny"
    if weights is not None or weights_backbone is not None:
        raise WeightsError(f"{name}() has no published or ImageNet weights (the tiny backbone "
                           "trains from scratch): drop weights= and weights_backbone=")
    if aux is not None:
        kwargs["aux"] = aux
    return ARCHITECTURES[model](TinyBackbone(), _classes(num_classes, name), **kwargs)


def encnet_resnet50(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                    num_classes: Optional[int] = None, aux: Optional[bool] = None,
                    **kwargs: Any) -> EncNet:
    """EncNet on a dilated ResNet-50 (builders: see above). ``stem="plain"`` (default),
    ``"deep64"`` (official resnet50s) or ``"deep32"`` (ResNetV1c), see
    :class:`ResNetBackbone`; ``weights_backbone="imagenet"`` is torchvision's ImageNet
    ResNet-50. ``weights="EncNet_ResNet50s_PContext"`` (any ResNet-50 EncNet of
    :data:`encnet_lite.weights.CATALOGUE`): the published model, in eval mode."""
    return _build("encnet", 50, None, weights, weights_backbone, num_classes, aux, kwargs)


def encnet_resnet101(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                     num_classes: Optional[int] = None, aux: Optional[bool] = None,
                     **kwargs: Any) -> EncNet:
    """EncNet on a dilated ResNet-101 (see :func:`encnet_resnet50`)."""
    return _build("encnet", 101, None, weights, weights_backbone, num_classes, aux, kwargs)


def encnet_resnet50s(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                     num_classes: Optional[int] = None, aux: Optional[bool] = None,
                     **kwargs: Any) -> EncNet:
    """EncNet on the official deep-stem ResNet-50 (``resnet50s``): :func:`encnet_resnet50`
    with ``stem="deep64"``; ``weights_backbone="imagenet"`` loads the official ImageNet
    ``resnet50s`` weights (:data:`encnet_lite.weights.IMAGENET_BACKBONES`)."""
    return _build("encnet", 50, "deep64", weights, weights_backbone, num_classes, aux, kwargs)


def encnet_resnet101s(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                      num_classes: Optional[int] = None, aux: Optional[bool] = None,
                      **kwargs: Any) -> EncNet:
    """EncNet on the official deep-stem ResNet-101 (see :func:`encnet_resnet50s`)."""
    return _build("encnet", 101, "deep64", weights, weights_backbone, num_classes, aux, kwargs)


def fcn_resnet50(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                 num_classes: Optional[int] = None, aux: Optional[bool] = None,
                 **kwargs: Any) -> FCN:
    """The FCN baseline on a dilated ResNet-50 (see :func:`encnet_resnet50`;
    ``weights="FCN_ResNet50s_ADE"`` is the published one)."""
    return _build("fcn", 50, None, weights, weights_backbone, num_classes, aux, kwargs)


def fcn_resnet101(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                  num_classes: Optional[int] = None, aux: Optional[bool] = None,
                  **kwargs: Any) -> FCN:
    """The FCN baseline on a dilated ResNet-101 (see :func:`encnet_resnet50`)."""
    return _build("fcn", 101, None, weights, weights_backbone, num_classes, aux, kwargs)


def fcn_resnet50s(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                  num_classes: Optional[int] = None, aux: Optional[bool] = None,
                  **kwargs: Any) -> FCN:
    """The FCN baseline on the official deep-stem ResNet-50 (see :func:`encnet_resnet50s`)."""
    return _build("fcn", 50, "deep64", weights, weights_backbone, num_classes, aux, kwargs)


def fcn_resnet101s(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                   num_classes: Optional[int] = None, aux: Optional[bool] = None,
                   **kwargs: Any) -> FCN:
    """The FCN baseline on the official deep-stem ResNet-101 (see :func:`encnet_resnet50s`)."""
    return _build("fcn", 101, "deep64", weights, weights_backbone, num_classes, aux, kwargs)


def encnet_tiny(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
                num_classes: Optional[int] = None, aux: Optional[bool] = None,
                **kwargs: Any) -> EncNet:
    """EncNet on :class:`TinyBackbone` (trains on a CPU; ``head_channels`` 64 unless given);
    ``weights`` and ``weights_backbone`` must stay None (nothing is published for it)."""
    kwargs.setdefault("head_channels", 64)  # a head sized for the tiny backbone
    return _build_tiny("encnet", weights, weights_backbone, num_classes, aux, kwargs)


def fcn_tiny(*, weights: Optional[str] = None, weights_backbone: WeightsBackbone = None,
             num_classes: Optional[int] = None, aux: Optional[bool] = None,
             **kwargs: Any) -> FCN:
    """The FCN baseline on :class:`TinyBackbone`: the context-blind reference."""
    return _build_tiny("fcn", weights, weights_backbone, num_classes, aux, kwargs)


# ---------------------------------------------------------------------------- published models
#
# The catalogue (:mod:`encnet_lite.weights`) knows the files and their key names; the models
# are made here, by the builders above, and load the state dicts the catalogue hands them.


def build_published(entry: Union[str, WeightsEntry],
                    device: Union[str, torch.device] = "cpu") -> SegmentationModel:
    """The architecture of the published ``entry`` (a name of
    :data:`encnet_lite.weights.CATALOGUE` or its entry), randomly initialised
    (``device="meta"``: no memory, no initialisation cost; :func:`load_weights` fills it),
    made by the model's builder."""
    entry = get_entry(entry)
    options = {k: getattr(entry, k) for k in ARCHITECTURES[entry.model].options
               if hasattr(entry, k)}  # an entry has no num_codes/encoder: the defaults
    with torch.device(device):
        return _build(entry.model, entry.depth, None, None, None, entry.num_classes, None,
                      dict(options, stem=entry.stem))


def load_weights(name: Union[str, WeightsEntry], file: Optional[Union[str, Path]] = None, *,
                 verify: bool = True, progress: bool = True,
                 cache_dir: Optional[Union[str, Path]] = None) -> SegmentationModel:
    """The published model ``name`` (see :data:`encnet_lite.weights.CATALOGUE`;
    case-insensitive), in eval mode on the CPU, with its entry as ``model.weights_meta``.

    ``file``: a local copy (the zoo's zip or the ``.pth`` in it; mmsegmentation's ``.pth``)
    instead of the cache. ``verify=False`` skips the checksum (for a file you trust, e.g.
    re-saved). ``progress``: download progress bar. ``cache_dir``: see
    :func:`encnet_lite.weights.weights_dir`. The keys are renamed and must fill the model
    exactly (:func:`encnet_lite.weights.fit_state_dict`).
    """
    entry = get_entry(name)
    state, path = fetch_state_dict(entry, file, verify=verify, progress=progress,
                                   cache_dir=cache_dir)
    model = build_published(entry, device="meta")
    model.load_state_dict(fit_state_dict(state, entry, model.state_dict(), str(path)),
                          strict=True, assign=True)
    model.weights_meta = entry
    return model.eval()


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
