"""Models: output names and shapes, parameter counts, receptive field, weights loading."""

import dataclasses
import inspect
import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from encnet_lite import models
from encnet_lite.context import ContextEncoding
from encnet_lite.errors import WeightsError
from encnet_lite.models import (
    FCN,
    EncNet,
    count_parameters,
    encnet_resnet50,
    encnet_resnet101,
    encnet_tiny,
    fcn_resnet50,
    fcn_resnet101,
    fcn_tiny,
    input_support,
    receptive_field,
)

CLASSES = 7
ODD = (97, 131)


TINY_BUILDERS = {
    "fcn_tiny": lambda: fcn_tiny(num_classes=CLASSES),
    "encnet_tiny": lambda: encnet_tiny(num_classes=CLASSES),
    "encnet_tiny_lateral": lambda: encnet_tiny(num_classes=CLASSES, lateral=True, num_codes=4),
    "encnet_tiny_plain": lambda: encnet_tiny(num_classes=CLASSES, aux=False, se_loss=False),
}


def expected_keys(model, training: bool) -> set:
    keys = {"main"}
    if isinstance(model, EncNet):
        keys |= {"gamma", "e"} | ({"se"} if model.head.encode.fc_se is not None else set())
    if training and model.aux is not None:
        keys.add("aux")
    return keys


def check_outputs(model, out, batch: int, size, training: bool) -> None:
    assert set(out) == expected_keys(model, training)
    assert out["main"].shape == (batch, CLASSES, *size)
    if "aux" in out:
        assert out["aux"].shape == (batch, CLASSES, *size)
    if "se" in out:
        assert out["se"].shape == (batch, CLASSES)
    if "gamma" in out:
        width = model.head.conv[0].out_channels
        assert out["gamma"].shape == out["e"].shape == (batch, width)
        assert bool(((out["gamma"] > 0) & (out["gamma"] < 1)).all())


@pytest.mark.parametrize("name", sorted(TINY_BUILDERS))
@pytest.mark.parametrize("training", [True, False])
def test_tiny_output_names_and_shapes_for_odd_sizes(name, training):
    torch.manual_seed(0)
    model = TINY_BUILDERS[name]().train(training)
    for size in [ODD, (33, 40)]:
        out = model(torch.randn(2, 3, *size))
        check_outputs(model, out, 2, size, training)


@pytest.mark.parametrize("builder", [fcn_resnet50, encnet_resnet50, fcn_resnet101,
                                     encnet_resnet101])
def test_resnet_output_shapes_for_odd_sizes(builder):
    torch.manual_seed(0)
    lateral = {"lateral": True} if builder is encnet_resnet50 else {}
    model = builder(num_classes=CLASSES, **lateral)
    with torch.no_grad():
        check_outputs(model, model.train()(torch.randn(2, 3, *ODD)), 2, ODD, True)
        check_outputs(model, model.eval()(torch.randn(1, 3, *ODD)), 1, ODD, False)


def test_resnet_output_stride_16():
    backbone = models.ResNetBackbone(50, output_stride=16).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
        assert feats["c2"].shape == (1, 512, 8, 12)
        assert feats["c3"].shape == (1, 1024, 4, 6)
        assert feats["c4"].shape == (1, 2048, 4, 6)
        model = EncNet(backbone, CLASSES, lateral=True).eval()
        assert model(torch.randn(1, 3, 49, 67))["main"].shape == (1, CLASSES, 49, 67)


def test_dilation_replaces_stride_in_stages_3_and_4():
    backbone = models.ResNetBackbone(50)
    with torch.no_grad():
        feats = backbone.eval()(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "c2": (1, 512, 8, 12), "c3": (1, 1024, 8, 12), "c4": (1, 2048, 8, 12)}
    for name, stride, dilation in [("layer3", 1, 2), ("layer4", 1, 4)]:
        last = getattr(backbone, name)[-1].conv2
        assert last.stride == (stride, stride) and last.dilation == (dilation, dilation)
    assert backbone.layer2[0].conv2.stride == (2, 2)


