"""ADE20K (SceneParsing): a fabricated ADEChallengeData2016.zip, prepared, then loaded; the
download path against a local HTTP server; every bad input as one error naming the file."""

import http.server
import io
import os
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import local_server
from PIL import Image

from encnet_lite.data import ADE20K, DataError, DatasetNotFoundError, train_transform
from encnet_lite.data import ade20k as ade
from encnet_lite.data import prepare_ade20k as prep
from encnet_lite.data.download import DownloadError
from encnet_lite.data.miniature import ADE20K_MANIFEST, make_ade20k_miniature, png_bytes
from encnet_lite.data.prepare_ade20k import Release, check_zip, prepare_ade20k

ROOT = Path(__file__).resolve().parents[1]
ZIP = "ADEChallengeData2016.zip"
ANN = "ADEChallengeData2016/annotations"
USED_MEMBERS = 2 * (4 + 2) + 2  # images and annotations of 4 train / 2 val, two lists


def _zip_path(release: Release) -> Path:
    return Path(release.url[len("file://"):])


def _raw_masks(release: Release) -> dict:
    """``{name: raw (H, W) uint8}`` of every annotation in the zip, read independently."""
    with zipfile.ZipFile(_zip_path(release)) as archive:
        return {Path(n).stem: np.array(Image.open(io.BytesIO(archive.read(n))))
                for n in archive.namelist() if n.endswith(".png")}


def _unzip(release: Release, dest: Path) -> Path:
    with zipfile.ZipFile(_zip_path(release)) as archive:
        archive.extractall(dest)
    return dest / ade.BASE_DIR


def _same_dataset(a: ADE20K, b: ADE20K) -> None:
    assert a.ids == b.ids and len(a) > 0
    for i in range(len(a)):
        (image_a, mask_a), (image_b, mask_b) = a[i], b[i]
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b), a.ids[i]


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("ade20k")
    release = make_ade20k_miniature(base / "upstream", n_train=4, n_val=2)
    root = base / "ade20k"
    info = prepare_ade20k(root, from_zip=_zip_path(release), release=release, progress=False)
    return root, release, info, base


def test_classes_and_the_label_shift_on_values():
    assert len(ade.CLASSES) == len(set(ade.CLASSES)) == 150
    assert (ade.CLASSES[0], ade.CLASSES[12], ade.CLASSES[149]) == ("wall", "person", "flag")
    raw = np.array([[0, 1, 150], [75, 2, 0]], np.uint8)
    assert ade.shift_labels(raw).tolist() == [[255, 0, 149], [74, 1, 255]]
    lut = ade.label_lut()
    assert lut[0] == 255 and lut[1:151].tolist() == list(range(150))
    with pytest.raises(DataError, match=r"x\.png: label values \[151, 200\] are above 150"):
        ade.shift_labels(np.array([[3, 151], [200, 0]], np.uint8), "x.png")


def test_prepared_from_the_zip_loads_with_shifted_labels(prepared):
    root, release, info, _ = prepared
    assert info == {"dataset": "ade20k", "format": 1, "train": 4, "val": 2}
    raw = _raw_masks(release)
    seen = set()
    for split, n in (("train", 4), ("val", 2)):
        ds = ADE20K(root, split)
        assert len(ds) == n and ds.num_classes == 150 and ds.classes[0] == "wall"
        assert ds.ids == [f"ADE_{split}_{k:08d}" for k in range(1, n + 1)]
        for i, name in enumerate(ds.ids):
            image, mask = ds[i]
            assert image.dtype == torch.float32 and image.shape[1:] == mask.shape
            expected = np.where(raw[name] == 0, 255, raw[name].astype(np.int64) - 1)
            assert np.array_equal(mask.numpy(), expected)
            assert np.array_equal(ds.mask(i), expected.astype(np.uint8))
            seen |= set(np.unique(raw[name]).tolist())
    assert {0, 150} <= seen  # "other" and the last class both occur, so both ends are tested


