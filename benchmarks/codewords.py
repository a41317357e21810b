"""Which encoding-layer variant keeps its codewords alive? A study on ContextScenes.

For each variant of :data:`encnet_lite.encoding.VARIANTS` asked for, trains EncNet
(``presets.scenes_encnet_tiny``: tiny backbone, 512 images of 128 px, 12 epochs) with each
seed, then measures on the first 32 validation images how the trained encoding layer uses
its K = 32 codewords (:func:`encnet_lite.context.codeword_health`: live codewords = those
winning >= 1 % of positions, assignment perplexity, share of positions won by the codeword
with the largest smoothing factor) and scores the val split (mIoU, percent, after the last
epoch). ``--no-se`` trains FCN + Context Encoding without the SE-loss instead (the ablation's
middle row), whose only training signal for the encoder is the segmentation loss.

Two stages, as the study was run: a screen of every variant with one seed at a reduced
budget, then the promising ones and "official" with three seeds at the preset's budget::

    .venv/bin/python benchmarks/codewords.py --screen --out /tmp/screen.json
    .venv/bin/python benchmarks/codewords.py --variants official kmeans shared

The second writes ``benchmarks/results/codewords.json``: ``{"variants": {name:
{"live_codewords": [per seed], "miou": [per seed], ...}}, "official_variant",
"book_variant", "book_preset"}``, with the config, the machine and the wall time.
``--book-variant`` names the variant the ContextScenes presets use (chosen from the numbers;
the default picks the variant with the highest mean mIoU among those with >= 8 live
codewords on every seed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from encnet_lite import presets  # noqa: E402
from encnet_lite.checkpoint import write_json_atomic  # noqa: E402
from encnet_lite.encoding import VARIANTS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "codewords.json"
HEALTH_IMAGES = 32
METRICS = ("live_codewords", "assignment_perplexity", "largest_scale_share")
BOOK_PRESET = "scenes_encnet_tiny"


def health_images(cfg: presets.TrainConfig, n: int = HEALTH_IMAGES) -> torch.Tensor:
    """The first ``n`` validation images of ``cfg``'s dataset: ``(n, 3, H, W)``."""
    from encnet_lite.engine import build_datasets

    _, val = build_datasets(cfg)
    return torch.stack([val[i][0] for i in range(min(n, len(val)))])


def run_one(cfg: presets.TrainConfig) -> Dict[str, Any]:
    """Train ``cfg``; its final val mIoU (percent) and codeword health on 32 val images."""
    from encnet_lite.context import codeword_health
    from encnet_lite.train import train

    torch.set_num_threads(max(1, cfg.threads))
    start = time.perf_counter()
    result = train(cfg)
    health = codeword_health(result.model, health_images(cfg))
    return {"seed": cfg.seed, "miou": 100 * float(result.history[-1]["mIoU"]), **health,
            "seconds": time.perf_counter() - start}


def base_config(screen: bool = False, se_loss: bool = True, **overrides: Any
                ) -> presets.TrainConfig:
    """The preset's budget, or the screen's (6 of the 12 epochs)."""
    if screen:
        overrides = {"epochs": 6, **overrides}
    return presets.scenes_encnet_tiny(progress=False, threads=1, val_every=0, workers=0,
                                      se_loss=se_loss, **overrides)


def study(variants: Sequence[str], seeds: Sequence[int], base: presets.TrainConfig,
          out_root: str, jobs: int = 2, log=print) -> Dict[str, Dict[str, List[float]]]:
    """Train every (variant, seed) under ``base``; ``{variant: {metric: [per seed]}}``."""
    cfgs = [base.replace(encoder=v, seed=s, name=f"{v}_s{s}", out=f"{out_root}/{v}_s{s}")
            for v in variants for s in seeds]
    with ProcessPoolExecutor(max(1, jobs), mp_context=get_context("spawn")) as pool:
        futures = [(cfg, pool.submit(run_one, cfg)) for cfg in cfgs]
        done = {}
        for cfg, fut in futures:
            rec = done[(cfg.encoder, cfg.seed)] = fut.result()
            if log is not None:
                log(f"{cfg.encoder:>10} seed {cfg.seed}: mIoU {rec['miou']:6.2f}  live "
                    f"{rec['live_codewords']:4.0f}  perplexity "
                    f"{rec['assignment_perplexity']:5.1f}  largest-scale share "
                    f"{rec['largest_scale_share']:.2f}  ({rec['seconds']:.0f} s)")
    keys = ("miou", *METRICS, "seconds")
    return {v: {"seeds": list(seeds), **{k: [done[(v, s)][k] for s in seeds] for k in keys}}
            for v in variants}


def pick_book_variant(results: Dict[str, Dict[str, List[float]]], min_live: int = 8) -> str:
    """The variant with the best mean mIoU among those with >= ``min_live`` live codewords
    on every seed ("official" if none qualifies)."""
    ok = [v for v, r in results.items() if min(r["live_codewords"]) >= min_live]
    return max(ok, key=lambda v: statistics.fmean(results[v]["miou"])) if ok else "official"


def machine() -> Dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="default: 0 1 2 (0 with --screen)")
    p.add_argument("--screen", action="store_true", help="reduced budget: 6 epochs")
    p.add_argument("--no-se", action="store_true", help="FCN + Context Encoding, no SE-loss")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--book-variant", default=None, choices=VARIANTS)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    seeds = args.seeds or ([0] if args.screen else [0, 1, 2])
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    cfg = base_config(args.screen, not args.no_se, **overrides)
    start, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        results = study(args.variants, seeds, cfg, tmp, args.jobs)
    book = args.book_variant or pick_book_variant(results)
    out = {
        "benchmark": "encoding-layer variants on ContextScenes (tiny backbone, CPU)",
        "units": "miou in percent; live_codewords = codewords winning >= 1 % of the positions "
                 f"of the first {HEALTH_IMAGES} val images; assignment_perplexity = exp of the "
                 "entropy of the mean soft assignment; largest_scale_share = share of "
                 "positions won by the codeword with the largest scale",
        "model": "EncNet" + ("" if cfg.se_loss else " without SE-loss (FCN + Context Encoding)"),
        "variants": results,
        "official_variant": "official",
        "book_variant": book,
        "book_preset": BOOK_PRESET,
        "config": {k: v for k, v in cfg.to_dict().items()
                   if k not in ("seed", "out", "name", "encoder")},
        "machine": {**machine(), "load_average_at_start": load,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "command": " ".join(["benchmarks/codewords.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "jobs": args.jobs,
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(args.out, out, indent=1)
    for v, r in results.items():
        live = statistics.fmean(r["live_codewords"])
        miou = statistics.fmean(r["miou"])
        print(f"{v:>10}: mIoU {miou:6.2f}  live codewords {live:5.1f}")
    print(f"book variant: {book}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
