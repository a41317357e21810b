"""What the ablation chapter prints from an ablation result: tables, verdicts, provenance.

A *result* is :func:`encnet_lite.ablation.summary`'s dict or
:func:`encnet_lite.ablation.read_result`'s (scores as fractions): rows ``fcn``, ``fcn_enc``,
``encnet`` with per-seed ``mIoU``/``pixAcc`` (``(seeds,)``), ``IoU`` (``(seeds, classes)``)
and ``confusion`` (``(seeds, classes, classes)``), plus ``classes``, ``context_classes``,
``bird_classes`` (scenes with two pieces of context only), ``blind_caps`` and ``k_ablation``.

Tables come back as ``(header, rows)`` for :func:`encnet_lite.viz.markdown_table`, text as
a list of lines; both in percent. A value over several seeds is shown as mean ± standard
deviation, a value of one seed as that value alone (no "±" without seeds). Columns are
kept few and short so that a table fits a phone's screen.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

from .ablation import (
    PAPER_VARIANTS,
    format_mean_std,
    gain_over_spread,
    mean_std,
    ordering_steps,
    per_class_iou,
)
from .presets import TrainConfig

__all__ = ["SHORT", "variant_table", "rows_of", "class_groups", "group_gain", "score",
           "score_table", "cap_lines", "per_class_table", "gain_lines", "k_sweep_table", "step_lines",
           "density_table", "density_lines", "provenance_lines"]

Table = Tuple[List[str], List[Tuple[Any, ...]]]

# Short names for the three rows, for table columns and figure labels.
SHORT = {"fcn": "FCN", "fcn_enc": "FCN + Enc.", "encnet": "EncNet"}


def variant_table(base: TrainConfig, num_classes: int) -> Table:
    """The paper's rows (:data:`~encnet_lite.ablation.PAPER_VARIANTS`) under ``base``: each
    row's name, model, the config fields it overrides and its parameter count (a model is
    built for the count)."""
    from .engine import build_model
    from .models import count_parameters

    rows = []
    for name, overrides in PAPER_VARIANTS.items():
        model = build_model(base.replace(**overrides), num_classes=num_classes)
        changed = ", ".join(f"{k}={v}" for k, v in overrides.items())
        # a zero-width space after "_" lets the name break in a phone-wide table
        rows.append((f"`{name.replace('_', '_' + chr(0x200B))}`", SHORT[name], changed,
                     f"{count_parameters(model) / 1e3:.1f} k"))
    return ["row", "model", "overrides", "params"], rows


def rows_of(result: Mapping[str, Any]) -> List[str]:
    """The paper's rows (``fcn``, ``fcn_enc``, ``encnet``) that ``result`` holds, in order."""
    return [k for k in PAPER_VARIANTS if k in result]


def class_groups(result: Mapping[str, Any]) -> Dict[str, List[int]]:
    """Class indices by what decides them: ``look-alike`` (the scene kind), ``bird`` (the
    time of day; absent on the plain scenes) and ``other`` (recognisable locally)."""
    classes = list(result["classes"])
    look = [classes.index(c) for c in result["context_classes"]]
    birds = [classes.index(c) for c in result.get("bird_classes", [])]
    groups = {"look-alike": look, **({"bird": birds} if birds else {})}
    groups["other"] = [c for c in range(len(classes)) if c not in look + birds]
    return groups


def _group_iou(run: Mapping[str, Any], classes: Sequence[int]) -> float:
    """Mean IoU (fraction) of ``classes`` over the seeds of ``run``; NaN-free classes only."""
    iou = per_class_iou(run)[:, list(classes)]
    return float(iou[~iou.isnan()].mean())


def group_gain(result: Mapping[str, Any], lo: str, hi: str, classes: Sequence[int]) -> float:
    """Mean IoU of ``classes`` (over seeds and classes) of row ``hi`` minus row ``lo``, a
    fraction: the gain of one step of the ablation on those classes."""
    return _group_iou(result[hi], classes) - _group_iou(result[lo], classes)


def _points(gain: float) -> str:
    """A gain (fraction) in signed points, rounded first so that no "-0.0" shows."""
    return f"{round(100 * gain, 1) + 0.0:+.1f}"


