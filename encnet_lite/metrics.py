"""Segmentation metrics from a confusion matrix accumulated over a whole split.

With ``M[t, p]`` = number of labelled pixels of true class ``t`` predicted as ``p``
(pixels whose target is ``ignore_index`` are not counted):

- pixAcc = sum_c M[c, c] / sum M (correct labelled pixels / labelled pixels);
- IoU_c = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c]) (intersection / union);
- mIoU = mean of IoU_c over the classes, as the paper (PASCAL-Context: 59 classes).

A class absent from both the targets and the predictions has no IoU (NaN) and is left out
of the mean, as torchmetrics' ``MulticlassJaccardIndex`` does. The official EncNet code
counts such a class as 0; over a whole validation split every class occurs, so the two
agree there and differ only on small subsets.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix", "finite_or_none"]


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

    def _ensure(self, device: torch.device) -> Tensor:
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
        matrix = self._ensure(target.device)
        pred = pred.to(matrix.device).flatten().long()
        target = target.to(matrix.device).flatten().long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n):
            raise ValueError(
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
            matrix = self._ensure(other.matrix.device)
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
            self.matrix = self._ensure(device).to(device)
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    # ----------------------------------------------------------------- scores

    def _float(self) -> Tensor:
        return self._ensure(torch.device("cpu")).double()

    def pixel_accuracy(self) -> float:
        """Correct labelled pixels / labelled pixels (NaN before any pixel was counted)."""
        m = self._float()
        total = m.sum()
        return float(m.diag().sum() / total) if total > 0 else float("nan")

    def iou_per_class(self) -> Tensor:
        """``(num_classes,)`` float64 IoU per class; NaN where the union is empty."""
        m = self._float()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))

    def mean_iou(self, absent_as_zero: bool = False) -> float:
        """Mean IoU over the classes that occur (in targets or predictions); with
        ``absent_as_zero``, the plain mean over all classes, an absent class counting 0
        (the official code's ``SegmentationMetric``)."""
        iou = self.iou_per_class()
        return float(iou.nan_to_num(0.0).mean() if absent_as_zero else iou.nanmean())

    def summary(self) -> Dict[str, float]:
        """``{"pixAcc": ..., "mIoU": ...}``."""
        return {"pixAcc": self.pixel_accuracy(), "mIoU": self.mean_iou()}

    def __repr__(self) -> str:
        counted = 0 if self.matrix is None else int(self.matrix.sum())
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={counted})"


def finite_or_none(values: Iterable[float]) -> List[Optional[float]]:
    """``values`` as floats with NaN and Inf turned into None (null in JSON, which has no
    NaN): e.g. the IoU of a class absent from both targets and predictions."""
    return [float(v) if math.isfinite(float(v)) else None for v in values]