def test_works_with_the_training_transform(prepared):
    ds = ADE20K(prepared[0], "train", transform=train_transform(crop_size=32, base_size=48))
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


def test_a_second_run_does_nothing(prepared, capsys):
    root, release, info, _ = prepared
    before = _mtimes(root)
    assert prepare_ade20k(root, from_zip=_zip_path(release), release=release,
                          progress=False) == info
    assert "nothing to do" in capsys.readouterr().out
    assert _mtimes(root) == before


def test_from_a_folder_unzipped_by_hand_in_the_download_dir(prepared, tmp_path, capsys):
    root, release, info, _ = prepared
    _unzip(release, tmp_path / "by_hand")
    # skip_download: any attempt to fetch the zip instead would fail
    assert prepare_ade20k(tmp_path / "b", download_dir=tmp_path / "by_hand",
                          skip_download=True, release=release, progress=False) == info
    assert f"using the extracted folder {tmp_path / 'by_hand' / ade.BASE_DIR}" in \
        capsys.readouterr().out
    for split in ade.SPLITS:
        _same_dataset(ADE20K(tmp_path / "b", split), ADE20K(root, split))


def test_a_folder_unzipped_into_the_root_is_used_in_place(prepared, tmp_path, capsys):
    root, release, info, _ = prepared
    base = _unzip(release, tmp_path / "c")
    before = _mtimes(base)
    assert prepare_ade20k(tmp_path / "c", skip_download=True, release=release,
                          progress=False) == info
    assert "in place" in capsys.readouterr().out
    assert _mtimes(base) == before  # checked, not copied or rewritten
    _same_dataset(ADE20K(tmp_path / "c", "val"), ADE20K(root, "val"))


def test_an_interrupted_extraction_resumes(prepared, tmp_path, monkeypatch, capsys):
    _, release, info, _ = prepared
    real, calls = prep.write_bytes_atomic, []

    def stop_at_the_fifth(path, data):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the extraction
        real(path, data)

    monkeypatch.setattr(prep, "write_bytes_atomic", stop_at_the_fifth)
    root = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        prepare_ade20k(root, from_zip=_zip_path(release), release=release, progress=False)
    partial = root / prep.PARTIAL
    assert not (root / ade.MARKER).exists() and not (root / ade.BASE_DIR).exists()
    kept = _mtimes(partial)
    assert len(kept) == 4 and not any(p.name.startswith(".") for p in kept)  # no half file
    with pytest.raises(DatasetNotFoundError, match="prepared.json is missing"):
        ADE20K(root, "train")
    monkeypatch.setattr(prep, "write_bytes_atomic", real)
    capsys.readouterr()
    assert prepare_ade20k(root, from_zip=_zip_path(release), release=release,
                          progress=False) == info
    assert f"extracted {USED_MEMBERS - 4} files" in capsys.readouterr().out
    assert not partial.exists()
    moved = {root / ade.BASE_DIR / p.relative_to(partial): t for p, t in kept.items()}
    assert {p: p.stat().st_mtime_ns for p in moved} == moved  # kept, not written again
    assert len(ADE20K(root, "train")) == 4


# ---------------------------------------------------------------- download (local HTTP only)


