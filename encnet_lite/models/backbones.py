"""Backbones: a dilated torchvision ResNet-50/101 and a tiny CPU stand-in.

Both return a dict of three feature maps (the heads pick what they need):

- ``c2``: stage 2, stride 8 (ResNet: 512 channels), used by EncNet's lateral connections;
- ``c3``: stage 3, stride 8 (ResNet: 1024), fed to the auxiliary FCN head;
- ``c4``: stage 4, stride 8 (ResNet: 2048), fed to the main head.

``backbone.out_channels`` maps those names to channel counts and ``backbone.output_stride``
is the input-to-feature downsampling factor (8, or 16 on request for the ResNets).

The ResNet's stem is torchvision's 7x7 conv by default; ``stem="deep64"`` is the official
PyTorch-Encoding ``resnet50s``/``resnet101s`` stem and ``stem="deep32"`` mmsegmentation's
ResNetV1c stem (three 3x3 convs), so that the published EncNets load one key to one key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torchvision
from torch import Tensor, nn

from ..errors import WeightsError
from ..weights import imagenet_state_dict

__all__ = ["STEMS", "ResNetBackbone", "TinyBackbone", "check_images",
           "conv_bn_relu", "deep_stem", "load_resnet_state_dict"]

_RESNETS = {
    50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    101: (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}


# Stem name -> width of its first two 3x3 convs (None: torchvision's single 7x7 conv). The
# deep stems end with twice that width: 128 channels (official resnet50s) or 64 (ResNetV1c).
STEMS = {"plain": None, "deep64": 64, "deep32": 32}


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1) -> nn.Sequential:
    """Conv (no bias: BN has one) + BN + ReLU; odd kernels keep the size at stride 1."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_images(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a float ``(B, 3, H, W)`` batch (shape and dtype
    only: free). A uint8 photo must be normalised first (:func:`encnet_lite.data.normalize`),
    else the first convolution fails with an obscure dtype error."""
    if not isinstance(x, Tensor):
        raise ValueError(f"images must be a torch.Tensor (B, 3, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"images must be float (B, 3, H, W), normalised with "
                         f"encnet_lite.data.normalize; got {x.dtype} {tuple(x.shape)}")
    if x.dim() != 4 or x.shape[1] != 3:
        hint = ": add the batch axis, x[None]" if x.dim() == 3 and x.shape[0] == 3 else ""
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(x.shape)}{hint}")


# ---------------------------------------------------------------------------- ResNet


def load_resnet_state_dict(depth: int, weights_path: Optional[Union[str, Path]] = None
                           ) -> Dict[str, Tensor]:
    """ImageNet weights of torchvision's ResNet-``depth`` as a state dict (``fc.*`` dropped).

    From ``weights_path`` when given (a torchvision ResNet state dict, possibly wrapped in
    ``{"state_dict": ...}`` or ``{"model": ...}``), else through torchvision's weights API
    (``ResNet50_Weights.IMAGENET1K_V1``): ``torch.hub`` reads its cache, else downloads.
    A failed download raises a RuntimeError saying what to do instead, never a silent
    random initialisation.
    """
    weights = _RESNETS[depth][1]
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights file {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a pickle that needs code, a truncated or foreign file
            raise WeightsError(f"ImageNet weights file {str(path)!r} is not a plain state "
                               f"dict of tensors ({type(err).__name__}); nothing was run. "
                               "Give a torchvision ResNet .pth file.") from err
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    else:
        state = _hub_state_dict(depth, weights.url)
    return {k.removeprefix("module."): v for k, v in state.items()
            if not k.removeprefix("module.").startswith("fc.")}


def _hub_state_dict(depth: int, url: str) -> Dict[str, Tensor]:
    """torch.hub's cached copy of ``url`` (downloaded first if missing), loaded with
    ``weights_only=True``: the hash is checked only on download, so a file planted in the
    cache must not be able to run code when it is unpickled."""
    filename = url.rsplit("/", 1)[-1]
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        # Called through the module so that tests can make it fail (monkeypatch).
        return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True,
                                                  weights_only=True)
    except Exception as err:  # offline, proxy, corrupt or unsafe file: all end the same way
        if (cache / filename).is_file():
            raise WeightsError(
                f"{cache / filename} is not a plain ResNet-{depth} weights file "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "it was not loaded (only tensors are read from the torch.hub cache, no "
                "code runs). Delete it and download it again, or pass "
                f"weights_backbone='/path/to/{filename}'.") from err
        raise WeightsError(
            f"Could not fetch the ImageNet weights of ResNet-{depth} ({url}): "
            f"{type(err).__name__}: {err}\n"
            "No network? Either\n"
            "  * pass weights_backbone=None (random initialisation: fine for tests "
            "and the tiny experiments, poor for real training), or\n"
            f"  * download {filename} on another machine and pass "
            f"weights_backbone='/path/to/{filename}', or copy it to {cache}/ where "
            "torch.hub looks first."
        ) from err


def deep_stem(width: int) -> nn.Sequential:
    """The deep stem: 3x3 convs 3 -> ``width`` (stride 2) -> ``width`` -> ``2 * width``.

    BN + ReLU follow the first two convs inside the stem; the third conv's BN is the
    backbone's ``bn1``, as in the official ``resnet50s`` (``conv1.{0,1,3,4,6}``, ``bn1``).
    ``x: (B, 3, H, W) -> (B, 2 * width, ceil(H / 2), ceil(W / 2))``.
    """
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
    )


def _widen_input(block: nn.Module, in_channels: int) -> None:
    """Give the first bottleneck's 1x1 conv and shortcut conv ``in_channels`` inputs (a deep
    stem of width 64 hands 128 channels to stage 1, torchvision's stem 64)."""
    block.conv1 = nn.Conv2d(in_channels, block.conv1.out_channels, 1, bias=False)
    block.downsample[0] = nn.Conv2d(in_channels, block.downsample[0].out_channels, 1,
                                    bias=False)


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50/101 with stages 3 and 4 dilated instead of strided.

    ``output_stride=8``: stages 3 and 4 keep stage 2's resolution (dilation 2 and 4);
    ``output_stride=16``: only stage 4 is dilated (dilation 2); ``32``: the plain
    classification ResNet (for comparisons). torchvision dilates a
    stage's first block with the previous rate, exactly as the official EncNet code does.

    Args:
        depth: 50 or 101.
        pretrained: load ImageNet weights (plain stem: torchvision's, see
            :func:`load_resnet_state_dict`; ``deep64``: the official ``resnet50s`` /
            ``resnet101s``, see :func:`encnet_lite.weights.imagenet_state_dict`).
        weights_path: a local ImageNet state dict for this stem; implies ``pretrained``.
        stem: ``"plain"`` (torchvision's 7x7 conv, 64 channels), ``"deep64"`` (official
            PyTorch-Encoding ``resnet50s``: 3x3 convs 3 -> 64 -> 64 -> 128, ``bn1`` of 128,
            so stage 1 takes 128 channels) or ``"deep32"`` (mmsegmentation's ResNetV1c:
            3 -> 32 -> 32 -> 64). Each is followed by BN, ReLU and the 3x3 stride-2 max pool.

    ``forward(x: (B, 3, H, W)) -> {"c2": (B, 512, H/8, W/8), "c3": (B, 1024, ...),
    "c4": (B, 2048, ...)}`` (sizes rounded up at every stride-2 layer).
    """

    def __init__(self, depth: int = 50, output_stride: int = 8, pretrained: bool = False,
                 weights_path: Optional[Union[str, Path]] = None, stem: str = "plain") -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"depth must be one of {sorted(_RESNETS)}, got {depth}")
        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
        if output_stride not in dilate:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if stem not in STEMS:
            raise ValueError(f"stem={stem!r}: choose one of {sorted(STEMS)}")
        dilate = dilate[output_stride]
        net = _RESNETS[depth][0](weights=None, replace_stride_with_dilation=dilate)
        width = STEMS[stem]
        if width is not None:
            net.conv1, net.bn1 = deep_stem(width), nn.BatchNorm2d(2 * width)
            if 2 * width != net.layer1[0].conv1.in_channels:
                _widen_input(net.layer1[0], 2 * width)
            for conv in [*net.conv1.modules(), net.layer1[0].conv1, net.layer1[0].downsample[0]]:
                if isinstance(conv, nn.Conv2d):  # torchvision's initialisation of its convs
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        # Same attribute names as torchvision, so its state dicts load as they are.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.depth = depth
        self.stem_type = stem  # "plain" | "deep64" | "deep32" (STEMS)
        self.output_stride = output_stride
        self.out_channels = {"c2": 512, "c3": 1024, "c4": 2048}
        if (pretrained or weights_path is not None) and width is None:
            self.load_state_dict(load_resnet_state_dict(depth, weights_path))
        elif pretrained or weights_path is not None:
            self.load_state_dict(imagenet_state_dict(depth, stem, self.state_dict(),
                                                     weights_path))

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        check_images(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # stride 4
        x = self.layer1(x)  # stride 4, 256 channels
        c2 = self.layer2(x)  # stride 8
        c3 = self.layer3(c2)  # stride 8 (dilated) or 16
        c4 = self.layer4(c3)  # stride 8 or 16 (dilated)
        return {"c2": c2, "c3": c3, "c4": c4}


# ---------------------------------------------------------------------------- tiny


class PointwiseBlock(nn.Module):
    """Residual block of two 1x1 convs: adds depth and width, not receptive field.

    ``x: (B, C, H, W) -> relu(x + BN(conv1x1(relu(BN(conv1x1(x))))))``, same shape.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(channels, channels, 1),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(x + self.body(x))


