"""Context Encoding Module: shapes, gates, the residual form, gradients."""

import pytest
import torch
import torch.nn.functional as F

from encnet_lite.context import ContextEncoding, ContextOutput, apply_attention
from encnet_lite.encoding import Encoding
from encnet_lite.losses import SegmentationLoss

# The module against the paper's equations written out: rerun under other kernels.
pytestmark = pytest.mark.numerics

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


def _randomise_norms(module: ContextEncoding) -> None:
    """Running statistics and affine parameters away from the identity, so that an eval-mode
    BatchNorm left out or applied to the wrong axis changes ``e``."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for bn in (module.project[1], module.code_norm):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=gen, dtype=bn.running_mean.dtype))
            bn.running_var.copy_(torch.rand(n, generator=gen, dtype=bn.running_var.dtype) + 0.5)
            bn.weight.copy_(torch.rand(n, generator=gen, dtype=bn.weight.dtype) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=gen, dtype=bn.bias.dtype) * 0.5)


def _paper_e(module: ContextEncoding, x: torch.Tensor) -> torch.Tensor:
    """``e: (B, C)`` from the equations, one descriptor and one codeword at a time.

    x_i = ReLU(BN(W x)) at each position i; a_ik = exp(-s_k ||x_i - c_k||^2) / sum_j
    exp(-s_j ||x_i - c_j||^2) with s = -scale (the official code's sign);
    e_k = sum_i a_ik (x_i - c_k); then, as the official code, BatchNorm over the K
    codewords (eval mode: running statistics), ReLU and the mean over k.
    """
    conv, bn2, _ = module.project
    c, s = module.encoding.codewords, -module.encoding.scale
    out = torch.zeros(x.shape[0], x.shape[1], dtype=x.dtype)
    for b in range(x.shape[0]):
        desc = []
        for h in range(x.shape[2]):
            for w in range(x.shape[3]):
                v = conv.weight[:, :, 0, 0] @ x[b, :, h, w]
                v = (v - bn2.running_mean) / torch.sqrt(bn2.running_var + bn2.eps)
                desc.append(torch.clamp(v * bn2.weight + bn2.bias, min=0))
        e = []
        for k in range(c.shape[0]):
            logits = torch.stack([torch.stack([-s[j] * ((xi - c[j]) ** 2).sum()
                                               for j in range(c.shape[0])]) for xi in desc])
            weights = torch.exp(logits[:, k]) / torch.exp(logits).sum(1)
            e.append(sum(a * (xi - c[k]) for a, xi in zip(weights, desc)))
        norm = module.code_norm
        for k, ek in enumerate(e):
            z = (ek - norm.running_mean[k]) / torch.sqrt(norm.running_var[k] + norm.eps)
            out[b] += torch.clamp(z * norm.weight[k] + norm.bias[k], min=0) / len(e)
    return out


def test_e_follows_the_papers_equations(x):
    torch.manual_seed(2)
    module = ContextEncoding(C, num_codes=K).double().eval()
    _randomise_norms(module)
    xd = x.double()
    with torch.no_grad():
        got, expected = module(xd).e, _paper_e(module, xd)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert float(expected.abs().max()) > 0.1  # not all clamped to zero by the ReLUs


def test_e_in_training_mode_normalises_each_codeword_over_the_batch(x):
    # Train mode: code_norm uses the batch's statistics of each codeword's C values.
    torch.manual_seed(4)
    module = ContextEncoding(C, num_codes=K).double().train()
    xd = x.double()
    with torch.no_grad():
        # the projection's BN at its initial weight 1, bias 0, with batch statistics
        z = F.relu(F.batch_norm(F.conv2d(xd, module.project[0].weight), None, None,
                                training=True))
        desc = z.flatten(2).transpose(1, 2)  # (B, N, C)
        c, scale = module.encoding.codewords, module.encoding.scale
        dist2 = ((desc[:, :, None, :] - c[None, None]) ** 2).sum(-1)  # (B, N, K)
        a = torch.softmax(scale * dist2, dim=-1)
        codes = torch.einsum("bnk,bnkd->bkd", a, desc[:, :, None, :] - c[None, None])
        mean = codes.mean((0, 2), keepdim=True)
        var = codes.var((0, 2), unbiased=False, keepdim=True)
        expected = F.relu((codes - mean) / torch.sqrt(var + module.code_norm.eps)).mean(1)
        torch.testing.assert_close(module(xd).e, expected, rtol=1e-9, atol=1e-12)


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


def test_nearest_centroid_sees_groups_far_below_the_features_magnitude():
    # untrained gates: every value is ~0.5 and the groups differ by ~1e-5; the float32
    # matrix-product form of the distance cancels away such differences
    from encnet_lite.context import nearest_centroid_accuracy, separation_ratio

    g = torch.Generator().manual_seed(0)
    groups, per, dim = 3, 60, 128
    labels = torch.arange(groups).repeat_interleave(per)
    means = 1e-5 * torch.randn(groups, dim, generator=g, dtype=torch.float64)
    noise = 2e-6 * torch.randn(groups * per, dim, generator=g, dtype=torch.float64)
    features = (0.5 + means[labels] + noise).float()
    train, test = features[::2], features[1::2]
    accuracy = nearest_centroid_accuracy(train, labels[::2], test, labels[1::2])
    assert accuracy == pytest.approx(1.0)
    # the same data with the offset removed (where float32 is exact enough) agrees
    centred = features.double() - 0.5
    assert accuracy == nearest_centroid_accuracy(centred[::2], labels[::2], centred[1::2],
                                                 labels[1::2])
    assert separation_ratio(features, labels) == pytest.approx(
        separation_ratio(centred, labels), rel=1e-6)
    assert separation_ratio(features, labels) > 1.0


def test_collect_context_stacks_outputs_and_kinds():
    from encnet_lite.context import collect_context
    from encnet_lite.data import ContextScenes
    from encnet_lite.models import encnet_tiny

    ds = ContextScenes(5, size=64)
    model = encnet_tiny(num_classes=ds.num_classes, num_codes=4).train()
    got = collect_context(model, ds, batch_size=2)
    assert model.training  # mode restored
    assert got["gamma"].shape == got["e"].shape == (5, 64)
    assert got["se"].shape == (5, ds.num_classes)
    assert got["kind"].tolist() == [ds.scene_kind_index(i) for i in range(5)]


def test_kind_separation_scores_each_vector_on_held_out_images():
    from encnet_lite.context import kind_separation

    kind = torch.tensor([0, 0, 1, 1])
    # "g" separates the kinds (means 0 and 4 in the first entry); "c" is one constant vector
    val = {"g": torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]]),
           "c": torch.ones(4, 2), "kind": kind}
    # centroids from other images: (0.5, 1) and (3.5, 1) for "g"
    ref = {"g": torch.tensor([[1.0, 1.0], [0.0, 1.0], [3.0, 1.0], [4.0, 1.0]]),
           "c": torch.ones(4, 2), "kind": kind}
    got = kind_separation(val, ref, keys=("g", "c"))
    assert got["g"]["ratio"] == pytest.approx(4.0)  # between 16 over within 4
    assert got["g"]["accuracy"] == 1.0
    # std over the 4 images: 4 / sqrt(3) and 2 / sqrt(3) (unbiased), averaged
    assert got["g"]["spread"] == pytest.approx(3 / 3 ** 0.5)
    assert got["c"]["ratio"] == 0.0 and got["c"]["spread"] == 0.0
    assert got["c"]["accuracy"] == 0.5  # all at the same distance: every image gets kind 0
