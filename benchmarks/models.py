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
is also timed alone (many short repeats) and ``1 + module / FCN step`` reported. Memory:
:func:`measure.extra_peak_bytes` of one step (on CPU measured on an extra, untimed step).
``--quick`` runs the tiny backbone on 64 px images: it checks the script, not the claim.
"""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (puts the checkout on sys.path too)

from encnet_lite import measure  # noqa: E402
from encnet_lite.losses import SegmentationLoss  # noqa: E402
from encnet_lite.models import (  # noqa: E402
    conv_macs,
    count_parameters,
    encnet_resnet50,
    encnet_tiny,
    fcn_resnet50,
    fcn_tiny,
)

CLASSES = 59
TARGET_RATIO = 1.10
BUILDERS: Dict[str, Callable] = {"fcn": fcn_resnet50, "encnet": encnet_resnet50}
QUICK_BUILDERS: Dict[str, Callable] = {"fcn": fcn_tiny, "encnet": encnet_tiny}


def settings(device: torch.device, quick: bool) -> dict:
    """Batch, image size, precision and memory format for a device (``quick``: tiny)."""
    cuda = device.type == "cuda"
    return {"batch": 2 if quick else (16 if cuda else 2), "size": 64 if quick else 480,
            "amp": cuda and not quick, "channels_last": cuda and not quick,
            "backbone": "tiny" if quick else "resnet50"}


def make_batch(batch: int, size: int, device: torch.device, channels_last: bool, seed: int = 0):
    """Random normalised images and masks with a few classes and some ignore pixels."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=gen)
    masks = torch.randint(0, 8, (batch, -(-size // 32), -(-size // 32)), generator=gen)
    masks = masks.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :size, :size].clone()
    masks[:, : size // 30] = 255  # blobs, not noise, and an ignore strip
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device)


def step(model, loss_fn, images, masks, amp: bool) -> None:
    """Forward + loss + backward; gradients dropped afterwards (as ``zero_grad`` does)."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(images)
    loss_fn({k: v.float() for k, v in out.items()}, masks).total.backward()
    model.zero_grad(set_to_none=True)


def context_module_call(module: torch.nn.Module, x: torch.Tensor, amp: bool) -> None:
    """Forward + backward of EncNet's Context Encoding Module alone on ``x: (B, C, h, w)``."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = module(x)
    (out.x.float().mean() + out.se.float().mean()).backward()
    module.zero_grad(set_to_none=True)


def build_models(builders: Dict[str, Callable], device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    models = {}
    for name, builder in builders.items():
        model = builder(num_classes=CLASSES).to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = model
    return models


def model_row(model, calls: Dict[str, List[float]], batch_size: int, peak: int,
              one_image: torch.Tensor) -> dict:
    """One model's JSON row from its measured step times and peak bytes."""
    wall, cpu = calls["wall_s"], calls["cpu_s"]
    return {"params": count_parameters(model),
            # Deterministic complement to the timings: conv + linear multiply-accumulates of
            # one training-mode forward (the encoding layer's two small matmuls excluded).
            "gmacs_per_image": conv_macs(model, one_image) / 1e9,
            "step_s": measure.best(wall), "step_s_median": statistics.median(wall),
            "step_s_all": [round(t, 3) for t in wall],
            "images_per_s": batch_size / measure.best(wall),
            "cpu_s": measure.best(cpu), "cpu_s_all": [round(t, 3) for t in cpu],
            "peak_mib": peak / _common.MIB}


def ratios(fcn: dict, enc: dict) -> Dict[str, Optional[float]]:
    """EncNet over FCN for every measured quantity."""
    r = _common.ratio
    return {"step_time": r(enc["step_s"], fcn["step_s"]),
            "step_time_median": r(enc["step_s_median"], fcn["step_s_median"]),
            "step_cpu_time": r(enc["cpu_s"], fcn["cpu_s"]),
            # FCN's step plus the module's own time: a low-noise estimate of the ratio.
            "step_time_from_module": 1 + enc["module_s"] / fcn["step_s"],
            "step_cpu_time_from_module": 1 + enc["module_cpu_s"] / fcn["cpu_s"],
            "peak_memory": r(enc["peak_mib"], fcn["peak_mib"]),
            "params": r(enc["params"], fcn["params"]),
            "gmacs": r(enc["gmacs_per_image"], fcn["gmacs_per_image"])}


def measure_models(device: torch.device, steps: int, quick: bool) -> dict:
    """Time both models and the context module; the JSON's ``results`` and ``ratios``."""
    s = settings(device, quick)
    models = build_models(QUICK_BUILDERS if quick else BUILDERS, device, s["channels_last"])
    batch = make_batch(s["batch"], s["size"], device, s["channels_last"])
    loss_fn = SegmentationLoss()
    calls = {n: partial(step, m, loss_fn, *batch, s["amp"]) for n, m in models.items()}
    # CPU: the profiled step is the (untimed) warm-up, as the profiler slows it; CUDA: the
    # peak is read after the timed steps, once cuDNN has chosen its algorithms.
    on_cpu = device.type == "cpu"
    peaks = {n: measure.extra_peak_bytes(c, device) for n, c in calls.items()} if on_cpu else {}
    times = measure.timed_rounds(calls, device, steps, warmup=0 if on_cpu else 1)
    peaks = peaks or {n: measure.extra_peak_bytes(c, device) for n, c in calls.items()}
    rows = {n: model_row(models[n], times[n], s["batch"], peaks[n], batch[0][:1])
            for n in models}
    encode = models["encnet"].head.encode
    x = torch.randn(s["batch"], encode.encoding.codewords.shape[1], -(-s["size"] // 8),
                    -(-s["size"] // 8), device=device, requires_grad=True)
    module = measure.timed_rounds({"m": partial(context_module_call, encode, x, s["amp"])},
                                  device, rounds=3 if quick else 10)["m"]
    rows["encnet"].update(module_s=measure.best(module["wall_s"]),
                          module_cpu_s=measure.best(module["cpu_s"]))
    return {"settings": s, "results": rows, "ratios": ratios(rows["fcn"], rows["encnet"])}


def table_lines(result: dict) -> List[str]:
    rows, r, t = result["results"], result["ratios"], result["target"]
    lines = [f"{'model':8s} {'params':>8s} {'step s':>8s} {'median':>8s} {'CPU s':>8s} "
             f"{'peak MiB':>9s}"]
    for name, row in rows.items():
        lines.append(f"{name:8s} {row['params'] / 1e6:7.2f}M {row['step_s']:8.3f} "
                     f"{row['step_s_median']:8.3f} {row['cpu_s']:8.3f} {row['peak_mib']:9.0f}")
    lines.append(
        f"EncNet / FCN: step time {r['step_time']:.3f}x (median {r['step_time_median']:.3f}x, "
        f"CPU time {r['step_cpu_time']:.3f}x; FCN + module alone "
        f"{r['step_time_from_module']:.3f}x), peak memory {r['peak_memory']:.3f}x, parameters "
        f"{r['params']:.3f}x, MACs {r['gmacs']:.3f}x; target {t['judged_on']} <= "
        f"{TARGET_RATIO}x: {'met' if t['met'] else 'NOT met'}")
    return lines


def build_parser():
    p = _common.parser(__doc__)
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per model (default: 2 on CPU, 20 on CUDA; --quick: 1)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = _common.setup(args)
    cuda = device.type == "cuda"
    steps = args.steps or (1 if args.quick else 20 if cuda else 2)
    started = time.perf_counter()
    result = {"benchmark": "training step (forward + loss + backward): FCN vs EncNet, "
                           + ("tiny backbone (--quick)" if args.quick else "ResNet-50"),
              "quick": args.quick, "machine": measure.machine(device)}
    measured = measure_models(device, steps, args.quick)
    s = measured.pop("settings")
    result["config"] = {"input": [s["batch"], 3, s["size"], s["size"]], "classes": CLASSES,
                        "backbone": s["backbone"], "output_stride": 8, "aux": True,
                        "se_loss": True, "lateral": False, "num_codes": 32,
                        "amp": "bf16" if s["amp"] else "off",
                        "channels_last": s["channels_last"], "steps": steps}
    result["time_method"] = (f"min (and median) wall-clock, and min process CPU time, of {steps}"
                             " steps after one warm-up, the models taking turns")
    result["memory_method"] = measure.memory_method(device)
    result.update(measured)
    # On a shared CPU other processes stretch the wall clock of whichever step they hit;
    # the CPU time this process spent is what the model costs. On CUDA: the wall clock.
    judged = "step_time" if cuda else "step_cpu_time"
    result["target"] = {"step_time_ratio_max": TARGET_RATIO, "judged_on": judged,
                        "met": result["ratios"][judged] <= TARGET_RATIO}
    _common.finish(result, started)
    print("\n".join(table_lines(result)))
    _common.write_result(_common.out_path(args, "models", device), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
