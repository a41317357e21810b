"""Prediction on images of any size: single scale, multi-scale + flip, sliding windows.

The paper's test protocol (official code): the image resized by each of
``MS_SCALES``, each view also mirrored, views larger than the 480 px crop cut into
480x480 windows at stride 320, class scores resized back and combined over views.
The official code sums the scores; :func:`predict` averages them (same argmax, and the
scale of the scores does not depend on the number of views).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MS_SCALES", "predict", "sliding_window_starts"]

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _scores(model: nn.Module, x: Tensor) -> Tensor:
    """float32 ``(B, classes, h, w)`` scores of a model returning a dict (``main``) or a tensor."""
    out = model(x)
    return (out["main"] if isinstance(out, dict) else out).float()


def _forward(model: nn.Module, x: Tensor, flip: bool) -> Tensor:
    """Scores of ``x``, averaged with those of its mirror image when ``flip``."""
    scores = _scores(model, x)
    if flip:
        scores = (scores + _scores(model, x.flip(-1)).flip(-1)) / 2
    return scores


def _check_classes(scores: Tensor, num_classes: int) -> None:
    if scores.shape[1] != num_classes:
        raise ValueError(f"the model predicts {scores.shape[1]} classes, not {num_classes}")


def sliding_window_starts(size: int, crop: int, stride: int) -> List[int]:
    """Offsets of windows of ``crop`` px every ``stride`` px covering ``size`` px; the last
    window is moved back to end at the border instead of running past it."""
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return [min(i * stride, size - crop) for i in range(n)]


def _sliding(model: nn.Module, x: Tensor, num_classes: int, crop: int, stride: int,
             flip: bool) -> Tensor:
    """Scores of ``x: (B, 3, h, w)`` from ``crop x crop`` windows, averaged where they overlap.

    A side shorter than ``crop`` is first padded (bottom/right) with zeros, the mean
    colour of normalised images, so that every window has the training crop's size.
    """
    b, _, h, w = x.shape
    x = F.pad(x, (0, max(crop - w, 0), 0, max(crop - h, 0)))
    hp, wp = x.shape[-2:]
    total = x.new_zeros((b, num_classes, hp, wp), dtype=torch.float32)
    count = x.new_zeros((1, 1, hp, wp), dtype=torch.float32)
    for r in sliding_window_starts(hp, crop, stride):
        for c in sliding_window_starts(wp, crop, stride):
            scores = _forward(model, x[..., r:r + crop, c:c + crop], flip)
            _check_classes(scores, num_classes)  # before the sum, which would fail unclearly
            total[..., r:r + crop, c:c + crop] += scores
            count[..., r:r + crop, c:c + crop] += 1
    return (total / count)[..., :h, :w]


@torch.no_grad()
def predict(model: nn.Module, image: Tensor, num_classes: int,
            scales: Sequence[float] = (1.0,), flip: bool = False,
            crop_size: Optional[int] = None, stride: Optional[int] = None) -> Tensor:
    """Class scores ``(B, num_classes, H, W)`` for ``image: (B, 3, H, W)`` (or ``(3, H, W)``).

    For each scale ``s`` the image is resized (bilinear) to ``round(s * H) x round(s * W)``;
    a view whose long side exceeds ``crop_size`` is scored by sliding windows
    (``stride`` defaults to ``2/3 crop_size``, 480 -> 320 as the paper), a smaller one in one
    forward pass at its own size; ``flip`` adds each view's mirror image. The scores are
    resized back to ``(H, W)`` and averaged over all views.

    The model is used as it is: call ``model.eval()`` first. Runs without autograd; under
    ``torch.autocast`` the scores are accumulated in float32.
    """
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or not image.is_floating_point():
        raise ValueError(f"image must be float (B, 3, H, W) or (3, H, W), normalised with "
                         f"encnet_lite.data.normalize; got {image.dtype} {tuple(image.shape)}")
    if num_classes < 1 or any(s <= 0 for s in scales) or (crop_size is not None
                                                         and crop_size < 1):
        raise ValueError(f"num_classes ({num_classes}) and crop_size ({crop_size}) must be "
                         f">= 1 and every scale > 0 (scales {tuple(scales)})")
    b, _, h, w = image.shape
    if crop_size is not None and stride is None:
        stride = max(1, crop_size * 2 // 3)
    total = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    for s in scales:
        size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
        x = image if size == (h, w) else _resize(image, size)
        if crop_size is not None and max(size) > crop_size:
            scores = _sliding(model, x, num_classes, crop_size, stride, flip)
        else:
            scores = _forward(model, x, flip)
        _check_classes(scores, num_classes)
        total += scores if scores.shape[-2:] == (h, w) else _resize(scores, (h, w))
    return total / len(scales)
