"""Joint transforms: masks keep their values (nearest only), padding is mean/ignore, geometry."""

import pytest
import torch

from encnet_lite.data import (
    CenterCrop,
    Compose,
    ContextScenes,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ResizeShort,
    train_transform,
    val_transform,
)
from encnet_lite.data.transforms import pad_to, resize


def _pair(h=37, w=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(3, h, w, generator=g)
    # a mask using a few scattered ids, including ignore, with sharp edges everywhere
    values = torch.tensor([0, 3, 7, 58, 255])
    mask = values[torch.randint(0, len(values), (h, w), generator=g)]
    return image, mask


TRANSFORMS = {
    "scale_down": RandomScale(base_size=20, scale=(0.5, 0.9)),
    "scale_up": RandomScale(base_size=100, scale=(1.5, 2.0)),
    "crop_pad": RandomCrop(64),
    "crop": RandomCrop(16),
    "flip": RandomHorizontalFlip(1.0),
    "resize_short": ResizeShort(70),
    "center_crop": CenterCrop(30),
    "train": train_transform(crop_size=48, base_size=52),
    "val": val_transform(crop_size=40),
    "identity": val_transform(),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_mask_values_survive_every_transform(name):
    for seed in range(5):
        image, mask = _pair(seed=seed)
        torch.manual_seed(seed)
        out_image, out_mask = TRANSFORMS[name](image, mask)
        assert out_mask.dtype == torch.int64 and out_image.dtype == torch.float32
        assert out_image.shape[-2:] == out_mask.shape
        # nearest-neighbour only: no value that was not there (padding adds only ignore)
        assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist()) | {255}


def test_random_scale_sets_the_long_side_in_range():
    image, mask = _pair(40, 80)
    for seed in range(20):
        torch.manual_seed(seed)
        out, out_mask = RandomScale(base_size=100, scale=(0.5, 2.0))(image, mask)
        h, w = out.shape[-2:]
        assert 50 <= w <= 200 and abs(h / w - 0.5) < 0.02 and out_mask.shape == (h, w)


def test_crop_pads_image_with_mean_and_mask_with_ignore():
    image, mask = torch.ones(3, 10, 12), torch.zeros(10, 12, dtype=torch.long)
    out, out_mask = pad_to(image, mask, 16, 20)
    assert out.shape == (3, 16, 20) and out_mask.shape == (16, 20)
    assert (out[:, 10:] == 0).all() and (out[:, :, 12:] == 0).all()  # 0 = the mean, normalised
    assert (out_mask[10:] == 255).all() and (out_mask[:10, :12] == 0).all()
    out, out_mask = RandomCrop(24)(image, mask)
    assert out.shape == (3, 24, 24)
    assert int((out_mask == 0).sum()) == 10 * 12 and int((out_mask == 255).sum()) == 24 * 24 - 120


def test_flip_and_crop_move_image_and_mask_together():
    h, w = 20, 30
    coords = torch.arange(h * w, dtype=torch.float32).view(h, w)
    image = coords.expand(3, h, w).clone()
    mask = torch.arange(h * w).view(h, w) % 250
    out, out_mask = Compose([RandomHorizontalFlip(1.0), RandomCrop(12)])(image, mask)
    assert torch.equal(out[0].long() % 250, out_mask)


def test_resize_keeps_mask_aligned_with_image():
    # a mask that equals the image's rounded values stays consistent at every scale
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[8:24, 8:24] = 5
    image = mask.float().expand(3, 32, 32).clone()
    for size in [(16, 16), (64, 64), (48, 40)]:
        out, out_mask = resize(image, mask, size)
        ys, xs = torch.nonzero(out_mask == 5, as_tuple=True)
        yi, xi = torch.nonzero(out[0] > 2.5, as_tuple=True)
        assert abs(ys.float().mean() - yi.float().mean()) < 0.6
        assert abs(xs.float().mean() - xi.float().mean()) < 0.6


def test_generator_makes_transforms_reproducible():
    image, mask = _pair()
    a = train_transform(24, 40, generator=torch.Generator().manual_seed(3))(image, mask)
    b = train_transform(24, 40, generator=torch.Generator().manual_seed(3))(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_val_transform_is_deterministic_and_square():
    image, mask = _pair(50, 90)
    out, out_mask = val_transform(crop_size=32)(image, mask)
    assert out.shape == (3, 32, 32) and out_mask.shape == (32, 32)
    again = val_transform(crop_size=32)(image, mask)
    assert torch.equal(out, again[0])


def test_transforms_work_on_context_scenes():
    ds = ContextScenes(num_images=3, transform=train_transform(crop_size=96, base_size=128))
    for i in range(3):
        image, mask = ds[i]
        assert image.shape == (3, 96, 96) and mask.shape == (96, 96)
        assert set(mask.unique().tolist()) <= set(range(ds.num_classes)) | {255}
