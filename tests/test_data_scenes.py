"""ContextScenes: interface, determinism, the no-local-cue construction and the blind cap."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from encnet_lite.data import MEAN, STD, ContextScenes, blind_caps, blind_guess, denormalize
from encnet_lite.data.scenes import CUE_GAP

RF_HALF = 30  # >= the reach of the tiny FCN's 52 px receptive field (29 px, test_models)


def _confusion(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(n * target.ravel() + pred.ravel(), minlength=n * n).reshape(n, n)


def _iou(conf: np.ndarray) -> np.ndarray:
    inter = np.diag(conf).astype(float)
    return inter / (conf.sum(0) + conf.sum(1) - inter)


def test_interface_and_normalisation():
    ds = ContextScenes(num_images=10)
    image, mask = ds[3]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert mask.shape == (128, 128) and mask.dtype == torch.int64
    assert len(ds) == 10 and ds.ignore_index == 255
    assert ds.classes == ["ground", "water", "house", "rails", "boat", "car", "wagon"]
    assert ds.num_classes == 7 and ds.palette.shape == (7, 3) and ds.palette.dtype == np.uint8
    assert len({tuple(c) for c in ds.palette}) == 7
    assert ds.scene_kinds == ["harbour", "street", "railway"]
    assert [ds.classes[c] for c in ds.context_classes] == ["boat", "car", "wagon"]
    assert int(mask.min()) >= 0 and int(mask.max()) < ds.num_classes
    # normalised with the ImageNet statistics: denormalize gives back the rendered picture
    raw = torch.from_numpy(ds.render(3).image).permute(2, 0, 1)
    assert torch.allclose(denormalize(image), raw, atol=1e-5)
    expected = (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(image, expected, atol=1e-5)
    with pytest.raises(IndexError):
        ds[10]
    assert torch.equal(ds[-1][1], ds[9][1])


def test_deterministic_per_seed_index_and_split():
    a, b = ContextScenes(num_images=5, seed=1), ContextScenes(num_images=5, seed=1)
    for i in range(5):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    other_seed = ContextScenes(num_images=5, seed=2)
    val = ContextScenes(num_images=5, seed=1, split="val")
    assert not torch.equal(a[0][0], other_seed[0][0])
    assert not torch.equal(a[0][0], val[0][0])
    with pytest.raises(ValueError):
        ContextScenes(split="test")


def test_scene_kind_matches_the_mask_and_kinds_are_balanced():
    ds = ContextScenes(num_images=30)
    kinds = [ds.scene_kind(i) for i in range(30)]
    assert {k: kinds.count(k) for k in ds.scene_kinds} == {k: 10 for k in ds.scene_kinds}
    for i in range(30):
        k = ds.scene_kind_index(i)
        present = set(np.unique(ds.render(i).mask).tolist())
        assert present == {0, ds.cue_classes[k], ds.context_classes[k]}


def test_two_kinds_variant():
    ds = ContextScenes(num_images=4, num_kinds=2)
    assert ds.classes == ["ground", "water", "house", "boat", "car"]
    assert ds.context_classes == [3, 4] and ds[1][1].max() <= 4


@pytest.mark.parametrize("size", [128, 160, 256])
def test_every_cue_pixel_is_far_from_every_lookalike_pixel(size):
    ds = ContextScenes(num_images=150, size=size, seed=3)
    gap = ds.cue_gap
    assert gap >= CUE_GAP and gap == np.ceil(CUE_GAP * size / 128)
    closest = np.inf
    for i in range(len(ds)):
        mask = ds.render(i).mask
        cue = np.isin(mask, ds.cue_classes)
        look = np.isin(mask, ds.context_classes)
        assert cue.any() and look.any()
        # chessboard distance of every pixel to the nearest cue pixel
        dist = ndimage.distance_transform_cdt(~cue, metric="chessboard")
        closest = min(closest, dist[look].min())
        for _, _, h, w in ds.render(i).boxes:
            assert min(h, w) >= 12 * size // 128  # objects big enough to matter in mIoU
    assert closest >= gap > RF_HALF


def test_lookalike_neighbourhood_is_identical_across_kinds():
    """What the tiny FCN sees around a look-alike pixel does not depend on the scene kind:
    the same layout rendered as each kind is pixel-identical within +-30 px of the objects,
    while the objects' labels differ."""
    ds = ContextScenes(num_images=40, seed=5)
    for i in range(len(ds)):
        scenes = [ds.render(i, kind=k) for k in range(ds.num_kinds)]
        look = np.isin(scenes[0].mask, ds.context_classes)
        window = ndimage.maximum_filter(look, size=2 * RF_HALF + 1)  # Chebyshev dilation
        for k, scene in enumerate(scenes):
            assert np.array_equal(np.isin(scene.mask, ds.context_classes), look)
            assert np.array_equal(scene.image[window], scenes[0].image[window])
            assert (scene.mask[look] == ds.context_classes[k]).all()
        # ...and the scenes do differ: in their cue band
        assert not np.array_equal(scenes[0].image, scenes[1].image)


