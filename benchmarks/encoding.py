"""Forward+backward time and extra peak memory of the encoding layer, two forms side by side.

``default``   = :func:`encnet_lite.encoding.residual_encoding` (distance expansion, O(N(K+D)))
``reference`` = :func:`encnet_lite.encoding.residual_encoding_reference` (literal, O(NKD))

Shape: the paper's head, D=512 channels, K=32 codewords, a 60x60 feature map
(a 480x480 crop at output stride 8), batch 1, 4 and 16, float32.

Usage (from the repository root)::

    .venv/bin/python benchmarks/encoding.py                # CUDA when present, else CPU
    .venv/bin/python benchmarks/encoding.py --device cpu   # writes results/encoding_cpu.json

Memory is the *extra* peak: the most memory the allocator held at any moment of one
forward+backward, minus what it held just before (inputs and parameters); see
:func:`_common.extra_peak_bytes` for how it is read on CUDA and on CPU.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (puts the checkout on sys.path too)

from encnet_lite.encoding import residual_encoding, residual_encoding_reference  # noqa: E402

IMPLS: Dict[str, Callable] = {
    "default": residual_encoding,
    "reference": residual_encoding_reference,
}
SHAPE = {"D": 512, "K": 32, "H": 60, "W": 60}
QUICK_SHAPE = {"D": 16, "K": 4, "H": 8, "W": 8}
# The reference holds about this many (B, N, K, D) float32 tensors at its peak
# (residuals saved for backward, transient products and their gradients); 5 is
# what the profiler measured at batch 1 (1125 MiB = 5 x 225 MiB).
REFERENCE_LIVE_TENSORS = 5


def make_inputs(batch: int, shape: Dict[str, int], device: torch.device, seed: int = 0):
    """x: (B, N, D) as Encoding.forward sees it (a transposed view of a feature map),
    codewords (K, D), scale (K,), and the gradient of the output (B, K, D)."""
    d, k = shape["D"], shape["K"]
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(batch, d, shape["H"], shape["W"], generator=gen)
    x = feat.flatten(2).transpose(1, 2).to(device).requires_grad_()
    bound = 1.0 / (k * d) ** 0.5
    codewords = ((torch.rand(k, d, generator=gen) * 2 - 1) * bound).to(device).requires_grad_()
    scale = (-torch.rand(k, generator=gen)).to(device).requires_grad_()
    grad_out = torch.randn(batch, k, d, generator=gen).to(device)
    return x, codewords, scale, grad_out


def fwd_bwd(fn: Callable, x, codewords, scale, grad_out) -> None:
    """One forward and backward; the gradients are dropped afterwards."""
    fn(x, codewords, scale).backward(grad_out)
    for t in (x, codewords, scale):
        t.grad = None


def reference_estimate_bytes(batch: int, shape: Dict[str, int]) -> int:
    return REFERENCE_LIVE_TENSORS * batch * shape["H"] * shape["W"] * shape["K"] * shape["D"] * 4


def measure_batch(batch: int, shape: Dict[str, int], device: torch.device, repeats: int,
                  budget_gib: float) -> List[dict]:
    """One row per form at one batch size (a form whose estimate exceeds the budget is
    skipped, with the reason)."""
    inputs = make_inputs(batch, shape, device)
    calls = {name: (lambda fn=fn: fwd_bwd(fn, *inputs)) for name, fn in IMPLS.items()}
    skipped = {}
    estimate = reference_estimate_bytes(batch, shape)
    if estimate > budget_gib * 2**30:
        del calls["reference"]
        skipped["reference"] = (f"needs about {REFERENCE_LIVE_TENSORS} x B*N*K*D*4 B = "
                                f"{estimate / 2**30:.1f} GiB > budget {budget_gib:g} GiB")
    times = _common.timed_rounds(calls, device, repeats)
    rows = []
    for impl in IMPLS:
        row: dict = {"batch": batch, "impl": impl}
        if impl in skipped:
            row["skipped"] = skipped[impl]
        else:
            ms = [t * 1e3 for t in times[impl]["wall_s"]]
            row.update(time_ms=min(ms), time_ms_median=statistics.median(ms),
                       time_ms_all=[round(t, 2) for t in ms],
                       extra_peak_mib=_common.extra_peak_bytes(calls[impl], device) / _common.MIB)
        rows.append(row)
    return rows


def ratios(rows: Sequence[dict]) -> List[dict]:
    """Per batch: reference / default time (``speedup``) and extra peak memory."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        by_impl = {r["impl"]: r for r in rows if r["batch"] == batch}
        ref, new = by_impl["reference"], by_impl["default"]
        skipped = "skipped" in ref
        out.append({"batch": batch,
                    "speedup": None if skipped else _common.ratio(ref["time_ms"], new["time_ms"]),
                    "memory_ratio": None if skipped else _common.ratio(ref["extra_peak_mib"],
                                                                       new["extra_peak_mib"])})
    return out


