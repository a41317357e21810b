"""Forward+backward time and extra peak memory of the encoding layer, two forms side by side.

``default``   = :func:`encnet_lite.encoding.residual_encoding` (distance expansion, O(N(K+D)))
``reference`` = :func:`encnet_lite.encoding.residual_encoding_reference` (literal, O(NKD))

Shape: the paper's head, D=512 channels, K=32 codewords, a 60x60 feature map
(a 480x480 crop at output stride 8), batch 1, 4 and 16, float32.

Usage (from the repository root)::

    .venv/bin/python benchmarks/encoding.py               # CPU, and CUDA when present
    .venv/bin/python benchmarks/encoding.py --devices cpu # writes results/encoding_cpu.json

Memory is the *extra* peak: the most memory the allocator held at any moment of
one forward+backward, minus what it held just before (inputs and parameters).
On CUDA it is ``torch.cuda.max_memory_allocated`` minus ``memory_allocated``.
On CPU torch keeps no peak counter, so one extra forward+backward runs under
``torch.profiler`` with ``profile_memory=True``; every allocation and free of
torch's CPU allocator is recorded with the running total ("Total Allocated",
counted from the start of profiling), and the peak is the maximum of that total.
Scratch memory that BLAS/oneDNN allocate outside torch's allocator is not seen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from encnet_lite.encoding import residual_encoding, residual_encoding_reference  # noqa: E402

IMPLS: dict[str, Callable] = {
    "default": residual_encoding,
    "reference": residual_encoding_reference,
}
D, K, H, W = 512, 32, 60, 60
# The reference holds about this many (B, N, K, D) float32 tensors at its peak
# (residuals saved for backward, transient products and their gradients); 5 is
# what the profiler measured at batch 1 (1125 MiB = 5 x 225 MiB).
REFERENCE_LIVE_TENSORS = 5
MIB = 2**20


def make_inputs(batch: int, device: torch.device, seed: int = 0):
    """x: (B, N, D) as Encoding.forward sees it (a transposed view of a feature map)."""
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(batch, D, H, W, generator=gen)
    x = feat.flatten(2).transpose(1, 2).to(device).requires_grad_()
    bound = 1.0 / (K * D) ** 0.5
    codewords = ((torch.rand(K, D, generator=gen) * 2 - 1) * bound).to(device).requires_grad_()
    scale = (-torch.rand(K, generator=gen)).to(device).requires_grad_()
    grad_out = torch.randn(batch, K, D, generator=gen).to(device)
    return x, codewords, scale, grad_out


def fwd_bwd(fn: Callable, x, codewords, scale, grad_out) -> None:
    """One forward and backward; the gradients are dropped afterwards."""
    fn(x, codewords, scale).backward(grad_out)
    for t in (x, codewords, scale):
        t.grad = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fns: dict[str, Callable], inputs, device: torch.device, repeats: int) -> dict:
    """Wall-clock milliseconds of `repeats` forward+backward passes of each function.

    The functions take turns (A, B, A, B, ...) after one warm-up each, so that load
    from other processes on a shared machine hits both forms alike.
    """
    for fn in fns.values():
        fwd_bwd(fn, *inputs)
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fwd_bwd(fn, *inputs)
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def extra_peak_bytes(fn: Callable, inputs, device: torch.device) -> int:
    """Peak memory held during one forward+backward beyond what was held before."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fwd_bwd(fn, *inputs)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fwd_bwd(fn, *inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0  # 0 = CPU
    ]
    return max([0, *totals])


def reference_estimate_bytes(batch: int) -> int:
    return REFERENCE_LIVE_TENSORS * batch * H * W * K * D * 4


