"""What every dataset here shares: normalisation, palettes, checked file loading, mask PNGs.

Every dataset returns ``(image, mask)`` with ``image: (3, H, W)`` float32 normalised with the
ImageNet statistics and ``mask: (H, W)`` int64 holding class ids ``0..num_classes-1`` or
``IGNORE_INDEX`` (255). Bad files fail loudly, naming the file: a corrupt image or mask, an
image and mask of different sizes, or label values outside the class range.
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, DatasetNotFoundError
from ..files import write_bytes_atomic

PathLike = Union[str, Path]

# ImageNet channel statistics: the backbones are (or may be) ImageNet-pretrained.
MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def normalize(image: Union[np.ndarray, torch.Tensor, Image.Image]) -> torch.Tensor:
    """RGB image -> ``(3, H, W)`` float32 tensor, ``(x - MEAN) / STD``.

    Accepts a PIL image, a ``(H, W, 3)`` uint8 array (0..255) or a ``(H, W, 3)`` float
    array/tensor already in [0, 1].
    """
    if isinstance(image, torch.Tensor):
        x = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
        mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device)
        std = torch.tensor(STD, dtype=x.dtype, device=x.device)
        return ((x - mean) / std).permute(2, 0, 1).contiguous()
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    # NumPy, not torch: single-threaded, so data-loading never fights the model for cores.
    x = np.asarray(image)
    x = x.astype(np.float32) * np.float32(1 / 255) if x.dtype == np.uint8 else x.astype(np.float32)
    x = (x - np.array(MEAN, np.float32)) * np.array([1 / s for s in STD], np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize`: ``(3, H, W)`` or ``(B, 3, H, W)`` -> same shape in [0, 1]."""
    mean = torch.tensor(MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)


def voc_palette(num_classes: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, ``(num_classes, 3)`` uint8 (bits of the id spread over RGB)."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def colorize(mask: Union[np.ndarray, torch.Tensor], palette: np.ndarray,
             ignore_color: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours; ignored pixels get ``ignore_color``."""
    mask = np.asarray(mask)
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette[:256]
    lut[IGNORE_INDEX] = ignore_color
    return lut[np.clip(mask, 0, 255).astype(np.uint8)]


# --------------------------------------------------------------------------- size limits

# Defaults of the two limits below; the environment variables override them (for datasets
# with unusually large images or archive members).
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own warning threshold (about 9459 x 9459)
MAX_MEMBER_BYTES = 64 << 20  # the PASCAL archives' largest files are about 1 MB
IMAGE_PIXELS_ENV = "ENCNET_MAX_IMAGE_PIXELS"
MEMBER_BYTES_ENV = "ENCNET_MAX_MEMBER_BYTES"


def _limit(env: str, default: int) -> int:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"{env}={text!r} is not a positive whole number; set it to a count, "
                        f"e.g. {env}={default}, or unset it")
    return int(text)


def max_image_pixels() -> int:
    """Largest image (width x height) any loader decodes: ``$ENCNET_MAX_IMAGE_PIXELS`` or
    :data:`MAX_IMAGE_PIXELS`. Above about 179M pixels PIL refuses on its own as well
    (raise ``PIL.Image.MAX_IMAGE_PIXELS`` too for such images)."""
    return _limit(IMAGE_PIXELS_ENV, MAX_IMAGE_PIXELS)


def max_member_bytes() -> int:
    """Largest archive member read: ``$ENCNET_MAX_MEMBER_BYTES`` or :data:`MAX_MEMBER_BYTES`."""
    return _limit(MEMBER_BYTES_ENV, MAX_MEMBER_BYTES)


def too_large(name: object, size: str, limit: str, env: str) -> DataError:
    return DataError(f"{name} is {size}, over the limit of {limit}: a damaged or hostile file? "
                     f"If your data really are that large, raise the limit with {env}")


# A file that is not where it should be; :func:`open_image` raises these with a plain message.
NOT_THERE = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
_NOT_THERE_WHY = {FileNotFoundError: "does not exist", IsADirectoryError: "is a folder, not a file",
                  NotADirectoryError: "does not exist (a folder on its path is a file)"}


@contextmanager
def open_image(path: Union[PathLike, io.BytesIO], name: object) -> Iterator[Image.Image]:
    """``PIL.Image.open`` with the pixel limit checked on the header, before any decoding
    (a decompression bomb becomes a :class:`DataError` naming the file and the limit)."""
    limit = max_image_pixels()
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise too_large(name, f"too many pixels ({err})", f"{limit} pixels",
                        IMAGE_PIXELS_ENV) from err
    except NOT_THERE as err:  # the same type, without the "[Errno 2]" noise
        kind = next(t for t in NOT_THERE if isinstance(err, t))
        raise kind(f"{name} {_NOT_THERE_WHY[kind]}") from err
    with img:
        width, height = img.size
        if width * height > limit:
            raise too_large(name, f"{width}x{height} = {width * height} pixels",
                            f"{limit} pixels", IMAGE_PIXELS_ENV)
        yield img


# --------------------------------------------------------------------------- checked loading

def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB; a corrupt file raises :class:`DataError`."""
    try:
        with open_image(path, path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            return np.array(img.convert("RGB"))
    except (*NOT_THERE, DataError):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"corrupt or unreadable image file {path}: {err}") from err


def load_mask(path: Union[PathLike, io.BytesIO], name: Optional[str] = None) -> np.ndarray:
    """Read a label PNG (mode L or P) as ``(H, W)`` uint8 class ids (``name``: for errors)."""
    name = name or str(path)
    try:
        with open_image(path, name) as img:
            img.load()
            if img.mode not in ("L", "P"):
                raise DataError(f"mask {name} has mode {img.mode}; expected a single-channel "
                                "label image (mode L or P) of class ids")
            return np.asarray(img)
    except (*NOT_THERE, DataError):
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"corrupt or unreadable annotation file {name}: {err}") from err


