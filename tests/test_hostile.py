"""Hostile and wrong inputs: poisoned weight caches, traversal ids, bombs, library misuse."""

import os
import pickle

import pytest
import torch
import torchvision

from encnet_lite.models import encnet_resnet50


class _Planted:
    """Unpickling this runs ``os.system``-like code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Planted(marker)}, f, protocol=2)


def test_a_poisoned_hub_cache_file_runs_no_code(tmp_path, monkeypatch):
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    marker = tmp_path / "pwned"
    _plant(cached, marker)
    # The planted file must be what the hub would read: never a download instead.
    monkeypatch.setattr(torch.hub, "download_url_to_file", None)
    with pytest.raises(RuntimeError) as info:
        encnet_resnet50(num_classes=59, weights_backbone="imagenet")
    assert not marker.exists()
    message = str(info.value)
    assert str(cached) in message and "Delete it" in message
    # The same pickle given as a local weights_backbone file runs nothing either.
    with pytest.raises(RuntimeError, match="not a plain state dict"):
        encnet_resnet50(num_classes=59, weights_backbone=cached)
    assert not marker.exists()
    assert os.path.getsize(cached) > 0  # the file is left for the user to inspect


def test_every_unpickling_call_in_the_library_is_weights_only():
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "encnet_lite"
    calls = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("load", "load_state_dict_from_url") and \
                    ast.unparse(node.func.value) in ("torch", "torch.hub"):
                flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((path.name, node.lineno, flags.get("weights_only")))
    assert len(calls) >= 3  # backbones (file and hub cache), checkpoint
    assert [c for c in calls if c[2] != "True"] == []


# ---------------------------------------------------------------------------- ids as paths


def _voc(tmp_path, voc_members=None, sbd_members=None, sbd=False, force=True):
    from encnet_lite.data.miniature import make_voc_miniature
    from encnet_lite.data.prepare_voc import prepare_voc

    extra = {}
    if voc_members:
        extra["VOCtrainval_11-May-2012.tar"] = voc_members
    if sbd_members:
        extra["benchmark.tgz"] = sbd_members
    remotes = make_voc_miniature(tmp_path / "up", n_train=2, n_val=1, n_sbd=1, extra=extra)
    return prepare_voc(tmp_path / "root", tmp_path / "up", sbd=sbd, skip_download=True,
                       force=force, remotes=remotes, progress=False)


@pytest.mark.parametrize("bad_id", ["../../outside", "/etc/outside", "..", "a\\..\\b",
                                    "x\x00y"])
def test_voc_split_ids_that_are_paths_are_refused(tmp_path, bad_id):
    from encnet_lite.data import DataError

    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"keep me")
    seg = "VOCdevkit/VOC2012/ImageSets/Segmentation"
    lists = {f"{seg}/val.txt": f"2008_000000\n{bad_id}\n".encode(),
             f"{seg}/trainval.txt": f"2007_000000\n2007_000001\n2008_000000\n{bad_id}\n"
             .encode()}
    with pytest.raises(DataError, match="not a plain file name") as info:
        _voc(tmp_path, lists)
    assert "ImageSets/Segmentation/val.txt" in str(info.value)
    assert outside.read_bytes() == b"keep me"
    assert not (tmp_path / "root" / "prepared.json").exists()


def test_sbd_member_named_dotdot_is_refused(tmp_path):
    from encnet_lite.data import DataError
    from encnet_lite.data.miniature import mat_bytes

    member = "benchmark_RELEASE/dataset/cls/...mat"  # the id before ".mat" is ".."
    with pytest.raises(DataError, match=r"'\.\.'"):
        _voc(tmp_path, sbd_members={member: mat_bytes({"x": 1})}, sbd=True)


def test_pcontext_split_ids_that_are_paths_are_refused(tmp_path):
    from encnet_lite.data import DataError
    from encnet_lite.data.miniature import make_pcontext_miniature
    from encnet_lite.data.prepare_pcontext import prepare_pcontext

    main = "VOCdevkit/VOC2010/ImageSets/Main"
    remotes = make_pcontext_miniature(tmp_path / "up", n_train=2, n_val=1, extra={
        "VOCtrainval_03-May-2010.tar": {f"{main}/val.txt": b"2009_000000\n../../../etc/x\n"}})
    with pytest.raises(DataError, match=r"Main/val\.txt: image id '\.\./\.\./\.\./etc/x'"):
        prepare_pcontext(tmp_path / "root", tmp_path / "up", skip_download=True,
                         remotes=remotes, progress=False)


def test_prepared_roots_with_hostile_lists_or_a_damaged_marker(tmp_path):
    from encnet_lite.data import DataError, DatasetNotFoundError, PascalContext, PascalVOC

    _voc(tmp_path)
    root = tmp_path / "root"
    assert len(PascalVOC(root, "val")) == 1
    (root / "ImageSets" / "val.txt").write_text("2008_000000\n../../../etc/passwd\n")
    with pytest.raises(DataError, match="passwd"):
        PascalVOC(root, "val")
    (root / "prepared.json").write_text('{"dataset": "pascal-voc-2012", ')  # cut short
    with pytest.raises(DatasetNotFoundError, match="prepared.json is damaged.*--force"):
        PascalVOC(root, "train_aug")
    with pytest.raises(DatasetNotFoundError, match="prepared.json is damaged"):
        PascalContext(root, "val")
    # prepare again (no --force) over a damaged marker: it is redone, not a JSON traceback
    assert _voc(tmp_path, force=False)["val"] == 1


# ---------------------------------------------------------------------------- size limits


def _png_header(width, height):
    """A PNG that declares ``width x height`` 8-bit grey pixels and holds none of them."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_decompression_bomb_image_is_a_data_error_naming_file_and_limit(tmp_path,
                                                                          monkeypatch):
    from encnet_lite.data import DataError
    from encnet_lite.data.common import load_image, load_mask

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(16000, 16000))  # 256M pixels: PIL's own bomb error
    for load in (load_image, load_mask):
        with pytest.raises(DataError, match=r"bomb\.png.*limit of 89478485 pixels.*"
                                            r"ENCNET_MAX_IMAGE_PIXELS"):
            load(bomb)
    # Under PIL's threshold, the configurable limit decides, before any decoding.
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(400, 300))
    monkeypatch.setenv("ENCNET_MAX_IMAGE_PIXELS", "100000")
    with pytest.raises(DataError, match=r"big\.png is 400x300 = 120000 pixels, over the "
                                        r"limit of 100000 pixels"):
        load_mask(big)
    monkeypatch.setenv("ENCNET_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="ENCNET_MAX_IMAGE_PIXELS='lots' is not a positive"):
        load_mask(big)


def test_archive_members_over_the_limit_are_refused_unread(tmp_path, monkeypatch):
    from encnet_lite.data import DataError
    from encnet_lite.data.archive import iter_files, read_files
    from encnet_lite.data.miniature import write_tar

    archive = write_tar(tmp_path / "a.tar.gz", {"small.txt": b"ok\n",
                                                "huge.bin": b"\0" * 300_000})
    monkeypatch.setenv("ENCNET_MAX_MEMBER_BYTES", "100000")
    assert dict(iter_files(archive, lambda n: n == "small.txt")) == {"small.txt": b"ok\n"}
    for read in (lambda: dict(iter_files(archive, lambda n: True)),
                 lambda: read_files(archive, ["huge.bin"])):
        with pytest.raises(DataError, match=r"a\.tar\.gz:huge\.bin is 300000 bytes, over the "
                                            r"limit of 100000 bytes.*ENCNET_MAX_MEMBER_BYTES"):
            read()
    # the same from an extracted folder
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "huge.bin").write_bytes(b"\0" * 300_000)
    with pytest.raises(DataError, match="huge.bin is 300000 bytes"):
        dict(iter_files(tmp_path / "x", lambda n: True))
    monkeypatch.setenv("ENCNET_MAX_MEMBER_BYTES", "400000")
    assert len(read_files(archive, ["huge.bin"])["huge.bin"]) == 300_000