def run(device: torch.device, batches: list[int], repeats: int, budget_gib: float) -> dict:
    rows = []
    for batch in batches:
        inputs = make_inputs(batch, device)
        fns = dict(IMPLS)
        skipped = {}
        estimate = reference_estimate_bytes(batch)
        if estimate > budget_gib * 2**30:
            del fns["reference"]
            skipped["reference"] = (
                f"needs about {REFERENCE_LIVE_TENSORS} x B*N*K*D*4 B = "
                f"{estimate / 2**30:.1f} GiB > budget {budget_gib:g} GiB"
            )
        times = time_ms(fns, inputs, device, repeats)
        for impl in IMPLS:
            row: dict = {"batch": batch, "impl": impl}
            if impl in skipped:
                row["skipped"] = skipped[impl]
                print(f"batch {batch:2d} {impl:9s} skipped: {row['skipped']}", flush=True)
            else:
                row["time_ms"] = min(times[impl])
                row["time_ms_median"] = statistics.median(times[impl])
                row["time_ms_all"] = [round(t, 2) for t in times[impl]]
                row["extra_peak_mib"] = extra_peak_bytes(IMPLS[impl], inputs, device) / MIB
                print(
                    f"batch {batch:2d} {impl:9s} {row['time_ms']:9.1f} ms "
                    f"(median {row['time_ms_median']:9.1f}) {row['extra_peak_mib']:9.1f} MiB",
                    flush=True,
                )
            rows.append(row)
        del inputs
    ratios = []
    for batch in batches:
        by_impl = {r["impl"]: r for r in rows if r["batch"] == batch}
        ref, new = by_impl["reference"], by_impl["default"]
        if "skipped" in ref:
            ratios.append({"batch": batch, "speedup": None, "memory_ratio": None})
            continue
        ratios.append(
            {
                "batch": batch,
                "speedup": ref["time_ms"] / new["time_ms"],
                "memory_ratio": ref["extra_peak_mib"] / new["extra_peak_mib"],
            }
        )
    return {"rows": rows, "ratios": ratios}


def print_table(result: dict) -> None:
    print()
    print(
        f"{'batch':>5} | {'default ms':>10} {'MiB':>8} | {'reference ms':>12} {'MiB':>8} |"
        f" {'speedup':>7} {'mem ratio':>9}"
    )
    print("-" * 74)
    for ratio in result["ratios"]:
        b = ratio["batch"]
        new = next(r for r in result["rows"] if r["batch"] == b and r["impl"] == "default")
        ref = next(r for r in result["rows"] if r["batch"] == b and r["impl"] == "reference")
        line = f"{b:5d} | {new['time_ms']:10.1f} {new['extra_peak_mib']:8.1f} | "
        if "skipped" in ref:
            line += f"{'skipped':>12} {'':>8} | {'-':>7} {'-':>9}"
        else:
            line += (
                f"{ref['time_ms']:12.1f} {ref['extra_peak_mib']:8.1f} | "
                f"{ratio['speedup']:6.1f}x {ratio['memory_ratio']:8.1f}x"
            )
        print(line)
    for r in result["rows"]:
        if "skipped" in r:
            print(f"batch {r['batch']} {r['impl']}: skipped, {r['skipped']}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name


def benchmark_device(device: torch.device, args: argparse.Namespace) -> Path:
    """Run every configuration on one device, print the table, write the JSON."""
    print(
        f"encoding layer fwd+bwd, D={D} K={K} {H}x{W} float32 on {device_name(device)} "
        f"({torch.get_num_threads()} CPU threads), torch {torch.__version__}",
        flush=True,
    )
    start = time.perf_counter()
    result = run(device, args.batches, args.repeats, args.budget_gib)
    print_table(result)
    if device.type == "cuda":
        memory_method = "torch.cuda.max_memory_allocated - memory_allocated before the pass"
    else:
        memory_method = (
            "torch.profiler(profile_memory=True): maximum over one forward+backward of the "
            "running 'Total Allocated' of torch's CPU allocator, counted from the start of "
            "profiling (so inputs and parameters are excluded); BLAS/oneDNN scratch not seen"
        )
    out = {
        "benchmark": "encoding layer forward+backward, default vs reference",
        "shape": {"D": D, "K": K, "H": H, "W": W, "N": H * W, "dtype": "float32"},
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "time_method": f"best (min) wall-clock of {args.repeats} forward+backward passes after "
        "one warm-up (gradients w.r.t. x, codewords, scale), the two forms taking turns; the "
        "machine is shared, so the minimum is the least disturbed run; medians kept too",
        "memory_method": memory_method,
        "memory_budget_gib": args.budget_gib,
        "reference_estimate": f"{REFERENCE_LIVE_TENSORS} x B*N*K*D*4 bytes",
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.perf_counter() - start, 1),
        **result,
    }
    path = args.out_dir / f"encoding_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path} ({out['wall_s']} s)\n", flush=True)
    return path


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cpu, and cuda when a CUDA device is visible",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration")
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=6.0,
        help="skip the reference when its estimated peak exceeds this",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="where encoding_<device>.json goes",
    )
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda but no CUDA device is visible")
    for name in devices:
        benchmark_device(torch.device(name), args)


if __name__ == "__main__":
    main()
