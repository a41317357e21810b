"""Forward+backward time and extra peak memory of the encoding layer, its literal form and its
six-product floor, side by side, in a fresh process and after a small call of the layer.

``default``   = :func:`encnet_lite.encoding.residual_encoding` (distance expansion, O(N(K+D)),
                hand-written backward)
``reference`` = :func:`encnet_lite.encoding.residual_encoding_reference` (literal, O(NKD))
``floor``     = the six bare batched matrix products that any implementation of the
                expanded form needs, of the layer's sizes: forward X C^T and A^T X, backward
                X G^T, A G, dS C and dS^T X (A, dS: (B, N, K), G: (B, K, D)); each reads x in
                the layer input's own memory (a flattened feature map, (B, D, N)) and every
                operand contiguous in the orientation that product reads fastest. Nothing
                else: no softmax, no norms, no casts, no autograd.

Shape: the paper's head, D=512 channels, K=32 codewords, a 60x60 feature map (a 480x480
crop at output stride 8), batch 1, 4 and 16, float32.

Each measurement runs in its own process, twice: ``fresh`` (nothing ran before it) and
``after_small`` (one forward+backward of the layer at B=2, N=40, D=12, K=5 first), because
the layer's speed once seemed to depend on what ran before it (see the NOTES). The inputs
are the same in both (seeded generators).

Usage (from the repository root)::

    .venv/bin/python benchmarks/encoding.py                # CUDA when present, else CPU
    .venv/bin/python benchmarks/encoding.py --device cpu --threads 1
                                                           # writes results/encoding_cpu.json

Memory is the *extra* peak: the most memory the allocator held at any moment of one
forward+backward, minus what it held just before (inputs and parameters); see
:func:`measure.extra_peak_bytes` for how it is read on CUDA and on CPU.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (puts the checkout on sys.path too)

from encnet_lite import measure  # noqa: E402
from encnet_lite.encoding import (  # noqa: E402
    _sq_norms,
    residual_encoding,
    residual_encoding_reference,
    soft_assignment,
)
from encnet_lite.viz import encoding_benchmark_tables, text_table  # noqa: E402

IMPLS = ("default", "reference", "floor")
ORDERS = {
    "fresh": "a fresh process: nothing ran before the measurement",
    "after_small": "a fresh process that first ran one forward+backward of the layer at "
                   "B=2, N=40, D=12, K=5 (float32)",
}
SMALL = {"B": 2, "N": 40, "D": 12, "K": 5}
SHAPE = {"D": 512, "K": 32, "H": 60, "W": 60}
QUICK_SHAPE = {"D": 16, "K": 4, "H": 8, "W": 8}
# The reference holds about this many (B, N, K, D) float32 tensors at its peak
# (residuals saved for backward, transient products and their gradients); 5 is
# what the profiler measured at batch 1 (1125 MiB = 5 x 225 MiB).
REFERENCE_LIVE_TENSORS = 5
FLOOR_RATIO_TARGET = 1.5  # the layer's forward+backward within 1.5x of the floor (batch 4)
REFERENCE_REPEATS = 3  # timed runs of the literal form (4 to 13 s a call at batch 4)
# glibc's malloc returns freed memory of 128 KiB to 32 MiB to the system or keeps it
# depending on what was allocated before, and a (B, N, D) float32 buffer at batch 4 (29.5
# MB) then costs 7200 page faults or none: 6 to 13 ms measured on a loaded 2-core VM, charged
# to whichever form allocates next. The workers run with these variables (keep freed
# memory), so that the forms differ by their work only; --default-malloc turns them off.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


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


def floor_call(x: torch.Tensor, k: int, seed: int = 1) -> Callable[[], None]:
    """The six bare products of the layer's sizes on x's memory: a callable, operands made
    once (uniform weights in [0, 1), normal gradients: no subnormal number anywhere)."""
    b, n, d = x.shape
    xt = x.detach().transpose(1, 2)  # (B, D, N), contiguous: the feature map's memory
    gen = torch.Generator().manual_seed(seed)

    def rand(*size, normal=False):
        t = torch.randn(*size, generator=gen) if normal else torch.rand(*size, generator=gen)
        return t.to(x.device)

    c = rand(b, k, d, normal=True)  # codewords, one copy per batch item (contiguous)
    a, ds = rand(b, k, n), rand(b, k, n)  # assignments and dL/d(logits), (B, K, N)
    g = rand(b, k, d, normal=True)  # dL/de
    a_t, ds_t = a.transpose(1, 2).contiguous(), ds.transpose(1, 2).contiguous()  # (B, N, K)
    g_t, c_t = g.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous()  # (B, D, K)

    def run() -> None:
        torch.bmm(c, xt)  # forward:  X C^T        (B, K, N)
        torch.bmm(xt, a_t)  # forward:  (A^T X)^T   (B, D, K)
        torch.bmm(g, xt)  # backward: X G^T        (B, K, N)
        torch.bmm(g_t, a)  # backward: (A G)^T      (B, D, N)
        torch.bmm(c_t, ds)  # backward: (dS C)^T     (B, D, N)
        torch.bmm(xt, ds_t)  # backward: (dS^T X)^T   (B, D, K)

    return run


def reference_estimate_bytes(batch: int, shape: Dict[str, int]) -> int:
    return REFERENCE_LIVE_TENSORS * batch * shape["H"] * shape["W"] * shape["K"] * shape["D"] * 4


def subnormal_share(x: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> float:
    """The share of the literal softmax's weights that fall in float32's subnormal range for
    these inputs (what the layer sets to 0; see encnet_lite.encoding._subnormal_guard)."""
    with torch.no_grad():
        a = soft_assignment(x, codewords, scale)
    return float(((a > 0) & (a < torch.finfo(a.dtype).tiny)).float().mean())


def passes_over_x(x: torch.Tensor, device: torch.device, repeats: int) -> Dict[str, float]:
    """Best times (ms) of the layer's two passes over x that the floor does not have: the
    squared norms ||x_i||^2 (forward) and the gradient through them, one in-place multiply-add
    over a (B, D, N) tensor (backward), run alone on x's memory."""
    xt = x.detach().transpose(1, 2)
    out = torch.zeros_like(xt)
    rho = torch.rand(xt.shape[0], 1, xt.shape[2], device=x.device)
    calls = {"norms": lambda: _sq_norms(x.detach(), True),
             "norm_gradient": lambda: out.addcmul_(xt, rho)}
    times = measure.timed_rounds(calls, device, repeats)
    return {name: measure.best(t["wall_s"]) * 1e3 for name, t in times.items()}