def test_analytic_caps():
    caps = blind_caps(3, 7, lookalike_fraction=0.066)
    assert caps["lookalike_IoU"] == pytest.approx(1 / 5)
    assert caps["mIoU"] == pytest.approx((4 + 3 / 5) / 7)  # 0.657
    assert caps["mIoU_constant_guess"] == pytest.approx((4 + 1 / 3) / 7)
    assert caps["pixAcc"] == pytest.approx(1 - 2 / 3 * 0.066)
    two = blind_caps(2, 5)
    assert two["mIoU"] == pytest.approx((3 + 2 / 3) / 5)  # 0.733
    assert ContextScenes(num_images=1).caps()["mIoU"] == pytest.approx(caps["mIoU"])


def test_blind_oracle_scores_the_cap_on_generated_data():
    """The best context-blind labelling (truth everywhere except look-alikes, which get classes
    drawn independently of the scene) scores the analytic cap; a constant guess scores less."""
    ds = ContextScenes(num_images=300, split="val", seed=0)
    n, rng = ds.num_classes, np.random.default_rng(0)
    conf_blind = np.zeros((n, n), np.int64)
    conf_const = np.zeros((n, n), np.int64)
    look_pixels = 0
    for i in range(len(ds)):
        mask = ds.render(i).mask
        look = np.isin(mask, ds.context_classes)
        look_pixels += look.sum()
        conf_blind += _confusion(blind_guess(mask, ds.context_classes, rng), mask, n)
        const = mask.copy()
        const[look] = ds.context_classes[0]
        conf_const += _confusion(const, mask, n)
    caps = ds.caps(lookalike_fraction=look_pixels / conf_blind.sum())
    iou = _iou(conf_blind)
    assert iou[ds.context_classes] == pytest.approx([caps["lookalike_IoU"]] * 3, abs=0.01)
    assert iou.mean() == pytest.approx(caps["mIoU"], abs=0.005)
    assert _iou(conf_const).mean() == pytest.approx(caps["mIoU_constant_guess"], abs=0.015)
    blind_acc = np.diag(conf_blind).sum() / conf_blind.sum()
    assert blind_acc == pytest.approx(caps["pixAcc"], abs=0.005)
    assert caps["mIoU"] < 0.66 and 0.08 < look_pixels / conf_blind.sum() < 0.18


def test_transform_is_applied_jointly():
    calls = []

    def transform(image, mask):
        calls.append((image.shape, mask.shape))
        return image[:, :64, :64], mask[:64, :64]

    image, mask = ContextScenes(num_images=2, transform=transform)[0]
    assert calls == [((3, 128, 128), (128, 128))]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)


def test_small_sizes_scale_the_geometry_and_tiny_ones_are_refused():
    ds = ContextScenes(num_images=2, size=64)
    assert ds.cue_gap == 18  # below the 30 px half receptive field: guarantee void (docstring)
    assert ds[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError):
        ContextScenes(size=16)


@pytest.mark.parametrize("lookalikes", [(1, 1), (2, 4), (4, 8)])
def test_lookalike_count_stays_in_the_requested_range(lookalikes):
    ds = ContextScenes(num_images=24, lookalikes=lookalikes)
    counts = [len(ds.render(i).boxes) for i in range(len(ds))]
    assert lookalikes[0] <= min(counts) and max(counts) <= lookalikes[1]
    if lookalikes[0] < lookalikes[1]:
        assert len(set(counts)) > 1  # drawn, not fixed


def test_default_lookalikes_and_the_config_fields_agree():
    from encnet_lite.engine import build_datasets
    from encnet_lite.presets import TrainConfig

    assert ContextScenes(num_images=1).lookalikes == (4, 8)
    cfg = TrainConfig().replace(num_train_images=4, num_val_images=2, min_lookalikes=2,
                                max_lookalikes=3)
    train, val = build_datasets(cfg)
    assert train.lookalikes == val.lookalikes == (2, 3)
    with pytest.raises(ValueError, match="lookalikes"):
        ContextScenes(num_images=1, lookalikes=(3, 2))
    with pytest.raises(ValueError, match="max_lookalikes"):
        TrainConfig().replace(min_lookalikes=5, max_lookalikes=4)
