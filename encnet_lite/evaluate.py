"""Evaluate a checkpoint: ``evaluate(model, dataset, ...)`` and the ``encnet-eval`` CLI.

Unlike the quick validation during training (centre crops, one scale), this scores the
full validation images: single scale, or the paper's multi-scale protocol (scales 0.5 to
1.75, each with a horizontal flip, sliding windows of ``crop_size`` at stride 2/3 of it,
class scores averaged over views) through :func:`encnet_lite.inference.predict`.
``--protocol official`` scores as the official PyTorch-Encoding test does instead
(:func:`encnet_lite.inference.predict_official`: scales of ``--base-size`` 520, views and
windows padded to ``--crop-size`` 480 with black, ``exp`` of the flip-summed logits,
windows averaged where they overlap and the views *summed*, ``align_corners=True``; mIoU
over all classes, an absent one counting 0): the protocol of the published scores.
``--protocol mmseg`` averages the softmax probabilities of whole-image views
(:func:`encnet_lite.inference.predict_mmseg`). Summing or averaging views gives the same
argmax, and only the argmax is scored. pixAcc and mIoU come from one confusion matrix
accumulated over the whole split.

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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from . import checkpoint as ckpt_io
from . import distributed as dist_utils
from .distributed import SINGLE, DistInfo
from .engine import (
    ShardSampler,
    build_dataset,
    build_model,
    forward_context,
    resolve_amp,
    resolve_device,
)
from .errors import FileWriteError, one_line
from .files import write_json_atomic, write_text_atomic
from .inference import MS_SCALES
from .presets import TrainConfig

PROTOCOLS: Tuple[str, ...] = ("default", "official", "mmseg")


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, *,
             multi_scale: bool = False, flip: Optional[bool] = None,
             crop_size: Optional[int] = None, stride: Optional[int] = None,
             protocol: str = "default", base_size: Optional[int] = None,
             device: Optional[torch.device] = None, amp: str = "auto",
             ignore_index: int = 255, max_images: Optional[int] = None,
             info: DistInfo = SINGLE, progress: bool = True,
             state: Union[None, str, Path] = None, save_every: int = 25) -> Dict[str, Any]:
    """pixAcc / mIoU of ``model`` on ``dataset`` (full images, one at a time).

    Args:
        multi_scale: the paper's scales ``MS_SCALES`` (flip on by default), else scale 1.
        flip: also predict the mirrored image (default: with ``multi_scale``).
        crop_size / stride: sliding windows (default ``crop_size=None``: whole image).
        protocol: ``"default"`` (:func:`~encnet_lite.inference.predict`) or ``"official"``
            (:func:`~encnet_lite.inference.predict_official` with ``base_size`` /
            ``crop_size``, default 520 / 480; mIoU over all classes, an absent one 0) or
            ``"mmseg"`` (:func:`~encnet_lite.inference.predict_mmseg`: whole images fitted
            to 2048 x 512, as mmsegmentation scores its checkpoints; windows do not apply).
        max_images: score only the first images (a quick look).
        info: under torchrun, each process scores its shard; the matrices are summed.
        progress: a tqdm bar with the images done and the time left (ETA).
        state: a JSON file for the partial confusion matrix, rewritten atomically every
            ``save_every`` images (and when interrupted): a rerun with the same model and
            settings continues after the last saved image; it is removed when done.

    Returns ``{"pixAcc", "mIoU", "IoU": [per class], "protocol", "settings", "confusion",
    "num_images", "seconds", "resumed_from"}`` (``resumed_from``: images from ``state``).
    """
    from tqdm.auto import tqdm

    from .metrics import ConfusionMatrix

    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    amp_dtype = resolve_amp(amp, device)
    run, settings = _predictor(protocol, multi_scale, flip, crop_size, stride, base_size)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    key = {"model": model_fingerprint(model), "images": n, "num_classes": num_classes,
           **settings, "shard": [info.rank, info.world_size]}
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
            with forward_context(device, amp_dtype):
                scores = run(model, image[None].to(device), num_classes)  # (1, C, H, W)
            cm.update(scores.argmax(1).reshape(mask.shape).cpu(), mask)
            scored += 1
            bar.update(1)
            if state and scored % save_every == 0 and scored < len(indices):
                _save_state(state, key, cm, scored, time.perf_counter() - start)
    except BaseException:  # Ctrl-C, an error: keep what was scored for the rerun
        if state and scored > done:
            try:
                _save_state(state, key, cm, scored, time.perf_counter() - start)
            except FileWriteError:  # e.g. a read-only folder: report the first error
                pass
        raise
    finally:
        bar.close()
    if info.enabled:
        cm.all_reduce()
    if state:
        try:
            state.unlink(missing_ok=True)
        except OSError:  # the folder turned read-only: the state left resumes correctly
            pass
    return {**cm.compute(absent_as_zero=protocol == "official"), "protocol": protocol,
            "settings": settings, "confusion": cm.counts().tolist(),
            "num_images": n,
            "seconds": time.perf_counter() - start, "resumed_from": done}


def _predictor(protocol: str, multi_scale: bool, flip: Optional[bool],
               crop_size: Optional[int], stride: Optional[int], base_size: Optional[int]
               ) -> Tuple[Callable[[nn.Module, torch.Tensor, int], torch.Tensor],
                          Dict[str, Any]]:
    """``(run, settings)``: ``run(model, image (1, 3, H, W), num_classes)`` gives the class
    scores by ``protocol``; ``settings`` are the resolved ones (part of the resume key)."""
    from . import inference  # looked up at each call: tests replace inference.predict

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol != "official" and base_size is not None:
        raise ValueError("base_size applies to protocol='official' only; drop it or pass "
                         "protocol='official'")
    if protocol == "mmseg":  # whole images, no windows: crop_size and stride do not apply
        kw = {"scales": MS_SCALES if multi_scale else (1.0,),
              "flip": multi_scale if flip is None else flip}
        return ((lambda m, x, c: inference.predict_mmseg(m, x, c, **kw)),
                {**kw, "scales": list(kw["scales"]), "protocol": protocol})
    if protocol == "official":  # PASCAL-Context's sizes unless given (ADE20K R-101: 640 / 576)
        crop_size, base_size = crop_size or 480, base_size or 520
    if crop_size is not None and stride is None:
        stride = crop_size * 2 // 3  # 480 -> 320, as the paper (= the official int(c * 2/3))
    kw = {"scales": MS_SCALES if multi_scale else (1.0,),
          "flip": multi_scale if flip is None else flip, "crop_size": crop_size, "stride": stride}
    settings = {**kw, "scales": list(kw["scales"])}
    if protocol == "default":
        return (lambda m, x, c: inference.predict(m, x, c, **kw)), settings
    settings.update(protocol=protocol, base_size=base_size)
    return (lambda m, x, c: inference.predict_official(m, x, c, base_size=base_size, **kw)), \
        settings


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
    matrix = cm.counts().tolist()
    write_json_atomic(path, {"key": key, "done": done, "seconds": seconds,
                                     "matrix": matrix}, indent=None)


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
        # The checkpoint holds every weight: no ImageNet file is read (nor needed).
        model = build_model(cfg.replace(weights_backbone=""),
                            saved["num_classes"])
    except (TypeError, ValueError, KeyError) as exc:  # a model name this version lacks
        raise ckpt_io.IncompatibleCheckpointError(
            f"{path}: cannot build its model ({exc}); it was written by another version "
            "or edited: use a checkpoint of this version's encnet-train") from exc
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:  # keys or shapes differ: another model version
        raise ckpt_io.IncompatibleCheckpointError(
            f"{path} does not fit {cfg.model.arch}_{cfg.model.backbone}: {exc}") from exc
    return model.to(device or resolve_device("auto")).eval(), cfg, saved


def load_published(name: str, file: Optional[str] = None, *, verify: bool = True,
                   device: Optional[torch.device] = None, progress: bool = True
                   ) -> Tuple[nn.Module, TrainConfig, Dict[str, Any]]:
    """A published model (:mod:`encnet_lite.weights`) as :func:`load_model` returns a
    checkpoint's: ``(model (eval), config, info)``, ``info`` holding ``num_classes``,
    ``classes`` and the entry (``"weights"``)."""
    from . import weights
    from .models import load_weights

    model = load_weights(name, file, verify=verify, progress=progress)
    entry = model.weights_meta
    info = {"num_classes": entry.num_classes, "classes": list(entry.classes),
            "weights": entry, "epoch": None}
    return model.to(device or resolve_device("auto")).eval(), weights.config_for(entry), info


def load_source(args: argparse.Namespace, device: torch.device
                ) -> Tuple[nn.Module, TrainConfig, Dict[str, Any]]:
    """The model a CLI was given: ``--checkpoint FILE`` (:func:`load_model`) or ``--weights
    NAME [--weights-file F] [--no-verify]`` (:func:`load_published`)."""
    if args.weights:
        return load_published(args.weights, args.weights_file, verify=args.verify,
                              device=device)
    return load_model(args.checkpoint, device)


def check_source(args: argparse.Namespace) -> List[Path]:
    """One model source among ``--checkpoint`` and ``--weights``; the input files (to keep
    outputs off them). A :class:`~encnet_lite.cli.UsageError` otherwise."""
    from . import cli
    from .weights import get_entry

    if (args.checkpoint is None) == (args.weights is None):
        raise cli.UsageError("give either --checkpoint (a run's best.pt) or --weights NAME (a "
                             "published model: encnet-weights list)")
    if args.weights is None:
        if args.weights_file or not args.verify:
            raise cli.UsageError("--weights-file and --no-verify go with --weights NAME")
        if getattr(args, "dataset", None):
            raise cli.UsageError("--dataset goes with --weights: a checkpoint scores the "
                                 "dataset it was trained on (--data-root chooses its folder)")
        return [Path(args.checkpoint)]
    get_entry(args.weights)  # an unknown name fails now, listing the known ones
    if args.weights_file and not Path(args.weights_file).expanduser().is_file():
        raise cli.UsageError(f"--weights-file {args.weights_file} does not exist; give the "
                             "zip or .pth you downloaded")
    return [Path(args.weights_file)] if args.weights_file else []


def eval_dataset(cfg: TrainConfig, data_root: Optional[str] = None,
                 split: str = "val") -> Dataset:
    """The full-image split to score (PASCAL, ADE20K: no crop; scenes: the split's stream),
    by :func:`encnet_lite.engine.build_dataset`."""
    return build_dataset(cfg, split, data_root=data_root)


def build_parser() -> argparse.ArgumentParser:
    from .cli import ArgumentParser, non_negative_int, positive_int

    p = ArgumentParser(prog="encnet-eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="best.pt or last.pt of a run")
    p.add_argument("--weights", default=None, metavar="NAME",
                   help="a published model instead of a checkpoint (encnet-weights list; "
                        "case-insensitive), downloaded to the cache and verified")
    p.add_argument("--weights-file", default=None, metavar="F",
                   help="with --weights: a local copy of its file (zip or .pth) to use")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="with --weights: skip the checksum (a file you trust, e.g. re-saved)")
    p.add_argument("--dataset", default=None, choices=("pcontext", "ade20k", "voc"),
                   help="with --weights: the dataset to score (default: the model's; it must "
                        "have the model's classes)")
    p.add_argument("--multi-scale", action="store_true",
                   help="scales 0.5-1.75 with flips and sliding windows (the paper's protocol)")
    p.add_argument("--flip", action="store_true", help="add flips at a single scale")
    p.add_argument("--protocol", default=None, choices=PROTOCOLS,
                   help="official: the official PyTorch-Encoding test (scales of --base-size, "
                        "views padded to --crop-size with black, exp of the logits, "
                        "align_corners, mIoU over all classes), as the published scores; "
                        "mmseg: mmsegmentation's whole-image test (fitted to 2048x512); "
                        "default: 'default' for a checkpoint, the model's own for --weights")
    p.add_argument("--base-size", type=positive_int, default=None,
                   help="official protocol: the long side at scale 1 (default: the run's "
                        "base_size, PASCAL-Context 520)")
    p.add_argument("--crop-size", type=positive_int, default=None,
                   help="official protocol: the window side (default: the run's crop_size, "
                        "PASCAL-Context 480)")
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

    device = resolve_device(args.device, flag="--device")  # checked before any work
    inputs = check_source(args)
    args.protocol = resolve_protocol(args)
    official = args.protocol == "official"
    if not official and (args.base_size or args.crop_size):
        raise cli.UsageError("--base-size and --crop-size set the official protocol's sizes; "
                             "add --protocol official or drop them")
    out = output_path(args)
    cli.check_writable_file(out, "--out", inputs=inputs)
    cli.check_keeps_runs(out.with_name(out.name + ".partial"), "--out", inputs)
    info = dist_utils.setup(device.type)
    device = resolve_device(args.device)  # after setup: this process's GPU under torchrun
    try:
        model, cfg, saved = load_source(args, device)
        cfg = dataset_for(args, cfg, saved)
        threads = cfg.runtime.threads if args.threads is None else args.threads
        cli.check_threads(threads, "--threads (or the run's threads)")
        if threads:
            torch.set_num_threads(threads)
        dataset = eval_split(cfg, args)
        crop = cfg.data.crop_size if cfg.data.dataset != "scenes" else None
        base = (args.base_size or cfg.data.base_size) if official else None
        crop = (args.crop_size or cfg.data.crop_size) if official else crop
        result = evaluate(model, dataset, saved["num_classes"], multi_scale=args.multi_scale,
                          flip=True if args.flip else None, crop_size=crop, device=device,
                          protocol=args.protocol, base_size=base,
                          amp=args.amp, max_images=args.max_images, info=info,
                          progress=not args.no_progress,
                          state=out.with_name(out.name + ".partial"),
                          save_every=args.save_every)
    finally:
        dist_utils.teardown()
    if info.is_main:
        report_result(args, out, cfg, saved, result)
    return 0


def resolve_protocol(args: argparse.Namespace) -> str:
    """``--protocol``, or by default ``"default"`` for a checkpoint and the published
    model's own protocol for ``--weights``."""
    from .weights import get_entry

    if args.protocol:
        return args.protocol
    return get_entry(args.weights).protocol if args.weights else "default"


def output_path(args: argparse.Namespace) -> Path:
    """``--out``, or ``NAME.eval[-ms][-PROTOCOL].json`` beside the checkpoint (for
    ``--weights``: in ``runs/weights``)."""
    suffix = ("eval-ms" if args.multi_scale else "eval") + (
        "" if args.protocol == "default" else f"-{args.protocol}")
    if args.out:
        return Path(args.out)
    if args.weights:
        from .weights import get_entry

        return Path("runs") / "weights" / f"{get_entry(args.weights).name}.{suffix}.json"
    ckpt = Path(args.checkpoint)
    return ckpt.with_name(f"{ckpt.stem}.{suffix}.json")


def dataset_for(args: argparse.Namespace, cfg: TrainConfig, saved: Dict[str, Any]
                ) -> TrainConfig:
    """``cfg`` with ``--dataset`` applied (published models only), refused with a
    :class:`~encnet_lite.cli.UsageError` when the model cannot score that dataset."""
    from . import cli

    if args.dataset is None:
        if args.weights and cfg.data.dataset == "scenes":  # e.g. a Cityscapes model
            raise cli.UsageError(f"--weights {args.weights}: this project has no "
                                 f"{saved['weights'].dataset} dataset to score it on; use "
                                 "encnet-predict on your own images instead")
        return cfg
    if args.dataset != saved["weights"].dataset:
        raise cli.UsageError(f"--dataset {args.dataset}: {saved['weights'].name} predicts the "
                             f"{saved['num_classes']} classes of {saved['weights'].dataset}; "
                             f"give --dataset {saved['weights'].dataset} or another model")
    return cfg


def report_result(args: argparse.Namespace, out: Path, cfg: TrainConfig,
                  saved: Dict[str, Any], result: Dict[str, Any]) -> None:
    """Print the scores and write the JSON report ``out`` (refused when no pixel was scored)."""
    check_scored(args, result)
    mode = "multi-scale + flip" if args.multi_scale else ("flip" if args.flip else "single scale")
    mode += "" if args.protocol == "default" else f", {args.protocol} protocol"
    note = ""
    if cfg.data.dataset == "pcontext":
        note = f" over {saved['num_classes']} classes" + (
            " (background ignored, the paper's protocol)" if saved["num_classes"] == 59 else "")
    what = f"{cfg.name} (published weights)" if args.weights else \
        f"{cfg.name} epoch {saved.get('epoch')}"
    print(f"{what}, {args.split} ({result['num_images']} images, {mode}): pixAcc "
          f"{100 * result['pixAcc']:.2f}  mIoU {100 * result['mIoU']:.2f}{note}")
    for score in saved["weights"].scores if args.weights else ():
        acc = f"pixAcc {100 * score.pixAcc:.1f}  " if score.pixAcc else ""
        print(f"  published: {acc}mIoU {100 * score.mIoU:.2f} ({score.protocol}; "
              f"{score.where})")
    report = {"checkpoint": args.checkpoint, "weights": args.weights,
              "weights_file": args.weights_file, "split": args.split, "mode": mode,
              "dataset": cfg.data.dataset, "num_classes": saved["num_classes"],
              "classes": saved.get("classes", []), **result}
    write_report(out, report)
    if result["resumed_from"]:
        print(f"(continued after {result['resumed_from']} images scored by an earlier run)")
    print(f"wrote {out}")


DATASET_NAMES = {"scenes": "ContextScenes", "voc": "PASCAL VOC 2012",
                 "pcontext": "PASCAL-Context", "ade20k": "ADE20K"}
MARKER_DATASETS = {"pascal-voc-2012": "voc", "pascal-context": "pcontext", "ade20k": "ade20k"}


def eval_split(cfg: TrainConfig, args: argparse.Namespace) -> Dataset:
    """The split ``encnet-eval`` scores, refused with a :class:`~encnet_lite.cli.UsageError`
    when ``--data-root`` holds another dataset than the checkpoint's, or the split is empty."""
    from . import cli

    check_data_root(cfg, args.data_root, args.checkpoint or args.weights)
    try:
        dataset = eval_dataset(cfg, args.data_root, args.split)
    except ValueError as exc:
        raise cli.UsageError(f"--split {args.split}: {one_line(exc)}") from None
    if len(dataset) == 0:  # pixAcc and mIoU of nothing are NaN: say so instead
        where = getattr(dataset, "root", None)
        where = f"{where} lists no {args.split} images" if where else \
            f"the checkpoint's config gives the {args.split} split no images"
        raise cli.UsageError(f"--split {args.split}: {where}, so there is nothing to evaluate; "
                             "prepare the dataset again or choose another --split")
    return dataset


def check_data_root(cfg: TrainConfig, data_root: Optional[str], checkpoint: str) -> None:
    """A :class:`~encnet_lite.cli.UsageError` naming both datasets when the data root holds
    another dataset than the one ``checkpoint`` was trained on (``prepared.json`` says which),
    or when ``--data-root`` is given for synthetic scenes, which no folder holds."""
    from . import cli

    trained = DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)
    if cfg.data.dataset == "scenes":
        if data_root is not None:
            held = _root_dataset(Path(data_root))
            held = f" (it holds {DATASET_NAMES[held]})" if held else ""
            raise cli.UsageError(
                f"--data-root {data_root}{held}: {checkpoint} was trained on {trained}, "
                "synthetic scenes made from its config, not read from a folder; drop "
                "--data-root, or evaluate a checkpoint trained on that dataset")
        return
    flag = "--data-root" if data_root else "the run's data root"
    root = data_root or cfg.runtime.data_root or f"data/{cfg.data.dataset}"
    held = _root_dataset(Path(root))
    if held is not None and held != cfg.data.dataset:
        raise cli.UsageError(
            f"{flag} {root} holds {DATASET_NAMES[held]}, but {checkpoint} was trained on "
            f"{trained}; give a {trained} root with --data-root, or a checkpoint trained on "
            f"{DATASET_NAMES[held]}")


