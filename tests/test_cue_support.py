"""cue_support: the look-alike pixel nearest the cue, its support, the cue pixels inside."""

import numpy as np
import torch
from torch import nn

from encnet_lite.cue_support import closest_lookalike_pixel, cue_support
from encnet_lite.data import ContextScenes
from encnet_lite.models import fcn_tiny, receptive_field


class WholeImage(nn.Module):
    """Every output pixel depends on every input pixel: (B, 3, H, W) -> (B, 1, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((1, 2, 3))[:, None, None, None].expand(-1, 1, *x.shape[2:])


def test_closest_lookalike_pixel_is_the_lookalike_row_nearest_the_band():
    ds = ContextScenes(6, split="val")
    for index in range(len(ds)):
        scene = ds.render(index)
        row, col = closest_lookalike_pixel(ds, index)
        look = np.isin(scene.mask, ds.context_classes)
        assert look[row, col]
        rows = np.nonzero(look.any(1))[0]
        if scene.band[0] == 0:  # band on top: no look-alike row above the chosen one
            assert row == rows.min()
        else:
            assert row == rows.max()


def test_the_tiny_fcn_sees_no_cue_and_its_support_is_its_receptive_field():
    ds = ContextScenes(4, split="val")
    torch.manual_seed(0)
    model = fcn_tiny(num_classes=ds.num_classes)
    rf = receptive_field(model)
    unclipped = 0
    for index in range(len(ds)):
        got = cue_support(model, ds, index)
        assert got.cue_pixels == 0
        assert got.band_gap >= ds.cue_gap  # the dataset's promise, measured from the pixel
        assert got.rows[0] <= got.pixel[0] <= got.rows[1]
        inside = got.rows[0] > 0 and got.rows[1] < ds.size - 1
        if inside:  # not clipped by the image border: the window is exactly rf tall
            assert got.height == rf
            unclipped += 1
        assert got.support.sum() == got.height * got.width  # a full rectangle
    assert unclipped > 0  # the height check above ran


def test_a_model_that_sees_everything_sees_every_cue_pixel():
    ds = ContextScenes(2, split="val")
    scene = ds.render(1)
    got = cue_support(WholeImage(), ds, 1, pixel=(5, 7))
    assert got.pixel == (5, 7)
    assert got.support.all()
    assert (got.height, got.width) == (ds.size, ds.size)
    assert got.cue_pixels == int(np.isin(scene.mask, ds.cue_classes).sum()) > 0
    assert got.band == scene.band
