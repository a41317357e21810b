"""predict(): single scale, multi-scale + flip, sliding windows, any input size."""

import math

import pytest
import torch
from torch import nn

from encnet_lite.inference import MS_SCALES, predict, sliding_window_starts
from encnet_lite.models import encnet_tiny

# Windows, flips and scales against one pass: rerun under other kernels.
pytestmark = pytest.mark.numerics

CLASSES = 4


def pointwise_model() -> nn.Module:
    """A 1x1 conv on the pixels: resizing, mirroring and cropping commute with it, so it is
    scale-, flip- and translation-equivariant by construction."""
    torch.manual_seed(0)
    return nn.Conv2d(3, CLASSES, 1).eval()


def smooth_image(h: int, w: int) -> torch.Tensor:
    """Low-frequency content that bilinear resampling preserves almost exactly."""
    y = (torch.arange(h) + 0.5) / h
    x = (torch.arange(w) + 0.5) / w
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([torch.cos(math.pi * yy), torch.cos(math.pi * xx),
                        torch.cos(math.pi * yy) * torch.cos(math.pi * xx)])[None]


def test_single_scale_is_the_model():
    model, image = pointwise_model(), torch.randn(2, 3, 37, 53)
    torch.testing.assert_close(predict(model, image, CLASSES), model(image))


def test_flip_of_an_equivariant_model_changes_nothing():
    model, image = pointwise_model(), torch.randn(1, 3, 37, 53)
    torch.testing.assert_close(predict(model, image, CLASSES, flip=True), model(image))


@pytest.mark.parametrize("size", [(97, 131), (40, 131), (131, 40)])
def test_sliding_windows_of_a_local_model_equal_one_pass(size):
    # Windows of 48 px at stride 32, padding where a side is shorter than the crop.
    model, image = pointwise_model(), torch.randn(1, 3, *size)
    scores = predict(model, image, CLASSES, crop_size=48, stride=32, flip=True)
    torch.testing.assert_close(scores, model(image))


MULTI_SCALE_TOL = 2e-3  # relative to the largest score, on smooth_image


def _multi_vs_single(model: nn.Module, smooth: torch.Tensor) -> float:
    """Largest |multi-scale + flip - single scale| relative to the largest score."""
    single = predict(model, smooth, CLASSES)
    multi = predict(model, smooth, CLASSES, scales=MS_SCALES, flip=True, crop_size=100)
    return float((multi - single).abs().max() / single.abs().max())


def test_multi_scale_of_a_scale_equivariant_model_equals_single_scale():
    model = pointwise_model()
    constant = torch.tensor([0.3, -1.2, 0.7]).reshape(1, 3, 1, 1).expand(1, 3, 61, 83)
    single = predict(model, constant, CLASSES)
    multi = predict(model, constant, CLASSES, scales=MS_SCALES, flip=True)
    torch.testing.assert_close(multi, single)  # resampling a constant is exact
    assert _multi_vs_single(model, smooth_image(96, 128)) < MULTI_SCALE_TOL


def test_views_resized_one_pixel_off_break_the_multi_scale_agreement(monkeypatch):
    # predict() itself with a resize that lands one pixel off: the check above must fail.
    from encnet_lite import inference

    resize = inference._resize
    monkeypatch.setattr(inference, "_resize",
                        lambda x, size: torch.roll(resize(x, size), 1, dims=-1))
    assert _multi_vs_single(pointwise_model(), smooth_image(96, 128)) > 5 * MULTI_SCALE_TOL


def test_flip_averages_the_mirrored_views_scores_mirrored_back():
    # A 3x3 conv with a lopsided kernel is not flip-equivariant: the two views differ.
    torch.manual_seed(0)
    model = nn.Conv2d(3, CLASSES, 3, padding=1).eval()
    with torch.no_grad():
        model.weight[..., 0] += 1.0
    image = torch.randn(1, 3, 20, 27)
    with torch.no_grad():
        plain, mirrored = model(image), model(image.flip(-1)).flip(-1)
    assert float((plain - mirrored).abs().mean()) > 0.5
    torch.testing.assert_close(predict(model, image, CLASSES, flip=True), (plain + mirrored) / 2)


def test_a_model_with_another_class_count_is_refused():
    with pytest.raises(ValueError, match=f"predicts {CLASSES} classes, not {CLASSES + 1}"):
        predict(pointwise_model(), torch.randn(1, 3, 16, 16), CLASSES + 1)
    with pytest.raises(ValueError, match=f"predicts {CLASSES} classes, not 2"):
        predict(pointwise_model(), torch.randn(1, 3, 90, 70), 2, crop_size=48, flip=True)


def test_any_size_with_a_real_model():
    model = encnet_tiny(num_classes=CLASSES, num_codes=4).eval()
    image = torch.randn(3, 45, 71)  # (3, H, W) is accepted
    scores = predict(model, image, CLASSES, scales=(0.5, 1.0, 1.75), flip=True, crop_size=64)
    assert scores.shape == (1, CLASSES, 45, 71) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert model.training is False


def test_sliding_window_starts_cover_the_image():
    assert sliding_window_starts(480, 480, 320) == [0]
    assert sliding_window_starts(500, 480, 320) == [0, 20]
    for size, crop, stride in [(1000, 480, 320), (97, 48, 32), (49, 48, 1)]:
        starts = sliding_window_starts(size, crop, stride)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            covered[s:s + crop] = True
        assert covered.all() and starts[-1] + crop == size
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_predict_official_checks_its_input_and_the_model_as_predict():
    from encnet_lite.inference import predict_official

    with pytest.raises(ValueError, match=f"predicts {CLASSES} classes, not 2"):
        predict_official(pointwise_model(), torch.randn(1, 3, 90, 70), 2, base_size=64,
                         crop_size=48)
    with pytest.raises(ValueError, match="image must be float"):
        predict_official(pointwise_model(), torch.zeros(1, 3, 9, 9, dtype=torch.uint8), CLASSES)
    with pytest.raises(ValueError, match="every scale > 0"):
        predict_official(pointwise_model(), torch.randn(3, 9, 9), CLASSES, scales=(0.0,))


def test_predict_official_of_a_local_model_on_any_size():
    # A 1x1 conv: every window, padded or clipped, gives the pixels' own exp(2 logits).
    model = pointwise_model()
    from encnet_lite.inference import official_view_size, predict_official

    for size in [(40, 131), (131, 40), (20, 20)]:
        image = torch.randn(1, 3, *size)
        scores = predict_official(model, image, CLASSES, scales=(1.0,), base_size=96,
                                  crop_size=48)
        view = torch.nn.functional.interpolate(image, official_view_size(*size, 96, 1.0),
                                               mode="bilinear", align_corners=True)
        with torch.no_grad():
            expected = torch.nn.functional.interpolate(
                (2 * model(view)).exp(), size, mode="bilinear", align_corners=True)
        torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