def measure_batch(batch: int, shape: Dict[str, int], device: torch.device, repeats: int,
                  budget_gib: float) -> List[dict]:
    """One row per form at one batch size (a form whose estimate exceeds the budget is
    skipped, with the reason)."""
    inputs = make_inputs(batch, shape, device)
    calls = {"default": lambda: fwd_bwd(residual_encoding, *inputs),
             "reference": lambda: fwd_bwd(residual_encoding_reference, *inputs),
             "floor": floor_call(inputs[0], shape["K"])}
    skipped = {}
    estimate = reference_estimate_bytes(batch, shape)
    if estimate > budget_gib * 2**30:
        del calls["reference"]
        skipped["reference"] = (f"needs about {REFERENCE_LIVE_TENSORS} x B*N*K*D*4 B = "
                                f"{estimate / 2**30:.1f} GiB > budget {budget_gib:g} GiB")
    # interleaved: A, B, C, A, B, C, ... The literal form (seconds a call) takes part in the
    # first REFERENCE_REPEATS rounds only; the layer and the floor go on taking turns.
    first = min(repeats, REFERENCE_REPEATS)
    times = measure.timed_rounds(calls, device, first)
    if repeats > first:
        turns = {name: fn for name, fn in calls.items() if name != "reference"}
        more = measure.timed_rounds(turns, device, repeats - first, warmup=0)
        for name, lists in more.items():
            for key, values in lists.items():
                times[name][key] += values
    rows = []
    for impl in IMPLS:
        row: dict = {"batch": batch, "impl": impl}
        if impl in skipped:
            row["skipped"] = skipped[impl]
        else:
            ms = [t * 1e3 for t in times[impl]["wall_s"]]
            row.update(time_ms=measure.best(ms), time_ms_median=statistics.median(ms),
                       time_ms_all=[round(t, 2) for t in ms],
                       cpu_ms=min(t * 1e3 for t in times[impl]["cpu_s"]),
                       extra_peak_mib=measure.extra_peak_bytes(calls[impl], device) / _common.MIB)
        if impl == "default":
            row["subnormal_weight_share"] = subnormal_share(*inputs[:3])
            row["passes_over_x_ms"] = passes_over_x(inputs[0], device, repeats)
        rows.append(row)
    return rows


