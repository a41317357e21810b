"""Ablations: train named variants of one recipe over several seeds and collect the scores.

The paper's ablation (FCN, + Context Encoding, + SE-loss) on ContextScenes::

    from encnet_lite import ablation

    base = ablation.ablation_config()  # the shared budget
    runs = ablation.run_grid(ablation.PAPER_VARIANTS, seeds=[0, 1, 2], base=base,
                             out_root="runs/ablation")
    runs["encnet"]["mIoU"]          # final val mIoU (a fraction) of each seed
    ablation.mean_std(runs["encnet"]["mIoU"])

Every variant uses the same budget (the ``base`` config: images, epochs, batch, lr); a
variant only changes the fields in its overrides (``arch``, ``se_loss``, ``num_codes``).
The score of a run is its model's val split after the last epoch (no checkpoint picking),
from a :class:`~encnet_lite.metrics.ConfusionMatrix` that is also returned, so per-class
IoU and confusions between look-alike classes can be read off later. Scores are fractions
(:meth:`~encnet_lite.metrics.ConfusionMatrix.compute`), as everywhere in the library.
``benchmarks/ablation.py`` runs the full grid and writes ``benchmarks/results/ablation.json``;
the ablation chapter calls the same functions and reads the file with :func:`read_result`.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from .presets import TrainConfig, scenes_encnet_tiny

__all__ = [
    "ABLATION_EPOCHS", "ablation_config", "PAPER_VARIANTS", "LABELS", "k_variants", "run_one",
    "run_grid", "paper_ablation", "k_sweep", "summary", "read_result", "per_class_iou",
    "ordering_steps", "gain_over_spread", "mean_std", "format_mean_std", "restricted_confusion",
]

# Epochs of the ablation's budget. More than the preset's 12: on the scenes with two pieces
# of context a run must learn to use both, and at 12 epochs some seeds of EncNet had not
# yet learnt to use the time of day (the birds) or even the kind; the FCN + Context
# Encoding row never had the time in its encoded vector at all (notes/NOTES.md).
ABLATION_EPOCHS = 20

# The scores of a run (lists over seeds in run_grid's result), as ConfusionMatrix.compute.
SCORE_KEYS = ("pixAcc", "mIoU", "IoU")
# A measurement of a trained model added to its run's scores: model -> {name: value}.
Probe = Callable[[torch.nn.Module], Dict[str, Any]]
UNITS = ("fractions 0..1 (pixAcc, mIoU, IoU; IoU null for a class absent from truth and "
         "prediction; blind_caps; lookalike_fraction and bird_fraction: shares of the val "
         "pixels); confusion in pixel counts, rows = truth")


def ablation_config(**overrides: Any) -> TrainConfig:
    """The ablation's shared budget: :func:`~encnet_lite.presets.scenes_encnet_tiny` on the
    scenes with two pieces of context (``day_night=True``) for ``ABLATION_EPOCHS`` epochs,
    validated only after the last one (the score), without progress bars."""
    base = dict(day_night=True, epochs=ABLATION_EPOCHS, val_every=0, progress=False)
    return scenes_encnet_tiny(**{**base, **overrides})


# The three rows of the paper's ablation. FCN + Context Encoding without the SE-loss is
# EncNet with ``se_loss=False`` (the SE branch is not even built).
PAPER_VARIANTS: Dict[str, Dict[str, Any]] = {
    "fcn": {"arch": "fcn", "se_loss": False},
    "fcn_enc": {"arch": "encnet", "se_loss": False},
    "encnet": {"arch": "encnet", "se_loss": True},
}
LABELS = {
    "fcn": "FCN",
    "fcn_enc": "FCN + Context Encoding",
    "encnet": "FCN + Context Encoding + SE-loss (EncNet)",
}


def k_variants(ks: Sequence[int]) -> Dict[str, Dict[str, Any]]:
    """EncNet (with SE-loss) with ``K`` codewords for each ``K >= 1`` in ``ks``:
    ``{"encnet_k4": {"arch": "encnet", "se_loss": True, "num_codes": 4}, ...}``.
    ``K = 0`` (no encoding at all) is the FCN and is left to the caller."""
    return {f"encnet_k{k}": {**PAPER_VARIANTS["encnet"], "num_codes": int(k)}
            for k in ks if k >= 1}


def run_one(cfg: TrainConfig, probe: Optional[Probe] = None) -> Dict[str, Any]:
    """Train ``cfg`` (replacing a previous run in ``cfg.out``) and score the final model on
    its val split: the confusion matrix of the last epoch's validation
    (:func:`encnet_lite.engine.validate`), so no second pass over the split.

    Returns :meth:`~encnet_lite.metrics.ConfusionMatrix.compute`'s ``pixAcc``, ``mIoU``,
    ``IoU`` (fractions; None for a class absent from targets and predictions), ``confusion``
    (rows = truth, cols = prediction, pixel counts), ``loss`` (last epoch's mean training
    loss), ``seconds`` (wall time of the training), and the entries of ``probe(model)``
    when a ``probe`` is given (called on the trained model, eval mode).
    """
    from .train import train

    start = time.perf_counter()
    result = train(cfg, overwrite=True)
    cm = result.confusion  # the last epoch is always validated
    seconds = time.perf_counter() - start
    return {
        **(probe(result.model) if probe is not None else {}),
        "seed": cfg.optim.seed,
        **cm.compute(),
        "confusion": cm.counts().tolist(),
        "loss": result.history[-1]["loss"],
        "seconds": seconds,
    }


def _run_one_quietly(cfg: TrainConfig, probe: Optional[Probe] = None) -> Dict[str, Any]:
    # a fresh worker process: keep it to its share
    torch.set_num_threads(max(1, cfg.runtime.threads))
    return run_one(cfg, probe)


def run_grid(variants: Mapping[str, Mapping[str, Any]],
             seeds: Union[Sequence[int], Mapping[str, Sequence[int]]],
             base: TrainConfig, out_root: Union[str, Path] = "runs/ablation", jobs: int = 1,
             log: Optional[Callable[[str], None]] = print,
             probe: Optional[Probe] = None) -> Dict[str, Dict[str, Any]]:
    """Train every variant with every seed under the same ``base`` budget.

    Args:
        variants: ``{name: config overrides}``, e.g. :data:`PAPER_VARIANTS`.
        seeds: ``cfg.optim.seed`` of the runs (initial weights, batch order, augmentation), or
            ``{name: seeds}`` per variant; the synthetic data (``data_seed``) is the same
            for every run.
        base: the shared recipe; each run is ``base.replace(**overrides, seed=s,
            out=out_root/name_s{s})``.
        jobs: runs trained at once (separate processes; give ``base.runtime.threads`` so that
            ``jobs * threads`` fits the cores). 1: in this process, one after the other.
        log: called with one line per finished run (None: silent).
        probe: called on each trained model (see :func:`run_one`); its entries join the
            scores (picklable, e.g. a ``functools.partial`` of a module function, when
            ``jobs > 1``).

    Returns ``{name: {"overrides", "seeds", "pixAcc", "mIoU", "IoU", "confusion", "loss",
    "seconds", *probe's keys}}``: lists over seeds, in the order of ``seeds``.
    """
    out_root = Path(out_root)
    per = {name: [int(s) for s in (seeds[name] if isinstance(seeds, Mapping) else seeds)]
           for name in variants}
    cfgs = [(name, base.replace(**dict(overrides), seed=s, name=f"{name}_s{s}",
                                out=str(out_root / f"{name}_s{s}")))
            for name, overrides in variants.items() for s in per[name]]
    done: Dict[tuple, Dict[str, Any]] = {}

    def note(name: str, rec: Dict[str, Any]) -> None:
        done[(name, rec["seed"])] = rec
        if log is not None:
            log(f"{name:>12} seed {rec['seed']}: mIoU {100 * rec['mIoU']:6.2f}  pixAcc "
                f"{100 * rec['pixAcc']:6.2f}  ({rec['seconds']:.0f} s)")

    if jobs <= 1:
        for name, cfg in cfgs:
            note(name, run_one(cfg, probe))
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [(name, pool.submit(_run_one_quietly, cfg, probe)) for name, cfg in cfgs]
            for name, fut in futures:
                note(name, fut.result())

    def column(name: str) -> Dict[str, list]:  # a probe may measure variants differently
        keys = [k for k in done[(name, per[name][0])] if k != "seed"] if per[name] else []
        return {k: [done[(name, s)][k] for s in per[name]] for k in keys}

    return {name: {"overrides": dict(overrides), "seeds": per[name], **column(name)}
            for name, overrides in variants.items()}


def paper_ablation(base: TrainConfig, seeds: Sequence[int] = (0, 1, 2),
                   ks: Sequence[int] = (0, 4, 16, 32), k_seeds: Optional[Sequence[int]] = None,
                   out_root: Union[str, Path] = "runs/ablation", jobs: int = 1,
                   log: Optional[Callable[[str], None]] = print) -> Dict[str, Dict[str, Any]]:
    """The paper's ablation under ``base``'s budget: :data:`PAPER_VARIANTS` with ``seeds``,
    and EncNet with each K of ``ks`` other than 0 (the FCN) and ``base.model.num_codes`` (the
    ``encnet`` run) with ``k_seeds`` (default: ``seeds``; must be among them).

    Returns :func:`run_grid`'s dict: ``fcn``, ``fcn_enc``, ``encnet``, ``encnet_k{K}``;
    :func:`k_sweep` reads the K rows out of it.
    """
    seeds = [int(s) for s in seeds]
    k_seeds = seeds if k_seeds is None else [int(s) for s in k_seeds]
    if not set(k_seeds) <= set(seeds):
        raise ValueError(f"k_seeds {k_seeds} must be among seeds {seeds}: K = 0 and "
                         f"K = {base.model.num_codes} reuse the fcn and encnet runs")
    extra = k_variants(sorted({k for k in ks if k not in (0, base.model.num_codes)}))
    variants = {**PAPER_VARIANTS, **extra}
    per_seed = {name: k_seeds if name in extra else seeds for name in variants}
    # One grid (one process pool) for every run, so that no job slot idles between parts.
    return run_grid(variants, per_seed, base, out_root, jobs, log)


def k_sweep(runs: Mapping[str, Mapping[str, Any]], ks: Sequence[int],
            num_codes: int = 32) -> Dict[str, Dict[str, Any]]:
    """Rows ``{str(K): {"source", "seeds", "pixAcc", "mIoU", "IoU"}}`` of the K sweep out of
    :func:`paper_ablation`'s runs: K = 0 is the ``fcn`` run (no encoding), K = ``num_codes``
    the ``encnet`` run, any other K its ``encnet_k{K}`` run; every row over the seeds of
    the ``encnet_k{K}`` runs (all of ``encnet``'s if there are none)."""
    extra = [f"encnet_k{k}" for k in ks if k not in (0, num_codes)]
    seeds = list(runs[extra[0]]["seeds"]) if extra else list(runs["encnet"]["seeds"])
    rows = {}
    for k in ks:
        source = "fcn" if k == 0 else "encnet" if k == num_codes else f"encnet_k{k}"
        run = runs[source]
        pick = [list(run["seeds"]).index(s) for s in seeds]
        rows[str(k)] = {"source": source, "seeds": seeds,
                        **{m: [run[m][i] for i in pick] for m in SCORE_KEYS}}
    return rows


def summary(runs: Mapping[str, Mapping[str, Any]], base: TrainConfig,
            ks: Sequence[int] = ()) -> Dict[str, Any]:
    """Everything a report needs about :func:`paper_ablation`'s ``runs`` (ContextScenes):
    the classes, the look-alike (context) classes, the context-blind caps, every run under
    its name with a ``label``, the K sweep (:func:`k_sweep`) and the shared config.
    ``benchmarks/ablation.py`` writes it (plus the machine and the wall time) as JSON."""
    from .engine import scenes_dataset

    ds = scenes_dataset(base, "val", 1)
    confusion = torch.tensor(next(iter(runs.values()))["confusion"][0], dtype=torch.float64)
    lookalike = float(confusion[ds.context_classes].sum() / confusion.sum())
    birds = float(confusion[ds.bird_classes].sum() / confusion.sum())
    out: Dict[str, Any] = {
        "units": UNITS,
        "score": "val split after the last epoch, single scale",
        "classes": ds.classes,
        "context_classes": [ds.classes[c] for c in ds.context_classes],
        "cue_classes": [ds.classes[c] for c in ds.cue_classes],
        "lookalike_fraction": lookalike,  # share of the val split's pixels
        "blind_caps": ds.caps(lookalike, birds),
    }
    if ds.day_night:  # the second context: its cue (sky) and the birds it decides
        out["sky_classes"] = [ds.classes[c] for c in ds.sky_classes]
        out["bird_classes"] = [ds.classes[c] for c in ds.bird_classes]
        out["bird_fraction"] = birds
    for name, run in runs.items():
        label = LABELS.get(name, f"EncNet, K = {run['overrides'].get('num_codes')}")
        out[name] = {"label": label, **run}
    rows = k_sweep(runs, ks, base.model.num_codes) if ks else {}
    out["k_ablation"] = {
        "ks": list(ks),
        "note": (f"K = 0 is the FCN row (no Context Encoding Module); K = {base.model.num_codes} "
                 "is the encnet row; the others are EncNet (with SE-loss) with K codewords, "
                 "same budget"),
        "seeds": rows[str(ks[0])]["seeds"] if rows else [],
        "rows": rows,
    }
    out["config"] = {k: v for k, v in base.flat().items()
                     if k not in ("seed", "out", "name", "arch", "se_loss")}
    return out


def read_result(path: Union[str, Path]) -> Dict[str, Any]:
    """A result JSON of ``benchmarks/ablation.py`` or ``benchmarks/codewords.py``, the one
    reader of these files. One written before the single score format (``miou``,
    ``pixacc``, ``iou`` and the caps in percent) comes back converted to fractions under
    the current keys (:func:`~encnet_lite.metrics.upgrade_scores`). A ContextScenes
    ``config`` without a data field added since (``min_lookalikes``, ``max_lookalikes``,
    ``day_night``) gets the field's default, which is the data the file was made on."""
    from dataclasses import asdict

    from .metrics import holds_percent_scores, upgrade_scores
    from .presets import ScenesConfig

    result = json.loads(Path(path).read_text())
    if holds_percent_scores(result):
        result = upgrade_scores(result, percent=True)
        result["units"] = f"converted on reading to fractions (the file: {result.get('units')})"
    config = result.get("config")
    if isinstance(config, dict) and config.get("dataset", "scenes") == "scenes":
        # each field was added with the default that keeps the data as it was before
        result["config"] = {**asdict(ScenesConfig()), **config}
    return result


def per_class_iou(run: Mapping[str, Any]) -> torch.Tensor:
    """``(seeds, classes)`` float64: a run's per-class ``IoU`` over seeds (fractions; NaN
    where a class had none), e.g. of :func:`run_grid`'s result or :func:`read_result`'s."""
    return torch.tensor([[math.nan if v is None else v for v in per_seed]
                         for per_seed in run["IoU"]], dtype=torch.float64)


def ordering_steps(result: Mapping[str, Any], key: str = "mIoU", min_gain: float = 0.03
                   ) -> List[Dict[str, Any]]:
    """The paper's ordering FCN < FCN + Context Encoding < EncNet, one step at a time.

    ``result``: rows ``{"fcn": {key: [per seed]}, "fcn_enc": ..., "encnet": ...}`` (e.g. the
    JSON of ``benchmarks/ablation.py``, fractions). A step *holds* when the mean gain is at
    least ``min_gain`` (0.03: 3 points of mIoU) and larger than the sum of the two rows'
    standard deviations over
    seeds (a difference inside the spread is not evidence). Returns one dict per step whose
    rows are both present: ``lo``, ``hi``, ``gain``, ``spread``, ``holds``.
    """
    names = list(PAPER_VARIANTS)
    steps = []
    for lo, hi in zip(names, names[1:]):
        if lo not in result or hi not in result:
            continue
        step = gain_over_spread(result[lo][key], result[hi][key])
        steps.append({"lo": lo, "hi": hi, **step,
                      "holds": bool(step["gain"] >= min_gain and step["beyond_spread"])})
    return steps


def gain_over_spread(lo: Sequence[float], hi: Sequence[float]) -> Dict[str, Any]:
    """How far the mean of ``hi`` (a score over seeds) is above that of ``lo``: ``gain``
    (mean difference), ``spread`` (the sum of the two sample standard deviations) and
    ``beyond_spread`` (``gain > spread``: a difference inside the spread is not evidence)."""
    (m_lo, s_lo), (m_hi, s_hi) = mean_std(lo), mean_std(hi)
    gain, spread = m_hi - m_lo, s_lo + s_hi
    return {"gain": gain, "spread": spread, "beyond_spread": bool(gain > spread)}


def mean_std(values: Sequence[float]) -> tuple:
    """``(mean, sample standard deviation)``; the deviation is 0 for a single value. None
    and NaN (a class without an IoU) are left out."""
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[Optional[float]], digits: int = 1,
                    percent: bool = False) -> str:
    """``"mean ± std"`` of ``values`` (e.g. a metric over seeds), or the value alone where
    only one counts (a standard deviation needs several: no "± 0.0"); ``percent``: the
    values are fractions (scores), shown in percent."""
    scale = 100.0 if percent else 1.0
    scaled = [None if v is None else scale * v for v in values]
    mean, std = mean_std(scaled)
    if sum(v is not None and not math.isnan(v) for v in scaled) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def restricted_confusion(confusion: Sequence[Sequence[int]], rows: Sequence[int],
                         normalize: bool = True) -> torch.Tensor:
    """The confusion matrix of the classes ``rows`` among themselves, plus an "other"
    column: ``(len(rows), len(rows) + 1)``; entry ``[i, j]`` = pixels of class ``rows[i]``
    predicted as ``rows[j]`` (last column: as any other class). ``normalize``: each row
    divided by its class's pixel count (rows sum to 1)."""
    m = torch.as_tensor(confusion, dtype=torch.float64).cpu()  # e.g. a matrix on a GPU
    idx = torch.as_tensor(list(rows))
    sub = m[idx][:, idx]
    out = torch.cat([sub, (m[idx].sum(1) - sub.sum(1))[:, None]], dim=1)
    if normalize:
        out = out / out.sum(1, keepdim=True).clamp_min(1)
    return out