class TinyBackbone(nn.Module):
    """A ~0.3M-parameter backbone with the ResNet backbone's interface (output stride 8).

    It is deliberately short-sighted: the tiny FCN built on it (this backbone + the FCN
    head's 3x3 conv) has a receptive field of 52 px (``receptive_field``: 44 px on its
    stride-8 logits, plus one stride for the bilinear upsampling, which mixes 2x2 cells);
    that window reaches at most 29 px from the output pixel. The synthetic ContextScenes data keep scene cues >= 36 px from the objects whose
    class depends on them, so this FCN cannot see them and EncNet must supply the context.

    Layout (each conv is followed by BN + ReLU):

    - stem: 2x2 conv stride 2 (3 -> w0), 3x3 conv (w0 -> w0): stride 2;
    - layer1: 2x2 conv stride 2 (w0 -> w1) + a pointwise residual block: stride 4;
    - layer2 -> ``c2``: 2x2 conv stride 2 (w1 -> w2) + pointwise block: stride 8;
    - layer3 -> ``c3``: 3x3 conv (w2 -> w3) + pointwise block: stride 8;
    - layer4 -> ``c4``: 1x1 conv (w3 -> w4) + pointwise block: stride 8.

    Where a ResNet would stride (stages 3, 4), this network keeps the resolution as the
    dilated ResNet does, but without dilation and with a pointwise stage 4: dilations 2
    and 4 would give it a stride-32 network's view (see ``receptive_field``). The 2x2
    stride-2 convs ("patchify" downsampling, as in ConvNeXt) align stride-8 cell i with
    input pixels 8i..8i+7, the alignment bilinear upsampling assumes.
    """

    def __init__(self, widths: tuple = (32, 48, 64, 128, 256)) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(conv_bn_relu(3, w0, 2, stride=2), conv_bn_relu(w0, w0, 3))
        self.layer1 = nn.Sequential(conv_bn_relu(w0, w1, 2, stride=2), PointwiseBlock(w1))
        self.layer2 = nn.Sequential(conv_bn_relu(w1, w2, 2, stride=2), PointwiseBlock(w2))
        self.layer3 = nn.Sequential(conv_bn_relu(w2, w3, 3), PointwiseBlock(w3))
        self.layer4 = nn.Sequential(conv_bn_relu(w3, w4, 1), PointwiseBlock(w4))
        self.output_stride = 8
        self.out_channels = {"c2": w2, "c3": w3, "c4": w4}

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        check_images(x)
        x = self.layer1(self.stem(x))  # stride 4
        c2 = self.layer2(x)  # stride 8
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return {"c2": c2, "c3": c3, "c4": c4}