def small_call(device: torch.device) -> None:
    """One forward+backward of the layer on a small input (the ``after_small`` order)."""
    gen = torch.Generator().manual_seed(1)
    b, n, d, k = (SMALL[key] for key in "BNDK")
    x = torch.randn(b, n, d, generator=gen).to(device).requires_grad_()
    codewords = torch.randn(k, d, generator=gen).to(device).requires_grad_()
    scale = (-torch.rand(k, generator=gen)).to(device).requires_grad_()
    residual_encoding(x, codewords, scale).sum().backward()


def worker(order: str, device: torch.device, batches: Sequence[int], repeats: int,
           budget_gib: float, shape: Dict[str, int]) -> List[dict]:
    """The measurement of one order, in this process (started by :func:`run_order`)."""
    if order == "after_small":
        small_call(device)
    rows = []
    for batch in batches:
        rows += measure_batch(batch, shape, device, repeats, budget_gib)
    return rows


def run_order(order: str, args, batches: Sequence[int], repeats: int) -> List[dict]:
    """:func:`worker` in a fresh Python process; its rows come back through a JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", order,
               "--worker-out", str(out), "--device", args.device_name, "--threads",
               str(args.threads), "--repeats", str(repeats), "--budget-gib",
               str(args.budget_gib), "--batches", *map(str, batches)]
        if args.quick:
            cmd.append("--quick")
        env = dict(os.environ, **({} if args.default_malloc else MALLOC_ENV))
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def ratios(rows: Sequence[dict], rows_after: Sequence[dict]) -> List[dict]:
    """Per batch: reference / default time (``speedup``) and extra peak memory, default /
    floor time in each order, and the default's time after a small call over fresh."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        fresh = {r["impl"]: r for r in rows if r["batch"] == batch}
        after = {r["impl"]: r for r in rows_after if r["batch"] == batch}
        ref, new = fresh["reference"], fresh["default"]
        skipped = "skipped" in ref
        out.append({
            "batch": batch,
            "speedup": None if skipped else _common.ratio(ref["time_ms"], new["time_ms"]),
            "memory_ratio": None if skipped else _common.ratio(ref["extra_peak_mib"],
                                                               new["extra_peak_mib"]),
            "floor_ratio": _common.ratio(new["time_ms"], fresh["floor"]["time_ms"]),
            "floor_ratio_after_small": _common.ratio(after["default"]["time_ms"],
                                                     after["floor"]["time_ms"]),
            # the same from process CPU time: less sensitive to other processes' load
            "floor_ratio_cpu": _common.ratio(new["cpu_ms"], fresh["floor"]["cpu_ms"]),
            "floor_ratio_cpu_after_small": _common.ratio(after["default"]["cpu_ms"],
                                                         after["floor"]["cpu_ms"]),
            "after_small_over_fresh": _common.ratio(after["default"]["time_ms"],
                                                    new["time_ms"]),
        })
    return out


