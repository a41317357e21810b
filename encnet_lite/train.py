"""Train a segmentation model: ``train(cfg)`` for chapters, ``encnet-train`` on the CLI.

::

    from encnet_lite import presets
    from encnet_lite.train import train

    result = train(presets.scenes_encnet_tiny(epochs=3, out="runs/x", progress=False))
    result.model        # the trained model (eval mode, CPU/GPU as trained)
    result.history      # one dict per epoch, also in runs/x/metrics.jsonl

The recipe (:mod:`encnet_lite.presets`): SGD + poly schedule per iteration, the head at
10x the backbone's lr, ``SegmentationLoss`` (CE + aux + SE terms), mixed precision and
channels_last on CUDA. :func:`train` reads as setup -> loop -> save: :func:`setup` builds
the :class:`Run`, :func:`train_one_epoch` trains one epoch, :func:`finish_epoch` validates
and saves. Files in ``cfg.out`` (a :mod:`~encnet_lite.runfolder`; only the main process
writes, every file atomically):

- ``last.pt``: full training state, each epoch and every ``checkpoint_every`` iterations;
  ``--resume`` continues from it with the same losses an uninterrupted run would have had
  (bit for bit on CPU);
- ``best.pt``: the model with the best validation mIoU so far, written before ``last.pt``
  records it;
- ``metrics.jsonl``: one line per epoch (``epoch, iteration, loss, main, aux, se, lr,
  seconds, images_per_s`` and, after a validation, ``pixAcc, mIoU, IoU`` (fractions) and
  for EncNet the codeword health of :func:`encnet_lite.context.codeword_health`);
  ``iterations.jsonl``: one line per step (``iteration, epoch, loss, main, aux, se, lr``);
  ``config.json``.

A checkpoint is written only if every weight is finite; otherwise the run stops with
:class:`~encnet_lite.checkpoint.NonFiniteError` naming the iteration.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import checkpoint as ckpt_io
from . import distributed as dist_utils
from . import runfolder
from .checkpoint import LOSS_KEYS, TrainState
from .distributed import DistInfo
from .engine import (
    TrainSampler,
    build_datasets,
    build_model,
    build_optimizer,
    build_scheduler,
    make_scaler,
    process_state,
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
from .errors import DataError
from .metrics import ConfusionMatrix
from .presets import (
    LEAVES,
    PRESETS,
    ConfigRangeError,
    TrainConfig,
    get_preset,
    parse_value,
    resume_changes,
)
from .runfolder import RunFolder

HEALTH_IMAGES = 32  # validation images the codeword health is measured on, each validation


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module  # the trained model, unwrapped, in eval mode
    history: List[Dict[str, Any]]  # one dict per epoch (see metrics.jsonl)
    config: TrainConfig
    out: Path
    classes: List[str] = field(default_factory=list)
    best_mIoU: float = float("nan")
    confusion: Optional[ConfusionMatrix] = None  # of this call's last validation

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Run:
    """Everything a run is built from, made once by :func:`setup`."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    model: nn.Module  # what is called: maybe DDP- or compile-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    sampler: TrainSampler
    loader: DataLoader
    vloader: DataLoader
    classes: List[str]
    num_classes: int
    ignore_index: int
    health_images: torch.Tensor  # (N, 3, H, W): a fixed batch of validation images
    folder: RunFolder

    @property
    def header(self) -> Dict[str, Any]:
        """The keys every checkpoint of this run starts with."""
        return {"config": self.cfg.to_dict(), "num_classes": self.num_classes,
                "classes": self.classes}

    @property
    def parts(self) -> Dict[str, Any]:
        return {"model": unwrap(self.model), "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": self.scaler}


def load_history(out: Union[str, Path], name: str = "metrics.jsonl") -> List[Dict[str, Any]]:
    """Read back a run's per-epoch log (``name="iterations.jsonl"``: the per-step log);
    records of runs from before the one score format come back in it (``IoU``)."""
    from .metrics import upgrade_scores

    path = Path(out) / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} in {out}: not a training run folder")
    return upgrade_scores(runfolder.read_jsonl(path))


