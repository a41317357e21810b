"""Segmentation metrics from a confusion matrix accumulated over a whole split.

With ``M[t, p]`` = number of labelled pixels of true class ``t`` predicted as ``p``
(pixels whose target is ``ignore_index`` are not counted):

- pixAcc = sum_c M[c, c] / sum M (correct labelled pixels / labelled pixels);
- IoU_c = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c]) (intersection / union);
- mIoU = mean of IoU_c over the classes, as the paper (PASCAL-Context: 59 classes).

A class absent from both the targets and the predictions has no IoU (None in
:meth:`ConfusionMatrix.compute`, NaN in :meth:`ConfusionMatrix.iou_per_class`) and is left
out of the mean, as torchmetrics' ``MulticlassJaccardIndex`` does. The official EncNet code
counts such a class as 0; over a whole validation split every class occurs, so the two
agree there and differ only on small subsets.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix", "upgrade_scores", "holds_percent_scores"]


class ConfusionMatrix:
    """Accumulates ``matrix: (num_classes, num_classes)`` int64, rows = target, cols = pred.

    ``update`` takes label maps on any device (the matrix lives on the first one it sees);
    ``merge`` adds another matrix, ``all_reduce`` sums over ``torch.distributed``
    processes, so each process can score its shard of a split.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if isinstance(num_classes, bool) or not hasattr(num_classes, "__index__") or \
                num_classes < 1:
            raise ValueError(f"num_classes must be a count >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix: Optional[Tensor] = None

    def _allocated(self, device: torch.device) -> Tensor:
        if self.matrix is None:
            n = self.num_classes
            self.matrix = torch.zeros(n, n, dtype=torch.int64, device=device)
        return self.matrix

    def reset(self) -> None:
        self.matrix = None

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> ConfusionMatrix:
        """Count ``pred`` vs ``target``: label maps of equal shape, e.g. ``(B, H, W)``.

        ``pred`` may also be scores with a class axis after the batch one,
        ``(B, classes, H, W)``: its argmax is used.
        """
        n = self.num_classes
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"target: a {target.dtype} mask {tuple(target.shape)}; masks hold "
                             "class ids: pass an integer tensor (e.g. mask.long())")
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != n:
                raise ValueError(f"pred: scores {tuple(pred.shape)} have {pred.shape[1]} "
                                 f"classes on axis 1, but this matrix counts {n}")
            pred = pred.argmax(1)
        elif pred.is_floating_point():
            raise ValueError(f"pred: a {pred.dtype} label map {tuple(pred.shape)}; pass class "
                             "ids (the argmax of the scores) or the scores (B, C, H, W)")
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        matrix = self._allocated(target.device)
        pred = pred.to(matrix.device).flatten().long()
        target = target.to(matrix.device).flatten().long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n):
            from .errors import DataError  # the masks, not the code, are wrong

            raise DataError(
                f"target: labels {sorted(set(target.unique().tolist()) - set(range(n)))} are "
                f"outside 0..{n - 1} (and {self.ignore_index} = ignore): the masks belong to "
                f"another dataset or class protocol than these {n} classes")
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= n):
            raise ValueError(f"pred: labels outside 0..{n - 1}")
        matrix += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts to this matrix (same number of classes)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        if other.matrix is not None:
            matrix = self._allocated(other.matrix.device)
            matrix += other.matrix.to(matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all processes (no-op without an initialised process group).

        Every process must call it. The matrix travels to this process's GPU under NCCL,
        to the CPU under gloo, and stays there.
        """
        if dist.is_available() and dist.is_initialized():
            nccl = dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else \
                torch.device("cpu")
            self.matrix = self._allocated(device).to(device)
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    # ----------------------------------------------------------------- scores

    def counts(self) -> Tensor:
        """``(num_classes, num_classes)`` int64 on the CPU, rows = target, cols = pred
        (zeros before any update): a copy, e.g. to save or to print."""
        if self.matrix is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self.matrix.detach().cpu().clone()

    def iou_per_class(self) -> Tensor:
        """``(num_classes,)`` float64 IoU per class; NaN where the union is empty."""
        m = self.counts().double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))

    def compute(self, absent_as_zero: bool = False) -> Dict[str, Any]:
        """The scores, all fractions (0..1): ``{"pixAcc": float, "mIoU": float, "IoU":
        [per class]}``; the one score format of the library (multiply by 100 only to print).

        A class absent from targets and predictions has IoU None and is left out of mIoU;
        with ``absent_as_zero`` it counts 0 in ``IoU`` and in the mean over all classes (the
        official code's ``SegmentationMetric``). Before any pixel: pixAcc and mIoU are NaN.
        """
        m = self.counts().double()
        total = m.sum()
        iou = self.iou_per_class()
        if absent_as_zero:
            iou = iou.nan_to_num(0.0)
        return {"pixAcc": float(m.diag().sum() / total) if total > 0 else math.nan,
                "mIoU": float(iou.nanmean()),
                "IoU": [None if math.isnan(v) else v for v in iou.tolist()]}

    def __repr__(self) -> str:
        counted = 0 if self.matrix is None else int(self.matrix.sum())
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={counted})"



# The keys of the score formats written before compute() was the only one: the ablation's
# and the codeword study's result files (percent), training histories (per-class IoU under
# "iou") and the scene caps. :func:`upgrade_scores` reads them; nothing writes them.
_OLD_KEYS = {"miou": "mIoU", "pixacc": "pixAcc", "iou": "IoU",
             "lookalike_iou": "lookalike_IoU", "bird_iou": "bird_IoU",
             "lookalike_pixacc": "lookalike_pixAcc",
             "miou_kind_only": "mIoU_kind_only", "miou_constant_guess": "mIoU_constant_guess"}
_PERCENT_SHARES = ("lookalike_fraction", "bird_fraction")  # percent in the old result files


def upgrade_scores(saved: Any, percent: bool = False) -> Any:
    """``saved`` (JSON-like: dicts, lists, numbers) in :meth:`ConfusionMatrix.compute`'s
    format: every old score key renamed (``miou`` -> ``mIoU``, ``pixacc`` -> ``pixAcc``,
    ``iou`` -> ``IoU``, ...) with NaN as None; ``percent``: those values and the pixel
    shares (``lookalike_fraction``, ``bird_fraction``) were percent and become fractions.
    Anything already in the current format comes back unchanged (a copy)."""
    if isinstance(saved, list):
        return [upgrade_scores(v, percent) for v in saved]
    if not isinstance(saved, dict):
        return saved
    out = {}
    for key, value in saved.items():
        if key in _OLD_KEYS:
            out[_OLD_KEYS[key]] = _fractions(value, 100.0 if percent else 1.0)
        elif percent and key in _PERCENT_SHARES:
            out[key] = _fractions(value, 100.0)
        else:
            out[key] = upgrade_scores(value, percent)
    return out


def holds_percent_scores(saved: Any) -> bool:
    """Whether ``saved`` (JSON-like) has a key of the old percent format (``miou``,
    ``pixacc``) anywhere: a result file of the ablation or the codeword study from before."""
    if isinstance(saved, list):
        return any(holds_percent_scores(v) for v in saved)
    return isinstance(saved, dict) and (
        "miou" in saved or "pixacc" in saved or any(map(holds_percent_scores, saved.values())))


def _fractions(value: Any, divisor: float) -> Any:
    """``value`` (a number or nested lists of them) divided by ``divisor``; NaN -> None."""
    if isinstance(value, list):
        return [_fractions(v, divisor) for v in value]
    if value is None or math.isnan(value):
        return None
    return value / divisor if divisor != 1.0 else float(value)
