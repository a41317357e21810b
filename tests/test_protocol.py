"""The official evaluation protocol (PyTorch-Encoding's ``MultiEvalModule`` and
``SegmentationMetric``), point by point on small inputs, and the default one unchanged.

The six points: (1) scales relative to ``base_size``; (2) a view no larger than the crop
padded with black to ``crop x crop`` and run once; (3) larger views in windows every 2/3
crop, the last one clipped and padded, overlaps averaged; (4) ``exp(logits + mirrored
logits)`` per view, summed over scales; (5) ``align_corners=True`` resizes; (6) mIoU over
all classes, an absent class counting 0, ignored pixels out of pixAcc and IoU.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encnet_lite import evaluate as ev
from encnet_lite.data import MEAN, STD, normalize
from encnet_lite.inference import (
    MS_SCALES,
    official_pad_value,
    official_view_size,
    predict,
    predict_official,
    sliding_window_starts,
    window_spans,
)
from encnet_lite.metrics import ConfusionMatrix
from encnet_lite.models import encnet_tiny

# Views, windows and averages against the same sums by hand: rerun under other kernels.
pytestmark = pytest.mark.numerics


class Probe(nn.Module):
    """Records every input; logits: class 0 = log(number of this call), class 1 = 0, the
    others = the input's first channels (so exp gives the call number, 1, the pixels)."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.classes, self.inputs = classes, []

    def forward(self, x):
        self.inputs.append(x.clone())
        b, _, h, w = x.shape
        out = torch.zeros(b, self.classes, h, w)
        out[:, 0] = math.log(len(self.inputs))
        out[:, 2:] = x[:, :self.classes - 2]
        return {"main": out}


def _pad_rgb() -> torch.Tensor:
    return torch.tensor([-m / s for m, s in zip(MEAN, STD)]).reshape(3, 1, 1)


# ---------------------------------------------------------------- (1) scales from base_size

def test_view_sizes_come_from_base_size_not_from_the_image():
    assert official_view_size(300, 200, 520, 0.5) == (260, 173)  # 200 * 260 / 300 = 173.3
    assert official_view_size(200, 300, 520, 0.5) == (173, 260)
    assert official_view_size(90, 90, 520, 1.75) == (910, 910)
    assert official_view_size(3000, 2000, 520, 0.5) == (260, 173)  # any image size
    assert [official_view_size(375, 500, 520, s)[1] for s in MS_SCALES] == \
        [260, 390, 520, 650, 780, 910]
    assert [official_view_size(512, 683, 640, s)[1] for s in (0.5, 0.75, 1.25)] == \
        [320, 480, 800]  # ADE20K's base 640
    assert official_view_size(200, 125, 520, 0.5) == (260, 163)  # 162.5 rounds half up
    assert official_view_size(125, 200, 520, 0.5) == (163, 260)
    # The default protocol scales the image itself instead.
    probe = Probe()
    predict(probe, torch.zeros(1, 3, 300, 200), 2, scales=(0.5,))
    assert probe.inputs[0].shape[-2:] == (150, 100)


def test_the_model_sees_the_view_of_base_size_inside_its_padded_input():
    probe, image = Probe(), torch.full((1, 3, 300, 200), 5.0)
    predict_official(probe, image, 2, scales=(0.5,), flip=False)
    (seen,) = probe.inputs
    assert seen.shape == (1, 3, 480, 480)
    picture = (seen - 5.0).abs().amax(1)[0] < 1e-4
    rows, cols = picture.any(1).nonzero().flatten(), picture.any(0).nonzero().flatten()
    assert (int(rows.max()) + 1, int(cols.max()) + 1) == (260, 173)
    assert bool(picture[:260, :173].all()) and int(picture.sum()) == 260 * 173


# --------------------------------------------- (2) small views: black padding, one run

