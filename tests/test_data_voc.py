"""PASCAL VOC 2012 (+ SBD train_aug): a fabricated miniature, prepared, then loaded."""

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from encnet_lite.data import DataError, DatasetNotFoundError, PascalVOC
from encnet_lite.data.miniature import make_voc_miniature, mat_bytes, png_bytes
from encnet_lite.data.prepare_voc import prepare_voc

ROOT = Path(__file__).resolve().parents[1]


def _members(path, suffix):
    out = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if m.name.endswith(suffix):
                out[m.name] = tar.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("voc")
    remotes = make_voc_miniature(base / "upstream", n_train=3, n_val=2, n_sbd=3)
    root = base / "voc"
    info = prepare_voc(root, sbd=True, remotes=remotes, progress=False)
    return root, remotes, info, base


def test_splits_follow_the_train_aug_protocol(prepared):
    root, _, info, _ = prepared
    train, val = PascalVOC(root, "train"), PascalVOC(root, "val")
    aug = PascalVOC(root, "train_aug")
    assert (len(train), len(val), len(PascalVOC(root, "trainval"))) == (3, 2, 5)
    # (VOC train + SBD train + SBD val) - VOC val: 3 VOC train + 3 SBD-only images
    assert set(aug.ids) == set(train.ids) | {f"2011_{k:06d}" for k in range(3)}
    assert not set(aug.ids) & set(val.ids)
    assert info["sbd"] and info["train_aug"] == 6
    assert PascalVOC.classes[0] == "background" and PascalVOC(root).num_classes == 21


def test_labels_match_the_upstream_files(prepared):
    root, remotes, _, _ = prepared
    voc_pngs = _members(remotes["voc2012"].url[len("file://"):], ".png")
    sbd_mats = _members(remotes["sbd"].url[len("file://"):], ".mat")
    voc_labels = {Path(n).stem: np.array(Image.open(io.BytesIO(b))) for n, b in voc_pngs.items()}
    sbd_labels = {Path(n).stem: scipy.io.loadmat(io.BytesIO(b), squeeze_me=True,
                                                 struct_as_record=False)["GTcls"].Segmentation
                  for n, b in sbd_mats.items()}
    val = PascalVOC(root, "val")
    for i, image_id in enumerate(val.ids):
        image, mask = val[i]
        assert np.array_equal(mask.numpy(), voc_labels[image_id])
        assert (mask == 255).any() and image.shape[1:] == mask.shape  # boundaries ignored
    aug = PascalVOC(root, "train_aug")
    for i, image_id in enumerate(aug.ids):
        _, mask = aug[i]
        # VOC's own labels take precedence; SBD labels the rest
        expected = voc_labels.get(image_id, sbd_labels[image_id])
        assert np.array_equal(mask.numpy(), expected)


def test_image_only_in_sbd_is_taken_from_sbd(prepared):
    root, remotes, _, _ = prepared
    voc_jpgs = _members(remotes["voc2012"].url[len("file://"):], ".jpg")
    sbd_jpgs = _members(remotes["sbd"].url[len("file://"):], ".jpg")
    only_sbd = {Path(n).stem for n in sbd_jpgs} - {Path(n).stem for n in voc_jpgs}
    assert only_sbd == {"2011_000002"}
    # The prepared file is SBD's image, byte for byte, and train_aug serves its pixels.
    (member,) = [b for n, b in sbd_jpgs.items() if n.endswith("/img/2011_000002.jpg")]
    assert (root / "JPEGImages" / "2011_000002.jpg").read_bytes() == member
    aug = PascalVOC(root, "train_aug")
    image, mask = aug[aug.ids.index("2011_000002")]
    decoded = np.asarray(Image.open(io.BytesIO(member)).convert("RGB"))
    assert tuple(image.shape) == (3, *decoded.shape[:2]) == (3, *mask.shape)


def test_rerun_is_idempotent(prepared, capsys):
    root, remotes, _, _ = prepared
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    prepare_voc(root, sbd=True, remotes=remotes, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_cli_offline_without_sbd_then_train_aug_asks_for_it(prepared, tmp_path):
    base = prepared[3]
    spec = importlib.util.spec_from_file_location("prepare_voc",
                                                  ROOT / "data_scripts" / "prepare_voc.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root = tmp_path / "voc"
    assert script.main(["--root", str(root), "--download-dir", str(base / "upstream"),
                        "--skip-download", "--no-verify", "--quiet"]) == 0
    assert len(PascalVOC(root, "trainval")) == 5
    with pytest.raises(DatasetNotFoundError) as err:
        PascalVOC(root, "train_aug")
    assert f"python data_scripts/prepare_voc.py --root {root} --sbd" in str(err.value)


def test_missing_root_names_the_prepare_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        PascalVOC(tmp_path / "none", "val")
    assert f"python data_scripts/prepare_voc.py --root {tmp_path / 'none'}" in str(err.value)


def _prepare_with(tmp_path, voc=None, sbd=None):
    extra = {}
    if voc:
        extra["VOCtrainval_11-May-2012.tar"] = voc
    if sbd:
        extra["benchmark.tgz"] = sbd
    remotes = make_voc_miniature(tmp_path / "up", extra=extra)
    return prepare_voc(tmp_path / "root", tmp_path / "up", sbd=True, skip_download=True,
                       remotes=remotes, progress=False)


def test_corrupt_sbd_annotation_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"benchmark\.tgz:benchmark_RELEASE/dataset/cls/2011_000000"):
        _prepare_with(tmp_path, sbd={"benchmark_RELEASE/dataset/cls/2011_000000.mat": b"junk"})


def test_sbd_file_without_gtcls(tmp_path):
    with pytest.raises(DataError, match="GTcls"):
        _prepare_with(tmp_path, sbd={
            "benchmark_RELEASE/dataset/cls/2011_000000.mat": mat_bytes({"x": np.eye(2)})})


def test_voc_labels_out_of_range_are_listed(tmp_path):
    bad = np.zeros((40, 50), np.uint8)
    bad[0, :2] = (21, 130)
    with pytest.raises(DataError, match=r"\[21, 130\]"):
        _prepare_with(tmp_path, voc={
            "VOCdevkit/VOC2012/SegmentationClass/2008_000000.png": png_bytes(bad)})


def test_voc_label_png_of_another_size_names_both(tmp_path):
    with pytest.raises(DataError) as err:
        _prepare_with(tmp_path, voc={
            "VOCdevkit/VOC2012/SegmentationClass/2008_000000.png": png_bytes(np.zeros((4, 4)))})
    assert "2008_000000.jpg" in str(err.value) and "2008_000000.png" in str(err.value)


def test_corrupt_voc_label_png_names_the_file(tmp_path):
    with pytest.raises(DataError, match="SegmentationClass/2007_000001.png"):
        _prepare_with(tmp_path, voc={
            "VOCdevkit/VOC2012/SegmentationClass/2007_000001.png": b"\x89PNG\r\n broken"})
