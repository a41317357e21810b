"""encnet-predict: a trained checkpoint and your own images -> colour mask + overlay PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import predict, presets
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
    assert mask.shape == over.shape == rgb.shape
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
        predict.overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), 1.5)
