"""Which encoding-layer variant keeps its codewords alive? A study on ContextScenes.

For each variant of :data:`encnet_lite.encoding.VARIANTS` asked for, trains EncNet
(``presets.scenes_encnet_tiny``: tiny backbone, 512 images of 128 px, 12 epochs) with each
seed, then measures on the first 32 validation images how the trained encoding layer uses
its K = 32 codewords (:func:`encnet_lite.context.codeword_health`: live codewords = those
winning >= 1 % of positions, assignment perplexity, share of positions won by the codeword
with the largest smoothing factor) and scores the val split (mIoU, a fraction, after the
last epoch). ``--no-se`` trains FCN + Context Encoding without the SE-loss instead (the ablation's
middle row), whose only training signal for the encoder is the segmentation loss.

Two stages, as the study was run: a screen of every variant with one seed at a reduced
budget, then the promising ones and "official" with three seeds at the preset's budget::

    .venv/bin/python benchmarks/codewords.py --screen --out /tmp/screen.json
    .venv/bin/python benchmarks/codewords.py --variants official kmeans shared

The second writes ``benchmarks/results/codewords.json``: ``{"variants": {name:
{"live_codewords": [per seed], "mIoU": [per seed], ...}}, "official_variant",
"book_variant", "book_preset"}``, with the config, the machine and the wall time.
``--book-variant`` names the variant the ContextScenes presets use (chosen from the numbers;
the default picks the variant with the highest mean mIoU among those with >= 8 live
codewords on every seed). Read it back with ``encnet_lite.ablation.read_result``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py
import _common  # noqa: E402  (puts the checkout on sys.path)

from encnet_lite import measure, presets  # noqa: E402
from encnet_lite.encoding import VARIANTS  # noqa: E402

RESULTS = _common.RESULTS / "codewords.json"
HEALTH_IMAGES = 32
METRICS = ("live_codewords", "assignment_perplexity", "largest_scale_share")
BOOK_PRESET = "scenes_encnet_tiny"


def health_images(cfg: presets.TrainConfig, n: int = HEALTH_IMAGES) -> torch.Tensor:
    """The first ``n`` validation images of ``cfg``'s dataset: ``(n, 3, H, W)``."""
    from encnet_lite.engine import build_datasets

    _, val = build_datasets(cfg)
    return torch.stack([val[i][0] for i in range(min(n, len(val)))])


def run_one(cfg: presets.TrainConfig) -> Dict[str, Any]:
    """Train ``cfg``; its final val mIoU (a fraction) and codeword health on 32 val images."""
    from encnet_lite.context import codeword_health
    from encnet_lite.train import train

    torch.set_num_threads(max(1, cfg.runtime.threads))
    start = time.perf_counter()
    result = train(cfg, overwrite=True)  # a rerun of the benchmark replaces its runs
    health = codeword_health(result.model, health_images(cfg))
    return {"seed": cfg.optim.seed, "mIoU": float(result.history[-1]["mIoU"]), **health,
            "seconds": time.perf_counter() - start}


def measure_run(folder: Path) -> Dict[str, Any]:
    """The same record as :func:`run_one`, read from a finished run folder (``config.json``,
    ``last.pt``, ``metrics.jsonl``) instead of training: e.g. the ablation's EncNet runs,
    which are this study's runs of the variant they used."""
    import json

    from encnet_lite.checkpoint import load
    from encnet_lite.context import codeword_health
    from encnet_lite.engine import build_model
    from encnet_lite.train import load_history

    folder = Path(folder)
    cfg = presets.TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
    saved = load(folder / "last.pt")
    model = build_model(cfg, len(saved["classes"]))
    model.load_state_dict(saved["model"])
    history = load_history(folder)
    if history[-1].get("epoch") != cfg.optim.epochs or "mIoU" not in history[-1]:
        raise ValueError(f"{folder}: not a finished, validated run of {cfg.optim.epochs} epochs")
    return {"seed": cfg.optim.seed, "encoder": cfg.model.encoder,
            "mIoU": history[-1]["mIoU"],
            **codeword_health(model, health_images(cfg)), "source": str(folder.name)}


def base_config(screen: bool = False, se_loss: bool = True, **overrides: Any
                ) -> presets.TrainConfig:
    """The preset's budget, or the screen's (4 epochs of 256 images: 1/6 of it)."""
    if screen:
        overrides = {"epochs": 4, "num_train_images": 256, **overrides}
    return presets.scenes_encnet_tiny(progress=False, threads=1, val_every=0, workers=0,
                                      se_loss=se_loss, **overrides)


