"""Joint image/mask transforms of the EncNet recipe (Zhang et al., CVPR 2018), on tensors.

Every transform is called as ``transform(image, mask) -> (image, mask)`` with ``image: (3, H, W)``
float, already normalised (datasets normalise with :func:`encnet_lite.data.normalize` before
any transform), and ``mask: (H, W)`` int64. Working after normalisation makes "pad the image
with the mean" simply "pad with 0". Masks are only ever resampled with nearest neighbours,
so no transform can invent a label value; padding adds ``ignore_index`` only.

Training (official recipe): random flip, long side resized to a random size in
``[0.5, 2.0] x base_size`` (520), pad to ``crop_size`` (480) if needed, random crop.
Validation during training: short side resized to ``crop_size``, centre crop.
Randomness comes from torch's generator (optionally a given ``torch.Generator``), so
``DataLoader`` workers are seeded correctly.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .common import IGNORE_INDEX

Pair = Tuple[torch.Tensor, torch.Tensor]


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return float(torch.empty(()).uniform_(low, high, generator=generator))


def resize(image: torch.Tensor, mask: torch.Tensor, size: Tuple[int, int]) -> Pair:
    """Resize to ``size = (H, W)``: bilinear for the image, nearest for the mask."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    # "nearest-exact" samples pixel centres like the bilinear image does (no half-pixel shift).
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    return image, mask.long()


def pad_to(image: torch.Tensor, mask: torch.Tensor, height: int, width: int,
           ignore_index: int = IGNORE_INDEX) -> Pair:
    """Pad bottom/right up to ``(height, width)``: image with 0 (= the mean once normalised),
    mask with ``ignore_index`` so the padding never counts in the loss or the metrics."""
    ph, pw = max(height - image.shape[-2], 0), max(width - image.shape[-1], 0)
    if ph == 0 and pw == 0:
        return image, mask
    image = F.pad(image, (0, pw, 0, ph), value=0.0)
    mask = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
    return image, mask


class Compose:
    """Apply joint transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, torch.Tensor], Pair]]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomScale:
    """Resize so the long side is ``base_size * s``, ``s ~ U(scale)`` (aspect kept)."""

    def __init__(self, base_size: int = 520, scale: Tuple[float, float] = (0.5, 2.0),
                 generator: Optional[torch.Generator] = None):
        self.base_size, self.scale, self.generator = base_size, scale, generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        long_side = self.base_size * _uniform(*self.scale, self.generator)
        r = long_side / max(h, w)
        return resize(image, mask, (max(1, round(h * r)), max(1, round(w * r))))

    def __repr__(self) -> str:
        return f"RandomScale(base_size={self.base_size}, scale={self.scale})"


class RandomCrop:
    """Pad (mean / ignore) up to ``size`` if smaller, then crop a random ``size x size``."""

    def __init__(self, size: int = 480, ignore_index: int = IGNORE_INDEX,
                 generator: Optional[torch.Generator] = None):
        self.size, self.ignore_index, self.generator = size, ignore_index, generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        image, mask = pad_to(image, mask, self.size, self.size, self.ignore_index)
        h, w = image.shape[-2:]
        y = int(torch.randint(0, h - self.size + 1, (), generator=self.generator))
        x = int(torch.randint(0, w - self.size + 1, (), generator=self.generator))
        return (image[:, y : y + self.size, x : x + self.size],
                mask[y : y + self.size, x : x + self.size])

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror image and mask together with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        self.p, self.generator = p, generator

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if _uniform(0.0, 1.0, self.generator) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ResizeShort:
    """Resize so the short side is ``size`` (aspect kept)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        r = self.size / min(h, w)
        return resize(image, mask, (max(self.size, round(h * r)), max(self.size, round(w * r))))


class CenterCrop:
    """Crop the central ``size x size`` (padding first if the image is smaller)."""

    def __init__(self, size: int, ignore_index: int = IGNORE_INDEX):
        self.size, self.ignore_index = size, ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        image, mask = pad_to(image, mask, self.size, self.size, self.ignore_index)
        h, w = image.shape[-2:]
        y, x = (h - self.size) // 2, (w - self.size) // 2
        return (image[:, y : y + self.size, x : x + self.size],
                mask[y : y + self.size, x : x + self.size])


def train_transform(crop_size: int = 480, base_size: int = 520,
                    scale: Tuple[float, float] = (0.5, 2.0), ignore_index: int = IGNORE_INDEX,
                    generator: Optional[torch.Generator] = None) -> Compose:
    """The training augmentation of the official recipe: flip, random rescale, pad, crop."""
    return Compose([
        RandomHorizontalFlip(0.5, generator),
        RandomScale(base_size, scale, generator),
        RandomCrop(crop_size, ignore_index, generator),
    ])


def val_transform(crop_size: Optional[int] = None,
                  ignore_index: int = IGNORE_INDEX) -> Callable[[torch.Tensor, torch.Tensor], Pair]:
    """Validation: with ``crop_size``, short side to ``crop_size`` then centre crop (the
    official quick validation during training); without, the identity (full images, as the
    final evaluation uses)."""
    if crop_size is None:
        return Compose([])
    return Compose([ResizeShort(crop_size), CenterCrop(crop_size, ignore_index)])
