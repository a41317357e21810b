"""encnet-predict: a trained checkpoint and your own images -> colour mask + overlay PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import images, predict, presets
from encnet_lite.data import ContextScenes, colorize, denormalize
from encnet_lite.evaluate import load_model
from encnet_lite.train import train


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """best.pt of a 1-epoch tiny run (2 iterations on 64 px scenes)."""
    out = tmp_path_factory.mktemp("run")
    cfg = presets.scenes_encnet_tiny(epochs=1, num_train_images=32, num_val_images=8,
                                     image_size=64, out=str(out), progress=False)
    train(cfg)
    return out / "best.pt"


def _photo(path, index=0, size=64):
    image, _ = ContextScenes(index + 1, size=size, split="val")[index]
    rgb = (denormalize(image).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_cli_writes_a_mask_and_an_overlay_per_png(tiny_checkpoint, tmp_path, capsys):
    rgb = _photo(tmp_path / "street.png")
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "street.png"),
                       "--out", str(tmp_path / "pred")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "street.mask.png", "street.overlay.png"]
    mask = np.asarray(Image.open(tmp_path / "pred" / "street.mask.png").convert("RGB"))
    over = np.asarray(Image.open(tmp_path / "pred" / "street.overlay.png").convert("RGB"))
    assert mask.shape == rgb.shape and over.shape[1:] == rgb.shape[1:]
    assert over.shape[0] > rgb.shape[0]  # a legend band (class names) under the photo
    over = over[:rgb.shape[0]]
    # The mask is the model's prediction in the dataset's colours ...
    model, cfg, saved = load_model(str(tiny_checkpoint), torch.device("cpu"))
    labels = predict.segment_image(model, rgb, saved["num_classes"])
    palette = predict.palette_for(cfg, saved["num_classes"])
    np.testing.assert_array_equal(mask, colorize(labels, palette))
    # ... and the overlay blends it half and half over the photo.
    expected = (0.5 * rgb.astype(np.float32) + 0.5 * mask.astype(np.float32) + 0.5)
    np.testing.assert_array_equal(over, expected.astype(np.uint8))
    assert "street.mask.png" in capsys.readouterr().out


def test_multi_scale_with_sliding_windows(tiny_checkpoint, tmp_path):
    _photo(tmp_path / "a.png", size=96)
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "a.png"),
                       "--out", str(tmp_path), "--multi-scale", "--crop-size", "48"])
    assert rc == 0
    assert Image.open(tmp_path / "a.mask.png").size == (96, 96)


def test_missing_and_unreadable_images_fail_clearly_before_any_output(tiny_checkpoint,
                                                                       tmp_path, capsys):
    _photo(tmp_path / "good.png")
    out = tmp_path / "pred"
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "good.png"),
                       str(tmp_path / "nope.jpg"), "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "nope.jpg does not exist" in capsys.readouterr().err
    (tmp_path / "notes.png").write_text("not an image")
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "notes.png"),
                       "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "notes.png" in err and "unreadable" in err and not out.exists()


def test_a_checkpoint_with_nan_weights_is_refused(tiny_checkpoint, tmp_path, capsys):
    saved = ckpt_io.load(tiny_checkpoint)
    name = next(k for k, v in saved["model"].items() if v.is_floating_point())
    saved["model"][name] = saved["model"][name].clone().fill_(float("nan"))
    bad = ckpt_io.save_atomic(saved, tmp_path / "bad.pt")
    _photo(tmp_path / "x.png")
    rc = predict.main(["--checkpoint", str(bad), str(tmp_path / "x.png"),
                       "--out", str(tmp_path / "pred")])
    assert rc == 2 and name in capsys.readouterr().err


def test_overlay_rejects_an_opacity_outside_0_1():
    with pytest.raises(ValueError, match=r"alpha=1\.5"):
        images.overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), 1.5)


def _predicted(checkpoint, rgb, **options):
    """The mask colours the CLI should write for ``rgb``."""
    model, cfg, saved = load_model(str(checkpoint), torch.device("cpu"))
    labels = predict.segment_image(model, rgb, saved["num_classes"], **options)
    return colorize(labels, predict.palette_for(cfg, saved["num_classes"]))


def _mask(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_output_names_are_unique_per_input(tiny_checkpoint, tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    photos = {"photo.png": 0, "photo.jpg": 1, "a/x.png": 2, "b/x.png": 3, "solo.png": 4}
    rgbs = {name: _photo(tmp_path / name, index) for name, index in photos.items()}
    out = tmp_path / "pred"
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), *[str(tmp_path / n) for n in photos],
                       "--out", str(out)])
    assert rc == 0
    names = {"photo.png": "photo.png", "photo.jpg": "photo.jpg", "a/x.png": "a-x.png",
             "b/x.png": "b-x.png", "solo.png": "solo"}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{kind}.png" for n in names.values() for kind in ("mask", "overlay"))
    for photo, name in names.items():  # each output holds its own image's prediction
        rgb = images.read_photo(tmp_path / photo)  # the JPEG as decoded, not as generated
        assert photo.endswith(".jpg") or np.array_equal(rgb, rgbs[photo])
        np.testing.assert_array_equal(_mask(out / f"{name}.mask.png"),
                                      _predicted(tiny_checkpoint, rgb))
    assert capsys.readouterr().out.count(" -> ") == 5


def test_16_bit_png_is_scaled_by_its_range(tiny_checkpoint, tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    rgb = images.read_photo(tmp_path / "deep.png")
    expected = np.round(ramp / 257).astype(np.uint8)  # 65535 -> 255, 257 -> 1
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=2))
    assert (rgb == 255).mean() < 0.01  # PIL's convert("RGB") made 99.6 % of it white
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "deep.png"),
                       "--out", str(tmp_path / "pred")])
    assert rc == 0
    np.testing.assert_array_equal(_mask(tmp_path / "pred" / "deep.mask.png"),
                                  _predicted(tiny_checkpoint, rgb))


def test_float_tiff_in_0_1_is_scaled_by_255(tmp_path):
    values = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(values).save(tmp_path / "float.tif")
    rgb = images.read_photo(tmp_path / "float.tif")
    assert rgb.dtype == np.uint8 and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    np.testing.assert_array_equal(rgb[..., 1], (values * 255 + 0.5).astype(np.uint8))


def test_exif_orientation_is_applied_to_the_mask_and_the_overlay(tiny_checkpoint, tmp_path):
    _photo(tmp_path / "plain.png", size=64)
    wide = np.asarray(Image.open(tmp_path / "plain.png"))[:40]  # 40 x 64: not square
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(wide).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    stored = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))  # as stored, 40x64
    upright = np.rot90(stored, k=-1)  # what a viewer shows: 64 high, 40 wide
    assert images.photo_size(tmp_path / "phone.jpg") == (64, 40)
    np.testing.assert_array_equal(images.read_photo(tmp_path / "phone.jpg"), upright)
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "phone.jpg"),
                       "--out", str(tmp_path / "pred")])
    assert rc == 0
    mask = _mask(tmp_path / "pred" / "phone.mask.png")
    np.testing.assert_array_equal(mask, _predicted(tiny_checkpoint, np.ascontiguousarray(upright)))
    expected = (0.5 * upright.astype(np.float32) + 0.5 * mask.astype(np.float32) + 0.5)
    np.testing.assert_array_equal(_mask(tmp_path / "pred" / "phone.overlay.png")[:64],
                                  expected.astype(np.uint8))


def test_a_large_photo_is_segmented_at_max_side_and_scaled_back(tiny_checkpoint, tmp_path,
                                                                 monkeypatch, capsys):
    from encnet_lite import inference

    rgb = np.concatenate([_photo(tmp_path / f"{i}.png", i, size=120) for i in range(3)], 1)
    Image.fromarray(rgb).save(tmp_path / "wide.png")  # 120 x 360
    seen, real = [], inference.predict
    def spy(model, x, *args, **kwargs):
        seen.append(tuple(x.shape[-2:]))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(inference, "predict", spy)
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "wide.png"),
                       "--out", str(tmp_path / "pred"), "--max-side", "96"])
    assert rc == 0 and seen == [(32, 96)]
    assert "(segmented at 96x32)" in capsys.readouterr().out
    small = np.asarray(Image.fromarray(rgb).resize((96, 32), Image.BILINEAR))
    model, cfg, saved = load_model(str(tiny_checkpoint), torch.device("cpu"))
    labels = predict.segment_image(model, small, saved["num_classes"])
    back = np.asarray(Image.fromarray(labels).resize((360, 120), Image.NEAREST))
    mask = _mask(tmp_path / "pred" / "wide.mask.png")
    assert mask.shape == (120, 360, 3)  # the photo's own size
    np.testing.assert_array_equal(mask, colorize(back, predict.palette_for(cfg, 7)))


@pytest.mark.parametrize("side,options", [(8, []), (15, ["--multi-scale"])])
def test_the_smallest_images_the_model_takes_are_segmented(tiny_checkpoint, tmp_path, side,
                                                           options):
    rgb = np.random.default_rng(side).integers(0, 256, (side, side + 3, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "small.png")
    rc = predict.main(["--checkpoint", str(tiny_checkpoint), str(tmp_path / "small.png"),
                       "--out", str(tmp_path / "pred"), *options])
    assert rc == 0
    np.testing.assert_array_equal(_mask(tmp_path / "pred" / "small.mask.png"),
                                  _predicted(tiny_checkpoint, rgb, multi_scale=bool(options)))


def test_overlay_in_bands_equals_the_whole_image_formula():
    rng = np.random.default_rng(0)
    rgb, colours = (rng.integers(0, 256, (3000, 700, 3), dtype=np.uint8) for _ in range(2))
    mixed = (1 - 0.7) * rgb.astype(np.float32) + 0.7 * colours.astype(np.float32)
    expected = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(images.overlay(rgb, colours, 0.7), expected)