def train(cfg: TrainConfig, *, resume: runfolder.ResumeArg = None, overwrite: bool = False,
          model: Optional[nn.Module] = None) -> TrainResult:
    """Train with ``cfg``; see the module docstring for the files written to ``cfg.out``.

    Args:
        cfg: a :class:`~encnet_lite.presets.TrainConfig` (usually from a preset).
        resume: ``True`` continues ``cfg.out/last.pt`` if there is one (else starts the
            run: a chapter run again continues); a checkpoint or run folder continues that
            checkpoint (an error if there is none); None starts a new run, refused in a
            folder that holds one unless ``overwrite``.
        overwrite: replace the run in ``cfg.out``: its files (and the evaluation reports
            beside them) are removed only once this run's setup has succeeded, so a bad
            value or a missing file leaves the old run as it was.
        model: train this model instead of building one from ``cfg`` (it must return the
            usual output dict and be compatible with ``cfg``'s dataset).

    Returns a :class:`TrainResult`. Launched by torchrun, every process returns the same
    history (losses and metrics are reduced over processes). The thread count and the
    global RNGs are restored on return.
    """
    with process_state(cfg.runtime.threads):
        info = dist_utils.setup(resolve_device(cfg.runtime.device).type)
        datasets = checked_datasets(cfg)
        folder, source = open_folder(cfg, resume, overwrite, info)
        try:  # a replaced run's files go only once setup succeeded (folder.start)
            if source is None:
                check_backbone_weights(cfg)
            saved = load_resumable(source, cfg, datasets[0])
            run = setup(cfg, info, datasets, folder, model, saved)
            state = start_state(run, saved)
            cm = None
            for epoch in range(state.epoch, cfg.optim.epochs):
                train_one_epoch(run, state, epoch)
                validated = finish_epoch(run, state, epoch)  # validates, saves, logs
                cm = validated if validated is not None else cm
        finally:
            folder.close()
    best = state.best_mIoU if state.best_epoch else float("nan")
    return TrainResult(unwrap(run.model).eval(), state.history, cfg, folder.path, run.classes,
                       best, cm)


# ---------------------------------------------------------------------------- setup


def checked_datasets(cfg: TrainConfig) -> Tuple[Dataset, Dataset]:
    """``(train, val)``; an empty validation split is an error (its mIoU would be NaN)."""
    train_ds, val_ds = build_datasets(cfg)
    if len(val_ds) == 0:  # type: ignore[arg-type]
        raise DataError("the validation split is empty (num_val_images 0?): validation "
                         "needs at least one image, e.g. --num-val-images 8")
    return train_ds, val_ds


def open_folder(cfg: TrainConfig, resume: runfolder.ResumeArg, overwrite: bool,
                info: DistInfo) -> Tuple[RunFolder, Optional[Path]]:
    """:func:`encnet_lite.runfolder.open_run` on the main process; the others learn whether
    it refused (so that no process waits for one that stopped)."""
    error, opened = None, None
    try:
        opened = runfolder.open_run(cfg.out, resume, overwrite, active=info.is_main)
    except (runfolder.RunFolderError, FileNotFoundError) as exc:
        error = exc
    error = dist_utils.broadcast_object(error, info)
    if error is not None:
        if opened is not None:
            opened[0].close()
        raise error
    return opened


