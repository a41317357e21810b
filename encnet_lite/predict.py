"""Run a trained model on your own images: ``segment_image(...)`` and the ``encnet-predict`` CLI.

::

    encnet-predict --checkpoint runs/pcontext_encnet_r50_short/best.pt photo.jpg --out pred

writes, per image, ``pred/photo.mask.png`` (each pixel coloured by its predicted class, the
dataset's palette) and ``pred/photo.overlay.png`` (that mask blended over the photo, with a
legend of the most frequent classes below it). ``--weights NAME`` uses a published model
(:mod:`encnet_lite.weights`) instead of a checkpoint: ``EncNet_ResNet50s_ADE``, whose 150
ADE20K classes cover indoor and outdoor scenes, people, furniture and vehicles, is the one
for your own photos. The
prediction is :func:`encnet_lite.inference.predict`, as in evaluation: one scale by
default, ``--multi-scale`` for the paper's scales with flips; views larger than the
training crop are scored by sliding windows of the crop's size.

What a photo becomes before the model sees it (:func:`read_photo`): turned upright by its
EXIF orientation (the mask matches what an image viewer shows); 16-bit images scaled by
their range (/257), float images in [0, 1] by 255 (other float ranges are refused); a photo
over ``ENCNET_MAX_IMAGE_PIXELS`` refused from its header, before decoding; one whose long
side exceeds ``max_side`` (1024 px by default) segmented at that size, its labels scaled back
(nearest) to the photo's size; one under 8 px a side refused.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_io
from .data.common import MAX_IMAGE_PIXELS
from .presets import TrainConfig

__all__ = ["segment_image", "palette_for", "overlay", "save_png", "predict_files", "class_shares",
           "read_photo", "photo_size", "output_stems", "main"]

PathLike = Union[str, Path]
MIN_SIDE = 8  # the backbones' output stride: a smaller view has no feature cell at all
MAX_SIDE = 1024  # about the training augmentation's largest view (2.0 x base size 520)


def palette_for(cfg: TrainConfig, num_classes: int) -> np.ndarray:
    """The colours of the checkpoint's dataset: ``(num_classes, 3)`` uint8."""
    from .data import voc_palette
    from .engine import scenes_dataset

    if cfg.dataset == "scenes":  # day_night scenes have more classes, hence more colours
        return scenes_dataset(cfg, "val", 1).palette
    return voc_palette(num_classes)


def model_size(height: int, width: int, max_side: Optional[int]) -> Tuple[int, int]:
    """``(h, w)`` of the view the model sees: the image's own, or, when its long side exceeds
    ``max_side`` (None or 0: no limit), scaled so that the long side is ``max_side``."""
    long = max(height, width)
    if not max_side or long <= max_side:
        return height, width
    return (max(1, round(height * max_side / long)), max(1, round(width * max_side / long)))


@torch.no_grad()
def segment_image(model: nn.Module, rgb: np.ndarray, num_classes: int, *,
                  multi_scale: bool = False, flip: Optional[bool] = None,
                  crop_size: Optional[int] = None, amp: str = "auto",
                  max_side: Optional[int] = None) -> np.ndarray:
    """Class ids ``(H, W)`` (uint8) of ``rgb: (H, W, 3)`` uint8, at the image's own size.

    ``max_side``: an image whose long side is longer is segmented resized (bilinear, with
    antialiasing) to that long side, and its labels are scaled back (nearest neighbour).
    """
    from PIL import Image

    from .data import normalize
    from .engine import forward_context, resolve_amp
    from .inference import MS_SCALES, predict

    height, width = rgb.shape[:2]
    size = model_size(height, width, max_side)
    view = rgb if size == (height, width) else np.asarray(
        Image.fromarray(rgb).resize(size[::-1], Image.BILINEAR))
    device = next(model.parameters()).device
    x = normalize(view)[None].to(device)
    with forward_context(device, resolve_amp(amp, device)):
        scores = predict(model.eval(), x, num_classes,
                         scales=MS_SCALES if multi_scale else (1.0,),
                         flip=multi_scale if flip is None else flip, crop_size=crop_size)
    labels = scores.argmax(1)[0].to(torch.uint8).cpu().numpy()
    if size != (height, width):
        labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    return labels


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
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    return ckpt_io.atomic_write(path, lambda f: image.save(f, format="PNG"))