@contextmanager
def _server(payload: bytes):
    """Serve ``payload`` on 127.0.0.1 with HTTP range support; records the Range headers."""
    ranges = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            header = self.headers.get("Range")
            ranges.append(header)
            start = int(header.split("=")[1].split("-")[0]) if header else 0
            self.send_response(206 if header else 200)
            if header:
                self.send_header("Content-Range",
                                 f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            self.wfile.write(payload[start:])

        def log_message(self, *args):
            pass

    with local_server(Handler) as base:
        yield f"{base}{ZIP}", ranges


def test_an_interrupted_download_resumes_and_is_verified(prepared, tmp_path):
    root, release, info, _ = prepared
    payload = _zip_path(release).read_bytes()
    downloads = tmp_path / "r" / "downloads"
    downloads.mkdir(parents=True)
    half = len(payload) // 2
    (downloads / f"{ZIP}.part").write_bytes(payload[:half])  # what a killed run left
    with _server(payload) as (url, ranges):
        assert prepare_ade20k(tmp_path / "r", release=replace(release, url=url),
                              progress=False) == info
    assert ranges == [f"bytes={half}-"]
    assert (downloads / ZIP).read_bytes() == payload
    assert (downloads / f".{ZIP}.verified").is_file()
    _same_dataset(ADE20K(tmp_path / "r", "train"), ADE20K(root, "train"))


def test_a_download_with_a_wrong_checksum_is_moved_aside(prepared, tmp_path):
    release = prepared[1]
    wrong = replace(release, sha1="0" * 40, sha256=None)
    with _server(_zip_path(release).read_bytes()) as (url, _):
        with pytest.raises(DownloadError) as err:
            prepare_ade20k(tmp_path / "r", release=replace(wrong, url=url), progress=False)
    message = str(err.value)
    assert f"expected {'0' * 40}" in message and "\n" not in message
    assert (tmp_path / "r" / "downloads" / f"{ZIP}.bad").is_file()
    assert not (tmp_path / "r" / "downloads" / ZIP).exists()
    assert not (tmp_path / "r" / ade.BASE_DIR).exists()
    assert not (tmp_path / "r" / ade.MARKER).exists()


def test_either_published_checksum_identifies_the_zip(prepared, capsys):
    release = prepared[1]
    path = _zip_path(release)
    path.with_name(f".{ZIP}.verified").unlink(missing_ok=True)
    assert check_zip(path, replace(release, sha1="0" * 40), progress=False)  # SHA-256 holds
    assert check_zip(path, replace(release, sha256="f" * 64), progress=False)  # SHA-1 holds
    neither = replace(release, sha1="0" * 40, sha256="f" * 64)
    with pytest.raises(DownloadError) as err:
        check_zip(path, neither, progress=False)
    assert f"SHA1 {release.sha1} (expected {'0' * 40})" in str(err.value)
    assert f"SHA256 {release.sha256} (expected {'f' * 64})" in str(err.value)
    assert check_zip(path, neither, verify=False, progress=False) is False  # --no-verify
    assert "verification is off" in capsys.readouterr().out
    assert check_zip(path, replace(release, sha1=None, sha256=None), progress=False) is False
    assert "unverified" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input: one line each


def _prepare_bad(tmp_path, extra=None, drop=(), verify=True):
    release = make_ade20k_miniature(tmp_path / "up", extra=extra, drop=drop)
    root = tmp_path / "root"
    with pytest.raises((DataError, DatasetNotFoundError, DownloadError)) as err:
        prepare_ade20k(root, from_zip=_zip_path(release), release=release, verify=verify,
                       progress=False)
    # nothing half-written: no partial folder, no dataset folder, no marker
    assert not (root / prep.PARTIAL).exists() and not (root / ade.BASE_DIR).exists()
    assert not (root / ade.MARKER).exists()
    assert "\n" not in str(err.value)
    return err.value, root


def test_a_half_extracted_folder_names_a_missing_file_and_the_fix(prepared, tmp_path):
    release = prepared[1]
    base = _unzip(release, tmp_path / "r")
    lost = base / "annotations" / "training" / "ADE_train_00000003.png"
    lost.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_ade20k(tmp_path / "r", skip_download=True, release=release, progress=False)
    message = str(err.value)
    assert str(lost) in message and "half-extracted" in message and f"delete {base}" in message
    assert "train has 4 images and 3 annotations, 4 of each expected" in message
    assert "\n" not in message and not (tmp_path / "r" / ade.MARKER).exists()


def test_a_zip_missing_an_image_fails_its_counts(tmp_path):
    err, _ = _prepare_bad(tmp_path, drop=("ADEChallengeData2016/images/training/"
                                          "ADE_train_00000002.jpg",))
    assert isinstance(err, DataError)
    assert "train has 3 images and 4 annotations" in str(err)
    assert "images/training/ADE_train_00000002.jpg is missing" in str(err)
    assert f"{ZIP} is not a complete, undamaged" in str(err)


def test_a_wrong_zip(prepared, tmp_path):
    # another layout (the full ADE20K release, not SceneParsing), checksum check off
    other = tmp_path / ZIP
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("ADE20K_2021_17_01/images/ADE/training/x.jpg", b"jpeg")
    with pytest.raises(DataError, match=r"train has 0 images and 0 annotations, 4 of each"):
        prepare_ade20k(tmp_path / "a", from_zip=other, release=prepared[1], verify=False,
                       progress=False)
    assert not (tmp_path / "a" / prep.PARTIAL).exists()
    # with the checksum check on (the default), it is refused before any extraction
    with pytest.raises(DownloadError, match=f"not {ZIP} or an incomplete copy"):
        prepare_ade20k(tmp_path / "b", from_zip=other, release=prepared[1], progress=False)
    # not a zip at all, and a truncated one
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip file" * 100)
    with pytest.raises(DataError, match=r"cannot read .*junk\.zip as a zip"):
        prepare_ade20k(tmp_path / "c", from_zip=junk, release=prepared[1], verify=False,
                       progress=False)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(_zip_path(prepared[1]).read_bytes()[:5000])
    with pytest.raises(DataError, match="delete it and run again"):
        prepare_ade20k(tmp_path / "d", from_zip=cut, release=prepared[1], verify=False,
                       progress=False)
    assert not any((tmp_path / d / ade.MARKER).exists() for d in "abcd")


def test_a_mask_of_another_size_names_both_files(tmp_path):
    member = f"{ANN}/training/ADE_train_00000002.png"
    err, _ = _prepare_bad(tmp_path, extra={member: png_bytes(np.ones((5, 7), np.uint8))})
    message = str(err)
    assert "ADE_train_00000002.jpg" in message and member in message and "is 5x7" in message
    assert "delete it and run again" in message


def test_labels_above_150_are_listed(tmp_path):
    member = f"{ANN}/validation/ADE_val_00000001.png"
    release = make_ade20k_miniature(tmp_path / "size")  # the same seed: the same sizes
    # the annotation keeps its image's size so that only the labels are wrong
    with zipfile.ZipFile(_zip_path(release)) as archive:
        jpg = archive.read(member.replace("annotations", "images").replace(".png", ".jpg"))
    w, h = Image.open(io.BytesIO(jpg)).size
    bad = np.full((h, w), 3, np.uint8)
    bad[0, :3] = (151, 200, 255)
    err, _ = _prepare_bad(tmp_path, extra={member: png_bytes(bad)})
    assert f"{member}: label values [151, 200, 255] are above 150" in str(err)


def test_hostile_members_are_ignored_or_refused(tmp_path, monkeypatch):
    # names that climb out of the folder match no path the release uses: never written
    release = make_ade20k_miniature(tmp_path / "up", extra={
        "../escape.jpg": b"x", f"{ade.BASE_DIR}/images/training/../../../escape.png": b"x"})
    prepare_ade20k(tmp_path / "ok", from_zip=_zip_path(release), release=release,
                   progress=False)
    assert sorted(p.name for p in tmp_path.rglob("escape*")) == []
    # a backslash (a Windows path) in a used name is refused, naming the member
    err, _ = _prepare_bad(tmp_path / "a", extra={
        f"{ade.BASE_DIR}/images/training/..\\x.jpg": b"x"})
    assert "is not a plain file name" in str(err) and "x.jpg" in str(err)
    # a symbolic link where an image belongs is never read as data
    link = tmp_path / "link" / ZIP
    link.parent.mkdir()
    with zipfile.ZipFile(_zip_path(release)) as src, zipfile.ZipFile(link, "w") as out:
        for info in src.infolist():
            if info.filename.endswith("ADE_train_00000001.jpg"):
                info.external_attr = (0o120777 << 16)  # S_IFLNK
                out.writestr(info, b"/etc/passwd")
            else:
                out.writestr(info, src.read(info))
    with pytest.raises(DataError, match="ADE_train_00000001.jpg is a symbolic link"):
        prepare_ade20k(tmp_path / "l", from_zip=link, release=release, verify=False,
                       progress=False)
    # a member above the size limit names the member and the variable that raises it
    monkeypatch.setenv("ENCNET_MAX_MEMBER_BYTES", "300")
    with pytest.raises(DataError, match="ENCNET_MAX_MEMBER_BYTES") as err:
        prepare_ade20k(tmp_path / "m", from_zip=_zip_path(release), release=release,
                       progress=False)
    assert f"{ZIP}:{ade.BASE_DIR}/" in str(err.value)
    assert not any((tmp_path / d / prep.PARTIAL).exists() for d in ("l", "m"))


def _copy_of(prepared, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(prepared[0], root)
    ds = ADE20K(root, "train")
    return ds, ds.pairs[0]


def test_loading_a_bad_mask_names_it_and_the_fix(prepared, tmp_path):
    ds, (image_path, mask_path) = _copy_of(prepared, tmp_path)
    raw = np.array(Image.open(mask_path))
    raw[0, :2] = (151, 222)
    Image.fromarray(raw).save(mask_path)
    with pytest.raises(DataError) as err:
        ds[0]
    assert f"{mask_path}: label values [151, 222]" in str(err.value)
    assert f"--root {ds.root} --force" in str(err.value) and "damaged" in str(err.value)
    with pytest.raises(DataError, match=r"\[151, 222\]"):
        ds.mask(0)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mask_path)
    with pytest.raises(DataError) as err:
        ds[0]
    assert str(image_path) in str(err.value) and "--force" in str(err.value)


def test_a_missing_or_altered_root_names_the_prepare_command(prepared, tmp_path):
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DatasetNotFoundError) as err:
            ADE20K(root, "val")
        assert f"python data_scripts/prepare_ade20k.py --root {root}" in str(err.value)
    ds, (image_path, _) = _copy_of(prepared, tmp_path)
    image_path.unlink()
    with pytest.raises(DatasetNotFoundError, match="3 train images and 4 annotations"):
        ADE20K(ds.root, "train")
    with pytest.raises(ValueError, match="split"):
        ADE20K(ds.root, "test")