def load_resumable(source: Optional[Path], cfg: TrainConfig,
                   train_ds: Dataset) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue (None for a new run), checked against ``cfg`` by the
    ``RESUME`` rule of each config group (:mod:`encnet_lite.presets`): the same model (else
    IncompatibleCheckpointError) and the same recipe (else the same error: a changed schedule
    would not continue the same run)."""
    if source is None:
        return None
    saved = ckpt_io.load_training(source)
    changes = resume_changes(ckpt_io.saved_config(saved, source), cfg)
    ckpt_io.check_compatible(saved, _num_classes(train_ds), changes["weights"])
    if changes["recipe"]:
        raise ckpt_io.IncompatibleCheckpointError(
            "resume continues the checkpoint's run, but the recipe changed ("
            + "; ".join(changes["recipe"]) + "); start a new run in another --out instead")
    return saved


def _num_classes(ds: Dataset) -> int:
    return int(getattr(ds, "num_classes", len(getattr(ds, "classes", []))))


def setup(cfg: TrainConfig, info: DistInfo, datasets: Tuple[Dataset, Dataset],
          folder: RunFolder, model: Optional[nn.Module] = None,
          saved: Optional[Dict[str, Any]] = None) -> Run:
    """The :class:`Run`: where it computes, the model (same initial weights on every
    process), the labels, the optimizer and schedule, the loaders."""
    train_ds, val_ds = datasets
    where = placement(cfg)  # after dist setup: this process's GPU under torchrun
    labels = label_info(train_ds)
    raw = place_model(cfg, info, where, labels.num_classes, model, saved)
    sampler = TrainSampler(len(train_ds), cfg.optim.batch_size, cfg.optim.seed, info)
    steps = optimization(raw, cfg, sampler, where)
    loaders = build_loaders(cfg, datasets, sampler, info, where)
    health = torch.stack([val_ds[i][0] for i in range(min(HEALTH_IMAGES, len(val_ds)))])
    return Run(cfg=cfg, info=info, device=where.device, amp_dtype=where.amp_dtype,
               channels_last=where.channels_last, model=wrap_model(raw, cfg, info, where),
               optimizer=steps.optimizer, scheduler=steps.scheduler, scaler=steps.scaler,
               loss_fn=loss_function(cfg, labels), sampler=sampler, loader=loaders.train,
               vloader=loaders.val, classes=labels.classes, num_classes=labels.num_classes,
               ignore_index=labels.ignore_index, health_images=health, folder=folder)


@dataclass
class Placement:
    """Where a run computes, and in what arithmetic."""

    device: torch.device
    amp_dtype: Optional[torch.dtype]  # None: full precision
    channels_last: bool


def placement(cfg: TrainConfig) -> Placement:
    """``cfg``'s device, mixed precision and memory format, resolved for this machine."""
    device = resolve_device(cfg.runtime.device)
    return Placement(device=device, amp_dtype=resolve_amp(cfg.optim.amp, device),
                     channels_last=resolve_channels_last(cfg.runtime.channels_last, device))


@dataclass
class Labels:
    """What the training set says about its classes."""

    classes: List[str]
    num_classes: int
    ignore_index: int


def label_info(train_ds: Dataset) -> Labels:
    return Labels(classes=list(getattr(train_ds, "classes", [])),
                  num_classes=_num_classes(train_ds),
                  ignore_index=int(getattr(train_ds, "ignore_index", 255)))


@dataclass
class Steps:
    """What makes an optimizer step: the optimizer, its poly schedule, the grad scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler


def optimization(model: nn.Module, cfg: TrainConfig, sampler: TrainSampler,
                 where: Placement) -> Steps:
    """SGD over ``model``'s parameter groups, scheduled over every step of the run."""
    optimizer = build_optimizer(model, cfg)
    total = cfg.optim.epochs * sampler.batches_per_epoch
    return Steps(optimizer=optimizer,
                 scheduler=build_scheduler(optimizer, total, cfg.optim.poly_power),
                 scaler=make_scaler(where.amp_dtype, where.device))


def loss_function(cfg: TrainConfig, labels: Labels) -> nn.Module:
    from .losses import SegmentationLoss

    return SegmentationLoss(se_weight=cfg.model.se_weight, aux_weight=cfg.model.aux_weight,
                            ignore_index=labels.ignore_index)


@dataclass
class Loaders:
    train: DataLoader  # this process's shard of each global batch
    val: DataLoader


def build_loaders(cfg: TrainConfig, datasets: Tuple[Dataset, Dataset], sampler: TrainSampler,
                  info: DistInfo, where: Placement) -> Loaders:
    """The training loader (batches from ``sampler``) and the validation loader (this
    process's share of the images; ``val_batch_size`` 0: the per-process batch)."""
    pin, workers = where.device.type == "cuda", cfg.runtime.workers
    return Loaders(
        train=train_loader(datasets[0], sampler, workers, pin_memory=pin),
        val=val_loader(datasets[1], cfg.runtime.val_batch_size or sampler.local_batch,
                       workers, info, pin_memory=pin))


