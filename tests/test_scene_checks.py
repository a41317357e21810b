"""encnet_lite.data.scene_checks: the measurements the datasets appendix prints."""

import numpy as np
import pytest
import torch
from torch import nn

from encnet_lite.data import ContextScenes
from encnet_lite.data.scene_checks import (
    blind_confusion,
    closest_distance,
    grid_reach,
    largest_difference,
    pixel_counts,
)
from encnet_lite.data.scenes import Scene


def test_grid_reach_of_a_convolution_is_its_half_width():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 5, padding=2)
    assert grid_reach(conv, (32, 32), stride=1) == 2
    two = nn.Sequential(conv, nn.Conv2d(2, 2, 3, padding=2, dilation=2))
    assert grid_reach(two, (32, 32), stride=4) == 4  # 2 + 2 (3x3 at dilation 2)


def scene(image, mask):
    return Scene(image=image, mask=mask, kind=0, band=(0, 0), boxes=[])


def test_largest_difference_sees_only_the_window_around_the_classes():
    mask = np.zeros((20, 20), np.int64)
    mask[10, 10] = 3
    base = np.zeros((20, 20, 3), np.float32)
    other = base.copy()
    other[10, 14] = 0.5  # 4 px from the class-3 pixel
    renders = [scene(base, mask), scene(other, mask)]
    assert largest_difference(renders, [3], reach=3) == 0.0
    assert largest_difference(renders, [3], reach=4) == 0.5
    with pytest.raises(ValueError, match="no pixel of the classes"):  # no class-7 pixel
        largest_difference(renders, [7], reach=1)


def test_closest_distance_is_chebyshev_and_the_minimum_over_masks():
    a = np.zeros((10, 10), np.int64)
    a[0, 0], a[3, 5] = 1, 2
    b = np.zeros((10, 10), np.int64)
    b[9, 9], b[7, 8] = 1, 2
    assert closest_distance([a], [1], [2]) == 5
    assert closest_distance([a, b], [1], [2]) == 2
    assert closest_distance([a, np.zeros((4, 4), np.int64)], [1], [2]) == 5  # skipped
    with pytest.raises(ValueError, match="no mask holds both"):
        closest_distance([b], [1], [5])


def test_blind_confusion_redraws_only_within_each_group():
    truth = np.array([[0, 1, 2, 3, 4, 4]] * 50, np.int64)
    cm = blind_confusion([truth, truth], [[1, 2]], 5, np.random.default_rng(0))
    m = cm.counts().numpy()
    assert m.sum() == 2 * truth.size
    assert np.array_equal(np.diag(m)[[0, 3, 4]], [100, 100, 200])  # untouched, exact
    assert m[1:3, 1:3].sum() == 200 and m[1:3, [0, 3, 4]].sum() == 0  # stays in the group
    assert 0 < m[1, 2] < 100  # really drawn at random
    iou = cm.compute()["IoU"]
    assert iou[0] == iou[3] == iou[4] == 1.0 and iou[1] < 1.0
    # Two groups, one after the other: both are redrawn.
    cm = blind_confusion([truth], [[1, 2], [3, 4]], 5, np.random.default_rng(0))
    assert cm.counts()[3, 4] > 0 and cm.counts()[0, 0] == 50


def test_blind_confusion_on_context_scenes_approaches_the_cap():
    scenes = ContextScenes(num_images=30, size=128, split="val")
    cm = blind_confusion((scenes.mask(i) for i in range(30)), [scenes.context_classes],
                         scenes.num_classes, np.random.default_rng(0))
    iou = np.array(cm.compute()["IoU"], dtype=float)
    caps = scenes.caps()
    look = iou[scenes.context_classes]
    assert np.all(np.abs(look - caps["lookalike_IoU"]) < 0.05)  # 1/(2K-1) = 0.2
    others = np.delete(iou, scenes.context_classes)
    assert np.all(others == 1.0)


def test_the_look_alikes_surroundings_are_identical_across_kinds():
    from encnet_lite import models

    scenes = ContextScenes(num_images=8, size=128, seed=0)
    reach = grid_reach(models.fcn_tiny(num_classes=scenes.num_classes))
    renders = [scenes.render(4, kind=k) for k in range(scenes.num_kinds)]
    assert largest_difference(renders, scenes.context_classes, reach) == 0.0
    assert largest_difference(renders, scenes.context_classes, 128) > 0.0  # the cue differs
    assert closest_distance([renders[0].mask], scenes.cue_classes,
                            scenes.context_classes) >= scenes.cue_gap > reach


class Masks:
    num_classes = 4

    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def mask(self, i):
        return self.masks[i]


def test_pixel_counts_skip_the_ignore_label_and_stop_at_n():
    a = np.array([[0, 0, 255], [3, 3, 3]])
    b = np.array([[1, 1, 1], [1, 1, 1]])
    assert pixel_counts(Masks([a, b]), 1).tolist() == [2, 0, 0, 3]
    assert pixel_counts(Masks([a, b]), 10).tolist() == [2, 6, 0, 3]
