"""ADE20K, the SceneParsing release (150 classes): the dataset class and its label shift.

ADE20K (Zhou et al., *Scene Parsing through ADE20K Dataset*, CVPR 2017) labels scene-centric
images (indoor and outdoor: people, furniture, vehicles, stuff). The MIT Scene Parsing
benchmark, the paper's third benchmark, uses its ``ADEChallengeData2016.zip``: 20,210
training and 2,000 validation images, every pixel labelled with one of 150 categories
(``objectInfo150.txt``, ids 1..150, most frequent first) or 0, "other objects", which the
benchmark does not score.

Label convention (as the official PyTorch-Encoding code, which subtracts one from the raw
mask, and mmsegmentation's ``reduce_zero_label`` do): raw 0 (other) -> 255 = ignore, raw
1..150 -> classes 0..149. The PNGs stay as upstream wrote them; the shift happens on load.

Prepared layout (written by ``data_scripts/prepare_ade20k.py``; the upstream folder as is)::

    root/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/<same name>.png  (raw 0..150)
    root/ADEChallengeData2016/objectInfo150.txt, sceneCategories.txt
    root/prepared.json                          (written last: the root is complete)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Set, Tuple

import numpy as np

from .common import (
    IGNORE_INDEX,
    DataError,
    DatasetNotFoundError,
    PathLike,
    SegmentationFiles,
    check_same_size,
    load_image,
    load_mask,
    read_marker,
    voc_palette,
)

# The 150 categories in id order (objectInfo150.txt of the benchmark's development kit), named
# as mmsegmentation's ADE20KDataset names them; the official weights' catalogue uses the same.
CLASSES = ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
           "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
           "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house",
           "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
           "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
           "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
           "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
           "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
           "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
           "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
           "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
           "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
           "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
           "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
           "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
           "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
           "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
           "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
           "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")
NUM_CLASSES = 150  # raw ids 1..150; 0 = other
BASE_DIR = "ADEChallengeData2016"
SPLITS = ("train", "val")
SPLIT_DIRS = {"train": "training", "val": "validation"}
EXPECTED_SPLIT_SIZES = {"train": 20210, "val": 2000}
MARKER = "prepared.json"
PREPARE_COMMAND = "python data_scripts/prepare_ade20k.py --root {root}"
MODULE_COMMAND = "python -m encnet_lite.data.prepare_ade20k --root {root}"


def label_lut() -> np.ndarray:
    """Lookup table ``(256,)`` uint8: raw id -> training label (0 -> 255, k -> k - 1)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES)
    return lut


_LUT = label_lut()


def check_raw_labels(raw: np.ndarray, name: object) -> None:
    """Raise :class:`DataError` listing the values of a raw annotation above 150."""
    if raw.size == 0 or raw.max() <= NUM_CLASSES:  # the common case, without sorting
        return
    bad = [int(v) for v in np.unique(raw) if v > NUM_CLASSES]
    if bad:
        raise DataError(f"{name}: label values {bad} are above {NUM_CLASSES} (ADE20K "
                        f"annotations hold 0 = other and 1..{NUM_CLASSES} = the classes)")


def shift_labels(raw: np.ndarray, name: object = "") -> np.ndarray:
    """Raw annotation ``(H, W)`` uint8 of ids 0..150 -> ``(H, W)`` uint8 training labels
    (0 -> 255 ignore, 1..150 -> 0..149); a value above 150 raises :class:`DataError`."""
    raw = np.asarray(raw)
    check_raw_labels(raw, name)
    return _LUT[raw]


def stems(folder: Path, suffix: str) -> Set[str]:
    """Names (without ``suffix``) of the files ``*suffix`` in ``folder`` (hidden ones, e.g.
    an unfinished atomic write, left out); empty when the folder is missing."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {e.name[: -len(suffix)] for e in entries
                if e.name.endswith(suffix) and not e.name.startswith(".")}


def split_files(base: Path, split: str) -> Tuple[Set[str], Set[str]]:
    """``(image names, annotation names)`` of one split under an ``ADEChallengeData2016``
    folder ``base``."""
    folder = SPLIT_DIRS[split]
    return (stems(base / "images" / folder, ".jpg"),
            stems(base / "annotations" / folder, ".png"))


def not_prepared(root: Path, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"ADE20K is not prepared at {root} ({why}); prepare it with "
        f"`{PREPARE_COMMAND.format(root=root)}` (from an installed package: "
        f"`{MODULE_COMMAND.format(root=root)}`; --from-zip FILE uses a zip fetched by hand)")


def repair_command(root: Path) -> str:
    """How to restore a lost or damaged file of a prepared root (one clause, for messages)."""
    return (f"restore it with: {PREPARE_COMMAND.format(root=root)} --force (with the "
            "--from-zip or --download-dir you prepared from, if not the default)")


class ADE20K(SegmentationFiles):
    """ADE20K (SceneParsing, 150 classes) from a prepared root.
    ``ds[i] -> (image (3,H,W) float32, mask (H,W) int64)``, mask in 0..149 or 255.

    Args:
        root: folder written by ``data_scripts/prepare_ade20k.py`` (it holds
            ``ADEChallengeData2016/`` and ``prepared.json``).
        split: ``"train"`` (20,210 images) or ``"val"`` (2,000).
        transform: joint transform ``(image, mask) -> (image, mask)``.
    """

    classes = list(CLASSES)
    palette = voc_palette(NUM_CLASSES)

    def __init__(self, root: PathLike, split: str = "train", transform: Optional[Callable] = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = Path(root).expanduser()
        self.root, self.split = root, split
        if not root.is_dir():
            raise not_prepared(root, "the folder does not exist")
        marker = root / MARKER
        if not marker.is_file():
            raise not_prepared(root, f"{MARKER} is missing: preparation never ran or did not "
                                     "finish")
        info = read_marker(marker, "ADE20K")
        base = root / BASE_DIR
        images, masks = split_files(base, split)
        if len(images) != info.get(split) or images != masks:
            lost = sorted(images ^ masks)
            raise not_prepared(root, f"{base} holds {len(images)} {split} images and "
                                     f"{len(masks)} annotations, {MARKER} says {info.get(split)}"
                                     f"{f', e.g. {lost[0]} has one file only' if lost else ''}")
        self.ids: List[str] = sorted(images)
        folder = SPLIT_DIRS[split]
        super().__init__([(base / "images" / folder / f"{i}.jpg",
                           base / "annotations" / folder / f"{i}.png") for i in self.ids],
                         transform, repair_command(root))

    def _damaged(self, err: DataError) -> DataError:
        return DataError(f"{err}: the file is damaged or not from {BASE_DIR}.zip; "
                         f"{self.repair}")

    def load(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 training labels (shifted), checked."""
        image_path, mask_path = self.pairs[i]
        try:
            image, raw = self._read(load_image, image_path), self._read(load_mask, mask_path)
            check_same_size(image.shape[:2], raw.shape, image_path, mask_path)
            return image, shift_labels(raw, mask_path)
        except DataError as err:
            raise self._damaged(err) from err

    def mask(self, i: int) -> np.ndarray:
        """The ``(H, W)`` uint8 training labels of item ``i`` alone (no image decoding)."""
        mask_path = self.pairs[i][1]
        try:
            return shift_labels(self._read(load_mask, mask_path), mask_path)
        except DataError as err:
            raise self._damaged(err) from err
