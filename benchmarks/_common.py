"""What every benchmark script shares: the command line, the result file.

- :func:`parser`: an ``argparse`` parser with the shared options (``--device``, ``--out``,
  ``--quick``, ``--threads``) plus the script's own; :func:`setup` applies them;
- :func:`out_path`, :func:`finish`, :func:`write_result`: where the JSON goes, the stamp every
  result gets (date, wall time, load, peak RSS), the file written atomically.

The measuring itself (timing with the device synchronised, peak memory, the description of
the machine) is the library's :mod:`encnet_lite.measure`, shared with the budget and the
chapters; the device is :func:`encnet_lite.engine.resolve_device`'s.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from encnet_lite import measure  # noqa: E402
from encnet_lite.engine import DeviceError, resolve_device  # noqa: E402
from encnet_lite.files import write_json_atomic  # noqa: E402

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


def setup(args: argparse.Namespace) -> torch.device:
    """Apply the shared options (threads) and return the device (default: cuda when
    visible, else cpu); a device that is not here ends the script with one line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return resolve_device(args.device or "auto", flag="--device")
    except DeviceError as exc:
        raise SystemExit(f"error: {exc}") from None


def out_path(args: argparse.Namespace, name: str, device: torch.device) -> Path:
    """``--out`` or ``benchmarks/results/<name>_<device>.json``."""
    return args.out or RESULTS / f"{name}_{device.type}.json"


# --- the result file ------------------------------------------------------------------


def finish(result: Dict[str, Any], started: float) -> Dict[str, Any]:
    """Stamp the date, the wall time, the end load and the peak RSS onto ``result``."""
    result["date"] = datetime.date.today().isoformat()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if isinstance(result.get("machine"), dict):
        result["machine"]["load_average_at_end"] = measure.load_average()
        result["machine"]["peak_rss_mib"] = round(measure.peak_rss() / MIB, 1)
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
