"""ConfusionMatrix: compute() by hand, against torchmetrics, merging (all_reduce in two
processes: test_gloo_group.py); old score formats read back (upgrade_scores)."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from encnet_lite.metrics import ConfusionMatrix, holds_percent_scores, upgrade_scores

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
    # IoU_c = TP / (TP + FP + FN): class 0: 1/(1+1+1), class 1: 2/(2+1+1), class 2: 1/(1+1+1)
    iou = [1 / 3, 2 / 4, 1 / 3]
    assert cm.iou_per_class().tolist() == pytest.approx(iou)
    assert cm.compute() == {"pixAcc": pytest.approx(4 / 7), "mIoU": pytest.approx(sum(iou) / 3),
                            "IoU": pytest.approx(iou)}


def test_compute_on_a_hand_made_matrix_with_an_absent_class():
    cm = ConfusionMatrix(4)
    # class 3 occurs neither as truth nor as prediction; class 2 is predicted, never true
    cm.matrix = torch.tensor([[3, 1, 0, 0], [0, 4, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    default, official = cm.compute(), cm.compute(absent_as_zero=True)
    # class 0: 3 / (4 + 3 - 3); class 1: 4 / (6 + 5 - 4); class 2: 0 / (0 + 2 - 0)
    iou = [3 / 4, 4 / 7, 0.0]
    assert default["pixAcc"] == pytest.approx(7 / 10) == official["pixAcc"]
    assert default["IoU"][:3] == pytest.approx(iou) and default["IoU"][3] is None
    assert default["mIoU"] == pytest.approx(sum(iou) / 3)  # the absent class is left out
    assert official["IoU"] == pytest.approx(iou + [0.0])  # ... or counts 0
    assert official["mIoU"] == pytest.approx(sum(iou) / 4)
    assert all(type(v) is float for v in (default["pixAcc"], default["mIoU"], *iou))
    counts = cm.counts()
    assert counts.dtype == torch.int64 and counts.device.type == "cpu"
    counts[0, 0] = 99  # a copy: the matrix is untouched
    assert int(cm.matrix[0, 0]) == 3


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
    acc, mean_iou = numpy_reference(pred.numpy(), target.numpy(), classes)
    got = cm.compute()
    assert got["pixAcc"] == pytest.approx(acc, abs=1e-12)
    assert got["mIoU"] == pytest.approx(mean_iou, abs=1e-12)
    jaccard = MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE)
    accuracy = MulticlassAccuracy(classes, average="micro", ignore_index=IGNORE)
    assert got["mIoU"] == pytest.approx(float(jaccard(pred, target)), abs=1e-6)
    assert got["pixAcc"] == pytest.approx(float(accuracy(pred, target)), abs=1e-6)
    per_class = MulticlassJaccardIndex(classes, average="none", ignore_index=IGNORE)
    torch.testing.assert_close(cm.iou_per_class().float(), per_class(pred, target))


def test_absent_class_is_nan_and_left_out_like_torchmetrics():
    classes = 5
    pred, target = random_pair(3, classes)
    pred[pred == 4], target[target == 4] = 0, 0  # class 4 never occurs
    cm = ConfusionMatrix(classes).update(pred, target)
    assert math.isnan(cm.iou_per_class()[4]) and cm.compute()["IoU"][4] is None
    assert cm.compute()["mIoU"] == pytest.approx(float(cm.iou_per_class()[:4].mean()))
    jaccard = MulticlassJaccardIndex(classes, average="macro", ignore_index=IGNORE)
    assert cm.compute()["mIoU"] == pytest.approx(float(jaccard(pred, target)), abs=1e-6)


def test_accumulates_over_updates_and_merges():
    whole, parts = ConfusionMatrix(5), [ConfusionMatrix(5), ConfusionMatrix(5)]
    for seed in range(4):
        pred, target = random_pair(seed)
        whole.update(pred, target)
        parts[seed % 2].update(pred, target)
    merged = parts[0].merge(parts[1])
    assert torch.equal(merged.matrix, whole.matrix)
    assert merged.compute() == whole.compute()
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
    assert torch.equal(cm.counts(), torch.zeros(3, 3, dtype=torch.int64))
    empty = cm.compute()
    assert math.isnan(empty["pixAcc"]) and math.isnan(empty["mIoU"])
    assert empty["IoU"] == [None, None, None]
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
    assert gpu.compute() == cpu.compute() and torch.equal(gpu.counts(), cpu.counts())


def test_old_score_records_are_read_in_the_current_format():
    # a training history record (fractions, per-class IoU under "iou", NaN where absent)
    record = {"epoch": 3, "pixAcc": 0.9, "mIoU": 0.6, "iou": [0.5, float("nan"), 0.7]}
    assert upgrade_scores([record]) == [{"epoch": 3, "pixAcc": 0.9, "mIoU": 0.6,
                                         "IoU": [0.5, None, 0.7]}]
    # a result file in percent (the ablation's: runs, caps, pixel shares)
    old = {"units": "percent", "lookalike_fraction": 12.5,
           "blind_caps": {"miou": 66.0, "lookalike_iou": 20.0, "miou_kind_only": 88.0},
           "fcn": {"seeds": [0, 1], "miou": [64.0, 62.0], "pixacc": [90.0, 91.0],
                   "iou": [[50.0, float("nan")], [40.0, 30.0]], "loss": [0.25, 0.5]}}
    assert holds_percent_scores(old) and not holds_percent_scores(upgrade_scores(old, True))
    new = upgrade_scores(old, percent=True)
    assert new["lookalike_fraction"] == pytest.approx(0.125)
    assert new["blind_caps"] == pytest.approx({"mIoU": 0.66, "lookalike_IoU": 0.2,
                                               "mIoU_kind_only": 0.88})
    fcn = new["fcn"]
    assert fcn["mIoU"] == pytest.approx([0.64, 0.62]) and fcn["pixAcc"] == pytest.approx([0.9, 0.91])
    assert fcn["IoU"][0][1] is None and fcn["IoU"][1] == pytest.approx([0.4, 0.3])
    assert fcn["loss"] == [0.25, 0.5] and fcn["seeds"] == [0, 1]  # not scores: untouched
    assert upgrade_scores(new) == new  # the current format comes back as it is