def score(values: Sequence[float]) -> str:
    """Scores over seeds (fractions) in percent: ``"64.1 ± 0.1"``, or ``"64.1"`` for one
    seed (:func:`~encnet_lite.ablation.format_mean_std`)."""
    return format_mean_std(values, percent=True)


def score_table(result: Mapping[str, Any]) -> Table:
    """One line per row: pixAcc, mIoU (over seeds) and the mIoU gain over the FCN."""
    fcn = mean_std(result["fcn"]["mIoU"])[0]
    rows = []
    for k in rows_of(result):
        gain = mean_std(result[k]["mIoU"])[0] - fcn
        rows.append((SHORT[k], score(result[k]["pixAcc"]), score(result[k]["mIoU"]),
                     "" if k == "fcn" else _points(gain)))
    return ["model", "pixAcc (%)", "mIoU (%)", "mIoU vs FCN"], rows


def cap_lines(result: Mapping[str, Any]) -> List[str]:
    """The context-blind caps, the share of the pixels each context decides, and how many
    seeds of each row pass each cap."""
    caps, birds = result["blind_caps"], "bird_fraction" in result
    lines = [f"context-blind cap: mIoU {100 * caps['mIoU']:.1f} %, pixAcc "
             f"{100 * caps['pixAcc']:.1f} %",
             f"look-alikes: {100 * result['lookalike_fraction']:.1f} % of the val pixels"
             + (f", birds: {100 * result['bird_fraction']:.1f} %" if birds else "")]
    kind_only = caps.get("mIoU_kind_only")
    if kind_only is not None:
        lines.append(f"cap reading the kind but not the time: mIoU {100 * kind_only:.1f} %")
    lines.append("seeds above the blind cap" + (" / the kind-only cap:" if kind_only else ":"))
    for k in rows_of(result):
        m = result[k]["mIoU"]
        above = f"{sum(v > caps['mIoU'] for v in m)} of {len(m)}"
        if kind_only is not None:
            above += f" / {sum(v > kind_only for v in m)} of {len(m)}"
        lines.append(f"  {SHORT[k]}: {above}")
    return lines


def per_class_table(result: Mapping[str, Any]) -> Table:
    """One line per class: its IoU in each row (mean over seeds); :func:`gain_lines` gives
    the gain of each step per group. Look-alike classes are set in bold, birds in italics."""
    rows_here, groups = rows_of(result), class_groups(result)
    iou = {k: per_class_iou(result[k]).nanmean(0) for k in rows_here}  # (classes,)
    rows = []
    for c, name in enumerate(result["classes"]):
        mark = "**" if c in groups["look-alike"] else "*" if c in groups.get("bird", []) else ""
        cells = [f"{100 * float(iou[k][c]):.1f}" for k in rows_here]
        rows.append((f"{mark}{name}{mark}", *cells))
    return ["class", *(f"{SHORT[k]} IoU (%)" for k in rows_here)], rows


def gain_lines(result: Mapping[str, Any]) -> List[str]:
    """The mean IoU gain of each step on each group of classes (:func:`class_groups`)."""
    here = rows_of(result)
    lines = []
    for label, group in class_groups(result).items():
        gains = [_points(group_gain(result, lo, hi, group))
                 for lo, hi in zip(here, here[1:])]
        lines.append(f"{label} classes: " + ", ".join(
            f"step {i + 1} {g}" for i, g in enumerate(gains)) + " points of IoU")
    return lines


def k_sweep_table(result: Mapping[str, Any]) -> Table:
    """One line per number of codewords K of the sweep: mIoU, pixAcc and the mean IoU of
    the look-alikes (and birds); one seed per K gives single values (:func:`score`). (The
    run each K comes from is in the sweep's ``note``; a column for it would not fit a
    phone.)"""
    groups = class_groups(result)
    shown = [g for g in ("look-alike", "bird") if g in groups]
    rows = []
    for k, row in result["k_ablation"]["rows"].items():
        rows.append((k, score(row["mIoU"]), score(row["pixAcc"]),
                     *(f"{100 * _group_iou(row, groups[g]):.1f}" for g in shown)))
    return ["K", "mIoU (%)", "pixAcc (%)", *(f"{g} IoU (%)" for g in shown)], rows


