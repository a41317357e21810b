"""Run a trained model on your own images: ``segment_image(...)`` and the ``encnet-predict`` CLI.

::

    encnet-predict --checkpoint runs/pcontext_encnet_r50_short/best.pt photo.jpg --out pred

writes, per image, ``pred/photo.mask.png`` (each pixel coloured by its predicted class, the
dataset's palette) and ``pred/photo.overlay.png`` (that mask blended over the photo). The
prediction is :func:`encnet_lite.inference.predict`, as in evaluation: one scale by
default, ``--multi-scale`` for the paper's scales with flips; views larger than the
training crop are scored by sliding windows of the crop's size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_io
from .presets import TrainConfig

__all__ = ["segment_image", "palette_for", "overlay", "save_png", "predict_files", "class_shares",
           "main"]


def palette_for(cfg: TrainConfig, num_classes: int) -> np.ndarray:
    """The colours of the checkpoint's dataset: ``(num_classes, 3)`` uint8."""
    from .data import voc_palette
    from .engine import scenes_dataset

    if cfg.dataset == "scenes":  # day_night scenes have more classes, hence more colours
        return scenes_dataset(cfg, "val", 1).palette
    return voc_palette(num_classes)


@torch.no_grad()
def segment_image(model: nn.Module, rgb: np.ndarray, num_classes: int, *,
                  multi_scale: bool = False, flip: Optional[bool] = None,
                  crop_size: Optional[int] = None, amp: str = "auto") -> np.ndarray:
    """Class ids ``(H, W)`` (uint8) of ``rgb: (H, W, 3)`` uint8, at the image's own size."""
    from .data import normalize
    from .engine import forward_context, resolve_amp
    from .evaluate import MS_SCALES
    from .inference import predict

    device = next(model.parameters()).device
    x = normalize(rgb)[None].to(device)
    with forward_context(device, resolve_amp(amp, device)):
        scores = predict(model.eval(), x, num_classes,
                         scales=MS_SCALES if multi_scale else (1.0,),
                         flip=multi_scale if flip is None else flip, crop_size=crop_size)
    return scores.argmax(1)[0].to(torch.uint8).cpu().numpy()


def overlay(rgb: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` and ``colours`` (both ``(H, W, 3)`` uint8) blended: ``(1 - alpha) rgb + alpha c``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: choose a value in [0, 1]")
    mixed = (1 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    """An RGB ``(H, W, 3)`` uint8 array as a PNG, written atomically."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    return ckpt_io.atomic_write(path, lambda f: image.save(f, format="PNG"))


def _read(path: Path) -> np.ndarray:
    """The image at ``path`` as RGB, or a ValueError saying what is wrong with the file."""
    from .data import DataError
    from .data.common import load_image

    if not path.is_file():
        raise ValueError(f"image {path} does not exist (check the path)")
    try:
        return load_image(path)
    except DataError as exc:
        raise ValueError(f"{exc} (give a JPEG or PNG photo)") from exc


def predict_files(model: nn.Module, cfg: TrainConfig, num_classes: int,
                  images: Sequence[Path], out: Path, *, alpha: float = 0.5,
                  **options) -> List[Dict[str, Path]]:
    """Write ``STEM.mask.png`` and ``STEM.overlay.png`` into ``out`` for each image.

    Every image is checked before any model work, so that a typo fails at once.
    ``options`` go to :func:`segment_image`. Returns, per image, the written paths
    (``"mask"``, ``"overlay"``) and the class ids (``"labels"``: ``(H, W)`` uint8).
    """
    rgbs = [_read(Path(p)) for p in images]
    palette = palette_for(cfg, num_classes)
    from .data import colorize

    written = []
    for path, rgb in zip(images, rgbs):
        labels = segment_image(model, rgb, num_classes, **options)
        colours = colorize(labels, palette)
        stem = Path(path).stem
        written.append({"mask": save_png(out / f"{stem}.mask.png", colours),
                        "overlay": save_png(out / f"{stem}.overlay.png",
                                            overlay(rgb, colours, alpha)),
                        "labels": labels})
    return written


def class_shares(labels: np.ndarray, classes: Sequence[str], top: int = 5
                 ) -> List[Tuple[str, float]]:
    """The ``top`` most frequent predicted classes of ``labels`` with their pixel shares."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    order = np.argsort(-counts)[:top]
    return [(classes[i] if i < len(classes) else str(i), counts[i] / labels.size)
            for i in order if counts[i]]


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser, non_negative_int

    p = ArgumentParser(prog="encnet-predict", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG / PNG files")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--out", required=True, help="folder for the PNGs (created if missing)")
    p.add_argument("--multi-scale", action="store_true",
                   help="scales 0.5-1.75 with flips (the paper's test protocol; slower)")
    p.add_argument("--flip", action="store_true", help="add the mirrored image at one scale")
    p.add_argument("--crop-size", type=non_negative_int, default=None,
                   help="sliding-window side (default: the run's crop; 0: whole image)")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlay")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "on", "off", "bf16", "fp16"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    args = build_parser().parse_args(argv)
    return cli.run("encnet-predict", lambda: run_cli(args))


def check_outputs(images: Sequence[str], out: Path, checkpoint: str) -> None:
    """``out`` is a writable folder and no file written there is an input (an image named
    ``x.mask.png`` inside ``out``, or the checkpoint)."""
    from . import cli

    cli.check_writable_dir(out, "--out")
    inputs = [*images, checkpoint]
    for image in images:
        stem = Path(image).stem
        for target in (out / f"{stem}.mask.png", out / f"{stem}.overlay.png"):
            for source in inputs:
                if cli.same_file(target, source):
                    raise cli.UsageError(f"--out {out}: writing {target} would replace the "
                                         f"input {source}; give another --out folder")


def run_cli(args: argparse.Namespace) -> int:
    """``encnet-predict``'s work once its arguments are parsed."""
    from . import cli
    from .evaluate import load_model

    if not 0.0 <= args.alpha <= 1.0:
        raise cli.UsageError(f"--alpha {args.alpha}: choose a value in [0, 1]")
    device = cli.check_device(args.device)
    check_outputs(args.images, Path(args.out), args.checkpoint)
    model, cfg, saved = load_model(args.checkpoint, device)
    crop = args.crop_size if args.crop_size is not None else (
        None if cfg.dataset == "scenes" else cfg.crop_size)
    written = predict_files(model, cfg, saved["num_classes"], args.images, Path(args.out),
                            alpha=args.alpha, multi_scale=args.multi_scale,
                            flip=True if args.flip else None, crop_size=crop or None,
                            amp=args.amp)
    for image, files in zip(args.images, written):
        print(f"{image} -> {files['mask']}, {files['overlay']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
