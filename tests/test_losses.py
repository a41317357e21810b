"""Presence targets, the SE-loss and the combined segmentation loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from encnet_lite.losses import LossTerms, SegmentationLoss, presence_targets, se_loss

# Losses against hand computations: rerun under other kernels.
pytestmark = pytest.mark.numerics

IGN = 255


def test_presence_targets_hand_made_masks():
    mask = torch.tensor([
        [[0, 0, IGN], [2, 2, IGN]],  # classes 0 and 2, some ignored pixels
        [[IGN, IGN, IGN], [IGN, IGN, IGN]],  # nothing labelled
        [[0, 1, 2], [3, 3, 3]],  # every class
        [[1, 1, 1], [1, 1, 1]],  # one class
    ])
    expected = torch.tensor([
        [1.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
        [0.0, 1.0, 0.0, 0.0],
    ])
    targets = presence_targets(mask, num_classes=4)
    assert targets.dtype == torch.float32
    torch.testing.assert_close(targets, expected)


def test_presence_targets_custom_ignore_index():
    mask = torch.tensor([[[-1, 2], [2, -1]]])
    torch.testing.assert_close(presence_targets(mask, 3, ignore_index=-1),
                               torch.tensor([[0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("fn", [
    lambda m: presence_targets(m, 5),
    lambda m: se_loss(torch.zeros(1, 5), m),
    lambda m: SegmentationLoss()({"main": torch.zeros(1, 5, 2, 2)}, m),
])
def test_bad_labels_raise_naming_them(fn):
    mask = torch.tensor([[[0, 7], [9, IGN]]])
    with pytest.raises(ValueError, match=r"\[7, 9\]"):
        fn(mask)
    with pytest.raises(ValueError, match=r"\[-3\]"):
        fn(torch.tensor([[[0, -3], [1, IGN]]]))


def test_se_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    mask = torch.tensor([[[0, 0], [2, IGN]], [[1, 1], [1, 1]]])
    # presence: [1, 0, 1] and [0, 1, 0]
    targets = [[1, 0, 1], [0, 1, 0]]

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expected = sum(bce(z, t) for zs, ts in zip(logits.tolist(), targets)
                   for z, t in zip(zs, ts)) / 6
    assert se_loss(logits, mask).item() == pytest.approx(expected, rel=1e-6)


def _outputs(seed=0, classes=4):
    g = torch.Generator().manual_seed(seed)
    return {
        "main": torch.randn(2, classes, 3, 3, generator=g),
        "aux": torch.randn(2, classes, 3, 3, generator=g),
        "se": torch.randn(2, classes, generator=g),
    }


def _mask():
    g = torch.Generator().manual_seed(1)
    mask = torch.randint(0, 4, (2, 3, 3), generator=g)
    mask[0, 0, :] = IGN
    return mask


@pytest.mark.parametrize("se_weight,aux_weight", [(0.2, 0.2), (0.5, 0.0), (0.0, 1.5)])
def test_terms_weighted_as_configured(se_weight, aux_weight):
    out, mask = _outputs(), _mask()
    terms = SegmentationLoss(se_weight=se_weight, aux_weight=aux_weight)(out, mask)
    assert isinstance(terms, LossTerms)
    main = F.cross_entropy(out["main"], mask, ignore_index=IGN)
    aux = F.cross_entropy(out["aux"], mask, ignore_index=IGN)
    se = se_loss(out["se"], mask)
    torch.testing.assert_close(terms.main, main)
    torch.testing.assert_close(terms.aux, aux)
    torch.testing.assert_close(terms.se, se)
    torch.testing.assert_close(terms.total, main + aux_weight * aux + se_weight * se)


def test_missing_keys_count_as_zero():
    out, mask = _outputs(), _mask()
    terms = SegmentationLoss()({"main": out["main"]}, mask)
    assert terms.aux.item() == 0.0 and terms.se.item() == 0.0
    torch.testing.assert_close(terms.total, terms.main)


def test_all_ignored_batch_gives_zero_not_nan():
    out = _outputs()
    terms = SegmentationLoss()(out, torch.full((2, 3, 3), IGN))
    assert terms.main.item() == 0.0 and terms.aux.item() == 0.0
    assert torch.isfinite(terms.total)


def test_mask_with_channel_axis_and_validate_off():
    out, mask = _outputs(), _mask()
    a = SegmentationLoss()(out, mask)
    b = SegmentationLoss(validate=False)(out, mask[:, None].int())
    torch.testing.assert_close(a.total, b.total)


def test_gradients_reach_every_output():
    out = {k: v.requires_grad_() for k, v in _outputs().items()}
    SegmentationLoss()(out, _mask()).total.backward()
    for name, tensor in out.items():
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name


def test_label_check_runs_at_every_call_on_the_cpu():
    from encnet_lite.losses import check_labels

    loss_fn = SegmentationLoss()
    outputs = {"main": torch.zeros(1, 5, 2, 2)}
    assert float(loss_fn(outputs, torch.tensor([[[0, 1], [2, IGN]]])).main) == pytest.approx(
        math.log(5))
    for _ in range(2):  # after a good batch too: a CPU mask is checked every time
        with pytest.raises(ValueError, match=r"\[7\]"):
            loss_fn(outputs, torch.tensor([[[0, 7], [2, IGN]]]))
    # wait=False only matters on CUDA; on the CPU the answer costs no sync
    with pytest.raises(ValueError, match=r"\[7\]"):
        check_labels(torch.tensor([[[0, 7]]]), 5, wait=False)
