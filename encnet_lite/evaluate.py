"""Evaluate a checkpoint: ``evaluate(model, dataset, ...)`` and the ``encnet-eval`` CLI.

Unlike the quick validation during training (centre crops, one scale), this scores the
full validation images: single scale, or the paper's multi-scale protocol (scales 0.5 to
1.75, each with a horizontal flip, sliding windows of ``crop_size`` at stride 2/3 of it,
class scores summed over views) through :func:`encnet_lite.inference.predict`.
pixAcc and mIoU come from one confusion matrix accumulated over the whole split.

::

    encnet-eval --checkpoint runs/pcontext_encnet_r50/best.pt --multi-scale

prints pixAcc / mIoU and writes ``best.eval-ms.json`` beside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

from . import checkpoint as ckpt_io
from . import distributed as dist_utils
from .distributed import SINGLE, DistInfo
from .engine import ShardSampler, build_model, resolve_amp, resolve_device
from .presets import TrainConfig

MS_SCALES: Tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, *,
             multi_scale: bool = False, flip: Optional[bool] = None,
             crop_size: Optional[int] = None, stride: Optional[int] = None,
             device: Optional[torch.device] = None, amp: str = "auto",
             ignore_index: int = 255, max_images: Optional[int] = None,
             info: DistInfo = SINGLE, progress: bool = True) -> Dict[str, Any]:
    """pixAcc / mIoU of ``model`` on ``dataset`` (full images, one at a time).

    Args:
        multi_scale: the paper's scales ``MS_SCALES`` (flip on by default), else scale 1.
        flip: also predict the mirrored image (default: with ``multi_scale``).
        crop_size / stride: sliding windows (default ``crop_size=None``: whole image).
        max_images: score only the first images (a quick look).
        info: under torchrun, each process scores its shard; the matrices are summed.

    Returns ``{"pixAcc", "mIoU", "iou": [per class], "num_images", "seconds"}``.
    """
    from tqdm.auto import tqdm

    from .inference import predict
    from .metrics import ConfusionMatrix

    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    amp_dtype = resolve_amp(amp, device)
    scales = MS_SCALES if multi_scale else (1.0,)
    flip = multi_scale if flip is None else flip
    if crop_size is not None and stride is None:
        stride = crop_size * 2 // 3  # 480 -> 320, as the paper
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    start = time.perf_counter()
    for i in tqdm(ShardSampler(n, info), desc="eval", disable=not (progress and info.is_main)):
        image, mask = dataset[i]
        with _autocast(device, amp_dtype):
            scores = predict(model, image[None].to(device), num_classes, scales=scales,
                             flip=flip, crop_size=crop_size, stride=stride)
        pred = scores.argmax(1) if scores.dim() == 4 else scores
        cm.update(pred.reshape(mask.shape).cpu(), mask)
    if info.enabled:
        cm.all_reduce()
    return {"pixAcc": float(cm.pixel_accuracy()), "mIoU": float(cm.mean_iou()),
            "iou": [float(x) for x in cm.iou_per_class()], "num_images": n,
            "seconds": time.perf_counter() - start}


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    import contextlib

    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype)


def load_model(path: str, device: Optional[torch.device] = None
               ) -> Tuple[nn.Module, TrainConfig, Dict[str, Any]]:
    """Build the checkpoint's model and load its weights: ``(model (eval), config, ckpt)``.

    A checkpoint with NaN or Inf weights (a diverged run) is refused with
    :class:`~encnet_lite.checkpoint.NonFiniteError` naming the tensor.
    """
    saved = ckpt_io.load(path)
    ckpt_io.check_finite(saved["model"], what=f"{path} (model weights)")
    cfg = TrainConfig.from_dict(saved["config"])
    model = build_model(cfg.replace(pretrained_backbone=False), saved["num_classes"])
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:  # keys or shapes differ: another model version
        raise ckpt_io.IncompatibleCheckpointError(
            f"{path} does not fit {cfg.model}_{cfg.backbone}: {exc}") from exc
    return model.to(device or resolve_device("auto")).eval(), cfg, saved


def eval_dataset(cfg: TrainConfig, data_root: Optional[str] = None,
                 split: str = "val") -> Dataset:
    """The full-image split to score (PASCAL: no crop; scenes: the validation stream)."""
    from . import data

    if cfg.dataset == "scenes":
        return data.ContextScenes(cfg.num_val_images, size=cfg.image_size, seed=cfg.data_seed,
                                  split=split)
    root = data_root or cfg.data_root or f"data/{cfg.dataset}"
    cls = data.PascalContext if cfg.dataset == "pcontext" else data.PascalVOC
    return cls(root, split=split)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="encnet-eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--multi-scale", action="store_true",
                   help="scales 0.5-1.75 with flips and sliding windows (the paper's protocol)")
    p.add_argument("--flip", action="store_true", help="add flips at a single scale")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=int, default=None, help="score only the first N")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "on", "off", "bf16", "fp16"))
    p.add_argument("--out", default=None, help="JSON file (default: beside the checkpoint)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the run's config; 0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DatasetNotFoundError

    info = dist_utils.setup(resolve_device(args.device).type)
    device = resolve_device(args.device)  # after setup: this process's GPU under torchrun
    try:
        model, cfg, saved = load_model(args.checkpoint, device)
        threads = cfg.threads if args.threads is None else args.threads
        if threads:
            torch.set_num_threads(threads)
        dataset = eval_dataset(cfg, args.data_root, args.split)
        crop = cfg.crop_size if cfg.dataset != "scenes" else None
        result = evaluate(model, dataset, saved["num_classes"], multi_scale=args.multi_scale,
                          flip=True if args.flip else None, crop_size=crop, device=device,
                          amp=args.amp, max_images=args.max_images, info=info,
                          progress=not args.no_progress)
    except (FileNotFoundError, DatasetNotFoundError, ckpt_io.CheckpointError) as exc:
        print(f"encnet-eval: {exc}", file=sys.stderr)
        return 2
    finally:
        dist_utils.teardown()
    if not info.is_main:
        return 0
    mode = "multi-scale + flip" if args.multi_scale else ("flip" if args.flip else "single scale")
    note = ""
    if cfg.dataset == "pcontext":
        note = f" over {saved['num_classes']} classes" + (
            " (background ignored, the paper's protocol)" if saved["num_classes"] == 59 else "")
    print(f"{cfg.name} epoch {saved.get('epoch')}, {args.split} ({result['num_images']} images,"
          f" {mode}): pixAcc {100 * result['pixAcc']:.2f}  mIoU {100 * result['mIoU']:.2f}{note}")
    report = {"checkpoint": str(args.checkpoint), "split": args.split, "mode": mode,
              "dataset": cfg.dataset, "num_classes": saved["num_classes"],
              "classes": saved.get("classes", []), **result}
    ckpt = Path(args.checkpoint)
    suffix = "eval-ms" if args.multi_scale else "eval"
    out = Path(args.out) if args.out else ckpt.with_name(f"{ckpt.stem}.{suffix}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