def check_same_size(image_hw: Tuple[int, int], mask_hw: Tuple[int, int],
                    image_name: object, mask_name: object) -> None:
    """Raise :class:`DataError` naming both files when an image and its mask differ in size."""
    if tuple(image_hw) != tuple(mask_hw):
        raise DataError(f"image {image_name} is {image_hw[0]}x{image_hw[1]} (HxW) but its mask "
                        f"{mask_name} is {mask_hw[0]}x{mask_hw[1]}")


def check_labels(mask: np.ndarray, num_classes: int, name: object,
                 ignore_index: int = IGNORE_INDEX) -> None:
    """Raise :class:`DataError` listing every value outside ``0..num_classes-1`` and ignore."""
    values = np.unique(mask)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        raise DataError(f"{name}: label values {bad} are outside 0..{num_classes - 1} "
                        f"(and {ignore_index} = ignore)")


def check_pair_sizes(pairs: Sequence[Tuple[Path, Path]], *, progress: bool = False) -> None:
    """Check every ``(image file, mask file)`` pair has one size, reading headers only."""
    from tqdm.auto import tqdm

    for image_path, mask_path in tqdm(pairs, desc="check sizes", unit="pair",
                                      disable=not progress):
        sizes = []
        for path, kind in ((image_path, "image"), (mask_path, "annotation")):
            try:
                with open_image(path, path) as img:
                    sizes.append(img.size[::-1])
            except (*NOT_THERE, DataError):
                raise
            except Exception as err:
                raise DataError(f"corrupt or unreadable {kind} file {path}: {err}") from err
        check_same_size(sizes[0], sizes[1], image_path, mask_path)


