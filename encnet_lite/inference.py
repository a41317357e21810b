"""Prediction on images of any size: single scale, multi-scale + flip, sliding windows.

Two test protocols share the code here (windows, padding, mirroring):

- :func:`predict`, this project's default: scale ``s`` resizes the image itself to
  ``round(s H) x round(s W)`` (``align_corners=False``); a view whose long side exceeds the
  crop is cut into crop-sized windows at stride 2/3 of the crop (480 -> 320), the last one
  moved back to end at the border; a smaller view runs once at its own size; the logits of a
  view and of its mirror image are averaged, and so are the views (same argmax as a sum,
  and the scale of the scores does not depend on the number of views).
- :func:`predict_official`, the evaluation of the official PyTorch-Encoding code
  (``MultiEvalModule`` and ``module_inference``, ``encoding/models/base.py`` in v0.5.0,
  ``encoding/models/sseg/base.py`` later, unchanged): scale ``s`` sets the *long side* to
  ``ceil(base_size * s)`` whatever the image size (PASCAL-Context: base 520, crop 480;
  ADE20K's ResNet-101: 640 / 576); every window is padded at the bottom/right to
  ``crop x crop`` with black (``-mean / std`` after normalisation), so a view no larger
  than the crop runs once, padded; larger views use windows starting every 2/3 crop, the
  last one clipped at the border (and padded); each window scores
  ``exp(logits + mirrored logits)``; overlapping windows are averaged, views summed; every
  resize uses ``align_corners=True``.
- :func:`predict_mmseg`, mmsegmentation's test of its EncNet checkpoints (``whole`` mode,
  ``configs/_base_/datasets/ade20k.py``: ``Resize`` to fit 2048 x 512 keeping the aspect
  ratio): each view is the whole image rescaled so that its long side is at most 2048 and
  its short side at most 512 (times the ratio for multi-scale), scored in one pass; the
  softmax probabilities, resized back with ``align_corners=False``, are averaged over
  views and mirrors.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MS_SCALES", "MMSEG_SCALE", "predict", "predict_official", "predict_mmseg",
           "mmseg_view_size", "official_view_size", "official_pad_value",
           "sliding_window_starts", "window_spans"]

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
MMSEG_SCALE = (2048, 512)  # mmsegmentation's ADE20K test scale: (long, short) bounds


def _resize(x: Tensor, size, align_corners: bool = False) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _scores(model: nn.Module, x: Tensor) -> Tensor:
    """float32 ``(B, classes, h, w)`` scores of a model returning a dict (``main``) or a tensor."""
    out = model(x)
    return (out["main"] if isinstance(out, dict) else out).float()


def _mirrored(model: nn.Module, x: Tensor) -> Tensor:
    """Scores of the mirror image of ``x``, mirrored back so that they line up with ``x``."""
    return _scores(model, x.flip(-1)).flip(-1)


def _forward(model: nn.Module, x: Tensor, flip: bool) -> Tensor:
    """Scores of ``x``, averaged with those of its mirror image when ``flip``."""
    scores = _scores(model, x)
    if flip:
        scores = (scores + _mirrored(model, x)) / 2
    return scores


def _forward_official(model: nn.Module, x: Tensor, flip: bool) -> Tensor:
    """``exp(logits)`` of ``x``, or ``exp(logits + mirrored logits)`` when ``flip``: the
    official ``module_inference`` (the sum comes before the exponential)."""
    scores = _scores(model, x)
    if flip:
        scores = scores + _mirrored(model, x)
    return scores.exp()


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


def window_spans(size: int, crop: int, stride: int, clip: bool = False
                 ) -> List[Tuple[int, int]]:
    """``(start, stop)`` of the windows of at most ``crop`` px that cover ``size`` px.

    ``clip=False`` (default protocol): :func:`sliding_window_starts`, every window of a side
    of at least ``crop`` px is ``crop`` long. ``clip=True`` (official): windows start every
    ``stride`` px, ``ceil((size - crop) / stride) + 1`` of them, the last one cut at the
    border. A side of at most ``crop`` px has one window, ``(0, size)``.
    """
    if not clip:
        return [(s, min(s + crop, size)) for s in sliding_window_starts(size, crop, stride)]
    n = math.ceil(max(size - crop, 0) / stride) + 1
    return [(i * stride, min(i * stride + crop, size)) for i in range(n)]


def official_pad_value(mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None) -> Tuple[float, ...]:
    """Black after normalisation, ``-mean / std`` per channel (default: ImageNet's, as
    :func:`encnet_lite.data.normalize`): the official padding of views and windows."""
    from .data.common import MEAN, STD

    mean, std = MEAN if mean is None else mean, STD if std is None else std
    return tuple(-m / s for m, s in zip(mean, std))


def _pad(x: Tensor, crop: int, fill: Optional[Sequence[float]]) -> Tensor:
    """``x: (B, C, h, w)`` padded at the bottom/right to ``(B, C, max(h, crop), max(w, crop))``
    with ``fill`` per channel (``None``: zeros, the mean colour of normalised images)."""
    b, c, h, w = x.shape
    if h >= crop and w >= crop:
        return x
    if fill is None:
        return F.pad(x, (0, max(crop - w, 0), 0, max(crop - h, 0)))
    value = torch.tensor(fill, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    out = value.reshape(1, c, 1, 1).repeat(b, 1, max(h, crop), max(w, crop))
    out[..., :h, :w] = x
    return out


def _windows(score: Callable[[Tensor], Tensor], x: Tensor, num_classes: int, crop: int,
             stride: int, clip: bool, fill: Optional[Sequence[float]]) -> Tensor:
    """Scores ``(B, num_classes, h, w)`` of ``x: (B, 3, h, w)`` from the windows of
    :func:`window_spans` on each side: each is padded to ``crop x crop`` with ``fill``,
    scored by ``score``, cut back to its size, and the windows are averaged where they
    overlap."""
    b, _, h, w = x.shape
    total = x.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r0, r1 in window_spans(h, crop, stride, clip):
        for c0, c1 in window_spans(w, crop, stride, clip):
            scores = score(_pad(x[..., r0:r1, c0:c1], crop, fill))
            _check_classes(scores, num_classes)  # before the sum, which would fail unclearly
            total[..., r0:r1, c0:c1] += scores[..., :r1 - r0, :c1 - c0]
            count[..., r0:r1, c0:c1] += 1
    return total / count


def _batch(image: Tensor, num_classes: int, scales: Sequence[float],
           crop_size: Optional[int]) -> Tensor:
    """``image`` as ``(B, 3, H, W)``, after checking it and the settings."""
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or not image.is_floating_point():
        raise ValueError(f"image must be float (B, 3, H, W) or (3, H, W), normalised with "
                         f"encnet_lite.data.normalize; got {image.dtype} {tuple(image.shape)}")
    if num_classes < 1 or any(s <= 0 for s in scales) or (crop_size is not None
                                                         and crop_size < 1):
        raise ValueError(f"num_classes ({num_classes}) and crop_size ({crop_size}) must be "
                         f">= 1 and every scale > 0 (scales {tuple(scales)})")
    return image


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
    image = _batch(image, num_classes, scales, crop_size)
    b, _, h, w = image.shape
    if crop_size is not None and stride is None:
        stride = max(1, crop_size * 2 // 3)
    total = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    for s in scales:
        size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
        x = image if size == (h, w) else _resize(image, size)
        if crop_size is not None and max(size) > crop_size:
            scores = _windows(lambda v: _forward(model, v, flip), x, num_classes, crop_size,
                              stride, clip=False, fill=None)
        else:
            scores = _forward(model, x, flip)
        _check_classes(scores, num_classes)
        total += scores if scores.shape[-2:] == (h, w) else _resize(scores, (h, w))
    return total / len(scales)


def official_view_size(h: int, w: int, base_size: int, scale: float) -> Tuple[int, int]:
    """``(height, width)`` of the official view of an ``h x w`` image at ``scale``: the long
    side (the width when ``h == w``) is ``ceil(base_size * scale)``, the short side keeps the
    aspect ratio, rounded half up. A 300x200 image at 0.5 with base 520: ``(260, 173)``."""
    long = int(math.ceil(base_size * scale))
    if h > w:
        return long, max(1, int(1.0 * w * long / h + 0.5))
    return max(1, int(1.0 * h * long / w + 0.5)), long


@torch.no_grad()
def predict_official(model: nn.Module, image: Tensor, num_classes: int,
                     scales: Sequence[float] = MS_SCALES, flip: bool = True,
                     base_size: int = 520, crop_size: int = 480, stride: Optional[int] = None,
                     pad_value: Optional[Sequence[float]] = None) -> Tensor:
    """Class scores ``(B, num_classes, H, W)`` of ``image: (B, 3, H, W)`` (or ``(3, H, W)``)
    by the official PyTorch-Encoding evaluation (module docstring).

    Per scale: resize to :func:`official_view_size` (``align_corners=True``); windows of
    :func:`window_spans` with ``clip=True`` (``stride`` default ``2/3 crop_size``, the
    official ``int(crop_size * 2.0 / 3.0)``), each padded to ``crop_size`` with
    ``pad_value`` (default :func:`official_pad_value`) and scored ``exp(logits + mirrored
    logits)`` (``flip``) or ``exp(logits)``; overlaps averaged; resized back to ``(H, W)``
    (``align_corners=True``). The result is the *sum* over scales, as the official code.
    The defaults are PASCAL-Context's: scales 0.5 to 1.75 (``MultiEvalModule``'s default),
    base 520, crop 480. Call ``model.eval()`` first.
    """
    image = _batch(image, num_classes, scales, crop_size)
    b, _, h, w = image.shape
    stride = max(1, crop_size * 2 // 3) if stride is None else stride
    fill = official_pad_value() if pad_value is None else pad_value
    total = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    for s in scales:
        x = _resize(image, official_view_size(h, w, base_size, s), align_corners=True)
        scores = _windows(lambda v: _forward_official(model, v, flip), x, num_classes,
                          crop_size, stride, clip=True, fill=fill)
        total += _resize(scores, (h, w), align_corners=True)
    return total


def mmseg_view_size(h: int, w: int, scale: Tuple[int, int] = MMSEG_SCALE,
                    ratio: float = 1.0) -> Tuple[int, int]:
    """``(height, width)`` of mmsegmentation's view of an ``h x w`` image: rescaled, keeping
    the aspect ratio, by the largest factor that keeps the long side within
    ``int(max(scale) * ratio)`` and the short side within ``int(min(scale) * ratio)``
    (mmcv's ``rescale_size``; sizes rounded half up). A 683x512 ADE20K image at ratio 1 has
    its short side brought to 512: ``(683, 512)``; a 300x400 one becomes ``(512, 683)``."""
    long_edge, short_edge = int(max(scale) * ratio), int(min(scale) * ratio)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


@torch.no_grad()
def predict_mmseg(model: nn.Module, image: Tensor, num_classes: int,
                  scales: Sequence[float] = (1.0,), flip: bool = False,
                  scale: Tuple[int, int] = MMSEG_SCALE) -> Tensor:
    """Class probabilities ``(B, num_classes, H, W)`` of ``image: (B, 3, H, W)`` by
    mmsegmentation's ``whole``-mode test (module docstring): per ratio in ``scales``, the
    image resized to :func:`mmseg_view_size` (bilinear, ``align_corners=False``) is scored
    in one pass, its logits resized back to ``(H, W)``; the softmax over classes is averaged
    over the views (and their mirrors, ``flip``). mmsegmentation resizes the 8-bit photo
    before normalising it; resizing the normalised image instead differs only by that
    rounding (normalisation is per-channel affine, and so commutes with the bilinear map).
    """
    image = _batch(image, num_classes, scales, None)
    b, _, h, w = image.shape
    total = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    for r in scales:
        x = _resize(image, mmseg_view_size(h, w, scale, r))
        for mirror in (False, True) if flip else (False,):
            scores = _mirrored(model, x) if mirror else _scores(model, x)
            _check_classes(scores, num_classes)
            total += _resize(scores, (h, w)).softmax(1)
    return total / (len(scales) * (2 if flip else 1))
