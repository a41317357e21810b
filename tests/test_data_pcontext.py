"""PASCAL-Context: a fabricated miniature in the upstream formats, prepared, then loaded."""

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from encnet_lite.data import DataError, DatasetNotFoundError, PascalContext, train_transform
from encnet_lite.data import pcontext as pc
from encnet_lite.data.download import DownloadError
from encnet_lite.data.miniature import make_pcontext_miniature, mat_bytes
from encnet_lite.data.prepare_pcontext import prepare_pcontext

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _archive_label_maps(path):
    out = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if m.name.endswith(".mat"):
                data = tar.extractfile(m).read()
                out[Path(m.name).stem] = scipy.io.loadmat(io.BytesIO(data))["LabelMap"]
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("pcontext")
    remotes = make_pcontext_miniature(base / "upstream", n_train=3, n_val=2)
    root = base / "pcontext"
    # the download path: file:// URLs, MD5 checks, into ROOT/downloads
    info = prepare_pcontext(root, remotes=remotes, variants=(59, 60), progress=False)
    return root, remotes, info, base


def test_label_lut():
    lut59, lut60 = pc.label_lut(59), pc.label_lut(60)
    assert lut59[2] == 0 and lut59[458] == 58 and lut59[0] == 255 and lut59[1] == 255
    assert lut60[0] == 0 and lut60[1] == 0 and lut60[2] == 1 and lut60[458] == 59
    assert sorted(set(lut59.tolist())) == list(range(59)) + [255]
    assert len(pc.CLASSES_59) == len(pc.LABEL_IDS) == 59
    assert list(pc.CLASSES_59) == sorted(pc.CLASSES_59)
    with pytest.raises(ValueError):
        pc.label_lut(33)


def test_prepared_dataset_loads_with_the_right_labels(prepared):
    root, remotes, info, _ = prepared
    assert info["train"] == 3 and info["val"] == 2 and info["variants"] == [59, 60]
    raw = _archive_label_maps(Path(remotes["context"].url[len("file://"):]))
    ignored = 0
    for split, n in (("train", 3), ("val", 2)):
        ds = PascalContext(root, split)
        assert len(ds) == n and ds.num_classes == 59 and ds.classes[0] == "aeroplane"
        ds60 = PascalContext(root, split, num_classes=60)
        assert ds60.classes[0] == "background" and ds60.num_classes == 60
        for i, image_id in enumerate(ds.ids):
            image, mask = ds[i]
            assert image.dtype == torch.float32 and image.shape[1:] == mask.shape
            expected = pc.label_lut(59)[raw[image_id].astype(np.int64)]
            assert np.array_equal(mask.numpy(), expected)
            _, mask60 = ds60[i]
            kept = mask != 255
            assert torch.equal(mask60[kept], mask[kept] + 1) and (mask60[~kept] == 0).all()
            ignored += int((mask == 255).sum())
    assert ignored > 0  # background (raw ids outside the 59, and 0) is ignored
    # the unannotated image listed in Main/train.txt is left out
    assert not any(i.startswith("2010") for i in PascalContext(root, "train").ids)


def test_works_with_the_training_transform(prepared):
    root = prepared[0]
    ds = PascalContext(root, "train", transform=train_transform(crop_size=32, base_size=48))
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


def test_rerun_is_idempotent_and_an_interrupted_run_resumes(prepared, capsys):
    root, remotes, _, _ = prepared
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    prepare_pcontext(root, remotes=remotes, variants=(59,), progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    # simulate an interruption: marker and one mask gone
    (root / pc.MARKER).unlink()
    lost = next((root / pc.mask_dir(59)).glob("*.png"))
    lost.unlink()
    with pytest.raises(DatasetNotFoundError):
        PascalContext(root, "train")
    prepare_pcontext(root, remotes=remotes, variants=(59, 60), progress=False)
    assert lost.exists() and (root / pc.MARKER).exists()
    untouched = [p for p in files if p.exists() and p != lost and p.suffix in (".jpg", ".png")]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in untouched)