# --------------------------------------------------------------------------- reading photos


def photo_size(path: PathLike) -> Tuple[int, int]:
    """``(H, W)`` of the photo at ``path`` as shown upright (EXIF orientation applied), from
    its header only; a missing, unreadable or too large file raises a ValueError naming it
    (the pixel limit: ``ENCNET_MAX_IMAGE_PIXELS``)."""
    from .data.common import open_image

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
    from PIL import ImageOps

    from .data.common import open_image

    path = Path(path)
    _check_file(path)
    with _decoding_errors(path):
        with open_image(path, path) as img:
            img.load()  # decode now, so a truncated file fails here, naming it
            return _to_rgb8(ImageOps.exif_transpose(img), path)


def _to_rgb8(img, name: object) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a PIL image of any mode, by the range of its pixel type (PIL's
    own ``convert("RGB")`` clips 16-bit and float values at 255)."""
    from .data import DataError

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
        raise ValueError(f"image {path} is a folder, not an image file: give the files in it")
    if not path.is_file():
        raise ValueError(f"image {path} does not exist (check the path)")


@contextmanager
def _decoding_errors(path: Path) -> Iterator[None]:
    """PIL's errors while reading ``path`` become a DataError naming the file (the library's
    own DataError, e.g. the pixel limit or a float range, passes as it is)."""
    from PIL import UnidentifiedImageError

    from .data import DataError

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


def min_side(multi_scale: bool) -> int:
    """The shortest side an image may have: every view the model sees (the smallest scale
    of ``--multi-scale`` included, sides rounded as :func:`~encnet_lite.inference.predict`
    does) keeps :data:`MIN_SIDE` px."""
    from .inference import MS_SCALES

    smallest = min(MS_SCALES) if multi_scale else 1.0
    return math.ceil((MIN_SIDE - 0.5) / smallest)


def check_photo(path: PathLike, multi_scale: bool = False,
                max_side: Optional[int] = None) -> Tuple[int, int]:
    """``(H, W)`` of a photo the model can segment (from its header); else a ValueError naming
    the file, its size and the minimum."""
    from .data import DataError

    height, width = photo_size(path)
    view = model_size(height, width, max_side)
    need = min_side(multi_scale)
    if min(view) < need:
        scaled = "" if view == (height, width) else (
            f", {view[1]}x{view[0]} once its long side is fitted to --max-side {max_side}")
        extra = " with --multi-scale (its smallest scale is 0.5)" if multi_scale else ""
        fix = "raise --max-side or crop the image" if scaled else "give a larger image"
        raise DataError(f"image {path} is {width}x{height} px{scaled}: the model needs at least "
                        f"{need} px a side{extra}; {fix}")
    return height, width


def output_stems(images: Sequence[PathLike]) -> List[str]:
    """The name each image's outputs start with (``NAME.mask.png``), unique per image: its
    stem (``photo.jpg`` -> ``photo``); where inputs share a stem, its file name (``photo.png``,
    ``photo.jpg`` -> ``photo.png``, ``photo.jpg``); where they share that too, its folder's
    name, a dash and its file name (``a/x.png``, ``b/x.png`` -> ``a-x.png``, ``b-x.png``).
    Names are compared case-insensitively (one file on macOS and Windows); an image given
    twice, or names that still clash, raise a :class:`~encnet_lite.cli.UsageError`."""
    from . import cli

    paths = [Path(p) for p in images]
    levels = [[p.stem for p in paths], [p.name for p in paths],
              [f"{p.absolute().parent.name}-{p.name}" for p in paths]]
    counts = [Counter(n.casefold() for n in level) for level in levels]
    names = []
    for i, path in enumerate(paths):
        name = next((level[i] for level, count in zip(levels, counts)
                     if count[level[i].casefold()] == 1), None)
        if name is None:
            other = next(q for q in paths if q is not path and q.name.casefold() ==
                         path.name.casefold() and q.absolute().parent.name.casefold() ==
                         path.absolute().parent.name.casefold())
            what = "is given twice" if cli.same_file(other, path) else \
                f"and {other} have the same file and folder names"
            raise cli.UsageError(f"image {path} {what}, so their outputs would overwrite each "
                                 "other; give each image once, or predict them into separate "
                                 "--out folders")
        names.append(name)
    clash = [n for n, k in Counter(n.casefold() for n in names).items() if k > 1]
    if clash:  # e.g. x.png, x.jpg and x.png.gif: all three would start with x.png
        both = [str(p) for p, n in zip(paths, names) if n.casefold() in clash]
        raise cli.UsageError(f"images {', '.join(both)} would all write {clash[0]}.mask.png; "
                             "rename one, or predict them into separate --out folders")
    return names


def predict_files(model: nn.Module, cfg: TrainConfig, num_classes: int,
                  images: Sequence[PathLike], out: Path, *, alpha: float = 0.5,
                  max_side: Optional[int] = MAX_SIDE,
                  classes: Optional[Sequence[str]] = None,
                  palette: Optional[np.ndarray] = None,
                  **options) -> List[Dict[str, object]]:
    """Write ``NAME.mask.png`` and ``NAME.overlay.png`` into ``out`` for each image (``NAME``:
    see :func:`output_stems`), both at the photo's upright size (the overlay with a legend
    band below it when ``classes`` are given).

    Every image is checked from its header before any model work (exists, readable, within
    the pixel limit, large enough), so that a typo fails at once; images are then decoded one
    at a time (:func:`read_photo`). ``max_side``: see :func:`segment_image`; ``options`` go
    to it. ``classes``: names of the classes, shown in a legend under the overlay (the most
    frequent predicted classes, with their colours and pixel shares). ``palette``: the
    colours, ``(num_classes, 3)`` uint8 (default: :func:`palette_for`). Returns, per image, the written paths (``"mask"``, ``"overlay"``), the class ids
    (``"labels"``: ``(H, W)`` uint8) and the size the model saw (``"model_size"``: (h, w)).
    """
    from .data import colorize

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: choose a value in [0, 1]")
    names = output_stems(images)
    sizes = [check_photo(p, bool(options.get("multi_scale")), max_side) for p in images]
    palette = palette_for(cfg, num_classes) if palette is None else palette
    written = []
    for path, name, size in zip(images, names, sizes):
        rgb = read_photo(path)
        labels = segment_image(model, rgb, num_classes, max_side=max_side, **options)
        colours = colorize(labels, palette)
        blended = overlay(rgb, colours, alpha)
        if classes is not None:
            blended = with_legend(blended, class_shares(labels, classes, top=6), classes,
                                  palette)
        written.append({"mask": save_png(out / f"{name}.mask.png", colours),
                        "overlay": save_png(out / f"{name}.overlay.png", blended),
                        "labels": labels, "model_size": model_size(*size, max_side)})
    return written


def with_legend(image: np.ndarray, shares: Sequence[Tuple[str, float]],
                classes: Sequence[str], palette: np.ndarray) -> np.ndarray:
    """``image: (H, W, 3)`` uint8 with a white band below it naming ``shares`` (from
    :func:`class_shares`): a swatch of each class's colour, its name and pixel share, as
    many per row as fit the width. Returns ``(H + band, W, 3)`` uint8."""
    from PIL import Image, ImageDraw, ImageFont

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


# --------------------------------------------------------------------------- the CLI

EPILOG = f"""\
Output names: IMAGE's stem, e.g. photo.jpg -> OUT/photo.mask.png and OUT/photo.overlay.png;
where two images share a stem, their whole file names (photo.png, photo.jpg ->
OUT/photo.png.mask.png, OUT/photo.jpg.mask.png); where they share that too, their folder's
name, a dash and the file name (a/x.png, b/x.png -> OUT/a-x.png.mask.png, OUT/b-x.png.mask.png).
No output may replace an input, a checkpoint or a file of a training run.

