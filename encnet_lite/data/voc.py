"""PASCAL VOC 2012 segmentation (21 classes, 255 = object boundaries, ignored), optionally with
the SBD "augmented" training set (``train_aug``: 10,582 images).

Prepared layout (written by ``data_scripts/prepare_voc.py``)::

    root/JPEGImages/<id>.jpg
    root/SegmentationClass/<id>.png        VOC's own labels (train/val/trainval: 1,464/1,449)
    root/SegmentationClassAug/<id>.png     with --sbd: VOC train labels + SBD labels
    root/ImageSets/{train,val,trainval}.txt (+ train_aug.txt with --sbd)
    root/prepared.json                     (written last: the root is complete)

``train_aug`` = (VOC train + SBD train + SBD val) minus VOC val, with VOC's label where
VOC has one and SBD's (``GTcls.Segmentation``) otherwise: the usual protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .common import (
    DatasetNotFoundError,
    PathLike,
    SegmentationFiles,
    read_id_list,
    read_marker,
    voc_palette,
)

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")
SPLITS = ("train", "val", "trainval", "train_aug")
EXPECTED_SPLIT_SIZES = {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582}
MARKER = "prepared.json"
PREPARE_COMMAND = "python data_scripts/prepare_voc.py --root {root}"
MODULE_COMMAND = "python -m encnet_lite.data.prepare_voc --root {root}"


def not_prepared(root: Path, why: str, sbd: bool = False) -> DatasetNotFoundError:
    flag = " --sbd" if sbd else ""
    return DatasetNotFoundError(
        f"PASCAL VOC 2012 is not prepared at {root} ({why}). Prepare it with:\n"
        f"    {PREPARE_COMMAND.format(root=root)}{flag}\n"
        f"(from an installed package: {MODULE_COMMAND.format(root=root)}{flag}; "
        f"--download-dir DIR uses archives fetched by hand).")


class PascalVOC(SegmentationFiles):
    """PASCAL VOC 2012 from a prepared root. ``ds[i] -> (image (3,H,W), mask (H,W) int64)``.

    Args:
        root: folder written by ``data_scripts/prepare_voc.py``.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"train_aug"`` (needs ``--sbd``).
        transform: joint transform ``(image, mask) -> (image, mask)``.
    """

    classes = list(CLASSES)
    palette = voc_palette(len(CLASSES))

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Callable] = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root).expanduser()
        self.root, self.split = root, split
        aug = split == "train_aug"
        if not root.is_dir():
            raise not_prepared(root, "the folder does not exist", aug)
        marker = root / MARKER
        if not marker.is_file():
            raise not_prepared(root, f"{MARKER} is missing: preparation never ran or did not "
                                     "finish", aug)
        sbd = bool(read_marker(marker, "PASCAL VOC 2012").get("sbd"))
        if aug and not sbd:
            raise not_prepared(root, "it was prepared without the SBD train_aug set", True)
        list_file = root / "ImageSets" / f"{split}.txt"
        if not list_file.is_file():
            raise not_prepared(root, f"{list_file} is missing", aug)
        self.ids = read_id_list(list_file)
        masks = root / ("SegmentationClassAug" if aug else "SegmentationClass")
        repair = (f"restore it with: {PREPARE_COMMAND.format(root=root)}{' --sbd' * sbd} --force "
                  "(with the --download-dir you prepared from, if not the default)")
        super().__init__([(root / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png")
                          for i in self.ids], transform, repair)