def study(variants: Sequence[str], seeds: Sequence[int], base: presets.TrainConfig,
          out_root: str, jobs: int = 2, log=print) -> Dict[str, Dict[str, List[float]]]:
    """Train every (variant, seed) under ``base``; ``{variant: {metric: [per seed]}}``."""
    cfgs = [base.replace(encoder=v, seed=s, name=f"{v}_s{s}", out=f"{out_root}/{v}_s{s}")
            for v in variants for s in seeds]
    done: Dict[tuple, Dict[str, Any]] = {}

    def note(cfg: presets.TrainConfig, rec: Dict[str, Any]) -> None:
        done[(cfg.model.encoder, cfg.optim.seed)] = rec
        if log is not None:
            log(f"{cfg.model.encoder:>10} seed {cfg.optim.seed}: mIoU {100 * rec['mIoU']:6.2f}  live "
                f"{rec['live_codewords']:4.0f}  perplexity "
                f"{rec['assignment_perplexity']:5.1f}  largest-scale share "
                f"{rec['largest_scale_share']:.2f}  ({rec['seconds']:.0f} s)", flush=True)

    if jobs <= 1:
        for cfg in cfgs:
            note(cfg, run_one(cfg))
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [(cfg, pool.submit(run_one, cfg)) for cfg in cfgs]
            for cfg, fut in futures:
                note(cfg, fut.result())
    keys = ("mIoU", *METRICS, "seconds")
    return {v: {"seeds": list(seeds), **{k: [done[(v, s)][k] for s in seeds] for k in keys}}
            for v in variants}


def screen_section(paths: Sequence[Path]) -> Dict[str, Any]:
    """The variants of earlier ``--screen`` results, merged, with their budget and commands."""
    from encnet_lite.ablation import read_result

    parts = [read_result(p) for p in paths]
    cfg = parts[0]["config"]
    return {"budget": f"{cfg['epochs']} epochs of {cfg['num_train_images']} images",
            "seed": parts[0]["variants"][next(iter(parts[0]["variants"]))]["seeds"][0],
            "commands": [part.get("command", "") for part in parts],
            "notes": [part["note"] for part in parts if "note" in part],
            "variants": {v: {k: r[k][0] for k in ("mIoU", *METRICS)}
                         for part in parts for v, r in part["variants"].items()}}


def pick_book_variant(results: Dict[str, Dict[str, List[float]]], min_live: int = 8) -> str:
    """The variant with the best mean mIoU among those with >= ``min_live`` live codewords
    on every seed ("official" if none qualifies)."""
    ok = [v for v, r in results.items() if min(r["live_codewords"]) >= min_live]
    return max(ok, key=lambda v: statistics.fmean(results[v]["mIoU"])) if ok else "official"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = _common.parser(__doc__)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="default: 0 1 2 (0 with --screen)")
    p.add_argument("--screen", action="store_true",
                   help="reduced budget: 4 epochs of 256 images")
    p.add_argument("--runs-dir", default=None, help="keep the run folders here")
    p.add_argument("--no-se", action="store_true", help="FCN + Context Encoding, no SE-loss")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--book-variant", default=None, choices=VARIANTS)
    p.add_argument("--screen-from", nargs="+", default=[], type=Path, metavar="JSON",
                   help="results of earlier --screen runs to record under \"screen\"")
    p.add_argument("--add-runs", nargs="+", default=[], type=Path, metavar="FOLDER",
                   help="finished run folders (e.g. the ablation's encnet_s*) to measure "
                        "instead of training their variant again")
    args = p.parse_args(argv)
    if args.quick:  # seconds long: checks the script
        args.variants, args.seeds, args.jobs = ["official", "kmeans"], [0], 1
    seeds = args.seeds or ([0] if args.screen else [0, 1, 2])
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    if args.quick:
        overrides.update(epochs=1, num_train_images=16, num_val_images=32, image_size=64)
    cfg = base_config(args.screen, not args.no_se, **overrides)
    start, info = time.perf_counter(), measure.machine(torch.device("cpu"))
    added = [measure_run(folder) for folder in args.add_runs]
    reused = {rec["encoder"] for rec in added}
    with tempfile.TemporaryDirectory() as tmp:
        results = study([v for v in args.variants if v not in reused], seeds, cfg,
                        args.runs_dir or tmp, args.jobs)
    for variant in sorted(reused):
        recs = sorted((r for r in added if r["encoder"] == variant), key=lambda r: r["seed"])
        results[variant] = {"seeds": [r["seed"] for r in recs],
                            **{k: [r[k] for r in recs] for k in ("mIoU", *METRICS, "source")}}
    book = args.book_variant or pick_book_variant(results)
    out = {
        "benchmark": "encoding-layer variants on ContextScenes (tiny backbone, CPU)",
        "units": "mIoU a fraction (0..1); live_codewords = codewords winning >= 1 % of the "
                 "positions "
                 f"of the first {HEALTH_IMAGES} val images; assignment_perplexity = exp of the "
                 "entropy of the mean soft assignment; largest_scale_share = share of "
                 "positions won by the codeword with the largest scale",
        "model": "EncNet" + ("" if cfg.model.se_loss
                             else " without SE-loss (FCN + Context Encoding)"),
        "variants": results,
        "official_variant": "official",
        "book_variant": book,
        "book_preset": BOOK_PRESET,
        "config": {k: v for k, v in cfg.flat().items()
                   if k not in ("seed", "out", "name", "encoder")},
        "machine": info,
        "command": " ".join(["benchmarks/codewords.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "jobs": args.jobs,
        "quick": args.quick,
    }
    if args.screen_from:
        out["screen"] = screen_section(args.screen_from)
    _common.write_result(args.out or RESULTS, _common.finish(out, start), indent=1)
    for v, r in results.items():
        live = statistics.fmean(r["live_codewords"])
        score = statistics.fmean(r["mIoU"])
        print(f"{v:>10}: mIoU {100 * score:6.2f}  live codewords {live:5.1f}")
    print(f"book variant: {book}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