def test_a_link_out_of_an_extracted_folder_is_refused(tmp_path):
    from encnet_lite.data import DataError
    from encnet_lite.data.archive import iter_files

    (tmp_path / "secret.txt").write_text("not a dataset file")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.jpg").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(DataError, match="outside"):
        dict(iter_files(tmp_path / "x", lambda n: True))


# ---------------------------------------------------------------------------- library misuse


def test_presence_targets_refuses_a_2d_mask_instead_of_reading_rows_as_images():
    from encnet_lite.losses import presence_targets

    mask = torch.tensor([[0, 1], [2, 2]])
    with pytest.raises(ValueError, match=r"mask must be \(B, H, W\).*\(2, 2\).*mask\[None\]"):
        presence_targets(mask, 3)
    assert presence_targets(mask[None], 3).tolist() == [[1.0, 1.0, 1.0]]


def test_float_masks_are_refused_not_truncated():
    from encnet_lite.losses import SegmentationLoss, pixel_cross_entropy, se_loss
    from encnet_lite.metrics import ConfusionMatrix

    logits = torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[0.0, 2.7], [1.0, 1.0]]])  # 2.7 would become class 2
    for call in (lambda: SegmentationLoss()({"main": logits}, mask),
                 lambda: pixel_cross_entropy(logits, mask),
                 lambda: se_loss(torch.zeros(1, 3), mask)):
        with pytest.raises(ValueError, match=r"integer class ids, got torch.float32 \(1, 2, 2\)"):
            call()
    with pytest.raises(ValueError, match=r"target: a torch.float32 mask \(1, 2, 2\)"):
        ConfusionMatrix(3).update(torch.zeros(1, 2, 2, dtype=torch.long), mask)
    with pytest.raises(ValueError, match=r"pred: a torch.float32 label map"):
        ConfusionMatrix(3).update(mask, mask.long())
    # the integer mask is counted as it should be
    cm = ConfusionMatrix(3).update(mask.long(), mask.long())
    assert cm.matrix.diag().tolist() == [1, 2, 1]