def target(result_ratios: Sequence[dict], batch: int = 4) -> dict:
    """Whether the layer is within FLOOR_RATIO_TARGET of the floor in both orders."""
    row = next((r for r in result_ratios if r["batch"] == batch), None)
    worst = None if row is None else max(row["floor_ratio"], row["floor_ratio_after_small"])
    return {"floor_ratio_max": FLOOR_RATIO_TARGET, "batch": batch, "worst_floor_ratio": worst,
            "met": None if worst is None else worst <= FLOOR_RATIO_TARGET}


def build_parser():
    p = _common.parser(__doc__)
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes (default: 1 4 16; --quick: 1 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs of the layer and the floor (default: 15; --quick: 2); "
                   f"the literal form runs in the first {REFERENCE_REPEATS}")
    p.add_argument("--default-malloc", action="store_true",
                   help="run the workers with glibc malloc's default thresholds")
    p.add_argument("--budget-gib", type=float, default=6.0,
                   help="skip the reference when its estimated peak exceeds this")
    p.add_argument("--worker", choices=sorted(ORDERS), default=None, help="(internal) measure "
                   "one order in this process and write its rows to --worker-out")
    p.add_argument("--worker-out", type=Path, default=None, help="(internal) see --worker")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    device = _common.setup(args)
    args.device_name = device.type
    shape = dict(QUICK_SHAPE if args.quick else SHAPE)
    batches = args.batches or ([1, 2] if args.quick else [1, 4, 16])
    repeats = args.repeats or (2 if args.quick else 15)
    if args.worker:
        rows = worker(args.worker, device, batches, repeats, args.budget_gib, shape)
        _common.write_result(args.worker_out, rows)
        return 0
    started = time.perf_counter()
    info = measure.machine(device)
    print(f"encoding layer fwd+bwd, D={shape['D']} K={shape['K']} {shape['H']}x{shape['W']} "
          f"float32 on {info['device_name']} ({info['torch_threads']} CPU threads), "
          f"torch {info['torch']}, load {info['load_average_at_start']}", flush=True)
    rows = {order: run_order(order, args, batches, repeats) for order in ORDERS}
    result = {
        "benchmark": "encoding layer forward+backward: default vs reference vs six-product "
                     "floor, in a fresh process and after a small call",
        "quick": args.quick,
        "shape": {**shape, "N": shape["H"] * shape["W"], "dtype": "float32"},
        "machine": info,
        # flat copies of the machine fields the encoding chapter prints
        "device": device.type, "device_name": info["device_name"],
        "threads": info["torch_threads"], "torch": info["torch"], "python": info["python"],
        "repeats": repeats,
        "time_method": f"best (min) wall-clock of {repeats} forward+backward passes after "
        "one warm-up (gradients w.r.t. x, codewords, scale), the forms taking turns "
        f"(interleaved; the literal form in the first {min(repeats, REFERENCE_REPEATS)} "
        "rounds only), each order in its own process; the machine is shared, so the minimum "
        "is the least disturbed run; medians kept too, and the best process CPU time "
        "(cpu_ms)",
        "malloc": ("glibc defaults" if args.default_malloc else
                   " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
                   + " (freed memory kept: no form pays page faults that depend on the "
                   "allocation history)"),
        "memory_method": measure.memory_method(device),
        "floor": "six bare torch.bmm of the layer's sizes on x's (B, D, N) memory, operands "
                 "contiguous: X C^T, A^T X (forward), X G^T, A G, dS C, dS^T X (backward)",
        "orders": ORDERS,
        "memory_budget_gib": args.budget_gib,
        "reference_estimate": f"{REFERENCE_LIVE_TENSORS} x B*N*K*D*4 bytes",
        "rows": rows["fresh"],
        "rows_after_small": rows["after_small"],
    }
    result["ratios"] = ratios(result["rows"], result["rows_after_small"])
    result["target"] = target(result["ratios"])
    _common.finish(result, started)
    tables = encoding_benchmark_tables(result)
    for name in ("speed", "literal", "split"):
        print("\n".join(text_table(*tables[name])))
    _common.write_result(_common.out_path(args, "encoding", device), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
