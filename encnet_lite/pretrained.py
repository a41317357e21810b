"""Looking at a published EncNet: what the book's chapter on the official model computes.

:mod:`encnet_lite.weights` loads the published models; this module describes them:

- :func:`catalogue_rows`: the catalogue as table rows (name, data, classes, scores, how scored);
- :func:`conversion_report`: what loading did to a file, tensor by tensor (renamed, dropped,
  bit-identical), from the file's own tensors and the loaded model;
- :func:`official_views`: the views and windows the official evaluation of PyTorch-Encoding
  (``MultiEvalModule``) runs for one image, from
  :func:`~encnet_lite.inference.official_view_size` and
  :func:`~encnet_lite.inference.window_spans`, the functions the evaluation itself uses;
- :func:`score_rows`: a score of ours beside the published one;
- :func:`look_inside` and :func:`presence_rows`: the Context Encoding Module's codeword
  assignments, gates and class-presence predictions on images of any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .inference import MS_SCALES, official_view_size, window_spans
from .weights import CATALOGUE, RULES, WeightsEntry, convert_state_dict

__all__ = ["Conversion", "Inside", "OfficialView", "catalogue_rows", "conversion_report",
           "look_inside", "official_views", "presence_rows", "score_rows"]

Span = Tuple[int, int]


def _how(protocols: Sequence[str]) -> str:
    """The short names of an entry's published protocols: who measured (``official`` or
    ``mmseg``), then ``ss`` (single scale) and ``ms + flip`` (multi-scale with flips)."""
    who = "mmseg" if protocols[0].startswith("mmsegmentation") else "official"
    kinds = ["ss" if "single scale" in p else "ms + flip" for p in protocols]
    return f"{who} {'; '.join(kinds)}"


def catalogue_rows(entries: Optional[Sequence[WeightsEntry]] = None
                   ) -> List[Tuple[str, str, int, str, str]]:
    """One row per entry (default: the whole catalogue): name, dataset, number of classes,
    published mIoU [/ pixAcc] in percent (several scores separated by ``;``), and how each
    was measured."""
    rows = []
    for e in CATALOGUE.values() if entries is None else entries:
        digits = 1 if e.source == "official" else 2  # as published
        scores = "; ".join(f"{100 * s.mIoU:.{digits}f}" +
                           (f" / {100 * s.pixAcc:.1f}" if s.pixAcc else "") for s in e.scores)
        rows.append((e.name, e.dataset, e.num_classes, scores,
                     _how([s.protocol for s in e.scores])))
    return rows


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class Conversion:
    """What loading a published file did (see :func:`conversion_report`)."""

    keys: int  # tensors in the file
    renamed: int  # loaded under another name
    kept: int  # loaded under the same name
    dropped: Tuple[str, ...]  # published keys not loaded (the known-unused ones)
    filled: Tuple[str, ...]  # our keys the file lacks (BN counters, set to 0)
    identical: int  # loaded tensors equal to the file's, bit for bit and in dtype
    differing: Tuple[str, ...]  # published names of loaded tensors that are not
    by_rule: Tuple[Tuple[str, str, int, str], ...]  # (published prefix, ours, keys, first key)


def _rule_index(key: str, rules: Sequence[Tuple[str, str]]) -> int:
    """The first rule whose published prefix ``key`` starts with (first match wins)."""
    return next(i for i, (old, _) in enumerate(rules) if key.startswith(old))


def conversion_report(published: Mapping[str, Tensor], model: nn.Module,
                      entry: WeightsEntry) -> Conversion:
    """Compare the file's tensors ``published`` (its own key names, e.g. from
    :func:`~encnet_lite.weights.read_state_dict`) with ``model``, loaded from that file:
    every loaded tensor is looked up under its new name and compared bit for bit."""
    converted, origin, _ = convert_state_dict(published, entry.rules)
    ours = model.state_dict()
    differing = tuple(origin[k] for k, v in converted.items()
                      if k not in ours or ours[k].dtype != v.dtype
                      or not torch.equal(ours[k].cpu(), v))
    rules = RULES[entry.rules]
    counts = [0] * len(rules)
    examples = [""] * len(rules)
    for old in origin.values():
        i = _rule_index(old, rules)
        counts[i] += 1
        examples[i] = examples[i] or old
    renamed = sum(new != old for new, old in origin.items())
    return Conversion(
        keys=len(published), renamed=renamed, kept=len(origin) - renamed,
        dropped=tuple(sorted(set(published) - set(origin.values()))),
        filled=tuple(sorted(set(ours) - set(converted))),
        identical=len(converted) - len(differing), differing=differing,
        by_rule=tuple((old, new, n, ex) for (old, new), n, ex in zip(rules, counts, examples)
                      if n))


# --------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class OfficialView:
    """One scale of the official evaluation of an image: the view's size and its windows
    (``(start, stop)`` along each side; a window shorter than ``crop`` is padded)."""

    scale: float
    height: int
    width: int
    rows: Tuple[Span, ...]
    cols: Tuple[Span, ...]
    crop: int

    @property
    def windows(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def padded(self) -> bool:
        """Whether some window is padded to ``crop x crop`` with black."""
        return any(b - a < self.crop for a, b in self.rows + self.cols)


def official_views(height: int, width: int, base_size: int = 520, crop_size: int = 480,
                   scales: Sequence[float] = MS_SCALES, stride: Optional[int] = None
                   ) -> List[OfficialView]:
    """The views of a ``height x width`` image that
    :func:`~encnet_lite.inference.predict_official` scores, one per scale (``stride``:
    default ``2/3 crop_size``, as there)."""
    stride = max(1, crop_size * 2 // 3) if stride is None else stride
    views = []
    for s in scales:
        h, w = official_view_size(height, width, base_size, s)
        views.append(OfficialView(s, h, w, tuple(window_spans(h, crop_size, stride, clip=True)),
                                  tuple(window_spans(w, crop_size, stride, clip=True)),
                                  crop_size))
    return views


# --------------------------------------------------------------------------- scores


def score_rows(result: Mapping[str, Any], entry: WeightsEntry, who: str = "this library"
               ) -> List[Tuple[str, str, str, str]]:
    """Rows (who, pixAcc %, mIoU %, what the mean is over) of ``result`` (from
    :func:`~encnet_lite.evaluate.evaluate` with ``protocol="official"``) and of ``entry``'s
    published scores. Where some class occurs neither in the labels nor in the predictions,
    a second row of ours gives the mean over the classes that do (how the default protocol
    averages): on a subset of the images the official mean counts the others as 0."""
    from .metrics import ConfusionMatrix

    cm = ConfusionMatrix(entry.num_classes)
    cm.matrix = torch.tensor(result["confusion"], dtype=torch.int64)
    occurring_only = cm.compute()  # the default protocol: the classes that occur
    occurring = sum(x is not None for x in occurring_only["IoU"])
    n, c = result["num_images"], entry.num_classes
    rows = [(f"{who}, {n} images", f"{100 * result['pixAcc']:.1f}",
             f"{100 * result['mIoU']:.1f}", f"all {c} classes, an absent one counting 0")]
    if occurring < c:
        rows.append((f"{who}, {n} images", "", f"{100 * occurring_only['mIoU']:.1f}",
                     f"the {occurring} classes that occur"))
    digits = 1 if entry.source == "official" else 2  # as published
    for s in entry.scores:
        acc = f"{100 * s.pixAcc:.1f}" if s.pixAcc is not None else ""
        rows.append((f"published ({s.where.split(',')[0]})", acc, f"{100 * s.mIoU:.{digits}f}",
                     f"all {c} classes, the whole val split"))
    return rows


# --------------------------------------------------------------------------- inside


class Inside(NamedTuple):
    """What the Context Encoding Module computed for each image."""

    assignments: List[Tensor]  # per image (h, w, K): soft assignments on the stride-8 grid
    gamma: Tensor  # (N, C) channel gates
    se: Tensor  # (N, classes) presence logits of the SE branch


@torch.no_grad()
def look_inside(model: nn.Module, images: Sequence[Tensor]) -> Inside:
    """Run an EncNet (eval mode, no autograd) on each of ``images`` (``(3, H, W)`` each,
    normalised; sizes may differ) and keep, on the CPU, the codeword assignments of its
    encoding layer (the module's input is caught with a hook, so the backbone runs once per
    image), ``gamma`` and the SE logits."""
    from .context import find_context_encoding

    module = find_context_encoding(model)
    if module is None or getattr(module, "fc_se", None) is None:
        raise ValueError("look_inside needs an EncNet with an SE branch (se_loss=True)")
    device = next(model.parameters()).device
    caught: List[Tensor] = []
    hook = module.register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
    assign, gamma, se = [], [], []
    try:
        for image in images:
            out = model.eval()(image[None].to(device))
            x = caught.pop()
            a = module.assignments(x).reshape(x.shape[-2], x.shape[-1], -1)
            assign.append(a.float().cpu())
            gamma.append(out["gamma"][0].float().cpu())
            se.append(out["se"][0].float().cpu())
    finally:
        hook.remove()
    return Inside(assign, torch.stack(gamma), torch.stack(se))


def presence_rows(se: Tensor, masks: Sequence[Tensor], classes: Sequence[str], top: int = 4,
                  ignore_index: int = 255) -> List[Tuple[int, str, str, str]]:
    """Per image: (index, classes in its mask, the ``top`` classes by ``sigmoid(se)`` with
    their probabilities, how many of those are in the mask). ``se: (N, classes)`` logits,
    ``masks``: N label maps ``(H, W)`` of any sizes."""
    rows = []
    for i, (logits, mask) in enumerate(zip(se, masks)):
        present = [int(c) for c in mask.unique() if int(c) != ignore_index]
        prob = torch.sigmoid(logits.float())
        best = prob.topk(min(top, len(prob))).indices.tolist()
        rows.append((i, ", ".join(classes[c] for c in present),
                     ", ".join(f"{classes[c]} {prob[c]:.2f}" for c in best),
                     f"{sum(c in present for c in best)} of {len(best)}"))
    return rows
