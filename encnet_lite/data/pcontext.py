"""PASCAL-Context (59 classes): the dataset class and the 459 -> 59/60 label mapping.

PASCAL-Context (Mottaghi et al., CVPR 2014) labels every pixel of the PASCAL VOC 2010
train/val images with one of 459 categories (``labels.txt``: ``"id: name"``, 1..459;
0 = unlabelled). The common protocol keeps the 59 most frequent ones (the label ids below,
the official EncNet code's list) and calls everything else *background*:

- **59 classes** (default, what EncNet reports): classes 0..58 (alphabetical, aeroplane ..
  wood); background and unlabelled pixels become 255 = ignore, so they count neither in the
  loss nor in pixAcc/mIoU.
- **60 classes** (``num_classes=60``): background is class 0, the 59 classes are 1..59.

Prepared layout (written by ``data_scripts/prepare_pcontext.py``)::

    root/JPEGImages/<id>.jpg
    root/SegmentationClassContext59/<id>.png   (and ...60/ with --classes 60)
    root/ImageSets/{train,val}.txt             (4,998 / 5,105 ids: VOC2010 Main train/val)
    root/prepared.json                         (written last: the root is complete)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .common import (
    IGNORE_INDEX,
    DataError,
    DatasetNotFoundError,
    PathLike,
    SegmentationFiles,
    read_id_list,
    read_marker,
    voc_palette,
)

# Ids in the 459-class list (labels.txt) of the 59 kept classes, in order
# (the mapping of the official PyTorch-Encoding code).
LABEL_IDS = (2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104,
             105, 113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284,
             295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420,
             424, 427, 440, 445, 454, 458)
CLASSES_59 = ("aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
              "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair",
              "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor",
              "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
              "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock",
              "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track",
              "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
NUM_RAW_LABELS = 459  # ids 1..459 in labels.txt; 0 = unlabelled
SPLITS = ("train", "val")
EXPECTED_SPLIT_SIZES = {"train": 4998, "val": 5105}
MARKER = "prepared.json"
PREPARE_COMMAND = "python data_scripts/prepare_pcontext.py --root {root}"
MODULE_COMMAND = "python -m encnet_lite.data.prepare_pcontext --root {root}"


def mask_dir(num_classes: int) -> str:
    return f"SegmentationClassContext{num_classes}"


def label_lut(num_classes: int = 59) -> np.ndarray:
    """Lookup table ``(460,)`` uint8: raw PASCAL-Context id -> training label."""
    if num_classes not in (59, 60):
        raise ValueError(f"PASCAL-Context has a 59- or 60-class protocol, not {num_classes}")
    if num_classes == 59:
        lut = np.full(NUM_RAW_LABELS + 1, IGNORE_INDEX, dtype=np.uint8)
        lut[list(LABEL_IDS)] = np.arange(59)
    else:
        lut = np.zeros(NUM_RAW_LABELS + 1, dtype=np.uint8)  # background (incl. unlabelled)
        lut[list(LABEL_IDS)] = np.arange(1, 60)
    return lut


def convert_label_map(label_map: np.ndarray, num_classes: int = 59, name: object = "") -> \
        np.ndarray:
    """Raw ``LabelMap`` (H, W) of ids 0..459 -> (H, W) uint8 training labels."""
    raw = np.asarray(label_map)
    if raw.ndim != 2:
        raise DataError(f"{name}: LabelMap has shape {raw.shape}; expected a 2-D label map")
    values = np.unique(raw)
    bad = [int(v) if float(v).is_integer() else float(v) for v in values
           if not (0 <= v <= NUM_RAW_LABELS and float(v).is_integer())]
    if bad:
        raise DataError(f"{name}: label values {bad} are outside the 459-class range 0..459")
    return label_lut(num_classes)[raw.astype(np.int64)]


def classes(num_classes: int = 59) -> list:
    return list(CLASSES_59) if num_classes == 59 else ["background", *CLASSES_59]


def not_prepared(root: Path, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"PASCAL-Context is not prepared at {root} ({why}). Prepare it with:\n"
        f"    {PREPARE_COMMAND.format(root=root)}\n"
        f"(from an installed package: {MODULE_COMMAND.format(root=root)}; add --classes 60 "
        f"for the 60-class variant, --download-dir DIR to use archives fetched by hand).")


def repair_command(root: Path, info: dict) -> str:
    """How to restore files lost from a prepared root: prepare again with ``--force`` and
    the classes its marker lists (``info``)."""
    classes = {(60,): " --classes 60", (59, 60): " --classes both"}.get(
        tuple(sorted(info.get("variants", []))), "")
    return (f"restore it with: {PREPARE_COMMAND.format(root=root)}{classes} --force (with the "
            "--download-dir you prepared from, if not the default)")


class PascalContext(SegmentationFiles):
    """PASCAL-Context from a prepared root. ``ds[i] -> (image (3,H,W), mask (H,W) int64)``.

    Args:
        root: folder written by ``data_scripts/prepare_pcontext.py``.
        split: ``"train"`` (4,998 images) or ``"val"`` (5,105).
        transform: joint transform ``(image, mask) -> (image, mask)``.
        num_classes: 59 (background ignored; the paper's protocol) or 60.
    """

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Callable] = None,
                 num_classes: int = 59):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root).expanduser()
        self.root, self.split = root, split
        self.classes = classes(num_classes)
        self.palette = voc_palette(num_classes)
        marker = root / MARKER
        if not root.is_dir():
            raise not_prepared(root, "the folder does not exist")
        if not marker.is_file():
            raise not_prepared(root, f"{MARKER} is missing: preparation never ran or did not "
                                     "finish")
        info = read_marker(marker, "PASCAL-Context")
        if num_classes not in info.get("variants", []):
            raise not_prepared(root, f"the {num_classes}-class masks were not written; "
                                     f"it has {info.get('variants')}")
        list_file = root / "ImageSets" / f"{split}.txt"
        if not list_file.is_file():
            raise not_prepared(root, f"{list_file} is missing")
        self.ids = read_id_list(list_file)
        masks = root / mask_dir(num_classes)
        super().__init__([(root / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png")
                          for i in self.ids], transform, repair_command(root, info))