def wrap_model(model: nn.Module, cfg: TrainConfig, info: DistInfo,
               where: Placement) -> nn.Module:
    """What the loop calls: ``model`` in DistributedDataParallel under torchrun, compiled
    if ``compile``."""
    if info.enabled:
        ids = [where.device.index] if where.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.runtime.compile:
        model = torch.compile(model)
    return model


def place_model(cfg: TrainConfig, info: DistInfo, where: Placement, num_classes: int,
                model: Optional[nn.Module], saved: Optional[Dict[str, Any]]) -> nn.Module:
    """``model`` (or a new one from ``cfg``) on the device with the saved weights, if any."""
    _seed_everything(cfg.optim.seed)
    if model is None:
        model = _new_model(cfg, num_classes, fresh=saved is None)
    model = model.to(where.device)
    if where.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as exc:  # a model built differently (missing keys, shapes)
            raise ckpt_io.IncompatibleCheckpointError(
                f"the checkpoint does not fit the model: {exc}") from exc
    if info.enabled and cfg.runtime.sync_bn:
        model = dist_utils.convert_sync_batchnorm(model, where.device.type)
    return model


def _new_model(cfg: TrainConfig, num_classes: int, fresh: bool) -> nn.Module:
    """A model built from ``cfg``; ImageNet weights only for a ``fresh`` run (resuming
    overwrites them). A ``--weights-backbone`` file of another network is one line."""
    from .errors import WeightsError

    if not fresh:
        cfg = cfg.replace(weights_backbone="")
    weights, backbone = cfg.runtime.weights_backbone, cfg.model.backbone
    try:
        return build_model(cfg, num_classes)
    except RuntimeError as exc:
        if weights in ("", "imagenet") or "loading state_dict" not in str(exc):
            raise
        why = " ".join(str(exc).split())[:200]
        raise WeightsError(f"--weights-backbone {weights} does not fit the {backbone} "
                           f"backbone ({why} ...); give ImageNet weights made for "
                           f"{backbone}") from exc


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_state(run: Run, saved: Optional[Dict[str, Any]]) -> TrainState:
    """A fresh :class:`TrainState`, or the saved one with the optimizer, schedule, scaler
    and RNGs restored and a missing ``best.pt`` repaired; then the logs are (re)written."""
    if saved is None:
        state = TrainState()
        _seed_everything(run.cfg.optim.seed + 1 + run.info.rank)  # dropout masks differ per process
    else:
        state = ckpt_io.restore(saved, run.parts)
        rngs, info = saved["rng"], run.info
        ckpt_io.set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
        repair_best(run, state)
    run.folder.start(run.cfg.to_dict(), state.history, state.iteration)
    return state


def repair_best(run: Run, state: TrainState) -> None:
    """Make ``best.pt`` agree with a resumed ``state`` (see :func:`runfolder.best_action`)."""
    action = runfolder.best_action(run.folder.path, state) if run.info.is_main else None
    action = dist_utils.broadcast_object(action, run.info)
    if action == "rebuild":
        run.folder.save("best.pt", ckpt_io.best_checkpoint(
            run.header, unwrap(run.model).state_dict(), state))
    elif action == "reset":
        state.best_mIoU, state.best_epoch = float("-inf"), 0


# ---------------------------------------------------------------------------- the loop


