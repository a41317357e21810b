"""Checks of the ContextScenes construction that the datasets appendix prints.

A model blind to the scene cue is capped (:func:`~encnet_lite.data.scenes.blind_caps`) only
if the look-alikes' surroundings carry no trace of the cue. These functions measure that on
rendered scenes, and score the best blind labelling:

- :func:`grid_reach`: how far from a pixel a model's prediction there can look;
- :func:`largest_difference`: whether renders of one layout differ near some classes;
- :func:`closest_distance`: the Chebyshev distance between two groups of classes;
- :func:`blind_confusion`: the confusion matrix of :func:`~encnet_lite.data.scenes.blind_guess`;
- :func:`pixel_counts`: labelled pixels per class, read from the masks only.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..metrics import ConfusionMatrix
from .scenes import Scene, blind_guess

__all__ = ["blind_confusion", "closest_distance", "grid_reach", "largest_difference",
           "pixel_counts"]


def grid_reach(model: nn.Module, size: Tuple[int, int] = (128, 128), stride: int = 8) -> int:
    """The largest Chebyshev distance (px) from an output pixel to an input pixel its
    prediction depends on, over every phase of the model's ``stride`` grid (the pixels
    ``(r, r)`` for ``stride`` consecutive ``r`` near the centre of a ``size`` input)."""
    from ..models import input_support

    start = (min(size) // 2 // stride - 1) * stride
    reach = 0
    for r in range(start, start + stride):
        ys, xs = np.nonzero(input_support(model, size, pixel=(r, r)).numpy())
        reach = max(reach, int(np.abs(ys - r).max()), int(np.abs(xs - r).max()))
    return reach


def largest_difference(renders: Sequence[Scene], classes: Sequence[int], reach: int) -> float:
    """The largest absolute pixel difference between ``renders[0]`` and each other render
    (the same layout as another kind or time), inside the squares of half-width ``reach``
    around the pixels of ``classes`` in ``renders[0].mask``; 0.0 where nothing differs."""
    near = np.isin(renders[0].mask, classes)
    if not near.any():
        raise ValueError(f"largest_difference: no pixel of the classes {list(classes)} in the "
                         "first render; pass classes that its mask holds")
    window = ndimage.maximum_filter(near, size=2 * reach + 1)
    return max(float(np.abs(r.image[window] - renders[0].image[window]).max())
               for r in renders)


def closest_distance(masks: Iterable[np.ndarray], sources: Sequence[int],
                     targets: Sequence[int]) -> int:
    """The smallest Chebyshev distance (px) from a pixel of ``targets`` to a pixel of
    ``sources``, over label maps ``masks`` (each ``(H, W)``; those without a target pixel
    are skipped). Raises ``ValueError`` if no mask has both."""
    best = None
    for mask in masks:
        hit = np.isin(mask, targets)
        if hit.any() and np.isin(mask, sources).any():
            far = ndimage.distance_transform_cdt(~np.isin(mask, sources), metric="chessboard")
            best = int(far[hit].min()) if best is None else min(best, int(far[hit].min()))
    if best is None:
        raise ValueError("closest_distance: no mask holds both the sources and the targets; "
                         "pass masks that contain both groups of classes")
    return best


def blind_confusion(masks: Iterable[np.ndarray], groups: Sequence[Sequence[int]],
                    num_classes: int, rng: np.random.Generator) -> ConfusionMatrix:
    """The confusion matrix of the best blind labelling of ``masks`` (each ``(H, W)``):
    every pixel keeps its true class, except that within each of ``groups`` (e.g. the
    look-alike classes, then the birds) its class is drawn at random
    (:func:`~encnet_lite.data.scenes.blind_guess`, group after group)."""
    cm = ConfusionMatrix(num_classes)
    for truth in masks:
        guess = truth
        for group in groups:
            guess = blind_guess(guess, list(group), rng)
        cm.update(torch.from_numpy(guess), torch.from_numpy(truth))
    return cm


def pixel_counts(dataset, n: int, ignore_index: int = 255) -> np.ndarray:
    """``(num_classes,)`` labelled pixels per class over the first ``n`` images of
    ``dataset`` (its ``mask(i)``: the label maps only, no image decoding)."""
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    for i in range(min(n, len(dataset))):
        m = np.asarray(dataset.mask(i)).ravel()
        counts += np.bincount(m[m != ignore_index], minlength=dataset.num_classes)
    return counts