def test_the_padding_is_black_after_normalisation():
    assert official_pad_value() == tuple(-m / s for m, s in zip(MEAN, STD))
    black = normalize(torch.zeros(4, 4, 3, dtype=torch.uint8))
    torch.testing.assert_close(black, _pad_rgb().expand(3, 4, 4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("flip,calls", [(False, 1), (True, 2)])
def test_a_view_within_the_crop_is_padded_to_the_crop_and_run_once(flip, calls):
    probe = Probe()
    image = torch.randn(1, 3, 30, 20)
    predict_official(probe, image, 2, scales=(1.0,), flip=flip, base_size=40, crop_size=48)
    assert len(probe.inputs) == calls  # one window (and its mirror image)
    seen = probe.inputs[0]
    assert seen.shape == (1, 3, 48, 48)
    h, w = official_view_size(30, 20, 40, 1.0)
    assert (h, w) == (40, 27)
    pad = _pad_rgb().expand(3, 48, 48)
    assert torch.equal(seen[0, :, h:], pad[:, h:]) and torch.equal(seen[0, :, :, w:], pad[:, :, w:])
    # The default protocol runs such a view at its own size, unpadded.
    probe = Probe()
    predict(probe, image, 2, crop_size=48)
    assert probe.inputs[0].shape[-2:] == (30, 20)


# ------------------------------------------- (3) larger views: clipped windows, averaged

def test_window_positions_official_and_default():
    assert window_spans(520, 480, 320, clip=True) == [(0, 480), (320, 520)]
    assert window_spans(1000, 480, 320, clip=True) == [(0, 480), (320, 800), (640, 1000)]
    assert window_spans(800, 480, 320, clip=True) == [(0, 480), (320, 800)]
    assert window_spans(300, 480, 320, clip=True) == [(0, 300)]
    assert window_spans(520, 480, 320) == [(0, 480), (40, 520)]  # moved back, not clipped
    assert window_spans(300, 480, 320) == [(0, 300)]
    for size, crop, stride in [(910, 480, 320), (1120, 576, 384), (97, 48, 32), (49, 16, 10)]:
        for clip in (False, True):
            spans = window_spans(size, crop, stride, clip)
            covered = torch.zeros(size, dtype=torch.int64)
            for a, b in spans:
                covered[a:b] += 1
                assert 0 <= a < b <= size and b - a <= crop
            assert bool((covered >= 1).all()) and spans[-1][1] == size
        starts = [a for a, _ in window_spans(size, crop, stride, clip=True)]
        assert starts == [i * stride for i in range(len(starts))]  # every stride px,
        assert starts[-1] + crop >= size > starts[-2] + crop  # as few as cover the side


def test_the_stride_is_the_officials_two_thirds_of_the_crop():
    assert all(crop * 2 // 3 == int(crop * (2.0 / 3.0)) for crop in range(1, 2049))
    assert (480 * 2 // 3, 576 * 2 // 3) == (320, 384)


def test_windows_are_counted_padded_and_averaged_where_they_overlap():
    # A 52x34 image at base 52 is its own view (the resizes are identities), crop 16,
    # stride 10: rows (0,16) (10,26) (20,36) (30,46) (40,52), cols (0,16) (10,26) (20,34).
    rows = [(0, 16), (10, 26), (20, 36), (30, 46), (40, 52)]
    cols = [(0, 16), (10, 26), (20, 34)]
    image = torch.randn(1, 3, 52, 34)
    assert torch.equal(F.interpolate(image, (52, 34), mode="bilinear", align_corners=True), image)
    probe = Probe()
    scores = predict_official(probe, image, 2, scales=(1.0,), flip=False, base_size=52,
                              crop_size=16)
    assert len(probe.inputs) == len(rows) * len(cols) == 15
    total, count = torch.zeros(52, 34, dtype=torch.float64), torch.zeros(52, 34)
    for k, ((r0, r1), (c0, c1)) in enumerate((r, c) for r in rows for c in cols):
        seen = probe.inputs[k][0]
        assert seen.shape == (3, 16, 16)
        assert torch.equal(seen[:, :r1 - r0, :c1 - c0], image[0, :, r0:r1, c0:c1])
        pad = _pad_rgb().expand(3, 16, 16)
        assert torch.equal(seen[:, r1 - r0:], pad[:, r1 - r0:])  # clipped windows padded
        assert torch.equal(seen[:, :, c1 - c0:], pad[:, :, c1 - c0:])
        total[r0:r1, c0:c1] += k + 1  # exp(log(call number))
        count[r0:r1, c0:c1] += 1
    assert count.unique().tolist() == [1, 2, 4]
    torch.testing.assert_close(scores[0, 0].double(), total / count, rtol=1e-6, atol=0)
    assert torch.equal(scores[0, 1], torch.ones(52, 34))  # exp(0), averaged: exactly 1


# ------------------------------------------------- (4) exp(logits + mirrored logits)

def _lopsided() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 3, padding=1).eval()
    with torch.no_grad():
        model.weight[..., 0] += 0.5  # not flip-equivariant
    return model


def test_each_view_scores_exp_of_logits_plus_mirrored_logits_summed_over_scales():
    model, image = _lopsided(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        plain, mirrored = model(image), model(image.flip(-1)).flip(-1)
    expected = torch.exp(plain + mirrored)
    # 16x16 at base 16 and crop 16: one unpadded window, identity resizes.
    one = predict_official(model, image, 4, scales=(1.0,), base_size=16, crop_size=16)
    torch.testing.assert_close(one, expected, rtol=2e-6, atol=0)
    for wrong in (plain.exp() + mirrored.exp(), torch.exp((plain + mirrored) / 2)):
        assert float(((wrong - expected) / expected).abs().max()) > 0.1
    two = predict_official(model, image, 4, scales=(1.0, 1.0), base_size=16, crop_size=16)
    torch.testing.assert_close(two, 2 * one, rtol=2e-6, atol=0)  # summed after exp
    no_flip = predict_official(model, image, 4, scales=(1.0,), flip=False, base_size=16,
                               crop_size=16)
    torch.testing.assert_close(no_flip, plain.exp(), rtol=2e-6, atol=0)


# ------------------------------------------------------------- (5) align_corners=True

def test_resizes_use_align_corners_true():
    # Class 2 scores exp(pixel value), so the back-resize is visible in the output.
    probe, image = Probe(3), torch.rand(1, 3, 30, 20) * 2
    scores = predict_official(probe, image, 3, scales=(1.0,), flip=False, base_size=40,
                              crop_size=48)
    view = probe.inputs[0][..., :40, :27]
    assert torch.equal(view, F.interpolate(image, (40, 27), mode="bilinear",
                                           align_corners=True))
    other = F.interpolate(image, (40, 27), mode="bilinear", align_corners=False)
    assert float((view - other).abs().max()) > 0.05
    back = F.interpolate(view[:, :1].exp(), (30, 20), mode="bilinear", align_corners=True)
    torch.testing.assert_close(scores[:, 2:], back, rtol=2e-6, atol=0)
    back_other = F.interpolate(view[:, :1].exp(), (30, 20), mode="bilinear",
                               align_corners=False)
    assert float((back - back_other).abs().max()) > 0.05


# ------------------------------------------------------ (6) mIoU over all the classes

def test_official_miou_counts_an_absent_class_as_zero_and_ignores_background():
    target = torch.tensor([[0, 0, 1, 1, 255, 255],
                           [2, 2, 2, 0, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 3, 3],
                         [2, 2, 0, 0, 2, 1]])  # class 3 only on ignored pixels
    cm = ConfusionMatrix(4).update(pred, target)
    # Labelled pixels: 8, correct 6. IoU: class 0 2/4, class 1 2/3, class 2 2/3, class 3 none.
    official, default = cm.compute(absent_as_zero=True), cm.compute()
    assert official["pixAcc"] == default["pixAcc"] == 6 / 8
    iou = [2 / 4, 2 / 3, 2 / 3]
    assert cm.iou_per_class()[:3].tolist() == iou and math.isnan(cm.iou_per_class()[3])
    assert default["IoU"] == iou + [None] and official["IoU"] == iou + [0.0]
    assert official["mIoU"] == pytest.approx(sum(iou) / 4, abs=1e-15)
    assert default["mIoU"] == pytest.approx(sum(iou) / 3, abs=1e-15)  # the default: unchanged


class _Scenes(torch.utils.data.Dataset):
    """Images whose predicted class is their brightest channel (uniform per image), and
    hand-made masks: class 3 never occurs, 255 marks background."""

    def __init__(self):
        masks = [torch.tensor([[0, 0, 255], [1, 255, 0]]), torch.tensor([[1, 1, 2], [2, 2, 1]]),
                 torch.tensor([[2, 255, 255], [0, 0, 2]])]
        self.items = []
        for brightest, mask in zip((0, 1, 2), masks):
            image = torch.zeros(3, *mask.shape)
            image[brightest] = 4.0
            self.items.append((image, mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_evaluate_official_reports_the_plain_mean_over_all_classes():
    model = nn.Conv2d(3, 4, 1).eval()  # class c = channel c; class 3 never predicted
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -100.0]))
        for c in range(3):
            model.weight[c, c] = 1.0
    kw = dict(progress=False, device=torch.device("cpu"), multi_scale=True)
    official = ev.evaluate(model, _Scenes(), 4, protocol="official", base_size=8, crop_size=6,
                           **kw)
    default = ev.evaluate(model, _Scenes(), 4, **kw)
    # Predicted: image 0 all 0, image 1 all 1, image 2 all 2 (14 labelled pixels of 18).
    expected = [[3, 0, 2, 0], [1, 3, 0, 0], [0, 3, 2, 0], [0, 0, 0, 0]]
    assert official["confusion"] == default["confusion"] == expected
    assert official["pixAcc"] == default["pixAcc"] == 8 / 14
    iou = [3 / (5 + 4 - 3), 3 / (4 + 6 - 3), 2 / (5 + 4 - 2)]  # inter / (row + column - inter)
    assert official["IoU"] == pytest.approx(iou + [0.0], abs=1e-15)
    assert default["IoU"][:3] == pytest.approx(iou, abs=1e-15) and default["IoU"][3] is None
    assert official["mIoU"] == pytest.approx(sum(iou) / 4, abs=1e-15)
    assert default["mIoU"] == pytest.approx(sum(iou) / 3, abs=1e-15)
    assert (official["protocol"], default["protocol"]) == ("official", "default")


def test_evaluate_refuses_an_unknown_protocol_and_a_base_size_without_it():
    model, data = nn.Conv2d(3, 4, 1).eval(), _Scenes()
    with pytest.raises(ValueError, match="protocol must be one of"):
        ev.evaluate(model, data, 4, protocol="paper", progress=False)
    with pytest.raises(ValueError, match="base_size applies to protocol='official'"):
        ev.evaluate(model, data, 4, base_size=520, progress=False)


# ------------------------------------------------------- the default protocol unchanged

def _default_before(model, image, num_classes, scales, flip, crop_size):
    """The default protocol as it was before the official one was added (a plain
    reference): zero padding of the whole view, windows moved back, averaged views."""
    def forward(x):
        out = model(x)["main"].float()
        return (out + model(x.flip(-1))["main"].float().flip(-1)) / 2 if flip else out

    def resize(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    b, _, h, w = image.shape
    total = torch.zeros(b, num_classes, h, w)
    for s in scales:
        size = (max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5)))
        x = image if size == (h, w) else resize(image, size)
        if crop_size is not None and max(size) > crop_size:
            stride = max(1, crop_size * 2 // 3)
            xp = F.pad(x, (0, max(crop_size - size[1], 0), 0, max(crop_size - size[0], 0)))
            hp, wp = xp.shape[-2:]
            acc, cnt = torch.zeros(b, num_classes, hp, wp), torch.zeros(1, 1, hp, wp)
            for r in sliding_window_starts(hp, crop_size, stride):
                for c in sliding_window_starts(wp, crop_size, stride):
                    acc[..., r:r + crop_size, c:c + crop_size] += forward(
                        xp[..., r:r + crop_size, c:c + crop_size])
                    cnt[..., r:r + crop_size, c:c + crop_size] += 1
            scores = (acc / cnt)[..., :size[0], :size[1]]
        else:
            scores = forward(x)
        total += scores if scores.shape[-2:] == (h, w) else resize(scores, (h, w))
    return total / len(scales)


@pytest.mark.parametrize("size,crop,scales,flip", [
    ((45, 71), 32, (0.5, 1.0, 1.75), True),
    ((70, 30), 48, MS_SCALES, True),  # one side shorter than the crop: padded
    ((33, 33), None, (1.0,), False),
    ((97, 131), 64, (0.75, 1.25), False),
])
def test_the_default_protocol_is_unchanged(size, crop, scales, flip):
    torch.manual_seed(0)
    model = encnet_tiny(num_classes=5, num_codes=4).eval()
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    got = predict(model, image, 5, scales=scales, flip=flip, crop_size=crop)
    with torch.no_grad():
        assert torch.equal(got, _default_before(model, image, 5, scales, flip, crop))


# ---------------------------------------------------------------------- encnet-eval

def test_encnet_eval_protocol_official_scores_and_reports_it(tmp_path, capsys):
    import json

    from encnet_lite import presets
    from encnet_lite.train import train

    cfg = presets.scenes_encnet_tiny(epochs=1, num_train_images=8, num_val_images=3,
                                     batch_size=4, image_size=32, workers=0,
                                     out=str(tmp_path / "run"), progress=False)
    train(cfg)
    ckpt = tmp_path / "run" / "best.pt"
    args = ["--checkpoint", str(ckpt), "--no-progress", "--device", "cpu"]
    assert ev.main(args + ["--protocol", "official", "--base-size", "40",
                           "--crop-size", "24"]) == 0
    assert "official protocol" in capsys.readouterr().out
    report = json.loads(ckpt.with_name("best.eval-official.json").read_text())
    model, cfg, saved = ev.load_model(str(ckpt), torch.device("cpu"))
    direct = ev.evaluate(model, ev.eval_dataset(cfg), saved["num_classes"], progress=False,
                         protocol="official", base_size=40, crop_size=24)
    assert report["protocol"] == "official" and report["num_images"] == 3
    assert report["confusion"] == direct["confusion"] and report["mIoU"] == direct["mIoU"]
    assert ev.main(args + ["--base-size", "40"]) == 2
    assert "add --protocol official" in capsys.readouterr().err