def train_one_epoch(run: Run, state: TrainState, epoch: int) -> None:
    """Train epoch ``epoch`` (0-based) from ``state.iteration`` to its end: one optimizer
    step per batch, one line per step in iterations.jsonl, ``last.pt`` every
    ``checkpoint_every`` steps. Updates ``state`` (iteration, loss sums, seconds)."""
    from tqdm.auto import tqdm

    cfg, per_epoch = run.cfg, run.sampler.batches_per_epoch
    done = state.iteration - epoch * per_epoch
    run.sampler.set_epoch(epoch, skip_batches=done)
    run.model.train()
    bar = tqdm(total=per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=not (cfg.runtime.progress and run.info.is_main), dynamic_ncols=True)
    tick = time.perf_counter()
    for images, masks in run.loader:
        lr = run.optimizer.param_groups[0]["lr"]
        terms = step(run, images, masks, state.iteration + 1)
        state.iteration += 1
        state.epoch_sums += torch.tensor(terms, dtype=torch.float64)
        run.folder.log_step({"iteration": state.iteration, "epoch": epoch + 1, "lr": lr,
                             **dict(zip(LOSS_KEYS, terms))})
        now = time.perf_counter()
        state.epoch_seconds += now - tick
        tick = now
        bar.update(1)
        speed = (bar.n - done) * cfg.optim.batch_size / max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix(loss=f"{terms[0]:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
        if (cfg.runtime.checkpoint_every and state.iteration % cfg.runtime.checkpoint_every == 0
                and state.iteration % per_epoch):
            save_checkpoints(run, state, best=False)
            tick = time.perf_counter()  # checkpoint time is not training time
    bar.close()


def step(run: Run, images: torch.Tensor, masks: torch.Tensor, iteration: int) -> List[float]:
    """One optimizer step and the schedule's; the loss terms averaged over processes."""
    images, masks = to_device(images, masks, run.device, run.channels_last)
    terms = train_step(run.model, images, masks, run.loss_fn, run.optimizer, run.scaler,
                       run.amp_dtype)
    run.scheduler.step()
    terms = dist_utils.all_reduce_mean(terms, run.info).tolist()
    if not math.isfinite(terms[0]):  # only now look at the batch: no sync on the way
        if not bool(torch.isfinite(images).all()):
            raise FloatingPointError(
                f"loss is {terms[0]} at iteration {iteration} because the input images "
                "hold NaN or Inf: the data are broken (check the dataset's files and "
                "transform), the lr is not the cause")
        raise FloatingPointError(f"loss is {terms[0]} at iteration {iteration}; "
                                 "lower the lr or turn mixed precision off")
    return terms


def finish_epoch(run: Run, state: TrainState, epoch: int) -> Optional[ConfusionMatrix]:
    """The epoch's record (losses, lr, speed; scores and codeword health when it is
    validated), best.pt if it improved, last.pt, metrics.jsonl. Returns the validation's
    confusion matrix (None when this epoch is not validated)."""
    cfg, per_epoch = run.cfg, run.sampler.batches_per_epoch
    record: Dict[str, Any] = {"epoch": epoch + 1, "iteration": state.iteration}
    record.update({k: float(v) / per_epoch for k, v in zip(LOSS_KEYS, state.epoch_sums)})
    record["lr"] = run.optimizer.param_groups[0]["lr"]
    # Rank 0's clock for everyone, so that every process returns the same history.
    seconds = float(dist_utils.broadcast_object(state.epoch_seconds, run.info))
    record.update(seconds=seconds,
                  images_per_s=per_epoch * cfg.optim.batch_size / max(seconds, 1e-9))
    cm = None
    every = cfg.runtime.val_every
    if (every and (epoch + 1) % every == 0) or epoch + 1 == cfg.optim.epochs:
        cm = validate(run.model, run.vloader, run.num_classes, run.device, run.info,
                      run.amp_dtype, run.channels_last, run.ignore_index,
                      progress=cfg.runtime.progress)
        record.update(cm.compute())
        record.update(health(run))
    state.history.append(record)
    state.epoch, state.epoch_sums, state.epoch_seconds = epoch + 1, torch.zeros_like(
        state.epoch_sums), 0.0
    improved = "mIoU" in record and state.improves(record["mIoU"])
    if improved:
        state.best_mIoU, state.best_epoch = record["mIoU"], epoch + 1
    save_checkpoints(run, state, best=improved)
    run.folder.write_history(state.history)
    if cfg.runtime.progress and run.info.is_main:
        from tqdm.auto import tqdm

        tqdm.write(_epoch_line(record))
    return cm


def health(run: Run) -> Dict[str, float]:
    """:func:`encnet_lite.context.codeword_health` on the fixed validation batch (main
    process, shared with the others); ``{}`` for a model without the encoding module."""
    from .context import codeword_health

    result = None
    if run.info.is_main:
        with torch.no_grad():
            result = codeword_health(unwrap(run.model), run.health_images)
    return dist_utils.broadcast_object(result, run.info)


def save_checkpoints(run: Run, state: TrainState, best: bool) -> None:
    """``best.pt`` (if ``best``) and then ``last.pt``, so that no crash between the two
    writes loses the best model; nothing is written unless every weight is finite."""
    weights = unwrap(run.model).state_dict()
    try:
        ckpt_io.check_finite(weights, "the model")
    except ckpt_io.NonFiniteError as exc:
        raise ckpt_io.NonFiniteError(
            f"training stopped at iteration {state.iteration}: {exc}; no checkpoint was "
            "written (last.pt keeps the last finite state): lower the lr or turn mixed "
            "precision off") from None
    rngs = dist_utils.all_gather_object(ckpt_io.rng_state(), run.info)
    if best:
        run.folder.save("best.pt", ckpt_io.best_checkpoint(run.header, weights, state))
    run.folder.save("last.pt", ckpt_io.training_checkpoint(run.header, state, run.parts, rngs))


def _epoch_line(r: Dict[str, Any]) -> str:
    text = (f"epoch {r['epoch']}: loss {r['loss']:.4f} (main {r['main']:.4f}, aux {r['aux']:.4f},"
            f" se {r['se']:.4f}) lr {r['lr']:.2e} {r['images_per_s']:.1f} img/s")
    if "mIoU" in r:
        text += f" | val pixAcc {100 * r['pixAcc']:.2f} mIoU {100 * r['mIoU']:.2f}"
    return text


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser

    p = ArgumentParser(
        prog="encnet-train", description="Train EncNet / FCN (every TrainConfig field is a flag;"
        " flags override the preset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="starting configuration (optional with --resume PATH)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue OUT/last.pt, or the run folder / last.pt PATH (and train "
                   "there unless --out is given)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (a new run refuses a folder that holds one)")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    p.add_argument("--budget", nargs="?", const=5, type=int, default=None, metavar="N",
                   help="time N training iterations (default 5) and a few evaluated images, "
                   "print speed, memory and time per epoch / schedule / evaluation, and exit "
                   "without writing anything")
    for name, (group, f) in LEAVES.items():  # one flag per leaf field, flat names
        kind = "true/false" if isinstance(f.default, bool) else type(f.default).__name__
        where = "" if group == name else f"; {group}"
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       metavar=kind.upper(), help=f"({kind}{where})")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset (or the resumed run's config) with every given flag applied; with
    ``--resume PATH`` and no ``--out``, the run trains in PATH's folder. A misuse raises
    :class:`encnet_lite.cli.UsageError` (or the loader's error for a bad checkpoint)."""
    from .cli import UsageError

    resume_path = args.resume if args.resume and args.resume != "auto" else None
    if args.preset:
        cfg = get_preset(args.preset)
    elif resume_path:
        found = ckpt_io.find_resume(resume_path)
        if found is None:
            raise runfolder.RunFolderError(_no_resume_message(Path(resume_path)))
        saved = ckpt_io.load(found)
        ckpt_io.check_header(saved, found)
        cfg = ckpt_io.saved_config(saved, found)
    else:
        raise UsageError("give --preset NAME (or --resume PATH); --help lists the presets")
    if resume_path:
        path = Path(resume_path)  # a run folder, or a checkpoint file in one
        cfg = cfg.replace(out=str(path.parent if path.is_file() or path.suffix == ".pt"
                                  else path))
    overrides, current = {}, cfg.flat()
    for name in LEAVES:
        text = getattr(args, name)
        if text is not None:
            try:
                overrides[name] = parse_value(text, current[name])
            except ValueError as exc:
                raise UsageError(f"--{name.replace('_', '-')} {text}: {exc}") from None
    try:
        return cfg.replace(**overrides)
    except ConfigRangeError as exc:  # --lr nan, --poly-power -1: named as typed
        raise UsageError(exc.for_flag(getattr(args, exc.key, None))) from None
    except ValueError as exc:  # TrainConfig's own checks (a bad --arch name)
        raise UsageError(str(exc)) from None


def _no_resume_message(path: Path) -> str:
    """``--resume PATH`` (no --preset) where PATH holds no last.pt: what works instead."""
    folder = path if path.is_dir() else path.parent if path.name == "last.pt" else None
    if folder is not None and folder.is_dir() and runfolder.holds_run(folder):
        name = runfolder.read_config_name(folder)
        preset = name if name in PRESETS else "NAME"
        return runfolder.nothing_to_resume(
            path, folder, f"run encnet-train --preset {preset} --out {folder} (no --resume)")
    return (f"--resume {path}: no such run folder or checkpoint (a folder must hold last.pt); "
            "check the path, or drop --resume and give --preset to start a new run")


def check_cli_config(cfg: TrainConfig, writes: bool = True, resumes: bool = False) -> None:
    """What ``encnet-train`` refuses before building anything (every number's range is
    :class:`TrainConfig`'s own check): no validation scenes, a device that is not here,
    backbone weights that are not (``resumes``: not needed), an ``--out`` that cannot be
    written (``writes``)."""
    from . import cli

    cli.check_threads(cfg.runtime.threads)
    if cfg.data.dataset == "scenes" and cfg.scenes.num_val_images < 1:
        raise cli.UsageError(f"--num-val-images {cfg.scenes.num_val_images}: validation "
                             "needs at least one image, e.g. --num-val-images 8")
    resolve_device(cfg.runtime.device, flag="--device")
    if not resumes:
        check_backbone_weights(cfg)
    if writes:
        cli.check_writable_dir(cfg.out, "--out")


def check_backbone_weights(cfg: TrainConfig) -> None:
    """``cfg.runtime.weights_backbone`` (if given) is meant for a ResNet backbone and, if
    it is a file, is not an encnet_lite checkpoint (loading one as ImageNet weights would
    list every key of the backbone as missing). Other faults are named by the loader when
    the model is built."""
    from .errors import WeightsError

    weights, flag = cfg.runtime.weights_backbone, "--weights-backbone"
    if not weights:
        return
    if cfg.model.backbone == "tiny":
        raise WeightsError(f"{flag} {weights}: the tiny backbone has no ImageNet weights (it "
                           "trains from scratch); drop the flag, or pick --backbone resnet50")
    if weights == "imagenet":  # torchvision's cache (downloaded when the model is built)
        return
    path = Path(weights).expanduser()
    if path.is_dir():
        raise WeightsError(f"{flag} {path} is a folder: give the weights file itself (a "
                           "torchvision ResNet .pth)")
    if not path.is_file():
        raise WeightsError(f"{flag} {path}: no such file; give a torchvision ResNet ImageNet "
                           ".pth file, or drop the flag")
    try:  # mmap: only the small dict structure is read, not the tensors
        peek = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint: the backbone's loader says what it is
        return
    made_by = peek.get("format") if isinstance(peek, dict) else None
    if isinstance(made_by, str) and made_by.startswith(ckpt_io.FORMAT.rsplit("/", 1)[0]):
        raise WeightsError(f"{flag} {path} is an encnet_lite checkpoint (a whole trained "
                           "model), not ImageNet ResNet weights: continue its run with "
                           "--resume, evaluate it with encnet-eval --checkpoint, or give a "
                           "torchvision ResNet .pth file")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    args = build_parser().parse_args(argv)
    return cli.run("encnet-train", lambda: run_cli(args))


def run_cli(args: argparse.Namespace) -> int:
    """``encnet-train``'s work once its arguments are parsed."""
    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    check_cli_config(cfg, writes=args.budget is None, resumes=args.resume is not None)
    if args.budget is not None:
        from .budget import format_budget, measure_budget

        print(format_budget(measure_budget(cfg, iterations=args.budget)))
        return 0
    # A bare --resume means this run's folder, which must then hold a checkpoint.
    resume = cfg.out if args.resume == "auto" else args.resume
    try:
        result = train(cfg, resume=resume, overwrite=args.overwrite)
    finally:
        dist_utils.teardown()
    if int(os.environ.get("RANK", "0")) == 0 and result.history and "mIoU" in result.history[-1]:
        last = result.history[-1]
        print(f"done: val pixAcc {100 * last['pixAcc']:.2f} mIoU {100 * last['mIoU']:.2f} "
              f"(best mIoU {100 * result.best_mIoU:.2f}); checkpoints in {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
