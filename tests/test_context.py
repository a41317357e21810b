"""Context Encoding Module: shapes, gates, the residual form, gradients."""

import pytest
import torch
import torch.nn.functional as F

from encnet_lite.context import ContextEncoding, ContextOutput, apply_attention
from encnet_lite.encoding import Encoding
from encnet_lite.losses import SegmentationLoss

B, C, H, W, K, CLASSES = 2, 8, 5, 6, 4, 3


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(B, C, H, W)


def test_output_shapes(x):
    module = ContextEncoding(C, num_codes=K, num_classes=CLASSES)
    out = module(x)
    assert isinstance(out, ContextOutput)
    assert out.x.shape == (B, C, H, W)
    assert out.e.shape == (B, C)
    assert out.gamma.shape == (B, C)
    assert out.se.shape == (B, CLASSES)
    assert isinstance(module.encoding, Encoding)


def test_no_se_without_num_classes(x):
    out = ContextEncoding(C, num_codes=K)(x)
    assert out.se is None


def test_gamma_in_open_unit_interval_and_e_nonnegative(x):
    out = ContextEncoding(C, num_codes=K)(x)
    assert bool((out.gamma > 0).all()) and bool((out.gamma < 1).all())
    assert bool((out.e >= 0).all())  # mean over K of a ReLU


def test_e_follows_official_sequence(x):
    module = ContextEncoding(C, num_codes=K).eval()
    codes = module.encoding(module.project(x))  # (B, K, C)
    expected = F.relu(module.code_norm(codes)).mean(dim=1)
    torch.testing.assert_close(module(x).e, expected)


def test_assignments_are_distributions(x):
    a = ContextEncoding(C, num_codes=K).assignments(x)
    assert a.shape == (B, H * W, K)
    torch.testing.assert_close(a.sum(-1), torch.ones(B, H * W))


def test_residual_form_with_gamma_one_is_relu_2x(x):
    torch.testing.assert_close(apply_attention(x, torch.ones(B, C)), F.relu(2 * x))
    module = ContextEncoding(C, num_codes=K)
    with torch.no_grad():  # sigmoid(100) == 1.0 in float32
        module.fc_gamma.weight.zero_()
        module.fc_gamma.bias.fill_(100.0)
    torch.testing.assert_close(module(x).x, F.relu(2 * x))


def test_plain_form_is_x_times_gamma(x):
    out = ContextEncoding(C, num_codes=K, residual=False)(x)
    torch.testing.assert_close(out.x, x * out.gamma[:, :, None, None])


def test_single_image_in_eval_mode(x):
    out = ContextEncoding(C, num_codes=K, num_classes=CLASSES).eval()(x[:1])
    assert out.x.shape == (1, C, H, W) and out.se.shape == (1, CLASSES)


def test_gradients_reach_codewords_scale_and_both_linears(x):
    torch.manual_seed(1)
    module = ContextEncoding(C, num_codes=K, num_classes=CLASSES)
    classifier = torch.nn.Conv2d(C, CLASSES, kernel_size=1)
    out = module(x)
    mask = torch.randint(0, CLASSES, (B, H, W))
    terms = SegmentationLoss()({"main": classifier(out.x), "se": out.se}, mask)
    terms.total.backward()
    for name in ("encoding.codewords", "encoding.scale", "fc_gamma.weight", "fc_se.weight",
                 "project.0.weight"):
        grad = dict(module.named_parameters())[name].grad
        assert grad is not None and bool(torch.isfinite(grad).all()), name
        assert grad.abs().sum() > 0, name


def test_separation_helpers_on_hand_made_groups():
    from encnet_lite.context import nearest_centroid_accuracy, separation_ratio

    features = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # group means (0, 1) and (4, 1), overall (2, 1): between 4 * 4 = 16, within 4 * 1 = 4
    assert separation_ratio(features, labels) == pytest.approx(4.0)
    assert separation_ratio(features, torch.tensor([0, 1, 1, 0])) == pytest.approx(0.0)
    test = torch.tensor([[0.5, 1.0], [3.0, 0.0], [1.9, 5.0]])
    assert nearest_centroid_accuracy(features, labels, test, torch.tensor([0, 1, 1])) == \
        pytest.approx(2 / 3)


def test_collect_context_stacks_outputs_and_kinds():
    from encnet_lite.context import collect_context
    from encnet_lite.data import ContextScenes
    from encnet_lite.models import encnet_tiny

    ds = ContextScenes(5, size=64)
    model = encnet_tiny(ds.num_classes, num_codes=4).train()
    got = collect_context(model, ds, batch_size=2)
    assert model.training  # mode restored
    assert got["gamma"].shape == got["e"].shape == (5, 64)
    assert got["se"].shape == (5, ds.num_classes)
    assert got["kind"].tolist() == [ds.scene_kind_index(i) for i in range(5)]
