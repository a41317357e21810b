"""Segmentation heads: the FCN head and EncNet's head (official EncNet code layout)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..context import ContextEncoding, ContextOutput
from .backbones import conv_bn_relu

__all__ = ["EncHead", "FCNHead", "LateralFusion"]


class FCNHead(nn.Sequential):
    """3x3 conv (C -> C/4) + BN + ReLU, dropout 0.1, 1x1 conv to classes.

    The FCN baseline's head on stage 4 (2048 -> 512) and EncNet's auxiliary head on
    stage 3 (1024 -> 256). ``x: (B, C, h, w) -> logits (B, num_classes, h, w)``.
    Dropout2d (whole channels), as the official code.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 inter_channels: Optional[int] = None, dropout: float = 0.1) -> None:
        inter = inter_channels or in_channels // 4
        super().__init__(
            conv_bn_relu(in_channels, inter, 3),
            nn.Dropout2d(dropout),
            nn.Conv2d(inter, num_classes, 1),
        )


class LateralFusion(nn.Module):
    """EncNet's optional lateral connections (official ``lateral=True``, used for PASCAL).

    1x1 conv + BN + ReLU brings stage-2 and stage-3 features to ``channels``; they are
    concatenated with the head's map and fused back to ``channels`` by a 3x3 conv + BN + ReLU.
    """

    def __init__(self, channels: int, lateral_channels: Sequence[int]) -> None:
        super().__init__()
        self.connect = nn.ModuleList([conv_bn_relu(c, channels, 1) for c in lateral_channels])
        self.fusion = conv_bn_relu(channels * (1 + len(lateral_channels)), channels, 3)

    def forward(self, x: Tensor, laterals: Sequence[Tensor]) -> Tensor:
        feats = [x]
        for connect, lat in zip(self.connect, laterals):
            lat = connect(lat)
            if lat.shape[-2:] != x.shape[-2:]:  # output stride 16: c2 is twice as large
                lat = F.interpolate(lat, size=x.shape[-2:], mode="bilinear", align_corners=False)
            feats.append(lat)
        return self.fusion(torch.cat(feats, dim=1))


class EncHead(nn.Module):
    """EncNet's head.

    ``c4 (B, C_in, h, w)`` -> 3x3 conv to ``channels`` + BN + ReLU -> [lateral fusion with
    c2, c3] -> :class:`~encnet_lite.context.ContextEncoding` (1x1 conv, encoding with K
    codewords, channel attention ``relu(x + x * gamma)``, SE logits) -> dropout 0.1 ->
    1x1 conv to classes.

    Args:
        in_channels: channels of ``c4`` (2048 for ResNets).
        channels: width of the head (512 for ResNets, as the paper).
        num_codes: K, codewords of the encoding layer (32 in the paper).
        se_loss: predict SE logits (class presence) from ``e``.
        lateral_channels: channels of ``(c2, c3)`` to enable the lateral connections.
        encoder: the encoding layer's variant (:data:`encnet_lite.encoding.VARIANTS`).

    ``forward(feats) -> (logits (B, classes, h, w), ContextOutput)``.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512,
                 num_codes: int = 32, se_loss: bool = True,
                 lateral_channels: Optional[Sequence[int]] = None, dropout: float = 0.1,
                 encoder: str = "official") -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.lateral = LateralFusion(channels, lateral_channels) if lateral_channels else None
        self.encode = ContextEncoding(channels, num_codes, num_classes if se_loss else None,
                                      encoder=encoder)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def features(self, feats: Dict[str, Tensor]) -> Tensor:
        """The map the Context Encoding Module reads: ``(B, channels, h, w)``."""
        x = self.conv(feats["c4"])
        if self.lateral is not None:
            x = self.lateral(x, [feats["c2"], feats["c3"]])
        return x

    def forward(self, feats: Dict[str, Tensor]) -> Tuple[Tensor, ContextOutput]:
        ctx = self.encode(self.features(feats))
        return self.classifier(ctx.x), ctx
