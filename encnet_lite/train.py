"""Train a segmentation model: ``train(cfg)`` for chapters, ``encnet-train`` on the CLI.

::

    from encnet_lite import presets
    from encnet_lite.train import train

    result = train(presets.scenes_encnet_tiny(epochs=3, out="runs/x", progress=False))
    result.model        # the trained model (eval mode, CPU/GPU as trained)
    result.history      # one dict per epoch, also in runs/x/metrics.jsonl

The recipe (:mod:`encnet_lite.presets`): SGD + poly schedule per iteration, the head at
10x the backbone's lr, ``SegmentationLoss`` (CE + aux + SE terms), mixed precision and
channels_last on CUDA. Files in ``cfg.out`` (only the main process writes):

- ``last.pt``: full training state, each epoch and every ``checkpoint_every`` iterations,
  written atomically; ``--resume`` continues from it with the same losses an
  uninterrupted run would have had (bit for bit on CPU);
- ``best.pt``: the model with the best validation mIoU so far;
- ``metrics.jsonl``: one line per epoch (``epoch, iteration, loss, main, aux, se, lr,
  pixAcc, mIoU, iou, seconds, images_per_s``); ``iterations.jsonl``: one line per step
  (``iteration, epoch, loss, main, aux, se, lr``); ``config.json``.

Under ``torchrun --nproc_per_node N -m encnet_lite.train ...`` the same code trains with
DistributedDataParallel, synchronized BatchNorm and per-process shards of each global batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import distributed as dist_utils
from .engine import (
    TrainSampler,
    build_datasets,
    build_model,
    build_optimizer,
    build_scheduler,
    make_scaler,
    resolve_amp,
    resolve_channels_last,
    resolve_device,
    to_device,
    train_loader,
    train_step,
    unwrap,
    val_loader,
    validate,
)
from .presets import MODEL_FIELDS, PRESETS, RUNTIME_FIELDS, TrainConfig, get_preset, parse_value

LOSS_KEYS = ("loss", "main", "aux", "se")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module  # the trained model, unwrapped, in eval mode
    history: List[Dict[str, Any]]  # one dict per epoch (see metrics.jsonl)
    config: TrainConfig
    out: Path
    classes: List[str] = field(default_factory=list)
    best_miou: float = float("nan")

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_history(out: Union[str, Path], name: str = "metrics.jsonl") -> List[Dict[str, Any]]:
    """Read back a run's per-epoch log (``name="iterations.jsonl"``: the per-step log)."""
    path = Path(out) / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} in {out}: not a training run folder")
    return _read_jsonl(path)


