"""Images/s and peak memory of one full training step, variants measured side by side.

One step is :func:`encnet_lite.engine.train_step`, exactly what ``encnet-train`` runs:
forward (main + auxiliary head, EncNet also SE logits), the recipe's loss, backward, the
SGD update (momentum, weight decay, 10x head lr) and, for fp16, the grad scaler.

For each model (FCN and EncNet; the tiny backbone and the dilated ResNet-50) the variants

- ``fp32``: the baseline;  ``amp``: bf16 autocast where supported (fp16 + scaler otherwise);
- ``fp32+cl`` / ``amp+cl``: channels_last memory format;
- ``amp+cl+compile``: ``torch.compile`` on top (``--compile``; default on CUDA, and on CPU
  for the tiny backbone only: compiling ResNet-50 on 2 cores takes many minutes)

are built from the same initial weights and timed taking turns (one step each, round
after round) so that load from other processes hits all alike; the minimum per variant is
the least disturbed step (medians kept too). Ratios come from those numbers:
amp / fp32 images/s, channels_last on / off, compile on / off, EncNet / FCN step time.
Memory: :func:`measure.extra_peak_bytes` of one step.

Targets on an H100 (checked only on CUDA): amp >= 2x fp32 images/s; EncNet <= 1.10x FCN's
step time. Usage::

    .venv/bin/python benchmarks/train_step.py                 # CUDA if present, else CPU
    .venv/bin/python benchmarks/train_step.py --device cpu --rounds 3 --threads 1

``--quick``: the tiny backbone only, 4 images of 32 px, no compile (seconds; checks the script).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (puts the checkout on sys.path too)

from encnet_lite import engine, measure  # noqa: E402
from encnet_lite.losses import SegmentationLoss  # noqa: E402
from encnet_lite.models import count_parameters  # noqa: E402
from encnet_lite.presets import TrainConfig  # noqa: E402

TARGETS = {"amp_over_fp32_images_per_s_min": 2.0, "encnet_over_fcn_step_time_max": 1.10}
# (backbone, batch, size, classes) per device.
SETUPS = {
    "cpu": [("tiny", 16, 128, 7), ("resnet50", 2, 256, 59)],
    "cuda": [("tiny", 64, 256, 7), ("resnet50", 8, 480, 59)],
    "quick": [("tiny", 4, 32, 7)],
}


class Variant:
    """One model + optimizer + scaler in one precision / memory format / compile setting."""

    def __init__(self, base: torch.nn.Module, device: torch.device, amp: bool,
                 channels_last: bool, compiled: bool):
        self.amp_dtype = engine.resolve_amp("on" if amp else "off", device)
        self.channels_last = channels_last
        model = copy.deepcopy(base).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = engine.build_optimizer(model, TrainConfig().replace(lr=1e-3))
        self.scaler = engine.make_scaler(self.amp_dtype, device)
        self.model = torch.compile(model) if compiled else model
        self.loss_fn = SegmentationLoss(validate=False)

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        engine.train_step(self.model, images, masks, self.loss_fn, self.optimizer,
                          self.scaler, self.amp_dtype)


def make_batch(batch: int, size: int, classes: int, device: torch.device, seed: int = 0):
    """Random normalised images; masks of 32-px blobs of a few classes with an ignore strip."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=gen)
    cells = -(-size // 32)
    masks = torch.randint(0, min(classes, 8), (batch, cells, cells), generator=gen)
    masks = masks.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :size, :size].clone()
    masks[:, : size // 16] = 255
    return images.to(device), masks.to(device)


def variant_names(compile_: bool) -> List[str]:
    names = ["fp32", "amp", "fp32+cl", "amp+cl"]
    return names + (["amp+cl+compile"] if compile_ else [])


def variant_row(v: Variant, wall: List[float], batch: int, peak: int, warm_s: float) -> dict:
    """One variant's JSON row from its measured step times and peak bytes."""
    return {"step_s": measure.best(wall), "step_s_median": statistics.median(wall),
            "step_s_all": [round(t, 4) for t in wall], "images_per_s": batch / measure.best(wall),
            "peak_step_mib": peak / _common.MIB, "warmup_s": round(warm_s, 2),
            "amp_dtype": str(v.amp_dtype).replace("torch.", "") if v.amp_dtype else "fp32"}


def bench_model(model_name: str, backbone: str, batch: int, size: int, classes: int,
                device: torch.device, rounds: int, compile_: bool) -> dict:
    """Every variant of one model: ``{"params", "variants": {name: row}, "ratios"}``."""
    torch.manual_seed(0)
    base = engine.build_model(TrainConfig().replace(arch=model_name, backbone=backbone,
                                                    se_loss=model_name == "encnet"), classes)
    variants = {name: Variant(base, device, amp="amp" in name, channels_last="cl" in name,
                              compiled="compile" in name) for name in variant_names(compile_)}
    data = make_batch(batch, size, classes, device)
    calls = {name: (lambda v=v: v.step(*data)) for name, v in variants.items()}
    # warm-up: allocator, oneDNN/cuDNN algorithm choice, compilation (two steps each)
    warm = {name: sum(measure.timed(call, device)["wall_s"] for _ in range(2))
            for name, call in calls.items()}
    times = measure.timed_rounds(calls, device, rounds, warmup=0)
    rows = {name: variant_row(v, times[name]["wall_s"], batch,
                              measure.extra_peak_bytes(calls[name], device), warm[name])
            for name, v in variants.items()}
    return {"params": count_parameters(base), "variants": rows, "ratios": ratios(rows)}


def ratios(rows: Dict[str, dict]) -> Dict[str, float]:
    """Images/s of one variant over another, from the measured rows."""
    ips = {k: v["images_per_s"] for k, v in rows.items()}
    out = {"amp_over_fp32_images_per_s": ips["amp"] / ips["fp32"],
           "amp+cl_over_fp32_images_per_s": ips["amp+cl"] / ips["fp32"],
           "amp+cl_over_fp32+cl_images_per_s": ips["amp+cl"] / ips["fp32+cl"],
           "channels_last_on_over_off_fp32": ips["fp32+cl"] / ips["fp32"],
           "channels_last_on_over_off_amp": ips["amp+cl"] / ips["amp"]}
    if "amp+cl+compile" in ips:
        out["compile_on_over_off_amp+cl"] = ips["amp+cl+compile"] / ips["amp+cl"]
    return out


def targets(per_model: Dict[str, dict], encnet_over_fcn: Dict[str, float]) -> dict:
    """The H100 targets against the measured ratios (precision alone: both channels_last,
    the trainer's CUDA default)."""
    amp_ratio = per_model["encnet"]["ratios"]["amp+cl_over_fp32+cl_images_per_s"]
    best = "amp+cl+compile" if "amp+cl+compile" in encnet_over_fcn else "amp+cl"
    return {**TARGETS, "amp_over_fp32_measured": amp_ratio,
            "encnet_over_fcn_measured": encnet_over_fcn[best],
            "amp_met": amp_ratio >= TARGETS["amp_over_fp32_images_per_s_min"],
            "encnet_met": encnet_over_fcn[best] <= TARGETS["encnet_over_fcn_step_time_max"]}


def bench_setup(backbone: str, batch: int, size: int, classes: int, device: torch.device,
                rounds: int, compile_: bool) -> dict:
    """FCN and EncNet on one backbone and input size, and EncNet / FCN per variant."""
    per_model = {name: bench_model(name, backbone, batch, size, classes, device, rounds,
                                   compile_) for name in ("fcn", "encnet")}
    fcn, enc = per_model["fcn"]["variants"], per_model["encnet"]["variants"]
    encnet_over_fcn = {name: enc[name]["step_s"] / fcn[name]["step_s"] for name in fcn}
    setup = {"backbone": backbone, "input": [batch, 3, size, size], "classes": classes,
             "models": per_model, "encnet_over_fcn_step_time": encnet_over_fcn}
    if device.type == "cuda":
        setup["targets"] = targets(per_model, encnet_over_fcn)
    return setup


def setup_lines(setup: dict) -> List[str]:
    lines = [f"== {setup['backbone']} backbone, input {setup['input']}",
             f"{'model':7s} {'variant':15s} {'img/s':>9s} {'step s':>8s} {'median':>8s} "
             f"{'peak MiB':>9s}"]
    for model_name, m in setup["models"].items():
        for name, row in m["variants"].items():
            lines.append(f"{model_name:7s} {name:15s} {row['images_per_s']:9.1f} "
                         f"{row['step_s']:8.3f} {row['step_s_median']:8.3f} "
                         f"{row['peak_step_mib']:9.0f}")
        lines.append("  ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in m["ratios"].items()))
    lines.append("  EncNet / FCN step time: " + ", ".join(
        f"{k} {v:.3f}x" for k, v in setup["encnet_over_fcn_step_time"].items()))
    if "targets" in setup:
        t = setup["targets"]
        lines.append(f"  targets: amp {t['amp_over_fp32_measured']:.2f}x (>= 2: "
                     f"{'met' if t['amp_met'] else 'NOT met'}), EncNet/FCN "
                     f"{t['encnet_over_fcn_measured']:.3f}x (<= 1.10: "
                     f"{'met' if t['encnet_met'] else 'NOT met'})")
    return lines


def cpu_notes() -> Dict[str, str]:
    return {"cuda": "not measured here: run `python benchmarks/train_step.py --device cuda` on "
                    "a GPU (writes results/train_step_cuda.json, checks the H100 targets)",
            "threads_note": f"{torch.get_num_threads()} torch thread(s); on a shared machine one "
                            "thread per process avoids OpenMP threads waiting on each other",
            "targets_note": "the targets (amp >= 2x fp32, EncNet <= 1.10x FCN) are for an H100 "
                            "and are not checked on CPU"}


def build_parser():
    p = _common.parser(__doc__)
    p.add_argument("--rounds", type=int, default=None,
                   help="timed steps per variant (default: 3 on CPU, 20 on CUDA; --quick: 1)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--only", choices=["tiny", "resnet50"], default=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = _common.setup(args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rounds = args.rounds or (1 if args.quick else 20 if device.type == "cuda" else 3)
    started = time.perf_counter()
    result = {"benchmark": "full training step (forward, loss, backward, SGD update): variants "
                           "side by side", "quick": args.quick, "machine": measure.machine(device),
              "time_method": f"min (and median) wall-clock of {rounds} steps per variant after "
                             "two warm-up steps, the variants of a model taking turns",
              "memory_method": measure.memory_method(device), "setups": []}
    for backbone, batch, size, classes in SETUPS["quick" if args.quick else device.type]:
        if args.only and backbone != args.only:
            continue
        compile_ = not args.quick and (args.compile == "on" or (args.compile == "auto" and (
            device.type == "cuda" or backbone == "tiny")))
        setup = bench_setup(backbone, batch, size, classes, device, rounds, compile_)
        print("\n".join(setup_lines(setup)), flush=True)
        result["setups"].append(setup)
    if device.type == "cpu":
        result.update(cpu_notes())
    _common.finish(result, started)
    _common.write_result(_common.out_path(args, "train_step", device), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
