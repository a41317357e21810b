"""Published weights through the CLIs (``encnet-eval --weights``, ``encnet-predict
--weights``), ADE20K as an evaluation and training dataset, and mmsegmentation's test.

The weights files are fabricated: a randomly initialised model of the entry's architecture,
written in the entry's published format (the official zip, mmsegmentation's dict). Their
scores mean nothing; what is checked is that every path runs, picks the right dataset,
protocol and sizes, and reports them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encnet_lite import evaluate, images, inference, models, predict, presets, train, weights
from encnet_lite.data import miniature
from encnet_lite.data.prepare_ade20k import prepare_ade20k
from encnet_lite.data.prepare_pcontext import prepare_pcontext

PCONTEXT = "EncNet_ResNet50s_PContext"
ADE = "EncNet_ResNet50s_ADE"
MMSEG = "encnet_r50-d8_4xb4-80k_ade20k-512x512"


def fabricate(name: str, path: Path) -> Path:
    """A file in ``name``'s published format holding a random model's weights."""
    torch.manual_seed(0)
    entry = weights.get_entry(name)
    weights.save_published(weights.export_state_dict(models.build_published(entry), entry),
                           entry, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    up = root / "up"
    remotes = miniature.make_pcontext_miniature(up, n_train=2, n_val=2)
    prepare_pcontext(root / "pcontext", up, skip_download=True, remotes=remotes,
                     progress=False)
    release = miniature.make_ade20k_miniature(root / "upade", n_train=2, n_val=2)
    prepare_ade20k(root / "ade20k", root / "upade", release=release, progress=False)
    return {"root": root, "pcontext": root / "pcontext", "ade20k": root / "ade20k",
            PCONTEXT: fabricate(PCONTEXT, root / "pc.zip"),
            ADE: fabricate(ADE, root / "ade.zip"),
            MMSEG: fabricate(MMSEG, root / "mmseg.pth")}


def run_eval(capsys, *argv: str) -> str:
    code = evaluate.main([*map(str, argv), "--no-progress", "--max-images", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.slow
def test_eval_weights_official_protocol_on_the_pcontext_miniature(files, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    text = run_eval(capsys, "--weights", PCONTEXT, "--weights-file", files[PCONTEXT],
                    "--no-verify", "--protocol", "official", "--data-root",
                    files["pcontext"], "--out", out_json)
    assert "official protocol" in text and "pixAcc 79.2  mIoU 51.00" in text  # published
    report = json.loads(out_json.read_text())
    assert report["protocol"] == "official" and report["weights"] == PCONTEXT
    assert report["num_classes"] == 59 and len(report["IoU"]) == 59
    assert report["classes"][:2] == ["aeroplane", "bag"]
    assert 0.0 <= report["pixAcc"] <= 1.0 and report["num_images"] == 1


def test_eval_weights_default_protocol_is_the_models_own(files, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    text = run_eval(capsys, "--weights", MMSEG.upper(), "--weights-file", files[MMSEG],
                    "--no-verify", "--data-root", files["ade20k"], "--out", out_json)
    assert "mmseg protocol" in text and "mIoU 39.53" in text and "mIoU 41.17" in text
    report = json.loads(out_json.read_text())
    assert report["protocol"] == "mmseg" and report["dataset"] == "ade20k"
    assert report["num_classes"] == 150 and len(report["classes"]) == 150


@pytest.mark.slow
def test_eval_official_ade_weights_with_dataset_ade20k(files, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    text = run_eval(capsys, "--weights", ADE, "--weights-file", files[ADE], "--no-verify",
                    "--dataset", "ade20k", "--data-root", files["ade20k"],
                    "--protocol", "official", "--base-size", "64", "--crop-size", "48",
                    "--out", out_json)
    assert "EncNet_ResNet50s_ADE (published weights)" in text and "mIoU 41.50" in text
    report = json.loads(out_json.read_text())
    assert report["dataset"] == "ade20k" and report["settings"]["base_size"] == 64
    assert report["settings"]["crop_size"] == 48 and report["settings"]["scales"] == [1.0]


def test_eval_weights_refuses_a_file_whose_checksum_differs(files, tmp_path, capsys):
    code = evaluate.main(["--weights", PCONTEXT, "--weights-file", str(files[PCONTEXT]),
                          "--data-root", str(files["pcontext"]), "--out",
                          str(tmp_path / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "4de91d5922d4d3264f678b663f874da72e82db00" in err and "--no-verify" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv, words", [
    ([], "give either --checkpoint"),
    (["--checkpoint", "x.pt", "--weights", PCONTEXT], "give either --checkpoint"),
    (["--checkpoint", "x.pt", "--weights-file", "f.zip"], "go with --weights"),
    (["--weights", "EncNet_ResNet9000"], "EncNet_ResNet9000"),
    (["--weights", PCONTEXT, "--weights-file", "missing.zip"], "missing.zip does not exist"),
    (["--checkpoint", "x.pt", "--dataset", "ade20k"], "--dataset goes with --weights"),
])
def test_eval_source_errors_are_one_line(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "x.pt" in argv:
        Path("x.pt").write_bytes(b"")
    code = evaluate.main(argv + ["--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err


def test_eval_weights_on_another_dataset_is_refused(files, tmp_path, capsys):
    code = evaluate.main(["--weights", PCONTEXT, "--weights-file", str(files[PCONTEXT]),
                          "--no-verify", "--dataset", "ade20k", "--out",
                          str(tmp_path / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "59 classes of pcontext" in err and "--dataset pcontext" in err


def test_predict_with_weights_writes_mask_and_an_overlay_with_a_legend(files, tmp_path,
                                                                       capsys):
    photo = tmp_path / "photo.png"
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photo)
    code = predict.main(["--weights", PCONTEXT, "--weights-file", str(files[PCONTEXT]),
                         "--no-verify", str(photo), "--out", str(tmp_path / "pred")])
    out = capsys.readouterr().out
    assert code == 0
    mask = np.asarray(Image.open(tmp_path / "pred" / "photo.mask.png"))
    over = np.asarray(Image.open(tmp_path / "pred" / "photo.overlay.png"))
    assert mask.shape == (60, 80, 3)
    assert over.shape[1] == 80 and over.shape[0] > 60  # the legend band under the photo
    names = [part.rsplit(" ", 1)[0] for part in out.splitlines()[1].strip().split(", ")]
    assert names and set(names) <= set(weights.get_entry(PCONTEXT).classes)


def test_legend_lists_each_class_with_its_colour():
    palette = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    image = np.zeros((20, 200, 3), np.uint8)
    out = images.with_legend(image, [("sky", 0.75), ("sea", 0.25)], ["sea", "sky"], palette)
    band = out[20:]
    assert out.shape[1] == 200 and band.shape[0] >= 16
    # the first swatch is sky's colour (blue, index 1), the second sea's (red)
    blue = np.argwhere((band == [0, 0, 255]).all(-1))
    red = np.argwhere((band == [255, 0, 0]).all(-1))
    assert len(blue) and len(red) and blue[:, 1].min() < red[:, 1].min()


# --------------------------------------------------------------------------- mmseg test


@pytest.mark.parametrize("h, w, ratio, expected", [
    (683, 512, 1.0, (683, 512)),  # short side already 512
    (300, 400, 1.0, (512, 683)),  # short side brought up to 512
    (100, 3000, 1.0, (68, 2048)),  # long side bounded by 2048
    (300, 400, 0.5, (256, 341)),  # bounds (1024, 256)
])
def test_mmseg_view_size_fits_the_image_into_2048_by_512(h, w, ratio, expected):
    assert inference.mmseg_view_size(h, w, ratio=ratio) == expected


class PixelModel(torch.nn.Module):
    """Logits ``(B, 2, H, W)``: class 0 scores the first channel, class 1 its negative."""

    def forward(self, x):
        return {"main": torch.cat([x[:, :1], -x[:, :1]], 1)}


@pytest.mark.numerics
def test_predict_mmseg_averages_softmax_over_views_and_mirrors():
    torch.manual_seed(0)
    image = torch.randn(1, 3, 8, 12, dtype=torch.float64)
    model = PixelModel()
    got = inference.predict_mmseg(model, image, 2, scales=(1.0,), flip=True,
                                  scale=(12, 8))  # view size = image size
    logits = model(image)["main"]
    assert torch.allclose(got.double(), logits.softmax(1), atol=1e-6)  # mirror = same
    two = inference.predict_mmseg(model, image, 2, scales=(1.0, 0.5), scale=(12, 8))
    half = inference._resize(image, inference.mmseg_view_size(8, 12, (12, 8), 0.5))
    expected = (logits.softmax(1) + inference._resize(model(half)["main"], (8, 12))
                .softmax(1)) / 2
    assert torch.allclose(two.double(), expected, atol=1e-6)
    assert torch.allclose(two.sum(1), torch.ones(1, 8, 12, dtype=two.dtype), atol=1e-6)


def test_evaluate_mmseg_protocol_refuses_base_size():
    with pytest.raises(ValueError, match="base_size applies to protocol='official'"):
        evaluate._predictor("mmseg", False, None, None, None, 512)


# --------------------------------------------------------------------------- ADE20K


def test_ade20k_presets_follow_the_official_recipe():
    r50 = presets.ade20k_encnet_r50s()
    assert (r50.data.dataset, r50.model.backbone, r50.model.lateral, r50.optim.epochs) == (
        "ade20k", "resnet50s", False, 180)
    assert (r50.optim.lr, r50.data.base_size, r50.data.crop_size, r50.model.align_corners) == (
        4e-3, 520, 480, True)
    r101 = presets.ade20k_encnet_r101s()
    assert (r101.model.backbone, r101.data.base_size, r101.data.crop_size) == (
        "resnet101s", 640, 576)


@pytest.mark.slow
def test_ade20k_preset_budget_runs_on_the_miniature(files, capsys):
    code = train.main(["--preset", "ade20k_encnet_r50s", "--budget", "1", "--data-root",
                       str(files["ade20k"]), "--weights-backbone", "",
                       "--crop-size", "64", "--base-size", "64", "--batch-size", "2",
                       "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "Budget of ade20k_encnet_r50s" in out and "180 epochs" in out
