"""Datasets and joint transforms.

Every dataset returns ``(image (3, H, W) float32, mask (H, W) int64)``: images normalised
with the ImageNet ``MEAN``/``STD``, masks of class ids with 255 = ignore.

- :class:`ContextScenes`: synthetic scenes that need global context (CPU chapters, tests);
- :class:`PascalContext`: PASCAL-Context, 59 classes (``data_scripts/prepare_pcontext.py``);
- :class:`PascalVOC`: PASCAL VOC 2012, optionally SBD ``train_aug`` (``prepare_voc.py``);
- :class:`ADE20K`: ADE20K's SceneParsing release, 150 classes (``prepare_ade20k.py``);
- :mod:`~encnet_lite.data.transforms`: the recipe's random scale / crop / flip.
"""

from .ade20k import ADE20K
from .common import (
    IGNORE_INDEX,
    MEAN,
    STD,
    DataError,
    DatasetNotFoundError,
    colorize,
    denormalize,
    normalize,
    voc_palette,
)
from .pcontext import PascalContext
from .scenes import ContextScenes, blind_caps, blind_guess
from .transforms import (
    CenterCrop,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ResizeShort,
    train_transform,
    val_transform,
)
from .voc import PascalVOC

__all__ = [
    "IGNORE_INDEX", "MEAN", "STD", "DataError", "DatasetNotFoundError", "colorize",
    "denormalize", "normalize", "voc_palette", "PascalContext", "ContextScenes", "blind_caps",
    "blind_guess", "CenterCrop", "Compose", "RandomCrop", "RandomHorizontalFlip", "RandomScale",
    "ResizeShort", "train_transform", "val_transform", "PascalVOC", "ADE20K",
]