def step_lines(result: Mapping[str, Any]) -> List[str]:
    """The verdict on each step of the paper's ordering
    (:func:`encnet_lite.ablation.ordering_steps`): gain, spread and whether it holds."""
    lines = []
    for step in ordering_steps(result):
        verdict = "holds" if step["holds"] else "does NOT hold"
        lines += [f"{SHORT[step['lo']]} -> {SHORT[step['hi']]}: "
                  f"{100 * step['gain']:+.1f} mIoU points,",
                  f"  sum of stds {100 * step['spread']:.1f}: the step {verdict}"]
    return lines


def density_table(results: Mapping[Tuple[int, int], Mapping[str, Any]]) -> Table:
    """Each row's mIoU over seeds (lines) at each range of look-alike objects per image
    (columns; ``results = {(fewest, most): result}``). :func:`density_lines` gives the
    verdicts."""
    ranges = sorted(results)
    rows = [(SHORT[k], *(score(results[r][k]["mIoU"]) if k in results[r] else "not run"
                         for r in ranges)) for k in PAPER_VARIANTS]
    return ["row", *(f"{lo}-{hi} per image" for lo, hi in ranges)], rows


def density_lines(results: Mapping[Tuple[int, int], Mapping[str, Any]]) -> List[str]:
    """Per range of look-alikes, whether each step of the ordering holds
    (:func:`encnet_lite.ablation.ordering_steps`)."""
    lines = []
    for (lo, hi), result in sorted(results.items()):
        verdicts = [f"step {i + 1} {'holds' if s['holds'] else 'does not hold'}"
                    for i, s in enumerate(ordering_steps(result))]
        lines.append(f"{lo}-{hi} look-alikes: " + ", ".join(verdicts))
    return lines


def codeword_lines(variants: Mapping[str, Mapping[str, Any]],
                   names: Tuple[str, str] = ("official", "shared_kmeans")) -> List[str]:
    """The codewords benchmark's encoding layers ``names = (a, b)`` side by side: for each,
    its number of seeds, mIoU over the seeds and live codewords per seed; then the gain of
    ``b`` over ``a`` against the spread (the sum of the two standard deviations), with the
    two deviations shown to 2 decimals so that the sum agrees with its parts."""
    lines = []
    for name in names:
        v = variants[name]
        live = ", ".join(f"{n:.0f}" for n in v["live_codewords"])
        lines.append(f"{name} ({len(v['mIoU'])} seeds): mIoU {score(v['mIoU'])} %, "
                     f"live codewords: {live}")
    (a, b), stds = names, [mean_std(variants[n]["mIoU"])[1] for n in names]
    d = gain_over_spread(variants[a]["mIoU"], variants[b]["mIoU"])
    where = "outside" if abs(d["gain"]) > d["spread"] else "inside"
    gain = round(100 * d["gain"], 2) + 0.0  # rounded first: no "-0.00"
    lines.append(f"{b} - {a}: {gain:+.2f} points, {where} the spread "
                 f"{100 * stds[0]:.2f} + {100 * stds[1]:.2f} = {100 * d['spread']:.2f}")
    return lines


def _without_runs_dir(command: str) -> str:
    """``command`` without its ``--runs-dir FOLDER``: where the run folders were kept says
    nothing about the result, and the folder is not in the repository."""
    words, kept = command.split(), []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--runs-dir":
            skip = True
        elif not word.startswith("--runs-dir="):
            kept.append(word)
    return " ".join(kept)


def provenance_lines(result: Mapping[str, Any], name: str) -> List[str]:
    """Where a saved result comes from: the file ``name``, date, machine, command (without
    its ``--runs-dir``), wall time and the budget of each run."""
    m, c = result["machine"], result["config"]
    return [f"showing: {name}, {result['date']}",
            f"  {m['cpu']} CPU ({m['cpu_count']} cores), torch {m['torch']}",
            f"  `{_without_runs_dir(result['command'])}`",
            f"  {result['seconds'] / 60:.1f} min wall time, {result['jobs']} runs at a "
            f"time, {c['threads']} thread(s) each",
            f"  each run: {c['epochs']} epochs of {c['num_train_images']} images, "
            f"batch {c['batch_size']}, lr {c['lr']}"]