def test_tiny_backbone_interface():
    backbone = models.TinyBackbone()
    assert count_parameters(backbone) < 1_000_000
    feats = backbone(torch.randn(1, 3, 128, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        k: (c, 16, 12) for k, c in backbone.out_channels.items()}
    assert backbone.output_stride == 8


def test_parameter_counts():
    with torch.device("meta"):  # no memory, no initialisation cost
        fcn, enc = fcn_resnet50(num_classes=59), encnet_resnet50(num_classes=59)
        enc_lat, enc101 = encnet_resnet50(num_classes=59, lateral=True), encnet_resnet101(num_classes=59)
    assert count_parameters(fcn.backbone) == 23_508_032  # torchvision ResNet-50 minus fc
    assert 35e6 < count_parameters(fcn) < 36e6
    # The Context Encoding Module: 1x1 conv 512^2, 32 codewords, two small FC layers.
    extra = count_parameters(enc) - count_parameters(fcn)
    assert extra == count_parameters(enc.head.encode)
    assert 0.5e6 < extra < 0.7e6
    # Lateral connections add 1x1 convs from c2/c3 and a 3x3 fusion conv: ~8M more.
    assert 7e6 < count_parameters(enc_lat) - count_parameters(enc) < 9e6
    assert 54e6 < count_parameters(enc101) < 56e6
    assert count_parameters(encnet_tiny(num_classes=59)) < 1e6 and count_parameters(fcn_tiny(num_classes=59)) < 1e6


def test_head_layout_follows_the_paper():
    model = encnet_resnet50(num_classes=CLASSES, num_codes=16)
    assert isinstance(model.head.encode, ContextEncoding)
    assert model.head.encode.encoding.codewords.shape == (16, 512)
    assert model.head.conv[0].in_channels == 2048 and model.head.conv[0].kernel_size == (3, 3)
    assert model.aux[0][0].in_channels == 1024 and model.aux[0][0].out_channels == 256
    assert model.head.classifier[0].p == pytest.approx(0.1)


def test_eval_outputs_are_deterministic():
    torch.manual_seed(0)
    model = encnet_tiny(num_classes=CLASSES, lateral=True).eval()
    x = torch.randn(2, 3, *ODD)
    a, b = model(x), model(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = encnet_tiny(num_classes=CLASSES, lateral=True).train()
    out = model(torch.randn(2, 3, 64, 64))
    loss = out["main"].mean() + out["aux"].mean() + out["se"].mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_param_groups_split_backbone_and_heads():
    model = encnet_tiny(num_classes=CLASSES)
    groups = models.param_groups(model, lr=0.01)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == 0.01 and groups[1]["lr"] == pytest.approx(0.1)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.backbone.parameters()} == {id(p) for p in groups[0]["params"]}
    torch.optim.SGD(groups, lr=0.01)  # usable as is
    # Frozen parameters are left out, and a group left empty is dropped.
    model.backbone.requires_grad_(False)
    groups = models.param_groups(model, lr=0.01, head_lr_mult=4.0)
    assert [(g["name"], g["lr"], g["lr_mult"]) for g in groups] == [("head", 0.04, 4.0)]
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in model.parameters() if p.requires_grad)


def test_engine_optimizer_uses_the_models_param_groups():
    from encnet_lite import engine, presets

    model = encnet_tiny(num_classes=CLASSES)
    cfg = presets.scenes_encnet_tiny()
    optimizer = engine.build_optimizer(model, cfg)
    expected = models.param_groups(model, cfg.optim.lr, cfg.optim.head_lr_mult)
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == [
        [id(p) for p in g["params"]] for g in expected]
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in expected]


def test_assignments_shape_and_normalisation():
    model = encnet_tiny(num_classes=CLASSES, num_codes=4).eval()
    a = model.assignments(torch.randn(2, 3, 64, 96))
    assert a.shape == (2, 8, 12, 4)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 8, 12))


def test_trace_shapes():
    model = encnet_tiny(num_classes=CLASSES).eval()
    rows = dict(models.trace_shapes(model, torch.randn(1, 3, 128, 128),
                                    ["backbone.layer4", "head.encode.encoding", "head.encode"]))
    assert rows["backbone.layer4"] == (1, 256, 16, 16)
    assert rows["head.encode.encoding"] == (1, 32, 64)
    assert rows["head.encode"]["gamma"] == (1, 64)
    assert rows["output"]["main"] == (1, CLASSES, 128, 128)


# ---------------------------------------------------------------------------- receptive field


class StrideEightLogits(nn.Module):
    """The tiny FCN's logits before upsampling."""

    def __init__(self, fcn: FCN) -> None:
        super().__init__()
        self.fcn = fcn

    def forward(self, x):
        return self.fcn.head(self.fcn.backbone(x)["c4"])


def test_receptive_field_theory():
    assert receptive_field(fcn_tiny(num_classes=CLASSES), upsampled=False) == 44  # stride-8 logits
    assert receptive_field(fcn_tiny(num_classes=CLASSES)) == 44 + 8 == 52  # + one stride: bilinear
    assert receptive_field(models.TinyBackbone()) == 28
    assert receptive_field(models.ResNetBackbone(50)) == 427  # same as the strided ResNet-50
    assert receptive_field(encnet_tiny(num_classes=CLASSES)) == math.inf


