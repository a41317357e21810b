"""Evaluate a checkpoint: ``evaluate(model, dataset, ...)`` and the ``encnet-eval`` CLI.

Unlike the quick validation during training (centre crops, one scale), this scores the
full validation images: single scale, or the paper's multi-scale protocol (scales 0.5 to
1.75, each with a horizontal flip, sliding windows of ``crop_size`` at stride 2/3 of it,
class scores summed over views) through :func:`encnet_lite.inference.predict`.
pixAcc and mIoU come from one confusion matrix accumulated over the whole split.

::

    encnet-eval --checkpoint runs/pcontext_encnet_r50/best.pt --multi-scale

prints pixAcc / mIoU and writes ``best.eval-ms.json`` beside the checkpoint. A tqdm bar
shows the images done and the time left. Multi-scale evaluation of PASCAL-Context's 5,105
images takes hours, so the confusion matrix so far is saved every ``--save-every`` images
to ``best.eval-ms.json.partial``; after a disconnect the same command continues from it.
A checkpoint whose weights hold NaN or Inf (a diverged run) is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from . import checkpoint as ckpt_io
from . import distributed as dist_utils
from .distributed import SINGLE, DistInfo
from .engine import ShardSampler, build_model, resolve_amp, resolve_device, scenes_dataset
from .presets import TrainConfig

MS_SCALES: Tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, *,
             multi_scale: bool = False, flip: Optional[bool] = None,
             crop_size: Optional[int] = None, stride: Optional[int] = None,
             device: Optional[torch.device] = None, amp: str = "auto",
             ignore_index: int = 255, max_images: Optional[int] = None,
             info: DistInfo = SINGLE, progress: bool = True,
             state: Union[None, str, Path] = None, save_every: int = 25) -> Dict[str, Any]:
    """pixAcc / mIoU of ``model`` on ``dataset`` (full images, one at a time).

    Args:
        multi_scale: the paper's scales ``MS_SCALES`` (flip on by default), else scale 1.
        flip: also predict the mirrored image (default: with ``multi_scale``).
        crop_size / stride: sliding windows (default ``crop_size=None``: whole image).
        max_images: score only the first images (a quick look).
        info: under torchrun, each process scores its shard; the matrices are summed.
        progress: a tqdm bar with the images done and the time left (ETA).
        state: a JSON file for the partial confusion matrix, rewritten atomically every
            ``save_every`` images (and when interrupted): a rerun with the same model and
            settings continues after the last saved image; it is removed when done.

    Returns ``{"pixAcc", "mIoU", "iou": [per class], "confusion": [[...]], "num_images",
    "seconds", "resumed_from"}`` (``resumed_from``: images taken from ``state``).
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
    key = {"model": model_fingerprint(model), "images": n, "num_classes": num_classes,
           "scales": list(scales), "flip": flip, "crop_size": crop_size, "stride": stride,
           "shard": [info.rank, info.world_size]}
    state = _shard_path(Path(state), info) if state else None
    done, seconds = _load_state(state, key, cm) if state else (0, 0.0)
    indices = ShardSampler(n, info).indices
    start = time.perf_counter() - seconds
    bar = tqdm(total=len(indices), initial=done, desc="eval", dynamic_ncols=True,
               disable=not (progress and info.is_main))
    scored = done
    try:
        for i in indices[done:]:
            image, mask = dataset[i]
            with _autocast(device, amp_dtype):
                scores = predict(model, image[None].to(device), num_classes, scales=scales,
                                 flip=flip, crop_size=crop_size, stride=stride)
            pred = scores.argmax(1) if scores.dim() == 4 else scores
            cm.update(pred.reshape(mask.shape).cpu(), mask)
            scored += 1
            bar.update(1)
            if state and scored % save_every == 0 and scored < len(indices):
                _save_state(state, key, cm, scored, time.perf_counter() - start)
    except BaseException:  # Ctrl-C, an error: keep what was scored for the rerun
        if state and scored > done:
            _save_state(state, key, cm, scored, time.perf_counter() - start)
        raise
    finally:
        bar.close()
    if info.enabled:
        cm.all_reduce()
    if state:
        state.unlink(missing_ok=True)
    matrix = cm._ensure(torch.device("cpu")).cpu()
    return {"pixAcc": float(cm.pixel_accuracy()), "mIoU": float(cm.mean_iou()),
            "iou": [float(x) for x in cm.iou_per_class()], "confusion": matrix.tolist(),
            "num_images": n, "seconds": time.perf_counter() - start, "resumed_from": done}


def model_fingerprint(model: nn.Module) -> str:
    """A short fingerprint of the weights (sums of every tensor), so that saved partial
    results are never merged with another model's."""
    import hashlib

    sums = [f"{k}:{float(v.double().sum()):.12g}:{float(v.double().abs().sum()):.12g}"
            for k, v in model.state_dict().items() if torch.is_tensor(v)]
    return hashlib.sha1("|".join(sums).encode()).hexdigest()[:16]


