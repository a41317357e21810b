"""The paper's ablation on ContextScenes: FCN, FCN + Context Encoding, EncNet; and K.

Trains, with the tiny backbone on the synthetic ContextScenes data (CPU), under one budget
(``ablation.ablation_config``: the ``scenes_encnet_tiny`` preset's 512 images of 128 px,
batch 16 and lr 0.05, for 20 epochs instead of its 12), on the scenes with two pieces of
context (``day_night=True``: the scene kind decides the look-alikes, the time of day
decides the small birds; ``--no-day-night`` for the plain scenes):

- ``fcn``: the FCN baseline (no Context Encoding Module, no SE-loss);
- ``fcn_enc``: FCN + Context Encoding Module (EncNet with ``se_loss=False``);
- ``encnet``: FCN + Context Encoding + SE-loss (EncNet, K = 32 codewords);

each with seeds 0, 1, 2; then EncNet with K = 4 and 16 codewords (K = 0, no encoding, is
the ``fcn`` row; K = 32 is the ``encnet`` row). Every run is scored on the 128-image val
split after its last epoch. Functions: :mod:`encnet_lite.ablation` (the chapter calls them
too). Writes ``benchmarks/results/ablation.json``: top-level ``fcn``, ``fcn_enc``,
``encnet``, each with ``pixAcc``, ``mIoU`` and per-class ``IoU`` lists over seeds, as
fractions (``ConfusionMatrix.compute``; the ``units`` field says so), plus confusion matrices,
the K sweep, the config, the machine and the wall time. Read it back with
``ablation.read_result``.

The training is deterministic on a CPU: a rerun on the same machine and torch version gives
the same numbers (two runs here gave identical scores).

Usage (from the repository root; about 40 minutes on a 2-core CPU with two runs at a time,
the default ``--jobs 2``: the ``seconds`` in the JSON)::

    .venv/bin/python benchmarks/ablation.py --k-seeds 0
    .venv/bin/python benchmarks/ablation.py --quick --out "$(mktemp -d)/ablation.json"  # seconds
    # the plain scenes (kind only) at a look-alike density, no K sweep, the preset's epochs:
    .venv/bin/python benchmarks/ablation.py --no-day-night --epochs 12 --lookalikes 3 6 \
        --ks 0 32 --out benchmarks/results/ablation_lookalikes_3_6.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by path
import _common  # noqa: E402  (puts the checkout on sys.path too)
import torch  # noqa: E402

from encnet_lite import ablation, measure  # noqa: E402

RESULTS = _common.RESULTS / "ablation.json"
PAPER_KEYS = tuple(ablation.PAPER_VARIANTS)  # ("fcn", "fcn_enc", "encnet")


def base_config(quick: bool = False, threads: int = 1, **overrides: Any) -> ablation.TrainConfig:
    """The shared budget: ``ablation.ablation_config``'s, or a seconds-long one for smoke
    tests."""
    if quick:
        overrides = {"num_train_images": 32, "num_val_images": 16, "epochs": 1,
                     "batch_size": 16, **overrides}
    # threads: one per job.
    return ablation.ablation_config(threads=threads, **overrides)


def report(runs: Dict[str, Dict[str, Any]], cfg: ablation.TrainConfig, ks: Sequence[int],
           seconds: float, command: str = "", jobs: int = 1) -> Dict[str, Any]:
    """The JSON written to ``results/ablation.json``: :func:`encnet_lite.ablation.summary`
    plus the machine, the command and the wall time."""
    out = {"benchmark": "ablation of the Context Encoding Module on ContextScenes "
                        "(tiny backbone, CPU)",
           **ablation.summary(runs, cfg, ks)}
    device = cfg.runtime.device
    out["machine"] = measure.machine(torch.device(device if device != "auto" else "cpu"))
    out["command"] = command
    out["jobs"] = jobs
    out["seconds"] = round(seconds, 1)
    return out


def run(seeds: Sequence[int] = (0, 1, 2), ks: Sequence[int] = (0, 4, 16, 32),
        k_seeds: Optional[Sequence[int]] = None, jobs: int = 1, threads: int = 1,
        quick: bool = False, runs_dir: Optional[str] = None, log=print, command: str = "",
        **overrides: Any) -> Dict[str, Any]:
    """Train the grid and return the report (see :func:`report`)."""
    start, load = time.perf_counter(), measure.load_average()
    cfg = base_config(quick, threads, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        runs = ablation.paper_ablation(cfg, seeds, ks, k_seeds, runs_dir or tmp, jobs, log)
    result = report(runs, cfg, ks, time.perf_counter() - start, command, jobs)
    _common.finish(result, start)
    result["machine"]["load_average_at_start"] = load
    return result


def summary_lines(result: Dict[str, Any]) -> List[str]:
    def fmt(values: Sequence[float]) -> str:  # fractions, printed in percent
        return ablation.format_mean_std(values, 2, percent=True)

    lines = [f"{'variant':>8} | {'mIoU %':>13} | {'pixAcc %':>13}"]
    for name in PAPER_KEYS:
        lines.append(f"{name:>8} | {fmt(result[name]['mIoU']):>13} | "
                     f"{fmt(result[name]['pixAcc']):>13}")
    for k, row in result["k_ablation"]["rows"].items():
        lines.append(f"K = {k:>3}: mIoU {fmt(row['mIoU'])} ({row['source']})")
    lines.append(f"wall time {result['seconds']:.0f} s")
    return lines


def build_parser():
    p = _common.parser(__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ks", type=int, nargs="+", default=[0, 4, 16, 32],
                   help="codeword counts of the K sweep (0 = FCN)")
    p.add_argument("--k-seeds", type=int, nargs="+", default=None,
                   help="seeds of the K sweep (default: --seeds)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--lookalikes", type=int, nargs=2, default=None, metavar=("FEWEST", "MOST"),
                   help="look-alike objects per ContextScenes image (default: the preset's)")
    p.add_argument("--day-night", action=argparse.BooleanOptionalAction, default=True,
                   help="scenes with the time of day as a second context (default: yes)")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs at once (processes, one --threads each)")
    p.add_argument("--runs-dir", default=None, help="keep the run folders here")
    p.set_defaults(threads=1, device="cpu")  # one thread per run; the preset trains on a CPU
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"device": args.device, "day_night": args.day_night}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.lookalikes is not None:
        overrides["min_lookalikes"], overrides["max_lookalikes"] = args.lookalikes
    command = " ".join(["benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    result = run(args.seeds, args.ks, args.k_seeds, args.jobs, args.threads, args.quick,
                 args.runs_dir, print, command, **overrides)
    print("\n".join(summary_lines(result)))
    _common.write_result(args.out or RESULTS, result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
