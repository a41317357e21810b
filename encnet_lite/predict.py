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

The photos are read, and the PNGs written, by :mod:`encnet_lite.images` (upright by EXIF
orientation; 16-bit and float images by their range; the pixel limit checked from the
header). This module adds what the model needs: a photo whose long side exceeds
``max_side`` (1024 px by default) is segmented at that size, its labels scaled back
(nearest) to the photo's size; one under 8 px a side is refused.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .data.common import MAX_IMAGE_PIXELS
from .images import class_shares, overlay, photo_size, read_photo, save_png, with_legend
from .presets import TrainConfig

__all__ = ["segment_image", "palette_for", "predict_files", "check_photo", "output_stems",
           "main"]

PathLike = Union[str, Path]
MIN_SIDE = 8  # the backbones' output stride: a smaller view has no feature cell at all
MAX_SIDE = 1024  # about the training augmentation's largest view (2.0 x base size 520)


def palette_for(cfg: TrainConfig, num_classes: int) -> np.ndarray:
    """The colours of the checkpoint's dataset: ``(num_classes, 3)`` uint8."""
    from .data import voc_palette
    from .engine import scenes_dataset

    if cfg.data.dataset == "scenes":  # day_night scenes have more classes, hence more colours
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
    at a time (:func:`encnet_lite.images.read_photo`). ``max_side``: see :func:`segment_image`; ``options`` go
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
    p.add_argument("--no-verify", dest="verify", action="store_false",
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
    from .data import voc_palette
    from .engine import resolve_device
    from .evaluate import check_source, load_source

    check_sizes(args)
    device = resolve_device(args.device, flag="--device")
    check_outputs(args.images, Path(args.out), check_source(args))
    for image in args.images:  # before the model is loaded: a typo fails at once
        check_photo(image, args.multi_scale, args.max_side or None)
    model, cfg, saved = load_source(args, device)
    crop = args.crop_size if args.crop_size is not None else (
        None if cfg.data.dataset == "scenes" and not args.weights else cfg.data.crop_size)
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