class SegmentationFiles(torch.utils.data.Dataset):
    """A list of ``(image file, mask file)`` pairs, loaded, checked and normalised.

    ``ds[i] -> (image (3,H,W) float32, mask (H,W) int64)``; ``transform(image, mask)`` (a joint
    transform from :mod:`encnet_lite.data.transforms`) runs on those tensors. ``repair`` says
    how to restore a file missing from a prepared root (e.g. the prepare command).
    """

    classes: List[str] = []
    palette: np.ndarray = np.zeros((0, 3), dtype=np.uint8)
    ignore_index = IGNORE_INDEX

    def __init__(self, pairs: Sequence[Tuple[Path, Path]],
                 transform: Optional[Callable] = None, repair: str = ""):
        self.pairs = list(pairs)
        self.transform = transform
        self.repair = repair

    def _read(self, read: Callable[[Path], np.ndarray], path: Path) -> np.ndarray:
        """``read(path)``; a file that is not there becomes one line saying how to restore it."""
        try:
            return read(path)
        except NOT_THERE as err:
            raise DatasetNotFoundError(f"{err}: the prepared dataset lost it after preparation; "
                                       f"{self.repair or 'prepare the dataset again'}") from err

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """The raw pair: ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 mask, checked."""
        image_path, mask_path = self.pairs[i]
        image = self._read(load_image, image_path)
        mask = self._read(load_mask, mask_path)
        check_same_size(image.shape[:2], mask.shape, image_path, mask_path)
        check_labels(mask, self.num_classes, mask_path, self.ignore_index)
        return image, mask

    def mask(self, i: int) -> np.ndarray:
        """The ``(H, W)`` uint8 label map of item ``i`` alone (no image decoding, no
        transform), e.g. for class statistics."""
        mask_path = self.pairs[i][1]
        mask = self._read(load_mask, mask_path)
        check_labels(mask, self.num_classes, mask_path, self.ignore_index)
        return mask

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(i)
        x, y = normalize(image), torch.from_numpy(mask.astype(np.int64))
        if self.transform is not None:
            x, y = self.transform(x, y)
        return x, y


def save_mask_png(path: PathLike, mask: np.ndarray) -> None:
    """Save ``(H, W)`` uint8 class ids as a single-channel PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def check_id(image_id: str, source: object) -> str:
    """``image_id`` if it is safe to put into a file name, else :class:`DataError`.

    Ids come from list files and archive member names and become ``<root>/<dir>/<id>.jpg``:
    an id that is empty, ``.``/``..``, absolute, holds a path separator, a NUL or another
    control character could read or replace a file outside the dataset root.
    """
    # Control, format (a byte-order mark, zero-width characters) and separator characters:
    # invisible in a listing, they would name a file no one can find.
    bad = (not image_id or image_id in (".", "..") or any(c in image_id for c in "/\\")
           or any(unicodedata.category(c)[0] in "CZ" for c in image_id)
           or Path(image_id).is_absolute() or image_id != image_id.strip())
    if bad:
        raise DataError(f"{source}: image id {image_id!r} is not a plain file name (empty, "
                        "'..', a path, or a control or invisible character); the list or archive "
                        "is damaged or hostile: fetch it again from the official source")
    return image_id


def parse_id_list(text: str, source: object) -> List[str]:
    """Image ids of a split list's ``text``, one per line (first word), each checked with
    :func:`check_id` (``source`` names the list in errors). A leading byte-order mark (an
    editor's UTF-8 signature) is dropped, not taken as part of the first id."""
    text = text.removeprefix("\ufeff")
    return [check_id(line.split()[0], source) for line in text.splitlines() if line.strip()]


def read_id_list(path: PathLike) -> List[str]:
    """Image ids of a split file, one per line (VOC ``ImageSets`` format), checked."""
    return parse_id_list(Path(path).read_text(encoding="utf-8", errors="replace"), path)


def read_marker(path: Path, dataset: str) -> dict:
    """The JSON of a dataset's ``prepared.json``; a damaged one raises
    :class:`DatasetNotFoundError` saying to prepare again."""
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig"))  # an editor's BOM is no damage
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        info = err
    if not isinstance(info, dict):
        why = f"{type(info).__name__}: {info}" if isinstance(info, Exception) else "not a dict"
        raise DatasetNotFoundError(
            f"{path} is damaged ({why}): {dataset} must be prepared again (run its prepare "
            "script with --force)")
    return info
