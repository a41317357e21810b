"""ConfusionMatrix: pixAcc / mIoU by hand, against torchmetrics, merging (all_reduce in two
processes: test_gloo_group.py)."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from encnet_lite.metrics import ConfusionMatrix

IGNORE = 255


def random_pair(seed: int, classes: int = 5, shape=(3, 17, 23), ignore_frac: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, shape, generator=g)
    # Predictions right ~60% of the time, so the matrix is not uniform.
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target,
                       torch.randint(0, classes, shape, generator=g))
    target[torch.rand(shape, generator=g) < ignore_frac] = IGNORE
    return pred, target


def test_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = ConfusionMatrix(3).update(pred, target)
    # rows = target, cols = pred; the ignored pixel (pred 2) is not counted
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 1]]
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    # IoU_c = TP / (TP + FP + FN): class 0: 1/(1+1+1), class 1: 2/(2+1+1), class 2: 1/(1+1+1)
    iou = [1 / 3, 2 / 4, 1 / 3]
    assert cm.iou_per_class().tolist() == pytest.approx(iou)
    assert cm.mean_iou() == pytest.approx(sum(iou) / 3)
    assert cm.summary() == {"pixAcc": pytest.approx(4 / 7), "mIoU": pytest.approx(sum(iou) / 3)}


def numpy_reference(pred: np.ndarray, target: np.ndarray, classes: int):
    keep = target != IGNORE
    p, t = pred[keep], target[keep]
    acc = (p == t).mean()
    ious = []
    for c in range(classes):
        union = np.logical_or(p == c, t == c).sum()
        if union:
            ious.append(np.logical_and(p == c, t == c).sum() / union)
    return acc, float(np.mean(ious))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_and_torchmetrics_with_ignore_pixels(seed):
    classes = 6
    pred, target = random_pair(seed, classes)
    cm = ConfusionMatrix(classes, ignore_index=IGNORE).update(pred, target)
    acc, miou = numpy_reference(pred.numpy(), target.numpy(), classes)
    assert cm.pixel_accuracy() == pytest.approx(acc, abs=1e-12)
    assert cm.mean_iou() == pytest.approx(miou, abs=1e-12)
    jaccard = MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE)
    accuracy = MulticlassAccuracy(classes, average="micro", ignore_index=IGNORE)
    assert cm.mean_iou() == pytest.approx(float(jaccard(pred, target)), abs=1e-6)
    assert cm.pixel_accuracy() == pytest.approx(float(accuracy(pred, target)), abs=1e-6)
    per_class = MulticlassJaccardIndex(classes, average="none", ignore_index=IGNORE)
    torch.testing.assert_close(cm.iou_per_class().float(), per_class(pred, target))


def test_absent_class_is_nan_and_left_out_like_torchmetrics():
    classes = 5
    pred, target = random_pair(3, classes)
    pred[pred == 4], target[target == 4] = 0, 0  # class 4 never occurs
    cm = ConfusionMatrix(classes).update(pred, target)
    assert math.isnan(cm.iou_per_class()[4])
    assert cm.mean_iou() == pytest.approx(float(cm.iou_per_class()[:4].mean()))
    jaccard = MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE)
    assert cm.mean_iou() == pytest.approx(float(jaccard(pred, target)), abs=1e-6)


def test_accumulates_over_updates_and_merges():
    whole, parts = ConfusionMatrix(5), [ConfusionMatrix(5), ConfusionMatrix(5)]
    for seed in range(4):
        pred, target = random_pair(seed)
        whole.update(pred, target)
        parts[seed % 2].update(pred, target)
    merged = parts[0].merge(parts[1])
    assert torch.equal(merged.matrix, whole.matrix)
    assert merged.mean_iou() == whole.mean_iou()
    assert ConfusionMatrix(5).merge(whole).matrix.equal(whole.matrix)  # empty + x


def test_scores_are_argmaxed_and_labels_checked():
    pred, target = random_pair(0)
    scores = torch.nn.functional.one_hot(pred, 5).permute(0, 3, 1, 2).float()
    a = ConfusionMatrix(5).update(scores, target)
    b = ConfusionMatrix(5).update(pred, target)
    assert torch.equal(a.matrix, b.matrix)
    with pytest.raises(ValueError):
        ConfusionMatrix(5).update(pred, torch.full_like(target, 7))
    with pytest.raises(ValueError):
        ConfusionMatrix(5).update(pred[:1], target)


def test_empty_matrix():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.pixel_accuracy()) and math.isnan(cm.mean_iou())
    cm.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), IGNORE))
    assert int(cm.matrix.sum()) == 0


def test_all_reduce_without_process_group_is_a_no_op():
    cm = ConfusionMatrix(5).update(*random_pair(0))
    before = cm.matrix.clone()
    assert torch.equal(cm.all_reduce().matrix, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs():
    pred, target = random_pair(0)
    gpu = ConfusionMatrix(5).update(pred.cuda(), target.cuda())
    cpu = ConfusionMatrix(5).update(pred, target)
    assert gpu.matrix.is_cuda and torch.equal(gpu.matrix.cpu(), cpu.matrix)
    assert gpu.mean_iou() == cpu.mean_iou()