def _write_jsonl(path: Path, records: Sequence[Dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_resumable(saved: Dict[str, Any], cfg: TrainConfig, num_classes: int) -> None:
    """The checkpoint must come from the same model (else IncompatibleCheckpointError) and the
    same recipe (else ValueError: a changed schedule would not continue the same run)."""
    ckpt_io.check_compatible(saved, cfg.to_dict(), num_classes, MODEL_FIELDS)
    old, new = saved["config"], cfg.to_dict()
    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new
               if k in old and k not in RUNTIME_FIELDS and k not in MODEL_FIELDS
               and old[k] != new[k]]
    if changed:
        raise ValueError("resume continues the checkpoint's run, but the recipe changed ("
                         + "; ".join(changed) + "); start a new run in another --out instead")


def train(cfg: TrainConfig, *, resume: Union[None, bool, str, Path] = None,
          model: Optional[nn.Module] = None) -> TrainResult:
    """Train with ``cfg``; see the module docstring for the files written to ``cfg.out``.

    Args:
        cfg: a :class:`~encnet_lite.presets.TrainConfig` (usually from a preset).
        resume: ``True`` (or ``"auto"``) continues from ``cfg.out/last.pt`` if it exists;
            a path (file or run folder) continues from that checkpoint; None starts afresh.
        model: train this model instead of building one from ``cfg`` (it must return the
            usual output dict and be compatible with ``cfg``'s dataset).

    Returns a :class:`TrainResult`. Launched by torchrun, every process returns the same
    history (losses and metrics are reduced over processes).
    """
    info = dist_utils.setup(resolve_device(cfg.device).type)
    device = resolve_device(cfg.device)  # after setup: this process's GPU under torchrun
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    main = info.is_main

    train_ds, val_ds = build_datasets(cfg)
    classes = list(getattr(train_ds, "classes", []))
    num_classes = int(getattr(train_ds, "num_classes", len(classes)))
    ignore_index = int(getattr(train_ds, "ignore_index", 255))

    # --- what to resume from
    saved = None
    if resume is True or resume == "auto":
        path = ckpt_io.find_resume(out)
    elif resume:
        path = ckpt_io.find_resume(resume)
        if path is None:
            raise FileNotFoundError(f"--resume {resume}: no checkpoint there")
    else:
        path = None
    if path is not None:
        saved = ckpt_io.load(path)
        _check_resumable(saved, cfg, num_classes)

    # --- model (same initial weights on every process), optimizer, schedule
    _seed_everything(cfg.seed)
    if model is None:  # resuming: no need to fetch ImageNet weights that get overwritten
        model = build_model(cfg.replace(pretrained_backbone=cfg.pretrained_backbone
                                        and saved is None), num_classes)
    amp_dtype = resolve_amp(cfg.amp, device)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as exc:  # a model built differently (missing keys, shapes)
            raise ckpt_io.IncompatibleCheckpointError(f"{path} does not fit the model: "
                                                      f"{exc}") from exc
    if info.enabled and cfg.sync_bn:
        model = dist_utils.convert_sync_batchnorm(model, device.type)
    raw = model
    optimizer = build_optimizer(raw, cfg)
    sampler = TrainSampler(len(train_ds), cfg.batch_size, cfg.seed, info)
    iters_per_epoch = sampler.batches_per_epoch
    total_iters = cfg.epochs * iters_per_epoch
    scheduler = build_scheduler(optimizer, total_iters, cfg.poly_power)
    scaler = make_scaler(amp_dtype, device)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        model = torch.compile(model)
    from .losses import SegmentationLoss

    loss_fn = SegmentationLoss(se_weight=cfg.se_weight, aux_weight=cfg.aux_weight,
                               ignore_index=ignore_index)

    # --- state: fresh or from the checkpoint
    iteration, history, best_miou = 0, [], float("-inf")
    epoch_sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64)
    epoch_seconds = 0.0
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        iteration, history = int(saved["iteration"]), list(saved["history"])
        best_miou = float(saved["best_miou"])
        epoch_sums = saved["epoch_sums"].double()
        epoch_seconds = float(saved["epoch_seconds"])
        rngs = saved["rng"]
        ckpt_io.set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
    else:
        _seed_everything(cfg.seed + 1 + info.rank)  # dropout masks differ between processes

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        _write_jsonl(out / "metrics.jsonl", history)
        steps = [r for r in _read_jsonl(out / "iterations.jsonl")
                 if r["iteration"] <= iteration] if saved is not None else []
        _write_jsonl(out / "iterations.jsonl", steps)
        if saved is None and (out / "last.pt").exists() and cfg.progress:
            print(f"note: {out}/last.pt exists and is overwritten; pass --resume to continue it",
                  file=sys.stderr)
    step_log = open(out / "iterations.jsonl", "a") if main else None

    def save_last() -> None:
        rngs = dist_utils.all_gather_object(ckpt_io.rng_state(), info)
        if not main:
            return
        ckpt_io.save_atomic({
            "format": ckpt_io.FORMAT, "config": cfg.to_dict(), "num_classes": num_classes,
            "classes": classes, "model": unwrap(raw).state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": iteration // iters_per_epoch,
            "iteration": iteration, "rng": rngs, "history": history,
            "best_miou": best_miou, "epoch_sums": epoch_sums.clone(),
            "epoch_seconds": epoch_seconds,
        }, out / "last.pt")

    loader = train_loader(train_ds, sampler, cfg.workers, pin_memory=device.type == "cuda")
    vloader = val_loader(val_ds, cfg.val_batch_size or sampler.local_batch, cfg.workers, info,
                         pin_memory=device.type == "cuda")
    from tqdm.auto import tqdm

    try:
        for epoch in range(iteration // iters_per_epoch, cfg.epochs):
            done = iteration - epoch * iters_per_epoch
            sampler.set_epoch(epoch, skip_batches=done)
            model.train()
            bar = tqdm(total=iters_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (cfg.progress and main), dynamic_ncols=True)
            tick = time.perf_counter()
            for images, masks in loader:
                images, masks = to_device(images, masks, device, channels_last)
                lr = optimizer.param_groups[0]["lr"]
                terms = train_step(model, images, masks, loss_fn, optimizer, scaler, amp_dtype)
                scheduler.step()
                iteration += 1
                terms = dist_utils.all_reduce_mean(terms, info).tolist()
                if not math.isfinite(terms[0]):
                    raise FloatingPointError(f"loss is {terms[0]} at iteration {iteration}; "
                                             "lower the lr or turn mixed precision off")
                epoch_sums += torch.tensor(terms, dtype=torch.float64)
                if step_log is not None:
                    rec = {"iteration": iteration, "epoch": epoch + 1, "lr": lr,
                           **dict(zip(LOSS_KEYS, terms))}
                    step_log.write(json.dumps(rec) + "\n")
                    step_log.flush()
                now = time.perf_counter()
                epoch_seconds += now - tick
                tick = now
                bar.update(1)
                speed = (bar.n - done) * cfg.batch_size / max(bar.format_dict["elapsed"], 1e-9)
                bar.set_postfix(loss=f"{terms[0]:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                if (cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0
                        and iteration % iters_per_epoch):
                    save_last()
                    tick = time.perf_counter()  # checkpoint time is not training time
            bar.close()

            record: Dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration}
            record.update({k: float(v) / iters_per_epoch for k, v in zip(LOSS_KEYS, epoch_sums)})
            record["lr"] = optimizer.param_groups[0]["lr"]
            # Rank 0's clock for everyone, so that every process returns the same history.
            epoch_seconds = float(dist_utils.broadcast_object(epoch_seconds, info))
            record["seconds"] = epoch_seconds
            record["images_per_s"] = iters_per_epoch * cfg.batch_size / max(epoch_seconds, 1e-9)
            last_epoch = epoch + 1 == cfg.epochs
            if (cfg.val_every and (epoch + 1) % cfg.val_every == 0) or last_epoch:
                metrics = validate(model, vloader, num_classes, device, info, amp_dtype,
                                   channels_last, ignore_index, progress=cfg.progress)
                record.update(metrics)
            history.append(record)
            epoch_sums.zero_()
            epoch_seconds = 0.0
            improved = record.get("mIoU", float("-inf")) > best_miou
            if improved:
                best_miou = record["mIoU"]
            save_last()
            if main:
                _write_jsonl(out / "metrics.jsonl", history)
                if improved:
                    ckpt_io.save_atomic({
                        "format": ckpt_io.FORMAT, "config": cfg.to_dict(),
                        "num_classes": num_classes, "classes": classes,
                        "model": unwrap(raw).state_dict(), "epoch": epoch + 1,
                        "iteration": iteration, "metrics": record,
                    }, out / "best.pt")
                if cfg.progress:
                    tqdm.write(_epoch_line(record))
    finally:
        if step_log is not None:
            step_log.close()

    final = unwrap(raw).eval()
    return TrainResult(final, history, cfg, out, classes,
                       best_miou if best_miou > float("-inf") else float("nan"))


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """The records of a log; a torn last line (the process was killed mid-write) is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _epoch_line(r: Dict[str, Any]) -> str:
    text = (f"epoch {r['epoch']}: loss {r['loss']:.4f} (main {r['main']:.4f}, aux {r['aux']:.4f},"
            f" se {r['se']:.4f}) lr {r['lr']:.2e} {r['images_per_s']:.1f} img/s")
    if "mIoU" in r:
        text += f" | val pixAcc {100 * r['pixAcc']:.2f} mIoU {100 * r['mIoU']:.2f}"
    return text


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="encnet-train", description="Train EncNet / FCN (every TrainConfig field is a flag;"
        " flags override the preset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="starting configuration (optional with --resume PATH)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue OUT/last.pt (or the checkpoint / run folder PATH)")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                       metavar=kind.upper(), help=f"({kind})")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset (or the resumed run's config) with every given flag applied."""
    if args.preset:
        cfg = get_preset(args.preset)
    elif args.resume and args.resume != "auto":
        cfg = TrainConfig.from_dict(ckpt_io.load(ckpt_io.find_resume(args.resume)
                                                 or args.resume)["config"])
    else:
        raise SystemExit("encnet-train: give --preset NAME (or --resume PATH)")
    overrides = {}
    for f in fields(TrainConfig):
        text = getattr(args, f.name)
        if text is not None:
            try:
                overrides[f.name] = parse_value(text, getattr(cfg, f.name))
            except ValueError as exc:
                raise SystemExit(f"encnet-train: --{f.name.replace('_', '-')}: {exc}") from exc
    return cfg.replace(**overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError, ckpt_io.CheckpointError) as exc:
        raise SystemExit(f"encnet-train: {exc}") from exc
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from .data import DatasetNotFoundError

    try:
        result = train(cfg, resume=args.resume)
    except (DatasetNotFoundError, ckpt_io.CheckpointError, FileNotFoundError) as exc:
        print(f"encnet-train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # e.g. a resumed run whose recipe changed
        print(f"encnet-train: {exc}", file=sys.stderr)
        return 2
    finally:
        dist_utils.teardown()
    if int(os.environ.get("RANK", "0")) == 0 and result.history and "mIoU" in result.history[-1]:
        last = result.history[-1]
        print(f"done: val pixAcc {100 * last['pixAcc']:.2f} mIoU {100 * last['mIoU']:.2f} "
              f"(best mIoU {100 * result.best_miou:.2f}); checkpoints in {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
