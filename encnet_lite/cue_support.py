"""Does a pixel's prediction see the scene's cue? The measured input support of one output
pixel of a convolutional model on a :class:`~encnet_lite.data.ContextScenes` image, set
against the cue band (chapter 1: an FCN's receptive field misses the cue that decides the
look-alike classes).

:func:`closest_lookalike_pixel` picks the look-alike pixel nearest the band, the one most
likely to see it; :func:`cue_support` measures that pixel's support with
:func:`~encnet_lite.models.input_support` and counts the cue pixels inside it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np
from torch import nn

from .models import input_support


class CueSupport(NamedTuple):
    """One output pixel's support on one scene, and the cue it sees."""

    pixel: Tuple[int, int]  # (row, col) of the output pixel
    support: np.ndarray  # (H, W) bool: the input pixels it depends on
    band: Tuple[int, int]  # rows [start, stop) of the scene's cue band
    rows: Tuple[int, int]  # first and last row of the support
    cols: Tuple[int, int]  # first and last column of the support
    band_gap: int  # rows from the pixel to the nearest row of the band
    cue_pixels: int  # cue pixels (any of ``dataset.cue_classes``) inside the support

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0] + 1

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0] + 1


def closest_lookalike_pixel(dataset, index: int) -> Tuple[int, int]:
    """``(row, col)`` of the look-alike pixel nearest the cue band of image ``index``: on
    the object row closest to the band, the middle of that row's look-alike pixels."""
    scene = dataset.render(index)
    look = np.isin(scene.mask, dataset.context_classes)  # (H, W)
    rows = np.nonzero(look.any(1))[0]
    row = int(rows.min() if scene.band[0] == 0 else rows.max())  # band on top or at bottom
    return row, int(np.nonzero(look[row])[0].mean())


def cue_support(model: nn.Module, dataset, index: int,
                pixel: Optional[Tuple[int, int]] = None) -> CueSupport:
    """The support of output pixel ``pixel`` (default: :func:`closest_lookalike_pixel`) of
    ``model`` on image ``index`` of ``dataset`` (a ContextScenes), and the cue inside it.

    ``model`` maps ``(1, 3, H, W)`` to ``(1, C, H, W)`` (or a dict with ``"main"``); it is
    not modified (:func:`~encnet_lite.models.input_support` probes a copy).
    """
    scene = dataset.render(index)
    if pixel is None:
        pixel = closest_lookalike_pixel(dataset, index)
    row, col = int(pixel[0]), int(pixel[1])
    support = input_support(model, (dataset.size, dataset.size), pixel=(row, col)).numpy()
    ys, xs = np.nonzero(support)
    start, stop = scene.band
    gap = row - stop + 1 if start == 0 else start - row  # 1 = the row next to the band
    cue = np.isin(scene.mask, dataset.cue_classes)
    return CueSupport((row, col), support, (start, stop), (int(ys.min()), int(ys.max())),
                      (int(xs.min()), int(xs.max())), int(gap), int((support & cue).sum()))