def _root_dataset(root: Path) -> Optional[str]:
    """The dataset (a config's ``dataset`` value) whose ``prepared.json`` is in ``root``, or
    None (no marker, or one the dataset class itself reports as damaged)."""
    try:
        info = json.loads((root / "prepared.json").read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return MARKER_DATASETS.get(info.get("dataset")) if isinstance(info, dict) else None


def check_scored(args: argparse.Namespace, result: Dict[str, Any]) -> None:
    """Refuse a result without one scored pixel (every mask pixel is the ignore label):
    its pixAcc and mIoU would be NaN."""
    from . import cli

    if sum(map(sum, result["confusion"])) == 0:
        raise cli.UsageError(
            f"--split {args.split}: every mask pixel of its {result['num_images']} image(s) is "
            "the ignore label 255, so there is nothing to score (pixAcc and mIoU would be "
            "NaN); check the masks (prepare the dataset again), or choose another --split")


def write_report(out: Path, report: Dict[str, Any]) -> None:
    """Write ``report`` as strict JSON; where a class has no IoU (None: absent from both the
    masks and the predictions; null in the file), a note in the report says so."""
    from . import cli

    absent = [i for i, x in enumerate(report.get("IoU", [])) if x is None]
    if absent:
        report = {**report, "notes": [
            f"IoU is null for the {len(absent)} class(es) {absent} absent from both the "
            "masks and the predictions (no IoU; left out of mIoU)"]}
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    try:
        write_text_atomic(out, text)
    except FileWriteError as exc:  # e.g. the folder turned read-only meanwhile
        raise cli.UsageError(f"--out {out}: {one_line(exc)} (the scores are printed "
                             "above)") from exc


if __name__ == "__main__":
    sys.exit(main())