def test_cli_with_download_dir_and_skip_download(prepared, tmp_path):
    _, remotes, _, base = prepared
    script = _load_script("prepare_pcontext")
    upstream = base / "upstream"
    root = tmp_path / "pc"
    # The miniature's MD5s are not the real ones: --no-verify turns that into a warning.
    argv = ["--root", str(root), "--download-dir", str(upstream), "--skip-download",
            "--quiet", "--no-verify", "--classes", "60"]
    assert script.main(argv) == 0
    assert len(PascalContext(root, "val", num_classes=60)) == 2
    with pytest.raises(DatasetNotFoundError, match="59-class"):
        PascalContext(root, "val")
    # and without the files, offline, it fails with instructions (exit status 1)
    assert script.main(["--root", str(tmp_path / "x"), "--download-dir", str(tmp_path / "none"),
                        "--skip-download", "--quiet"]) == 1
    with pytest.raises(DownloadError, match="host.robots.ox.ac.uk"):
        prepare_pcontext(tmp_path / "x", tmp_path / "none", skip_download=True, progress=False)


def test_missing_or_incomplete_root_names_the_prepare_command(tmp_path):
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DatasetNotFoundError) as err:
            PascalContext(root, "train")
        assert f"python data_scripts/prepare_pcontext.py --root {root}" in str(err.value)


def _prepare_with(tmp_path, ctx_members=None, voc_members=None):
    extra = {}
    if ctx_members:
        extra["trainval.tar.gz"] = ctx_members
    if voc_members:
        extra["VOCtrainval_03-May-2010.tar"] = voc_members
    remotes = make_pcontext_miniature(tmp_path / "up", n_train=2, n_val=1, extra=extra)
    return prepare_pcontext(tmp_path / "root", tmp_path / "up", skip_download=True,
                            remotes=remotes, progress=False)


def test_corrupt_annotation_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"trainval\.tar\.gz:trainval/2008_000001\.mat"):
        _prepare_with(tmp_path, {"trainval/2008_000001.mat": b"MATLAB 5.0 garbage" * 10})


def test_annotation_without_labelmap(tmp_path):
    with pytest.raises(DataError, match="no 'LabelMap'"):
        _prepare_with(tmp_path, {"trainval/2008_000000.mat": mat_bytes({"Other": np.eye(3)})})


def test_labels_outside_the_459_classes_are_listed(tmp_path):
    bad = np.full((40, 48), 2, np.uint16)
    bad[0, 0], bad[1, 1] = 500, 999
    with pytest.raises(DataError, match=r"\[500, 999\]"):
        _prepare_with(tmp_path, {"trainval/2008_000000.mat": mat_bytes({"LabelMap": bad})})


def test_image_and_annotation_of_different_sizes(tmp_path):
    small = mat_bytes({"LabelMap": np.full((7, 9), 2, np.uint16)})
    with pytest.raises(DataError) as err:
        _prepare_with(tmp_path, {"trainval/2009_000000.mat": small})
    assert "2009_000000.jpg" in str(err.value) and "2009_000000.png" in str(err.value)


def test_corrupt_image_in_the_archive_names_the_file(tmp_path):
    with pytest.raises(DataError, match="2008_000000.jpg"):
        _prepare_with(tmp_path, voc_members={
            "VOCdevkit/VOC2010/JPEGImages/2008_000000.jpg": b"not a jpeg"})


def _copy_root(prepared, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(prepared[0], root, ignore=shutil.ignore_patterns("downloads"))
    ds = PascalContext(root, "train")
    return ds, ds.pairs[0]


def test_loading_a_corrupt_image_names_it(prepared, tmp_path):
    ds, (image_path, _) = _copy_root(prepared, tmp_path)
    image_path.write_bytes(image_path.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=image_path.name):
        ds[0]


def test_loading_a_mask_of_another_size_names_both(prepared, tmp_path):
    ds, (image_path, mask_path) = _copy_root(prepared, tmp_path)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mask_path)
    with pytest.raises(DataError) as err:
        ds[0]
    assert str(image_path) in str(err.value) and str(mask_path) in str(err.value)


def test_loading_labels_out_of_range_lists_them(prepared, tmp_path):
    ds, (_, mask_path) = _copy_root(prepared, tmp_path)
    mask = np.array(Image.open(mask_path))
    mask[0, :3] = (59, 77, 200)
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(DataError, match=r"\[59, 77, 200\]"):
        ds[0]
    corrupt = mask_path.with_name("x.png")
    corrupt.write_bytes(b"\x89PNG broken")
    ds.pairs[0] = (ds.pairs[0][0], corrupt)
    with pytest.raises(DataError, match="x.png"):
        ds[0]
