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

Memory: CUDA ``max_memory_allocated`` during a step minus what was allocated before it;
CPU (torch keeps no peak counter there): ``torch.profiler(profile_memory=True)``, the
maximum running total of torch's CPU allocator over one profiled step, counted from the
step's start (oneDNN/BLAS scratch outside that allocator is not seen).

Targets on an H100 (checked only on CUDA): amp >= 2x fp32 images/s; EncNet <= 1.10x FCN's
step time. Usage::

    .venv/bin/python benchmarks/train_step.py                 # CUDA if present, else CPU
    .venv/bin/python benchmarks/train_step.py --device cpu --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from encnet_lite import engine  # noqa: E402
from encnet_lite.losses import SegmentationLoss  # noqa: E402
from encnet_lite.models import count_parameters  # noqa: E402
from encnet_lite.presets import TrainConfig  # noqa: E402

MIB = 2**20
TARGETS = {"amp_over_fp32_images_per_s_min": 2.0, "encnet_over_fcn_step_time_max": 1.10}
# (backbone, batch, size, classes) per device.
SETUPS = {
    "cpu": [("tiny", 16, 128, 7), ("resnet50", 2, 256, 59)],
    "cuda": [("tiny", 64, 256, 7), ("resnet50", 8, 480, 59)],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One model + optimizer + scaler in one precision / memory format / compile setting."""

    def __init__(self, base: torch.nn.Module, device: torch.device, amp: bool,
                 channels_last: bool, compiled: bool):
        self.amp_dtype = engine.resolve_amp("on" if amp else "off", device)
        self.channels_last = channels_last
        model = copy.deepcopy(base).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        cfg = TrainConfig(lr=1e-3)
        self.optimizer = engine.build_optimizer(model, cfg)
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


def peak_step_bytes(variant: Variant, batch, device: torch.device) -> Optional[int]:
    """Peak memory of one step beyond what was held before it (module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        variant.step(*batch)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        variant.step(*batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    return max([0, *totals])


def variant_names(device: torch.device, compile_: bool) -> List[str]:
    names = ["fp32", "amp", "fp32+cl", "amp+cl"]
    return names + (["amp+cl+compile"] if compile_ else [])


def bench_setup(model_name: str, backbone: str, batch: int, size: int, classes: int,
                device: torch.device, rounds: int, compile_: bool) -> Dict[str, dict]:
    torch.manual_seed(0)
    base = engine.build_model(TrainConfig(model=model_name, backbone=backbone,
                                          se_loss=model_name == "encnet"), classes)
    variants: Dict[str, Variant] = {}
    for name in variant_names(device, compile_):
        variants[name] = Variant(base, device, amp="amp" in name, channels_last="cl" in name,
                                 compiled="compile" in name)
    data = make_batch(batch, size, classes, device)
    warm: Dict[str, float] = {}
    for name, v in variants.items():  # warm-up: allocator, oneDNN/cuDNN choice, compilation
        start = time.perf_counter()
        v.step(*data)
        v.step(*data)
        sync(device)
        warm[name] = time.perf_counter() - start
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, v in variants.items():
            sync(device)
            start = time.perf_counter()
            v.step(*data)
            sync(device)
            times[name].append(time.perf_counter() - start)
    rows = {}
    for name, v in variants.items():
        peak = peak_step_bytes(v, data, device)
        best = min(times[name])
        rows[name] = {
            "step_s": best, "step_s_median": statistics.median(times[name]),
            "step_s_all": [round(t, 4) for t in times[name]],
            "images_per_s": batch / best,
            "peak_step_mib": None if peak is None else peak / MIB,
            "warmup_s": round(warm[name], 2),
            "amp_dtype": str(v.amp_dtype).replace("torch.", "") if v.amp_dtype else "fp32",
        }
    rows["_params"] = count_parameters(base)
    return rows


def ratios(rows: Dict[str, dict]) -> Dict[str, float]:
    ips = {k: v["images_per_s"] for k, v in rows.items() if not k.startswith("_")}
    out = {"amp_over_fp32_images_per_s": ips["amp"] / ips["fp32"],
           "amp+cl_over_fp32_images_per_s": ips["amp+cl"] / ips["fp32"],
           "amp+cl_over_fp32+cl_images_per_s": ips["amp+cl"] / ips["fp32+cl"],
           "channels_last_on_over_off_fp32": ips["fp32+cl"] / ips["fp32"],
           "channels_last_on_over_off_amp": ips["amp+cl"] / ips["amp"]}
    if "amp+cl+compile" in ips:
        out["compile_on_over_off_amp+cl"] = ips["amp+cl+compile"] / ips["amp+cl"]
    return out


def machine(device: torch.device) -> dict:
    info = {"device": device.type, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        # "fp32" convolutions run in TF32 on Ampere+ unless this is False (torch's default).
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def run(device: torch.device, rounds: int, compile_mode: str, only: Optional[str]) -> dict:
    start = time.perf_counter()
    result = {
        "benchmark": "full training step (forward, loss, backward, SGD update): variants side "
                     "by side",
        "machine": machine(device),
        "time_method": f"min (and median) wall-clock of {rounds} steps per variant after two "
                       "warm-up steps, the variants of a model taking turns",
        "memory_method": "CUDA: max_memory_allocated during a step minus allocated before" if
        device.type == "cuda" else "torch.profiler(profile_memory=True): peak running total "
                                   "of torch's CPU allocator over one step (parameters, "
                                   "inputs excluded)",
        "date": datetime.date.today().isoformat(),
        "setups": [],
    }
    for backbone, batch, size, classes in SETUPS[device.type]:
        if only and backbone != only:
            continue
        compile_ = compile_mode == "on" or (compile_mode == "auto" and (
            device.type == "cuda" or backbone == "tiny"))
        per_model = {}
        for model_name in ("fcn", "encnet"):
            rows = bench_setup(model_name, backbone, batch, size, classes, device, rounds,
                               compile_)
            per_model[model_name] = {"params": rows.pop("_params"), "variants": rows,
                                     "ratios": ratios(rows)}
        fcn, enc = per_model["fcn"]["variants"], per_model["encnet"]["variants"]
        encnet_over_fcn = {name: enc[name]["step_s"] / fcn[name]["step_s"] for name in fcn}
        setup = {"backbone": backbone, "input": [batch, 3, size, size], "classes": classes,
                 "models": per_model, "encnet_over_fcn_step_time": encnet_over_fcn}
        if device.type == "cuda":
            # Precision alone (both channels_last, the trainer's CUDA default).
            amp_ratio = per_model["encnet"]["ratios"]["amp+cl_over_fp32+cl_images_per_s"]
            best = "amp+cl+compile" if "amp+cl+compile" in enc else "amp+cl"
            setup["targets"] = {
                **TARGETS, "amp_over_fp32_measured": amp_ratio,
                "encnet_over_fcn_measured": encnet_over_fcn[best],
                "amp_met": amp_ratio >= TARGETS["amp_over_fp32_images_per_s_min"],
                "encnet_met": encnet_over_fcn[best] <= TARGETS["encnet_over_fcn_step_time_max"]}
        result["setups"].append(setup)
        print_setup(setup)
    if device.type == "cpu":
        result["cuda"] = ("not measured: no GPU was available when these CPU numbers were "
                          "taken; run `python benchmarks/train_step.py --device cuda` on a GPU "
                          "(writes results/train_step_cuda.json, checks the H100 targets)")
        result["threads_note"] = (
            f"{torch.get_num_threads()} torch thread(s) on {os.cpu_count()} cores; on a shared "
            "machine one thread per process avoids OpenMP threads waiting on each other "
            "(--threads 1 was used for the committed CPU numbers)")
        result["targets_note"] = ("the targets (amp >= 2x fp32, EncNet <= 1.10x FCN) are for "
                                  "an H100 and are not checked on CPU")
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def print_setup(setup: dict) -> None:
    print(f"\n== {setup['backbone']} backbone, input {setup['input']}")
    print(f"{'model':7s} {'variant':15s} {'img/s':>9s} {'step s':>8s} {'median':>8s} "
          f"{'peak MiB':>9s}")
    for model_name, m in setup["models"].items():
        for name, row in m["variants"].items():
            peak = row["peak_step_mib"]
            print(f"{model_name:7s} {name:15s} {row['images_per_s']:9.1f} {row['step_s']:8.3f} "
                  f"{row['step_s_median']:8.3f} {'-' if peak is None else f'{peak:9.0f}':>9s}")
        print("  ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in m["ratios"].items()))
    print("  EncNet / FCN step time: " + ", ".join(
        f"{k} {v:.3f}x" for k, v in setup["encnet_over_fcn_step_time"].items()))
    if "targets" in setup:
        t = setup["targets"]
        print(f"  targets: amp {t['amp_over_fp32_measured']:.2f}x (>= 2: "
              f"{'met' if t['amp_met'] else 'NOT met'}), EncNet/FCN "
              f"{t['encnet_over_fcn_measured']:.3f}x (<= 1.10: "
              f"{'met' if t['encnet_met'] else 'NOT met'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed steps per variant (default: 3 on CPU, 20 on CUDA)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--only", choices=["tiny", "resnet50"], default=None)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: benchmarks/results/train_step_<device>.json)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rounds = args.rounds or (20 if device.type == "cuda" else 3)
    result = run(device, rounds, args.compile, args.only)
    out = args.out or Path(__file__).parent / "results" / f"train_step_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
