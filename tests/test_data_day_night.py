"""ContextScenes with a second piece of context (``day_night=True``): the time of day, read
from a sky strip, decides the class of small birds far from it."""

import numpy as np
import pytest
from scipy import ndimage

from encnet_lite.data import ContextScenes, blind_caps, blind_guess
from encnet_lite.data.scenes import BIRDS

RF_HALF = 30  # >= the reach of the tiny FCN's 52 px receptive field (29 px, test_models)


def _iou(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    conf = np.bincount(n * target.ravel() + pred.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(conf).astype(float)
    return inter / (conf.sum(0) + conf.sum(1) - inter)


def test_classes_and_ids():
    ds = ContextScenes(num_images=4, day_night=True)
    assert ds.classes == ["ground", "water", "house", "rails", "boat", "car", "wagon",
                          "day sky", "night sky", "pigeon", "bat"]
    assert ds.num_classes == 11 and len({tuple(c) for c in ds.palette}) == 11
    assert [ds.classes[c] for c in ds.sky_classes] == ["day sky", "night sky"]
    assert [ds.classes[c] for c in ds.bird_classes] == ["pigeon", "bat"]
    plain = ContextScenes(num_images=4)
    assert plain.num_classes == 7 and plain.sky_classes == plain.bird_classes == []
    assert {plain.time_index(i) for i in range(4)} == {0}


def test_without_day_night_the_images_are_unchanged_and_with_it_only_sky_and_birds_differ():
    plain, both = ContextScenes(num_images=12, seed=4), ContextScenes(num_images=12, seed=4,
                                                                       day_night=True)
    for i in range(len(plain)):
        a, b = plain.render(i), both.render(i)
        assert a.birds == () and len(b.birds) >= BIRDS[0]
        changed = np.isin(b.mask, both.sky_classes + both.bird_classes)
        assert changed.any()
        assert np.array_equal(a.image[~changed], b.image[~changed])
        assert np.array_equal(a.mask[~changed], b.mask[~changed])
        assert a.boxes == b.boxes and a.band == b.band and a.kind == b.kind


def test_times_are_balanced_within_each_kind_and_match_the_masks():
    ds = ContextScenes(num_images=60, day_night=True)
    pairs = [(ds.scene_kind_index(i), ds.time_index(i)) for i in range(len(ds))]
    assert {p: pairs.count(p) for p in set(pairs)} == {(k, t): 10 for k in range(3)
                                                       for t in range(2)}
    for i in range(12):
        scene = ds.render(i)
        t = ds.time_index(i)
        assert scene.time == t
        assert (scene.mask == ds.sky_classes[t]).any() and (scene.mask == ds.bird_classes[t]).any()
        assert not np.isin(scene.mask, [ds.sky_classes[1 - t], ds.bird_classes[1 - t]]).any()
        assert BIRDS[0] <= len(scene.birds) <= BIRDS[1]


@pytest.mark.parametrize("size", [128, 192])
def test_every_sky_and_cue_pixel_is_far_from_every_bird_pixel(size):
    ds = ContextScenes(num_images=90, size=size, seed=2, day_night=True)
    closest = np.inf
    for i in range(len(ds)):
        mask = ds.render(i).mask
        cue = np.isin(mask, ds.cue_classes + ds.sky_classes)
        birds = np.isin(mask, ds.bird_classes)
        assert birds.any()
        dist = ndimage.distance_transform_cdt(~cue, metric="chessboard")
        closest = min(closest, dist[birds].min())
    assert closest >= ds.cue_gap > RF_HALF


def test_bird_neighbourhood_is_identical_across_times():
    """Around a bird the picture is the same by day and by night (what the tiny FCN sees
    there cannot tell the time), while the birds' labels differ."""
    ds = ContextScenes(num_images=30, seed=7, day_night=True)
    for i in range(len(ds)):
        day, night = ds.render(i, time=0), ds.render(i, time=1)
        birds = np.isin(day.mask, ds.bird_classes)
        window = ndimage.maximum_filter(birds, size=2 * RF_HALF + 1)
        assert np.array_equal(np.isin(night.mask, ds.bird_classes), birds)
        assert np.array_equal(day.image[window], night.image[window])
        assert (day.mask[birds] == ds.bird_classes[0]).all()
        assert (night.mask[birds] == ds.bird_classes[1]).all()
        assert not np.array_equal(day.image, night.image)  # the sky differs


def test_analytic_caps_with_birds():
    caps = blind_caps(3, 11, lookalike_fraction=0.12, num_times=2, bird_fraction=0.03)
    assert caps["bird_IoU"] == pytest.approx(1 / 3)
    assert caps["mIoU"] == pytest.approx((6 + 3 / 5 + 2 / 3) / 11)  # 0.661
    assert caps["mIoU_kind_only"] == pytest.approx((9 + 2 / 3) / 11)  # 0.879
    assert caps["mIoU_constant_guess"] == pytest.approx((6 + 1 / 3 + 1 / 2) / 11)
    assert caps["pixAcc"] == pytest.approx(1 - 2 / 3 * 0.12 - 1 / 2 * 0.03)
    assert "bird_IoU" not in blind_caps(3, 7)
    ds = ContextScenes(num_images=1, day_night=True)
    assert ds.caps()["mIoU"] == pytest.approx(caps["mIoU"])


def test_blind_and_kind_only_oracles_score_their_caps_on_generated_data():
    """Random look-alike and bird classes (independent of kind and time) score the blind cap;
    the true look-alikes with random birds score the kind-only cap."""
    ds = ContextScenes(num_images=240, split="val", day_night=True)
    n, rng = ds.num_classes, np.random.default_rng(1)
    masks = np.stack([ds.render(i).mask for i in range(len(ds))])
    kind_only = blind_guess(masks, ds.bird_classes, rng)
    blind = blind_guess(kind_only, ds.context_classes, rng)
    look = np.isin(masks, ds.context_classes).mean()
    birds = np.isin(masks, ds.bird_classes).mean()
    caps = ds.caps(look, birds)
    assert _iou(blind, masks, n).mean() == pytest.approx(caps["mIoU"], abs=0.006)
    assert _iou(kind_only, masks, n).mean() == pytest.approx(caps["mIoU_kind_only"], abs=0.006)
    assert (blind == masks).mean() == pytest.approx(caps["pixAcc"], abs=0.005)
    assert 0.02 < birds < 0.05  # small objects: a few percent of the pixels


def test_the_config_field_reaches_both_splits_and_the_evaluation():
    from encnet_lite.engine import build_datasets
    from encnet_lite.evaluate import eval_dataset
    from encnet_lite.presets import TrainConfig, resume_changes

    cfg = TrainConfig().replace(num_train_images=4, num_val_images=2, day_night=True)
    train, val = build_datasets(cfg)
    assert train.day_night and val.day_night and eval_dataset(cfg).num_classes == 11
    assert not build_datasets(cfg.replace(day_night=False))[0].day_night
    # other classes: a resume on the other data is refused
    assert resume_changes(cfg, cfg.replace(day_night=False))["recipe"] == [
        "day_night: True -> False"]


def test_prediction_colours_cover_every_day_night_class():
    from encnet_lite.data import ContextScenes
    from encnet_lite.predict import palette_for
    from encnet_lite.presets import TrainConfig

    palette = palette_for(TrainConfig().replace(day_night=True), 11)
    assert palette.shape == (11, 3)
    np.testing.assert_array_equal(palette, ContextScenes(1, day_night=True).palette)
    assert palette_for(TrainConfig(), 7).shape == (7, 3)