def test_receptive_field_measured_by_input_gradients():
    torch.manual_seed(0)
    fcn = fcn_tiny(num_classes=CLASSES)
    # Stride-8 logits: an interior cell sees exactly the theoretical window.
    support = input_support(StrideEightLogits(fcn), size=(80, 80), pixel=(4, 4))
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    assert len(rows) == len(cols) == receptive_field(fcn, upsampled=False) == 44
    assert support.sum() == 44 * 44  # a full square, no holes
    # Full-resolution output: bilinear upsampling mixes 2x2 cells; every output pixel
    # still depends only on pixels within +-29 px (the data rely on +-30 px).
    worst = 0
    for r in range(32, 40):  # every phase of the stride-8 grid
        support = input_support(fcn, size=(80, 80), pixel=(r, r + 3))
        ys, xs = support.nonzero(as_tuple=True)
        worst = max(worst, int((ys - r).abs().max()), int((xs - r - 3).abs().max()))
        # the window is exactly receptive_field(fcn) wide at every phase
        assert int(ys.max() - ys.min()) + 1 == int(xs.max() - xs.min()) + 1 == 52
    assert worst == 29


# ---------------------------------------------------------------------------- weights


def test_pretrained_download_failure_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        fcn_resnet50(num_classes=CLASSES, weights_backbone="imagenet")
    message = str(info.value)
    assert "weights_backbone=None" in message and "weights_backbone='/path/to/" in message
    assert "resnet50-" in message  # names the file to fetch


def test_pretrained_weights_through_the_hub_api(monkeypatch):
    reference = torchvision.models.resnet50().state_dict()
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return reference

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = fcn_resnet50(num_classes=CLASSES, weights_backbone="imagenet")
    assert calls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]
    assert torch.equal(model.backbone.layer4[2].conv3.weight, reference["layer4.2.conv3.weight"])


def test_local_weights_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", None)  # never download
    reference = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": reference}, path)
    for given in (path, str(path)):
        model = encnet_resnet50(num_classes=CLASSES, weights_backbone=given)
        assert torch.equal(model.backbone.conv1.weight, reference["conv1.weight"])
        assert torch.equal(model.backbone.bn1.running_var, reference["bn1.running_var"])
    with pytest.raises(FileNotFoundError, match="weights_backbone=.*missing.pth.*'imagenet'"):
        encnet_resnet50(num_classes=CLASSES, weights_backbone=tmp_path / "missing.pth")


# ---------------------------------------------------------------------------- deep stems


@pytest.mark.parametrize("stem,width", [("deep64", 64), ("deep32", 32)])
def test_deep_stem_layout(stem, width):
    with torch.device("meta"):
        backbone = models.ResNetBackbone(50, stem=stem)
    conv1 = backbone.conv1  # conv, BN, ReLU, conv, BN, ReLU, conv; bn1 follows outside
    assert [type(m).__name__ for m in conv1] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert [(conv1[i].in_channels, conv1[i].out_channels, conv1[i].stride)
            for i in (0, 3, 6)] == [(3, width, (2, 2)), (width, width, (1, 1)),
                                    (width, 2 * width, (1, 1))]
    assert all(conv1[i].kernel_size == (3, 3) and conv1[i].padding == (1, 1) for i in (0, 3, 6))
    assert backbone.bn1.num_features == 2 * width
    first = backbone.layer1[0]
    assert first.conv1.in_channels == first.downsample[0].in_channels == 2 * width
    assert backbone.maxpool.stride == 2 and backbone.stem_type == stem


def test_plain_stem_keeps_torchvision_keys_and_deep_stems_are_named_for_the_official_ones():
    with torch.device("meta"):
        plain = set(models.ResNetBackbone(50).state_dict())
        deep = set(models.ResNetBackbone(50, stem="deep64").state_dict())
        reference = set(torchvision.models.resnet50().state_dict())
    assert plain == {k for k in reference if not k.startswith("fc.")}
    assert deep - plain == {f"conv1.{i}.{p}" for i in (0, 3, 6) for p in ("weight",)} | {
        f"conv1.{i}.{p}" for i in (1, 4)
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert plain - deep == {"conv1.weight"}


def test_deep_stem_output_shapes_match_the_plain_stem():
    backbone = models.ResNetBackbone(50, stem="deep64").eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 49, 67))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "c2": (1, 512, 7, 9), "c3": (1, 1024, 7, 9), "c4": (1, 2048, 7, 9)}
    with pytest.raises(ValueError, match="stem='deep16'"):
        models.ResNetBackbone(50, stem="deep16")


