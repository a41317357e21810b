"""Losses: per-pixel cross-entropy, the auxiliary head's CE and the Semantic Encoding loss.

The SE-loss asks, for each class, "is it anywhere in this image?": binary cross-entropy
between the SE logits ``(B, num_classes)`` and presence targets built from the mask.
Every present class weighs the same, whatever its area.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LossTerms(NamedTuple):
    """The weighted total and each unweighted term (for logging)."""

    total: Tensor
    main: Tensor
    aux: Tensor
    se: Tensor


def check_labels(mask: Tensor, num_classes: int, ignore_index: int = 255, *,
                 wait: bool = True) -> None:
    """Raise ``ValueError`` naming the labels of ``mask`` outside ``[0, num_classes)``.

    On the CPU the check is one elementwise pass and one ``any``. On a GPU, reading the
    answer back makes the host wait for the GPU (a sync per call): ``wait=False`` instead
    queues ``torch._assert_async`` on a CUDA mask, which fails the process at a later
    sync, without naming the labels, if a bad one is there (CUDA's cross-entropy would
    stop it as uncleanly without the check). ``unique``, which names the bad values, only
    runs when something is wrong.
    """
    bad = ((mask < 0) | (mask >= num_classes)) & (mask != ignore_index)
    if not wait and mask.device.type == "cuda":
        torch._assert_async(~bad.any())
        return
    if bool(bad.any()):
        values = torch.unique(mask[bad]).tolist()
        raise ValueError(
            f"mask has labels {values} outside [0, {num_classes}) that are not the "
            f"ignore label {ignore_index}"
        )


def check_mask(mask: Tensor, name: str = "mask") -> None:
    """Raise ``ValueError`` unless ``mask`` is a ``(B, H, W)`` tensor of integer class ids
    (shape and dtype only: free, no GPU sync). A float mask is refused rather than
    truncated: 2.7 would silently become class 2."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (B, H, W), got {type(mask).__name__}")
    if mask.dim() != 3:
        raise ValueError(f"{name} must be (B, H, W) class ids, got shape {tuple(mask.shape)}"
                         + (": add the batch axis, mask[None]" if mask.dim() == 2 else ""))
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got {mask.dtype} "
                         f"{tuple(mask.shape)}: convert it with .long() after checking that "
                         "its values are whole class ids")


def presence_targets(mask: Tensor, num_classes: int, ignore_index: int = 255,
                     validate: bool = True) -> Tensor:
    """Which classes occur in each image: ``mask: (B, H, W)`` int -> ``(B, num_classes)``
    float in {0, 1}. Pixels labelled ``ignore_index`` do not count; an image with no
    labelled pixel gets all zeros.
    """
    check_mask(mask)  # a 2-D mask would count each row as an image
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if validate:
        check_labels(mask, num_classes, ignore_index)
    # Send ignored pixels to an extra column num_classes, then drop that column.
    labels = mask.flatten(1).long().masked_fill(mask.flatten(1) == ignore_index, num_classes)
    present = torch.zeros(mask.shape[0], num_classes + 1, device=mask.device)
    present.scatter_(1, labels, 1.0)
    return present[:, :num_classes]


def se_loss(logits: Tensor, mask: Tensor, ignore_index: int = 255,
            validate: bool = True) -> Tensor:
    """Semantic Encoding loss: mean binary cross-entropy (with logits) between
    ``logits: (B, num_classes)`` and the presence targets of ``mask: (B, H, W)``.
    """
    targets = presence_targets(mask, logits.shape[1], ignore_index, validate=validate)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def pixel_cross_entropy(logits: Tensor, mask: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean CE over the labelled pixels of ``mask: (B, H, W)``; ``logits: (B, classes, H, W)``.

    Same as ``F.cross_entropy(..., ignore_index=...)`` except that a batch with no
    labelled pixel (a crop made of padding) gives 0 instead of NaN.
    """
    check_mask(mask)
    if logits.dim() != 4 or logits.shape[0] != mask.shape[0] or \
            logits.shape[2:] != mask.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} must be (B, classes, H, W) for a mask "
                         f"{tuple(mask.shape)} (B, H, W)")
    total = F.cross_entropy(logits, mask.long(), ignore_index=ignore_index, reduction="sum")
    count = (mask != ignore_index).sum().clamp(min=1)
    return total / count


class SegmentationLoss(nn.Module):
    """``CE(main) + aux_weight * CE(aux) + se_weight * BCE(se, presence)``.

    Called on the model's output dict: ``main: (B, classes, H, W)`` always, ``aux`` and
    ``se`` when present (a missing key makes that term 0, not added). Returns
    :class:`LossTerms`. ``validate`` checks the mask's labels (:func:`check_labels`) at
    every call: on a CPU mask with the clear error each time; on a CUDA mask with the clear
    error at the first call (one sync: a wrong ``num_classes`` shows at once), then without
    a host sync (``wait=False``), so that training steps keep the GPU ahead of the host.
    """

    def __init__(self, se_weight: float = 0.2, aux_weight: float = 0.2,
                 ignore_index: int = 255, validate: bool = True) -> None:
        super().__init__()
        self.se_weight = se_weight
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.validate = validate
        self._waited = False  # whether the first (synchronous) label check has run

    def forward(self, outputs: Mapping[str, Tensor], mask: Tensor) -> LossTerms:
        logits = outputs["main"]
        if mask.dim() == 4 and mask.shape[1] == 1:  # (B, 1, H, W) -> (B, H, W)
            mask = mask.squeeze(1)
        check_mask(mask)
        mask = mask.long()
        if self.validate:
            check_labels(mask, logits.shape[1], self.ignore_index, wait=not self._waited)
            self._waited = True
        main = pixel_cross_entropy(logits, mask, self.ignore_index)
        zero = logits.new_zeros(())
        aux = se = zero
        total = main
        if outputs.get("aux") is not None:
            aux = pixel_cross_entropy(outputs["aux"], mask, self.ignore_index)
            total = total + self.aux_weight * aux
        if outputs.get("se") is not None:
            se = se_loss(outputs["se"], mask, self.ignore_index, validate=False)
            total = total + self.se_weight * se
        return LossTerms(total, main, aux, se)