def _shard_path(path: Path, info: DistInfo) -> Path:
    return path if not info.enabled else path.with_name(f"{path.name}.rank{info.rank}")


def _load_state(path: Path, key: Dict[str, Any], cm: Any) -> Tuple[int, float]:
    """Images already scored and seconds spent, from ``path`` if it holds this evaluation."""
    if not path.is_file():
        return 0, 0.0
    try:
        saved = json.loads(path.read_text())
        same = saved["key"] == json.loads(json.dumps(key))
    except (json.JSONDecodeError, KeyError, TypeError):
        same = False
    if not same:
        print(f"note: {path} belongs to another model or settings; starting afresh",
              file=sys.stderr)
        return 0, 0.0
    cm.matrix = torch.tensor(saved["matrix"], dtype=torch.int64)
    return int(saved["done"]), float(saved["seconds"])


def _save_state(path: Path, key: Dict[str, Any], cm: Any, done: int, seconds: float) -> None:
    matrix = cm._ensure(torch.device("cpu")).cpu().tolist()
    ckpt_io.write_json_atomic(path, {"key": key, "done": done, "seconds": seconds,
                                     "matrix": matrix}, indent=None)


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
    ckpt_io.check_header(saved, path)
    ckpt_io.check_finite(saved["model"], what=f"{path} (model weights)")
    try:
        cfg = TrainConfig.from_dict(saved["config"])
        model = build_model(cfg.replace(pretrained_backbone=False), saved["num_classes"])
    except (TypeError, ValueError, KeyError) as exc:  # a model name this version lacks
        raise ckpt_io.IncompatibleCheckpointError(
            f"{path}: cannot build its model ({exc}); it was written by another version "
            "or edited: use a checkpoint of this version's encnet-train") from exc
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
        return scenes_dataset(cfg, split, cfg.num_val_images)
    root = data_root or cfg.data_root or f"data/{cfg.dataset}"
    cls = data.PascalContext if cfg.dataset == "pcontext" else data.PascalVOC
    return cls(root, split=split)


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser, non_negative_int, positive_int

    p = ArgumentParser(prog="encnet-eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--multi-scale", action="store_true",
                   help="scales 0.5-1.75 with flips and sliding windows (the paper's protocol)")
    p.add_argument("--flip", action="store_true", help="add flips at a single scale")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=positive_int, default=None,
                   help="score only the first N")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "on", "off", "bf16", "fp16"))
    p.add_argument("--out", default=None, help="JSON file (default: beside the checkpoint)")
    p.add_argument("--save-every", type=positive_int, default=25,
                   help="save the partial result (OUT.partial) every N images; a rerun "
                        "after a disconnect continues from it")
    p.add_argument("--threads", type=non_negative_int, default=None,
                   help="torch CPU threads (default: the run's config; 0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    args = build_parser().parse_args(argv)
    return cli.run("encnet-eval", lambda: run_cli(args))


def run_cli(args: argparse.Namespace) -> int:
    """``encnet-eval``'s work once its arguments are parsed: every argument and the output
    are checked before the (possibly hours long) evaluation starts."""
    from . import cli

    device = cli.check_device(args.device)
    ckpt = Path(args.checkpoint)
    suffix = "eval-ms" if args.multi_scale else "eval"
    out = Path(args.out) if args.out else ckpt.with_name(f"{ckpt.stem}.{suffix}.json")
    cli.check_writable_file(out, "--out", inputs=[ckpt])
    info = dist_utils.setup(device.type)
    device = resolve_device(args.device)  # after setup: this process's GPU under torchrun
    try:
        model, cfg, saved = load_model(args.checkpoint, device)
        threads = cfg.threads if args.threads is None else args.threads
        cli.check_threads(threads, "--threads (or the run's threads)")
        if threads:
            torch.set_num_threads(threads)
        try:
            dataset = eval_dataset(cfg, args.data_root, args.split)
        except ValueError as exc:
            raise cli.UsageError(f"--split {args.split}: {cli.one_line(exc)}") from None
        crop = cfg.crop_size if cfg.dataset != "scenes" else None
        result = evaluate(model, dataset, saved["num_classes"], multi_scale=args.multi_scale,
                          flip=True if args.flip else None, crop_size=crop, device=device,
                          amp=args.amp, max_images=args.max_images, info=info,
                          progress=not args.no_progress,
                          state=out.with_name(out.name + ".partial"),
                          save_every=args.save_every)
    finally:
        dist_utils.teardown()
    if info.is_main:
        report_result(args, out, cfg, saved, result)
    return 0


def report_result(args: argparse.Namespace, out: Path, cfg: TrainConfig,
                  saved: Dict[str, Any], result: Dict[str, Any]) -> None:
    """Print the scores and write the JSON report ``out``."""
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
    ckpt_io.write_json_atomic(out, report)
    if result["resumed_from"]:
        print(f"(continued after {result['resumed_from']} images scored by an earlier run)")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
