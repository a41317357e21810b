"""Training step time and peak memory of FCN vs EncNet on a dilated ResNet-50, side by side.

One step = forward in training mode (main + auxiliary head, EncNet also SE logits), the
recipe's loss (CE + 0.2 aux CE + 0.2 SE BCE, :class:`encnet_lite.losses.SegmentationLoss`)
and backward; no optimizer update. 480x480 crops, 59 classes (PASCAL-Context), output
stride 8, random weights (speed does not depend on them).

- CPU: batch 2, float32 (``--device cpu``, writes ``results/models_cpu.json``);
- CUDA: batch 16, bf16 autocast, channels_last (``--device cuda``, ``results/models_cuda.json``).

The paper says the Context Encoding Module adds only a marginal cost over FCN; the target
here is EncNet's step time at most 1.10x FCN's.

Usage (from the repository root)::

    .venv/bin/python benchmarks/models.py                  # CUDA when present, else CPU
    .venv/bin/python benchmarks/models.py --device cpu --steps 3

Timing: the models take turns (FCN, EncNet, FCN, ...) after one warm-up step each, so that
load from other processes on a shared machine hits both alike; the minimum over steps is
the least disturbed run (medians kept too). The process CPU time of each step is recorded
too: on a shared CPU other processes stretch the wall clock of whichever step they hit, so
the CPU target is judged on the CPU-time ratio (on CUDA on the wall clock). Because the
difference between the two models is small next to that noise, the Context Encoding Module
is also timed alone (many short repeats) and ``1 + module / FCN step`` reported. Memory: on CUDA ``max_memory_allocated`` during
one step minus what was allocated before it (parameters, inputs); on CPU, where torch keeps
no peak counter, the same quantity from ``torch.profiler(profile_memory=True)``: the
maximum running total of torch's CPU allocator over one profiled step, the warm-up step
(BLAS/oneDNN scratch outside that allocator is not seen).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from encnet_lite.losses import SegmentationLoss  # noqa: E402
from encnet_lite.models import (  # noqa: E402
    conv_macs,
    count_parameters,
    encnet_resnet50,
    fcn_resnet50,
)

CLASSES, SIZE = 59, 480
TARGET_RATIO = 1.10
MIB = 2**20
BUILDERS: Dict[str, Callable] = {"fcn": fcn_resnet50, "encnet": encnet_resnet50}


def make_batch(batch: int, device: torch.device, channels_last: bool, seed: int = 0):
    """Random normalised images and masks with a few classes and some ignore pixels."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
    masks = torch.randint(0, 8, (batch, SIZE // 32, SIZE // 32), generator=gen)
    masks = masks.repeat_interleave(32, 1).repeat_interleave(32, 2)  # blobs, not noise
    masks[:, :16] = 255
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model, loss_fn, images, masks, amp: bool) -> None:
    """Forward + loss + backward; gradients dropped afterwards (as ``zero_grad`` does)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(images)
    loss_fn({k: v.float() for k, v in out.items()}, masks).total.backward()
    model.zero_grad(set_to_none=True)


def time_steps(models: Dict[str, torch.nn.Module], batch, steps: int, amp: bool,
               device: torch.device) -> Tuple[Dict[str, List[float]], Dict[str, List[float]],
                                              Dict[str, int]]:
    """Per-model wall-clock and process CPU times of each step, and the peak bytes of one
    step: measured during the warm-up step on CPU (the profiler slows it, and it is not
    timed), after the timed steps on CUDA."""
    loss_fn = SegmentationLoss()
    peaks = {}
    for name, model in models.items():  # warm-up: allocator, oneDNN/cuDNN algorithm choice
        if device.type == "cpu":
            peaks[name] = peak_bytes(model, batch, amp, device)
        else:
            step(model, loss_fn, *batch, amp)
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in models}
    cpu_times: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step(model, loss_fn, *batch, amp)
            sync(device)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    if device.type == "cuda":
        peaks = {name: peak_bytes(model, batch, amp, device) for name, model in models.items()}
    return times, cpu_times, peaks


def time_context_module(module: torch.nn.Module, batch_size: int, amp: bool,
                        device: torch.device, repeats: int = 10) -> Dict[str, float]:
    """Forward + backward of EncNet's Context Encoding Module alone, on a random stride-8
    map ``(B, 512, 60, 60)``: the part of EncNet's step that FCN does not have, timed
    precisely (it is short, so many repeats are cheap)."""
    x = torch.randn(batch_size, 512, SIZE // 8, SIZE // 8, device=device, requires_grad=True)
    walls, cpus = [], []
    for i in range(repeats + 1):  # the first is a warm-up
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = module(x)
        (out.x.float().mean() + out.se.float().mean()).backward()
        sync(device)
        if i:
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu_start)
    module.zero_grad(set_to_none=True)
    return {"module_s": min(walls), "module_cpu_s": min(cpus)}


def peak_bytes(model, batch, amp: bool, device: torch.device) -> int:
    """Peak memory of one step beyond what was held before it (see the module docstring)."""
    loss_fn = SegmentationLoss()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(model, loss_fn, *batch, amp)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, loss_fn, *batch, amp)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    return max([0, *totals])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "device": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(device: torch.device, steps: int) -> dict:
    cuda = device.type == "cuda"
    batch_size, amp, channels_last = (16, True, True) if cuda else (2, False, False)
    result = {
        "benchmark": "training step (forward + loss + backward): FCN vs EncNet, ResNet-50",
        "machine": machine(device),
        "config": {"input": [batch_size, 3, SIZE, SIZE], "classes": CLASSES, "output_stride": 8,
                   "aux": True, "se_loss": True, "lateral": False, "num_codes": 32,
                   "amp": "bf16" if amp else "off", "channels_last": channels_last,
                   "steps": steps},
        "time_method": f"min (and median) wall-clock, and min process CPU time, of {steps} "
                       "steps after one warm-up, the models taking turns",
        "memory_method": "CUDA: max_memory_allocated minus allocated before the step" if cuda
                         else "torch.profiler(profile_memory=True): peak running total of "
                              "torch's CPU allocator over the warm-up step (parameters, inputs "
                              "excluded)",
        "date": datetime.date.today().isoformat(),
    }
    torch.manual_seed(0)
    models = {}
    for name, builder in BUILDERS.items():
        model = builder(CLASSES).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = model
    batch = make_batch(batch_size, device, channels_last)
    start = time.perf_counter()
    times, cpu_times, peaks = time_steps(models, batch, steps, amp, device)
    rows = {}
    one = batch[0][:1]
    for name, model in models.items():
        rows[name] = {
            "params": count_parameters(model),
            # Deterministic complement to the timings: conv + linear multiply-accumulates
            # of one training-mode forward (the encoding layer's two small matmuls excluded).
            "gmacs_per_image": conv_macs(model, one) / 1e9,
            "step_s": min(times[name]),
            "step_s_median": statistics.median(times[name]),
            "step_s_all": [round(t, 3) for t in times[name]],
            "images_per_s": batch_size / min(times[name]),
            "cpu_s": min(cpu_times[name]),
            "cpu_s_all": [round(t, 3) for t in cpu_times[name]],
            "peak_mib": peaks[name] / MIB,
        }
    fcn, enc = rows["fcn"], rows["encnet"]
    module = time_context_module(models["encnet"].head.encode, batch_size, amp, device)
    enc.update(module)
    ratios = {"step_time": enc["step_s"] / fcn["step_s"],
              "step_time_median": enc["step_s_median"] / fcn["step_s_median"],
              "step_cpu_time": enc["cpu_s"] / fcn["cpu_s"],
              # FCN's step plus the module's own time: a low-noise estimate of the ratio.
              "step_time_from_module": 1 + enc["module_s"] / fcn["step_s"],
              "step_cpu_time_from_module": 1 + enc["module_cpu_s"] / fcn["cpu_s"],
              "peak_memory": enc["peak_mib"] / fcn["peak_mib"],
              "params": enc["params"] / fcn["params"],
              "gmacs": enc["gmacs_per_image"] / fcn["gmacs_per_image"]}
    # On a shared CPU other processes stretch the wall clock of whichever step they hit;
    # the CPU time this process spent is what the model costs. On CUDA: the wall clock.
    judged = "step_time" if cuda else "step_cpu_time"
    result.update(
        results=rows,
        ratios=ratios,
        target={"step_time_ratio_max": TARGET_RATIO, "judged_on": judged,
                "met": ratios[judged] <= TARGET_RATIO},
        wall_s=round(time.perf_counter() - start, 1),
    )
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def print_table(result: dict) -> None:
    rows, r = result["results"], result["ratios"]
    print(f"\n{'model':8s} {'params':>8s} {'step s':>8s} {'median':>8s} {'CPU s':>8s} "
          f"{'peak MiB':>9s}")
    for name, row in rows.items():
        print(f"{name:8s} {row['params'] / 1e6:7.2f}M {row['step_s']:8.3f} "
              f"{row['step_s_median']:8.3f} {row['cpu_s']:8.3f} {row['peak_mib']:9.0f}")
    t = result["target"]
    print(f"EncNet / FCN: step time {r['step_time']:.3f}x (median {r['step_time_median']:.3f}x, "
          f"CPU time {r['step_cpu_time']:.3f}x; FCN + module alone "
          f"{r['step_time_from_module']:.3f}x), peak memory {r['peak_memory']:.3f}x, "
          f"parameters {r['params']:.3f}x, MACs {r['gmacs']:.3f}x; target {t['judged_on']} <= {TARGET_RATIO}x: "
          f"{'met' if t['met'] else 'NOT met'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model "
                   "(default: 2 on CPU, 20 on CUDA)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: benchmarks/results/models_<device>.json)")
    args = p.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (20 if device.type == "cuda" else 2)
    result = run(device, steps)
    print_table(result)
    out = args.out or Path(__file__).parent / "results" / f"models_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
