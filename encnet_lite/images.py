"""Images in and out: reading any photo as upright 8-bit RGB, writing colour masks and
overlays as PNGs, and the legend band under an overlay.

What a photo becomes (:func:`read_photo`): turned upright by its EXIF orientation (a mask
then matches what an image viewer shows); 16-bit images scaled by their range (/257), float
images in [0, 1] by 255 (other float ranges are refused: they have no agreed meaning); a
photo over ``ENCNET_MAX_IMAGE_PIXELS`` refused from its header, before decoding
(:func:`photo_size` reads only the header). A file that cannot be read is one
:class:`~encnet_lite.errors.DataError` naming it. Every PNG is written whole or not at all
(:func:`encnet_lite.files.atomic_write`). ``encnet-predict`` (:mod:`encnet_lite.predict`) and
chapters 07 and 08 use these; dataset files have their own checked loaders in
:mod:`encnet_lite.data`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .data.common import open_image
from .errors import DataError
from .files import atomic_write

__all__ = ["read_photo", "photo_size", "overlay", "save_png", "with_legend", "class_shares"]

PathLike = Union[str, Path]


# --------------------------------------------------------------------------- reading photos


def photo_size(path: PathLike) -> Tuple[int, int]:
    """``(H, W)`` of the photo at ``path`` as shown upright (EXIF orientation applied), from
    its header only; a missing, unreadable or too large file raises a ValueError naming it
    (the pixel limit: ``ENCNET_MAX_IMAGE_PIXELS``)."""
    path = Path(path)
    _check_file(path)
    with _decoding_errors(path):
        with open_image(path, path) as img:
            width, height = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # turned by 90 degrees
                width, height = height, width
    return height, width


def read_photo(path: PathLike) -> np.ndarray:
    """The photo at ``path`` as ``(H, W, 3)`` uint8 RGB, upright (EXIF orientation applied).

    16-bit images are scaled by their range (``v / 257``), float images by 255 if their
    values are in [0, 1] (another range is refused: it has no agreed meaning); a ValueError
    names a file that cannot be read.
    """
    path = Path(path)
    _check_file(path)
    with _decoding_errors(path):
        with open_image(path, path) as img:
            img.load()  # decode now, so a truncated file fails here, naming it
            return _to_rgb8(ImageOps.exif_transpose(img), path)


def _to_rgb8(img, name: object) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a PIL image of any mode, by the range of its pixel type (PIL's
    own ``convert("RGB")`` clips 16-bit and float values at 255)."""
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (math.isfinite(low) and math.isfinite(high) and low >= 0 and high <= 1):
            raise DataError(f"{name} is a floating-point image with values in [{low:g}, "
                            f"{high:g}]; only [0, 1] has an agreed meaning: scale it to [0, 1] "
                            "or save it as an 8-bit image")
        grey = (a * 255 + 0.5).astype(np.uint8)
    elif img.mode == "I" or img.mode.startswith("I;16"):
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"{name} is a 32-bit integer image with values in [{a.min()}, "
                            f"{a.max()}], outside the 16-bit range; save it as an 8-bit or "
                            "16-bit image")
        grey = ((a + 128) // 257).astype(np.uint8)  # 0..65535 -> 0..255, rounded
    else:
        return np.asarray(img.convert("RGB"))
    return np.repeat(grey[..., None], 3, axis=2)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"image {path} is a folder, not an image file: give the files in it")
    if not path.is_file():
        raise DataError(f"image {path} does not exist (check the path)")


@contextmanager
def _decoding_errors(path: Path) -> Iterator[None]:
    """PIL's errors while reading ``path`` become a DataError naming the file (the library's
    own DataError, e.g. the pixel limit or a float range, passes as it is)."""
    try:
        yield
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"image {path} does not fit in the memory available when decoded; "
                        "downscale it, or lower ENCNET_MAX_IMAGE_PIXELS to refuse such "
                        "images from their header") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image file {path}: "
                        f"{' '.join(str(exc).split())} (give a JPEG or PNG photo)") from exc


# --------------------------------------------------------------------------- writing PNGs


def overlay(rgb: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` and ``colours`` (both ``(H, W, 3)`` uint8) blended: ``(1 - alpha) rgb + alpha c``.

    Computed a band of rows at a time: float32 copies of a whole 80-megapixel photo would
    take about 2 GB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: choose a value in [0, 1]")
    out = np.empty(rgb.shape, np.uint8)
    rows = max(1, (1 << 20) // max(1, rgb.shape[1]))
    for r in range(0, rgb.shape[0], rows):
        mixed = ((1 - alpha) * rgb[r:r + rows].astype(np.float32)
                 + alpha * colours[r:r + rows].astype(np.float32))
        out[r:r + rows] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    return out


def save_png(path: Path, array: np.ndarray) -> Path:
    """An RGB ``(H, W, 3)`` uint8 array as a PNG, written atomically."""
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def with_legend(image: np.ndarray, shares: Sequence[Tuple[str, float]],
                classes: Sequence[str], palette: np.ndarray) -> np.ndarray:
    """``image: (H, W, 3)`` uint8 with a white band below it naming ``shares`` (from
    :func:`class_shares`): a swatch of each class's colour, its name and pixel share, as
    many per row as fit the width. Returns ``(H + band, W, 3)`` uint8."""
    font = ImageFont.load_default()
    entries = [(f"{name} {100 * share:.0f}%", palette[list(classes).index(name)])
               for name, share in shares]
    width, line = image.shape[1], 16
    widths = [int(font.getlength(text)) + 20 for text, _ in entries]
    rows, x = 1, 4
    for w in widths:  # greedy line breaking
        if x + w > width and x > 4:
            rows, x = rows + 1, 4
        x += w
    band = Image.new("RGB", (width, rows * line + 6), "white")
    draw, x, y = ImageDraw.Draw(band), 4, 3
    for (text, colour), w in zip(entries, widths):
        if x + w > width and x > 4:
            x, y = 4, y + line
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=tuple(int(c) for c in colour),
                       outline="black")
        draw.text((x + 14, y + 1), text, fill="black", font=font)
        x += w
    return np.concatenate([image, np.asarray(band, np.uint8)], axis=0)


def class_shares(labels: np.ndarray, classes: Sequence[str], top: int = 5
                 ) -> List[Tuple[str, float]]:
    """The ``top`` most frequent predicted classes of ``labels`` with their pixel shares."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    order = np.argsort(-counts)[:top]
    return [(classes[i] if i < len(classes) else str(i), counts[i] / labels.size)
            for i in order if counts[i]]