def test_confusion_matrix_refuses_scores_of_another_class_count():
    from encnet_lite.metrics import ConfusionMatrix

    target = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"scores \(1, 5, 4, 4\) have 5 classes on axis 1, "
                                         r"but this matrix counts 3"):
        ConfusionMatrix(3).update(torch.randn(1, 5, 4, 4), target)
    with pytest.raises(ValueError, match="num_classes must be a count >= 1, got 0"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match=r"labels \[7\] are outside 0..2"):
        ConfusionMatrix(3).update(target, torch.full((1, 4, 4), 7))


@pytest.mark.numerics
def test_encoding_sizes_and_layouts():
    from encnet_lite.encoding import Encoding

    for d, k in ((0, 4), (4, 0), (-1, 4)):
        with pytest.raises(ValueError, match=r"must be a count >= 1"):
            Encoding(d, k)
    layer = Encoding(8, 4)
    feature_map = torch.randn(2, 8, 3, 5)  # N = 15 positions
    channels_first = feature_map.flatten(2)  # (B, D, N): the layout that is wrong
    with pytest.raises(ValueError, match=r"\(2, 8, 15\): it looks channels-first .*"
                                         r"transpose\(1, 2\)"):
        layer(channels_first)
    with pytest.raises(ValueError, match=r"channels-last"):
        layer(feature_map.permute(0, 2, 3, 1))
    # the right layouts give the same encoding
    assert torch.allclose(layer(feature_map), layer(channels_first.transpose(1, 2)))


def test_a_uint8_image_reaching_the_model_is_named():
    from encnet_lite.inference import predict
    from encnet_lite.models import encnet_tiny

    model = encnet_tiny(num_classes=5).eval()
    photo = torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"float \(B, 3, H, W\), normalised with "
                                         r"encnet_lite.data.normalize; got torch.uint8"):
        model(photo)
    with pytest.raises(ValueError, match=r"got torch.uint8 \(1, 3, 32, 32\)"):
        predict(model, photo, 5)
    with pytest.raises(ValueError, match=r"add the batch axis"):
        model(photo[0].float())
    assert model(photo.float() / 255)["main"].shape == (1, 5, 32, 32)


def test_unsafe_ids_one_by_one():
    from encnet_lite.data import DataError
    from encnet_lite.data.common import check_id

    assert check_id("2008_000123", "list") == "2008_000123"
    for bad in ("", ".", "..", "a/b", "a\\b", "/abs", "x\x00", "tab\there", " padded"):
        with pytest.raises(DataError, match="not a plain file name"):
            check_id(bad, "list")


def test_a_nan_loss_from_nan_images_blames_the_data(tmp_path, monkeypatch):
    from encnet_lite import presets
    from encnet_lite import train as train_mod

    real = train_mod.to_device

    def poisoned(images, masks, *args, **kwargs):
        images, masks = real(images, masks, *args, **kwargs)
        return images.clone().fill_(float("nan")), masks

    monkeypatch.setattr(train_mod, "to_device", poisoned)
    cfg = presets.scenes_encnet_tiny(num_train_images=4, num_val_images=2, image_size=32,
                                     batch_size=2, epochs=1, workers=0, out=str(tmp_path / "r"),
                                     progress=False)
    with pytest.raises(FloatingPointError, match="input images hold NaN or Inf: the data are "
                                                 "broken.*the lr is not the cause"):
        train_mod.train(cfg)
