"""Measuring on a device: wall-clock time, peak memory, and what the machine was.

One home for the code that the budget (:mod:`encnet_lite.budget`), the benchmark scripts
(``benchmarks/``) and the chapters time and weigh things with:

- :func:`sync`: wait for the device's queued work, so that a wall clock measures it (CUDA
  kernels run asynchronously: without it a clock measures only their launch);
- :func:`timed`, :func:`timed_rounds`, :func:`best`: seconds of one call, of several callables
  taking turns, and the least disturbed of repeated timings;
- peak memory: :func:`reset_peak` / :func:`peak_memory` / :func:`memory_now` for a whole phase
  (CUDA allocator counters; on a CPU the resident set from ``/proc/self/status``), and
  :func:`extra_peak_bytes` for what one call holds beyond what was held before it;
- :func:`machine`: one description of the machine (CPU model, cores, threads, torch, Python,
  the GPU).

Which device to run on is :func:`encnet_lite.engine.resolve_device`'s question, not this
module's: nothing here picks a device.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

__all__ = [
    "sync", "timed", "timed_rounds", "best", "memory_now", "reset_peak", "peak_memory",
    "peak_rss", "memory_limit", "extra_peak_bytes", "memory_method", "cpu_name",
    "load_average", "machine", "CPU_MEMORY_METHOD", "CUDA_MEMORY_METHOD",
]


# --- time ----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall clock measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> Dict[str, float]:
    """One call of ``fn``: ``{"wall_s", "cpu_s"}``, wall-clock and process CPU seconds, the
    device synchronised before and after."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start}


def timed_rounds(fns: Mapping[str, Callable[[], Any]], device: torch.device, rounds: int,
                 warmup: int = 1) -> Dict[str, Dict[str, List[float]]]:
    """``{name: {"wall_s": [...], "cpu_s": [...]}}`` over ``rounds`` rounds.

    The callables take turns (A, B, A, B, ...) after ``warmup`` calls each, so that load
    from other processes on a shared machine hits all of them alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out: Dict[str, Dict[str, List[float]]] = {n: {"wall_s": [], "cpu_s": []} for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for key, value in timed(fn, device).items():
                out[name][key].append(value)
    return out


def best(values: Sequence[float]) -> float:
    """The least disturbed of repeated timings (the minimum): on a shared machine other
    processes only ever add time."""
    return min(values)


# --- memory of a phase ---------------------------------------------------------------------


def memory_now(device: torch.device) -> int:
    """Bytes in use: CUDA tensors allocated, or this process's resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status_bytes("VmRSS") or peak_rss()


def reset_peak(device: torch.device) -> None:
    """Start the peak counter afresh, so that what this process did before (another model,
    an earlier chapter cell) does not count. On a CPU this needs Linux (``clear_refs``);
    elsewhere the peak stays the process's lifetime peak, an upper bound."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the resident set's high-water mark
    except OSError:
        pass


def peak_memory(device: torch.device) -> int:
    """Peak bytes since :func:`reset_peak`: CUDA allocated, or the CPU resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_bytes("VmHWM") or peak_rss()


def _proc_status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes; 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss() -> int:
    """The process's lifetime peak resident set in bytes (``getrusage``; not reset by
    :func:`reset_peak`)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def memory_limit(device: torch.device) -> Optional[int]:
    """The GPU's total memory, or the machine's physical memory (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# --- memory of one call --------------------------------------------------------------------


def extra_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """The most memory one call of ``fn`` held beyond what was held just before it.

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before. CPU, where torch keeps
    no peak counter: one call under ``torch.profiler(profile_memory=True)``, the maximum of
    the running "Total Allocated" of torch's CPU allocator, counted from the start of the
    call (so inputs and parameters are excluded; BLAS/oneDNN scratch is not seen).
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    cpu = sorted((e for e in events  # Device Type 0 = CPU
                  if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),
                 key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    if not cpu:
        return 0
    # "Total Allocated" runs on over every profiled call of the process: what an earlier call
    # allocated and freed after its profile ended is still in it. Count from the total just
    # before this call's first allocation.
    start = cpu[0]["args"]["Total Allocated"] - cpu[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in cpu) - start)


CPU_MEMORY_METHOD = ("torch.profiler(profile_memory=True): peak running total of torch's CPU "
                     "allocator over one profiled call, counted from its start (parameters and "
                     "inputs excluded; BLAS/oneDNN scratch not seen)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated minus memory_allocated before the call"


def memory_method(device: torch.device) -> str:
    """How :func:`extra_peak_bytes` measured on ``device`` (recorded in every benchmark JSON)."""
    return CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD


# --- the machine ---------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> List[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def machine(device: torch.device) -> Dict[str, Any]:
    """What the numbers were measured on; ``device_name`` is the GPU's name on CUDA and the
    CPU's model name otherwise."""
    info = {"device": device.type, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": load_average()}
    info["device_name"] = info["cpu"]
    if device.type == "cuda":
        info["device_name"] = info["gpu"] = torch.cuda.get_device_name(device)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        # "fp32" convolutions run in TF32 on Ampere+ unless this is False (torch's default).
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info