def test_deep_stem_builders():
    with torch.device("meta"):
        built = {name: getattr(models, name)(num_classes=CLASSES) for name in (
            "encnet_resnet50s", "encnet_resnet101s", "fcn_resnet50s", "fcn_resnet101s")}
        deep32 = encnet_resnet50(num_classes=CLASSES, stem="deep32")
    for name, model in built.items():
        assert model.backbone.stem_type == "deep64" and model.num_classes == CLASSES, name
        assert model.backbone.depth == (101 if "101" in name else 50)
    assert deep32.backbone.bn1.num_features == 64
    # 3x3 convs 3->64->64->128 instead of one 7x7 3->64, and 128 inputs into stage 1
    extra = count_parameters(built["fcn_resnet50s"]) - count_parameters(fcn_resnet50(num_classes=CLASSES))
    convs, norms = 27 * 64 + 9 * 64 * 64 + 9 * 64 * 128, 2 * (64 + 64 + 128)
    assert extra == convs + norms - (49 * 3 * 64 + 2 * 64) + 64 * 64 + 64 * 256


# ---------------------------------------------------------------------------- builders


BUILDERS = ["encnet_resnet50", "encnet_resnet101", "encnet_resnet50s", "encnet_resnet101s",
            "encnet_tiny", "fcn_resnet50", "fcn_resnet101", "fcn_resnet50s", "fcn_resnet101s",
            "fcn_tiny"]


def test_every_builder_has_one_keyword_only_signature():
    signatures = {name: inspect.signature(getattr(models, name)) for name in BUILDERS}
    first = signatures["encnet_resnet50"]
    assert list(first.parameters) == ["weights", "weights_backbone", "num_classes", "aux",
                                      "kwargs"]
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in first.parameters.values())
    for name, sig in signatures.items():
        assert sig.parameters == first.parameters, name
    with pytest.raises(TypeError):
        encnet_tiny(CLASSES)  # num_classes is a keyword, as in torchvision


def test_builders_pass_options_to_the_backbone_and_the_model():
    with torch.device("meta"):
        fcn = fcn_resnet50(num_classes=CLASSES, aux=False, output_stride=16, align_corners=True)
        enc = encnet_resnet50(num_classes=CLASSES, stem="deep32", se_loss=False)
    assert (fcn.aux, fcn.backbone.output_stride, fcn.align_corners) == (None, 16, True)
    assert enc.backbone.stem_type == "deep32" and enc.head.encode.fc_se is None
    assert isinstance(enc.aux, nn.Module)  # aux=None means the default, True
    with pytest.raises(TypeError, match="deep64 stem"):
        models.encnet_resnet50s(num_classes=CLASSES, stem="deep32")
    with pytest.raises(TypeError, match="se_loss"):
        fcn_tiny(num_classes=CLASSES, se_loss=True)  # an EncNet option: FCN has no SE branch
    with pytest.raises(WeightsError, match="trains from scratch"):
        encnet_tiny(num_classes=CLASSES, weights_backbone="imagenet")
    with pytest.raises(TypeError, match="weights_backbone=True: give None, 'imagenet'"):
        fcn_resnet50(num_classes=CLASSES, weights_backbone=True)


def test_build_model_has_no_case_per_model_beyond_the_builder_lookup():
    from encnet_lite import engine, presets

    source = inspect.getsource(engine.build_model)
    assert "encnet" not in source.replace("encnet_resnet50", "").replace("encnet_lite", "")
    assert "fcn" not in source and "tiny" not in source
    for preset in (presets.scenes_encnet_tiny, presets.scenes_fcn_tiny):
        cfg = preset()
        model = engine.build_model(cfg, 5)
        assert type(model) is models.ARCHITECTURES[cfg.model.arch]
        for option in type(model).options:  # every option of the class comes from cfg.model
            assert option in {f.name for f in dataclasses.fields(cfg.model)}, option


def test_shared_base_holds_init_and_forward():
    for cls in (FCN, EncNet):
        assert issubclass(cls, models.SegmentationModel)
        assert "forward" not in vars(cls)  # the base's forward: upsampling, aux head
    torch.manual_seed(0)
    model = fcn_tiny(num_classes=CLASSES).train()
    out = model(torch.randn(1, 3, 40, 56))
    assert list(out) == ["main", "aux"] and out["aux"].shape == (1, CLASSES, 40, 56)
    assert [n for n, _ in model.named_children()] == ["backbone", "head", "aux"]
