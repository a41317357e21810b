"""What a run will cost, measured before it starts: ``measure_budget(cfg)``, ``encnet-train --budget``.

A few training iterations of the configured run (its model, data, batch, precision and
memory format, built by the same :mod:`encnet_lite.engine` functions as training) give
iterations per second and the peak memory; the epoch and the whole schedule follow from
the preset's sizes. A few images through :func:`encnet_lite.inference.predict` give the
time of a single-scale and a multi-scale evaluation of the whole validation split. Nothing
is written to disk: no run folder, no checkpoint.

When the measured peak does not fit the memory limit (by default the GPU's total memory),
the budget suggests a smaller batch and the learning rate the linear rule gives for it
(``lr * new_batch / batch``, as the official code scales 1e-3 for 16 images).
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, Dict, Optional, Tuple

import torch

from . import measure
from .presets import TrainConfig

__all__ = ["measure_budget", "format_budget", "suggest_batch", "duration"]

HEADROOM = 0.9  # plan for 90 % of the memory: allocator fragmentation, other processes


def _time_training(cfg: TrainConfig, device: torch.device, iterations: int,
                   warmup: int) -> Dict[str, Any]:
    """Seconds per iteration and peak memory of ``iterations`` steps after ``warmup`` ones."""
    from . import engine
    from .losses import SegmentationLoss

    train_ds, val_ds = engine.build_datasets(cfg)
    num_classes = int(getattr(train_ds, "num_classes", 0))
    # Random weights: the cost does not depend on them, and nothing is downloaded.
    model = engine.build_model(cfg.replace(weights_backbone=""), num_classes).to(device)
    channels_last = engine.resolve_channels_last(cfg.runtime.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = engine.resolve_amp(cfg.optim.amp, device)
    optimizer, scaler = engine.build_optimizer(model, cfg), engine.make_scaler(amp_dtype, device)
    loss_fn = SegmentationLoss(se_weight=cfg.model.se_weight, aux_weight=cfg.model.aux_weight,
                               ignore_index=int(getattr(train_ds, "ignore_index", 255)))
    sampler = engine.TrainSampler(len(train_ds), cfg.optim.batch_size, cfg.optim.seed)
    loader = engine.train_loader(train_ds, sampler, cfg.runtime.workers,
                                 pin_memory=device.type == "cuda")
    measure.reset_peak(device)
    fixed = measure.memory_now(device)  # weights (+ the process itself on a CPU)
    batches = iter(loader)
    model.train()
    for step in range(warmup + iterations):
        if step == warmup:
            measure.sync(device)
            start = time.perf_counter()
        try:
            images, masks = next(batches)
        except StopIteration:  # an epoch shorter than the measurement: start another
            batches = iter(loader)
            images, masks = next(batches)
        images, masks = engine.to_device(images, masks, device, channels_last)
        engine.train_step(model, images, masks, loss_fn, optimizer, scaler, amp_dtype)
    measure.sync(device)
    seconds = (time.perf_counter() - start) / iterations
    peak = measure.peak_memory(device)
    return {"model": model, "val_ds": val_ds, "num_classes": num_classes, "amp": amp_dtype,
            "seconds_per_iteration": seconds, "peak_memory": peak, "fixed_memory": fixed,
            "iterations_per_epoch": sampler.batches_per_epoch, "train_images": len(train_ds),
            "val_images": len(val_ds)}


def _time_evaluation(model: torch.nn.Module, cfg: TrainConfig, num_classes: int,
                     device: torch.device, images: int) -> Dict[str, Any]:
    """Seconds per image of single-scale and multi-scale (+ flip) evaluation, and the split size."""
    from .engine import forward_context, resolve_amp
    from .evaluate import eval_dataset
    from .inference import MS_SCALES, predict

    dataset = eval_dataset(cfg)
    crop = None if cfg.data.dataset == "scenes" else cfg.data.crop_size
    model.eval()
    amp_dtype = resolve_amp(cfg.optim.amp, device)

    def evaluate_one(image: torch.Tensor, scales: Tuple[float, ...], flip: bool) -> None:
        with forward_context(device, amp_dtype):
            predict(model, image, num_classes, scales=scales, flip=flip, crop_size=crop)

    per_image = {}
    for name, scales, flip in (("single", (1.0,), False), ("multi", MS_SCALES, True)):
        total = 0.0
        for i in range(min(images, len(dataset)) + 1):  # image 0 warms up
            image = dataset[i % len(dataset)][0][None].to(device)
            seconds = measure.timed(partial(evaluate_one, image, scales, flip), device)["wall_s"]
            total += seconds if i else 0.0
        per_image[name] = total / max(1, min(images, len(dataset)))
    return {"eval_images": len(dataset), "eval_single_per_image": per_image["single"],
            "eval_multi_per_image": per_image["multi"]}


def suggest_batch(batch_size: int, lr: float, peak: int, fixed: int,
                  limit: Optional[int]) -> Optional[Dict[str, Any]]:
    """A batch that fits ``HEADROOM * limit`` bytes, and its lr by the linear rule; None if
    the measured ``peak`` already fits. Memory is modelled as ``fixed + batch * per_image``."""
    if not limit or peak <= HEADROOM * limit:
        return None
    per_image = max(peak - fixed, 1) / batch_size
    fits = int((HEADROOM * limit - fixed) // per_image)
    if fits < 1:
        return {"batch_size": 0, "lr": 0.0,
                "why": "not even one image fits: use a smaller crop or a GPU with more memory"}
    return {"batch_size": fits, "lr": lr * fits / batch_size,
            "why": f"peak {peak / 2**30:.1f} GiB > {HEADROOM:.0%} of {limit / 2**30:.1f} GiB"}


def measure_budget(cfg: TrainConfig, iterations: int = 5, warmup: Optional[int] = None,
                   eval_images: int = 2, memory_limit: Optional[int] = None) -> Dict[str, Any]:
    """Measure ``cfg``'s cost with ``iterations`` timed training steps and ``eval_images``
    evaluated images (after warm-up ones, which are not timed). Writes nothing.

    ``memory_limit`` (bytes): what the run may use (default: the GPU's total memory, or the
    machine's RAM on a CPU). Returns a dict of plain numbers; :func:`format_budget` prints it.
    """
    from .engine import resolve_device

    if iterations < 1:
        raise ValueError(f"iterations={iterations}: time at least one iteration")
    device = resolve_device(cfg.runtime.device)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    warmup = (2 if device.type == "cuda" else 1) if warmup is None else warmup
    run = _time_training(cfg, device, iterations, warmup)
    evals = _time_evaluation(run.pop("model"), cfg, run["num_classes"], device, eval_images)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the measurement's memory back before the real run
    sec = run["seconds_per_iteration"]
    epoch_s = run["iterations_per_epoch"] * sec
    validations = 1  # the last epoch is always validated
    if cfg.runtime.val_every:
        epochs, every = cfg.optim.epochs, cfg.runtime.val_every
        validations = epochs // every + (1 if epochs % every else 0)
    val_s = run["val_images"] * evals["eval_single_per_image"]
    limit = memory_limit if memory_limit is not None else measure.memory_limit(device)
    return {
        "name": cfg.name, "device": str(device), "device_name": _device_name(device),
        "amp": str(run["amp"]).replace("torch.", "") if run["amp"] else "off",
        "batch_size": cfg.optim.batch_size, "lr": cfg.optim.lr, "timed_iterations": iterations,
        "seconds_per_iteration": sec, "iterations_per_s": 1.0 / sec,
        "images_per_s": cfg.optim.batch_size / sec, "peak_memory": run["peak_memory"],
        "memory_kind": "CUDA peak allocated" if device.type == "cuda" else "CPU peak RSS",
        "fixed_memory": run["fixed_memory"], "memory_limit": limit,
        "iterations_per_epoch": run["iterations_per_epoch"],
        "epoch_s": epoch_s, "epochs": cfg.optim.epochs, "validations": validations,
        "validation_s": val_s, "schedule_s": cfg.optim.epochs * epoch_s + validations * val_s,
        "eval_images": evals["eval_images"],
        "eval_single_s": evals["eval_images"] * evals["eval_single_per_image"],
        "eval_multi_s": evals["eval_images"] * evals["eval_multi_per_image"],
        "suggestion": suggest_batch(cfg.optim.batch_size, cfg.optim.lr, run["peak_memory"],
                                    run["fixed_memory"], limit),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"CPU, {torch.get_num_threads()} thread(s) of {os.cpu_count()} cores"


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_budget(b: Dict[str, Any]) -> str:
    """The budget of :func:`measure_budget` as a few lines of text."""
    gib = 2**30
    limit = f" of {b['memory_limit'] / gib:.1f} GiB" if b.get("memory_limit") else ""
    lines = [
        f"Budget of {b['name']} (batch {b['batch_size']}, autocast {b['amp']})",
        f"  device         {b['device_name']}; {b['timed_iterations']} timed steps",
        f"  speed          {b['iterations_per_s']:.2f} iterations/s "
        f"({b['images_per_s']:.1f} images/s)",
        f"  peak memory    {b['peak_memory'] / gib:.2f} GiB ({b['memory_kind']}){limit}",
        f"  one epoch      {b['iterations_per_epoch']} iterations: {duration(b['epoch_s'])}",
        f"  whole schedule {b['epochs']} epochs + {b['validations']} validations: "
        f"{duration(b['schedule_s'])}",
        f"  evaluation     {b['eval_images']} images: one scale "
        f"{duration(b['eval_single_s'])}, multi-scale + flip {duration(b['eval_multi_s'])}",
        "  (estimated from a few steps and images; epoch 1 also warms caches)",
    ]
    s = b.get("suggestion")
    if s and s["batch_size"]:
        lines += [f"  memory is short: {s['why']}",
                  f"  try batch_size={s['batch_size']} with lr={s['lr']:.3g} "
                  f"(the linear rule: lr x {s['batch_size']}/{b['batch_size']})"]
    elif s:
        lines.append(f"  memory is short: {s['why']}")
    return "\n".join(lines)
