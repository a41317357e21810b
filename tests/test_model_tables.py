"""The rows chapter 05 shows (shape trace, output stride) and the one-step call it times."""

import copy

import torch

from encnet_lite import engine, models
from encnet_lite.losses import SegmentationLoss

CLASSES = 7
ZWSP = "\u200b"


def test_shape_rows_of_a_tiny_encnet_trace():
    model = models.encnet_tiny(num_classes=CLASSES).train()
    x = torch.randn(2, 3, 64, 64)
    what = {"backbone.layer4": "stage 4", "head.encode": "context module",
            "aux": "auxiliary head"}
    trace = models.trace_shapes(model, x, list(what))
    rows = models.shape_rows(trace, what, tuple(x.shape))
    # shapes never wrap: no spaces around the "×"
    assert rows[1][2] == "256×8×8"
    plain = [(name.replace(ZWSP, ""), label, shape.replace("×", " x "))
             for name, label, shape in rows]
    assert plain[0] == ("input", "image", "3 x 64 x 64")  # batch dimension dropped
    assert plain[1] == ("backbone.layer4", "stage 4", "256 x 8 x 8")
    # named outputs: one row each, the description on `x` only
    encode = [r for r in plain if r[0].startswith("head.encode.")]
    assert encode[0] == ("head.encode.x", "context module", "64 x 8 x 8")
    assert {r[0]: r[2] for r in encode[1:]} == {
        "head.encode.e": "64", "head.encode.gamma": "64", "head.encode.se": str(CLASSES)}
    assert all(r[1] == "" for r in encode[1:])
    assert ("aux", "auxiliary head", f"{CLASSES} x 8 x 8") in plain
    outputs = {r[0]: r for r in plain if r[0].startswith("output")}
    assert outputs["output `main`"] == ("output `main`", "model output",
                                       f"{CLASSES} x 64 x 64")
    assert set(outputs) == {f"output `{k}`" for k in ("main", "aux", "se", "gamma", "e")}
    # a zero-width space after every dot, so a narrow table can break the names
    assert rows[1][0] == f"backbone.{ZWSP}layer4"
    assert len(rows) == len(plain) == 1 + 1 + 4 + 1 + 5


def test_dilations_of_the_stages():
    backbone = models.ResNetBackbone(50)  # output stride 8
    # the first block keeps the previous stage's rate (it replaces the strided conv)
    assert models.dilations(backbone.layer3) == "1, 2"
    assert models.dilations(backbone.layer4) == "2, 4"
    assert models.dilations(backbone.layer1) == "1"


def test_output_stride_rows():
    rows = {r["stride"]: r for r in models.output_stride_rows((32, 16, 8), size=480)}
    assert [rows[s]["c4"] for s in (32, 16, 8)] == ["15 x 15", "30 x 30", "60 x 60"]
    assert (rows[32]["dilation3"], rows[32]["dilation4"]) == ("1", "1")
    assert (rows[16]["dilation3"], rows[16]["dilation4"]) == ("1", "1, 2")
    assert (rows[8]["dilation3"], rows[8]["dilation4"]) == ("1, 2", "2, 4")
    # dilation keeps the window each output sees; the backbone's is ResNet-50's own
    assert {r["rf_backbone"] for r in rows.values()} == {
        models.receptive_field(models.ResNetBackbone(50))}
    # the FCN adds its head's 3x3 conv (2 steps of the stride) and one stride (upsampling)
    assert all(r["rf"] == r["rf_backbone"] + 3 * r["stride"] for r in rows.values())
    # denser grids cost more, and the head comes on top of the backbone
    gmacs = [rows[s]["gmacs_backbone"] for s in (32, 16, 8)]
    assert gmacs[0] < gmacs[1] < gmacs[2]
    assert all(r["gmacs"] > r["gmacs_backbone"] for r in rows.values())
    assert all(r["gmacs"] == round(r["gmacs"], 1) for r in rows.values())


def test_step_call_runs_one_training_step_per_call():
    torch.manual_seed(0)
    model = models.fcn_tiny(num_classes=CLASSES).eval()
    before = copy.deepcopy(model).train()
    images = torch.randn(2, 3, 32, 32)
    masks = torch.randint(0, CLASSES, (2, 32, 32))
    step = engine.step_call(model, images, masks, lr=0.1)
    assert model.training  # the step runs the model in training mode

    torch.manual_seed(1)
    first = step()
    torch.manual_seed(1)  # the same dropout masks: the loss of the unchanged weights
    expected = SegmentationLoss()(before(images), masks)
    assert first.shape == (4,)
    torch.testing.assert_close(first[0], expected.total.detach())
    # the weights moved: the next call is a new step with another loss
    classifier = dict(model.named_parameters())["head.2.weight"]
    assert not torch.equal(classifier, dict(before.named_parameters())[
        "head.2.weight"])
    torch.manual_seed(1)
    assert not torch.equal(step(), first)


def test_step_call_channels_last():
    model = models.fcn_tiny(num_classes=CLASSES)
    images = torch.randn(1, 3, 32, 32)
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    step = engine.step_call(model, images, masks, channels_last=True)
    assert model.backbone.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(step()).all()