Images: turned upright by their EXIF orientation; 16-bit images scaled by /257, float images
in [0, 1] by 255 (other float ranges are refused); images over ENCNET_MAX_IMAGE_PIXELS
pixels (default {MAX_IMAGE_PIXELS:,}) are refused from their header, before decoding;
images whose long side exceeds --max-side are segmented at that size and the masks scaled
back to the image's size; images under {MIN_SIDE} px a side ({min_side(True)} with
--multi-scale) are refused."""


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser, non_negative_int

    p = ArgumentParser(prog="encnet-predict", description=__doc__.split("\n")[0],
                       epilog=EPILOG, formatter_class=_HelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG / PNG / TIFF files")
    p.add_argument("--checkpoint", default=None, help="best.pt or last.pt of a run")
    p.add_argument("--weights", default=None, metavar="NAME",
                   help="a published model instead of a checkpoint (encnet-weights list); "
                        "EncNet_ResNet50s_ADE knows 150 everyday classes, the best choice "
                        "for your own photos")
    p.add_argument("--weights-file", default=None, metavar="F",
                   help="with --weights: a local copy of its file (zip or .pth) to use")
    p.add_argument("--no-verify", action="store_true",
                   help="with --weights: skip the checksum (a file you trust)")
    p.add_argument("--out", required=True, help="folder for the PNGs (created if missing)")
    p.add_argument("--multi-scale", action="store_true",
                   help="scales 0.5-1.75 with flips (the paper's test protocol; slower)")
    p.add_argument("--flip", action="store_true", help="add the mirrored image at one scale")
    p.add_argument("--crop-size", type=non_negative_int, default=None,
                   help="sliding-window side (default: the run's crop; 0: whole image)")
    p.add_argument("--max-side", type=non_negative_int, default=MAX_SIDE,
                   help="segment larger images with their long side resized to this, masks "
                        "scaled back to the image's size (bounds time and memory; 0: none)")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "on", "off", "bf16", "fp16"))
    return p


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help; the epilog's lines kept as written."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    args = build_parser().parse_args(argv)
    return cli.run("encnet-predict", lambda: run_cli(args))


def check_outputs(images: Sequence[str], out: Path, models: Sequence[PathLike]) -> None:
    """``out`` is a writable folder and no file written there is an input (an image named
    ``x.mask.png`` inside ``out``, or the model's file: ``models``) or a training run's
    file."""
    from . import cli

    cli.check_writable_dir(out, "--out")
    inputs = [*images, *models]
    for name in output_stems(images):
        for target in (out / f"{name}.mask.png", out / f"{name}.overlay.png"):
            for source in inputs:
                if cli.same_file(target, source):
                    raise cli.UsageError(f"--out {out}: writing {target} would replace the "
                                         f"input {source}; give another --out folder")
            cli.check_keeps_runs(target, "--out", models)


def check_sizes(args: argparse.Namespace) -> None:
    """``--alpha``, ``--crop-size`` and ``--max-side`` values the model can use."""
    from . import cli

    if not 0.0 <= args.alpha <= 1.0:
        raise cli.UsageError(f"--alpha {args.alpha}: choose a value in [0, 1]")
    for flag, value in (("--crop-size", args.crop_size), ("--max-side", args.max_side)):
        if value is not None and 0 < value < MIN_SIDE:
            raise cli.UsageError(f"{flag} {value}: the model needs views of at least "
                                 f"{MIN_SIDE} px; give 0 (no limit) or {MIN_SIDE} or more")


def run_cli(args: argparse.Namespace) -> int:
    """``encnet-predict``'s work once its arguments are parsed."""
    from . import cli
    from .data import voc_palette
    from .evaluate import check_source, load_source

    check_sizes(args)
    device = cli.check_device(args.device)
    check_outputs(args.images, Path(args.out), check_source(args))
    for image in args.images:  # before the model is loaded: a typo fails at once
        check_photo(image, args.multi_scale, args.max_side or None)
    model, cfg, saved = load_source(args, device)
    crop = args.crop_size if args.crop_size is not None else (
        None if cfg.dataset == "scenes" and not args.weights else cfg.crop_size)
    n = saved["num_classes"]
    written = predict_files(model, cfg, n, args.images, Path(args.out),
                            alpha=args.alpha, max_side=args.max_side or None,
                            classes=saved.get("classes") or None,
                            palette=voc_palette(n) if args.weights else None,
                            multi_scale=args.multi_scale, flip=True if args.flip else None,
                            crop_size=crop or None, amp=args.amp)
    for image, files in zip(args.images, written):
        h, w = files["labels"].shape
        seen = files["model_size"]
        note = "" if seen == (h, w) else f" (segmented at {seen[1]}x{seen[0]})"
        print(f"{image} -> {files['mask']}, {files['overlay']}{note}")
        if saved.get("classes"):
            shares = class_shares(files["labels"], saved["classes"], top=5)
            print("  " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares))
    return 0


if __name__ == "__main__":
    sys.exit(main())
