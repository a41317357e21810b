"""What every benchmark script shares: the CLI, timing, peak memory, the machine, the JSON.

- :func:`parser`: an ``argparse`` parser with the shared options (``--device``, ``--out``,
  ``--quick``, ``--threads``) plus the script's own;
- :func:`timed_rounds`: wall-clock (and process CPU) seconds of several callables taking
  turns, with the device synchronised around each call;
- :func:`extra_peak_bytes`: the most memory one call held beyond what was held before it
  (CUDA: the allocator's peak counter; CPU: the running total of torch's CPU allocator,
  recorded by ``torch.profiler``), and :func:`peak_rss_mib` for the whole process;
- :func:`machine`: one description of the machine (CPU model, cores, threads, torch,
  Python, the GPU's name);
- :func:`write_result`: the JSON, written atomically.
"""

from __future__ import annotations

import argparse
import datetime
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from encnet_lite.checkpoint import write_json_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MIB = 2**20


# --- the command line ---------------------------------------------------------------------


def common_parser() -> argparse.ArgumentParser:
    """The options every benchmark takes (an ``argparse`` parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where to measure (default: cuda when visible, else cpu)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default: benchmarks/results/<name>_<device>.json)")
    p.add_argument("--quick", action="store_true",
                   help="the smallest sizes, seconds long: checks the script, measures nothing")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line as description, the shared options."""
    return argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                   parents=[common_parser()])


def resolve_device(name: Optional[str]) -> torch.device:
    """``--device`` -> a device; asking for CUDA where there is none is an error."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but no CUDA device is visible: use --device cpu")
    return torch.device(name)


def setup(args: argparse.Namespace) -> torch.device:
    """Apply the shared options (threads) and return the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def out_path(args: argparse.Namespace, name: str, device: torch.device) -> Path:
    """``--out`` or ``benchmarks/results/<name>_<device>.json``."""
    return args.out or RESULTS / f"{name}_{device.type}.json"


# --- timing and memory ---------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall clock measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> Dict[str, float]:
    """One call of ``fn``: wall-clock and process CPU seconds, the device synchronised
    before and after."""
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


def extra_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """The most memory one call of ``fn`` held beyond what was held just before it.

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before. CPU, where torch keeps
    no peak counter: one call under ``torch.profiler(profile_memory=True)``, the maximum of
    the running "Total Allocated" of torch's CPU allocator, counted from the start of
    profiling (so inputs and parameters are excluded; BLAS/oneDNN scratch is not seen).
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
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]  # 0 = CPU
    return max([0, *totals])


CPU_MEMORY_METHOD = ("torch.profiler(profile_memory=True): peak running total of torch's CPU "
                     "allocator over one profiled call, counted from its start (parameters and "
                     "inputs excluded; BLAS/oneDNN scratch not seen)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated minus memory_allocated before the call"


def memory_method(device: torch.device) -> str:
    """How :func:`extra_peak_bytes` measured on ``device`` (recorded in every JSON)."""
    return CUDA_MEMORY_METHOD if device.type == "cuda" else CPU_MEMORY_METHOD


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (MiB; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (MIB if sys.platform == "darwin" else 1024)


# --- the machine and the JSON --------------------------------------------------------------


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


def finish(result: Dict[str, Any], started: float) -> Dict[str, Any]:
    """Stamp the date, the wall time, the end load and the peak RSS onto ``result``."""
    result["date"] = datetime.date.today().isoformat()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if isinstance(result.get("machine"), dict):
        result["machine"]["load_average_at_end"] = load_average()
        result["machine"]["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return result


def write_result(path: Path, result: Mapping[str, Any], indent: int = 2) -> Path:
    """Write ``result`` as JSON atomically (a crash never leaves half a file) and say where."""
    path = write_json_atomic(path, result, indent=indent)
    print(f"wrote {path}", flush=True)
    return path


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    """``num / den``, or None when either is missing or the denominator is 0."""
    if num is None or den is None or den == 0:
        return None
    return num / den


def best(values: Sequence[float]) -> float:
    """The least disturbed of repeated timings (the minimum): on a shared machine other
    processes only ever add time."""
    return min(values)