def run(device: torch.device, batches: Sequence[int], repeats: int, budget_gib: float,
        shape: Dict[str, int]) -> dict:
    """Every batch size on one device: the JSON's ``rows`` and ``ratios``."""
    rows = []
    for batch in batches:
        rows += measure_batch(batch, shape, device, repeats, budget_gib)
    return {"rows": rows, "ratios": ratios(rows)}


def table_lines(result: dict) -> List[str]:
    lines = [f"{'batch':>5} | {'default ms':>10} {'MiB':>8} | {'reference ms':>12} {'MiB':>8} |"
             f" {'speedup':>7} {'mem ratio':>9}", "-" * 74]
    for ratio in result["ratios"]:
        b = ratio["batch"]
        rows = {r["impl"]: r for r in result["rows"] if r["batch"] == b}
        new, ref = rows["default"], rows["reference"]
        line = f"{b:5d} | {new['time_ms']:10.1f} {new['extra_peak_mib']:8.1f} | "
        if "skipped" in ref:
            line += f"{'skipped':>12} {'':>8} | {'-':>7} {'-':>9}   ({ref['skipped']})"
        else:
            line += (f"{ref['time_ms']:12.1f} {ref['extra_peak_mib']:8.1f} | "
                     f"{ratio['speedup']:6.1f}x {ratio['memory_ratio']:8.1f}x")
        lines.append(line)
    return lines


def build_parser():
    p = _common.parser(__doc__)
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes (default: 1 4 16; --quick: 1 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per configuration (default: 5; --quick: 1)")
    p.add_argument("--budget-gib", type=float, default=6.0,
                   help="skip the reference when its estimated peak exceeds this")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = _common.setup(args)
    shape = dict(QUICK_SHAPE if args.quick else SHAPE)
    batches = args.batches or ([1, 2] if args.quick else [1, 4, 16])
    repeats = args.repeats or (1 if args.quick else 5)
    started = time.perf_counter()
    info = _common.machine(device)
    print(f"encoding layer fwd+bwd, D={shape['D']} K={shape['K']} {shape['H']}x{shape['W']} "
          f"float32 on {info['device_name']} ({info['torch_threads']} CPU threads), "
          f"torch {info['torch']}", flush=True)
    result = {
        "benchmark": "encoding layer forward+backward, default vs reference",
        "quick": args.quick,
        "shape": {**shape, "N": shape["H"] * shape["W"], "dtype": "float32"},
        "machine": info,
        # flat copies of the machine fields the encoding chapter prints
        "device": device.type, "device_name": info["device_name"],
        "threads": info["torch_threads"], "torch": info["torch"], "python": info["python"],
        "repeats": repeats,
        "time_method": f"best (min) wall-clock of {repeats} forward+backward passes after "
        "one warm-up (gradients w.r.t. x, codewords, scale), the two forms taking turns; the "
        "machine is shared, so the minimum is the least disturbed run; medians kept too",
        "memory_method": _common.memory_method(device),
        "memory_budget_gib": args.budget_gib,
        "reference_estimate": f"{REFERENCE_LIVE_TENSORS} x B*N*K*D*4 bytes",
        **run(device, batches, repeats, args.budget_gib, shape),
    }
    _common.finish(result, started)
    print("\n".join(table_lines(result)))
    _common.write_result(_common.out_path(args, "encoding", device), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