# ---------------------------------------------------------------- command line


def test_the_console_script_and_the_wrapper_print_help(capsys):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["encnet-prepare-ade20k"] == "encnet_lite.data.prepare_ade20k:main"
    with pytest.raises(SystemExit) as code:
        prep.main(["--help"])
    assert code.value.code == 0
    out = capsys.readouterr().out
    assert "--from-zip" in out and "--manifest" in out and "--skip-download" in out
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "prepare_ade20k.py"),
                           "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "--from-zip" in done.stdout


def test_cli_with_the_miniature_manifest(prepared, tmp_path, capsys):
    _, release, _, base = prepared
    manifest = base / "upstream" / ADE20K_MANIFEST
    assert Release.from_json(manifest) == release
    argv = ["--root", str(tmp_path / "r"), "--from-zip", str(_zip_path(release)),
            "--manifest", str(manifest), "--quiet"]
    assert prep.main(argv) == 0
    assert len(ADE20K(tmp_path / "r", "val")) == 2
    # without the manifest the counts are the real release's: refused, one line, status 1
    capsys.readouterr()
    assert prep.main(["--root", str(tmp_path / "s"), "--from-zip", str(_zip_path(release)),
                      "--no-verify", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("prepare_ade20k.py: error: ") and "\n" not in err
    assert "train has 4 images and 4 annotations, 20210 of each expected" in err
    assert prep.main(["--root", str(tmp_path / "t"), "--from-zip", str(tmp_path / "no.zip"),
                      "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err
