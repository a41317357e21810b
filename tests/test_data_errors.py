"""Hostile, damaged or misplaced data: each case ends in one line naming the file and the fix,
or in a correct result, and a failed preparation leaves no marker and no half-written file.

The first table runs the library call (and, for the prepare cases, the command line, which
prints the same line and exits with status 1); the second holds the cases whose correct
outcome is a result, not an error.
"""

import inspect
import io
import os
import socket
import struct
import tarfile
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import scipy.io

from encnet_lite.data import DataError, DatasetNotFoundError, PascalContext, PascalVOC
from encnet_lite.data import download as dl
from encnet_lite.data import prepare_pcontext as ppc
from encnet_lite.data import prepare_voc as pvoc
from encnet_lite.data.archive import iter_files
from encnet_lite.data.download import DownloadError
from encnet_lite.data.matfile import load_mat
from encnet_lite.data.miniature import (
    make_pcontext_miniature,
    make_voc_miniature,
    mat_bytes,
)

CTX, VOC10 = "trainval.tar.gz", "VOCtrainval_03-May-2010.tar"
VOC12, SBD = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"
BIG = (28000, 28000)  # the bomb: 784M uint16 values, 1.5 GB decoded, 6 GB as int64


# ---------------------------------------------------------------------------- fabrication


def _element(kind, payload):
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_declaring(name, dims, data_bytes=None, compressed=True, chunk=1 << 24):
    """A MATLAB 5 file holding one uint16 array of ``dims``, all zeros, whose data element
    has ``data_bytes`` bytes (default: what ``dims`` need). Built without ever holding the
    array: the zeros are deflated once per ``chunk`` and the identical blocks repeated
    (each ends with a full flush, so they are independent), the checksum computed in closed
    form (Adler-32 of zeros)."""
    n = int(np.prod(dims)) * 2 if data_bytes is None else data_bytes
    head = (_element(6, struct.pack("<II", 11, 0))  # array flags: mxUINT16_CLASS
            + _element(5, struct.pack(f"<{len(dims)}i", *dims)) + _element(1, name.encode()))
    padded = n + (-n % 8)
    prefix = struct.pack("<II", 14, len(head) + 8 + padded) + head + struct.pack("<II", 4, n)
    header = b"MATLAB 5.0 MAT-file, fabricated by the tests".ljust(124) + b"\0\x01IM"
    if not compressed:
        return header + prefix + bytes(padded)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    blocks = [deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)]
    full, rest = divmod(padded, chunk)
    if full:
        blocks += [deflate.compress(bytes(chunk)) + deflate.flush(zlib.Z_FULL_FLUSH)] * full
    blocks.append(deflate.compress(bytes(rest)) + deflate.flush(zlib.Z_FINISH))
    adler = zlib.adler32(prefix)
    a, b = adler & 0xFFFF, ((adler >> 16) + padded * (adler & 0xFFFF)) % 65521
    stream = b"\x78\xda" + b"".join(blocks) + struct.pack(">I", (b << 16) | a)
    return header + struct.pack("<II", 15, len(stream)) + stream


def _png_header(width, height):
    """A PNG that declares ``width x height`` grey pixels and holds none of them."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                               0, 0, 0)) + chunk(b"IEND", b""))


def _rewrite_tar(path, change):
    """Rewrite the tar ``path`` (same compression) with ``change(member) -> data or None``
    applied to each member (None: keep the member's own data)."""
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar]
    with tarfile.open(path, mode) as out:
        for member, data in members:
            new = change(member)
            data = data if new is None else new
            out.addfile(member, io.BytesIO(data) if member.isfile() else None)


def _not_regular(kinds):
    """A ``change`` for :func:`_rewrite_tar` turning the named members into ``kinds``
    (``"hard"`` link to the first val annotation, ``"sym"`` link, ``"dev"`` device)."""
    def change(member):
        kind = kinds.get(member.name)
        if kind == "hard":
            member.type, member.linkname = tarfile.LNKTYPE, "trainval/2009_000000.mat"
        elif kind == "sym":
            member.type, member.linkname = tarfile.SYMTYPE, "2009_000001.mat"
        elif kind == "dev":
            member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
        if kind:
            member.size = 0
        return None
    return change


def _forbid_decoding(monkeypatch):
    """Make any full decode of a .mat or an image fail the test at once (no gigabytes)."""
    from PIL import ImageFile

    def refuse(*args, **kwargs):
        raise AssertionError("decoded before its size was checked")

    monkeypatch.setattr(scipy.io, "loadmat", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ---------------------------------------------------------------------------- the cases


def _pcontext(t, extra=None, change=None, **flags):
    """Arrange a miniature PASCAL-Context upstream in ``t/up``; the call prepares ``t/root``."""
    remotes = make_pcontext_miniature(t / "up", n_train=3, n_val=2, extra=extra)
    if change:
        _rewrite_tar(t / "up" / CTX, change)
    flags = {"skip_download": True, "progress": False, "verify": False, **flags}
    argv = ["--root", str(t / "root"), "--download-dir", str(t / "up"), "--skip-download",
            "--quiet", "--no-verify"]
    return (lambda: ppc.prepare_pcontext(t / "root", t / "up", remotes=remotes, **flags)), argv


def case_bomb_mat(t, monkeypatch):
    run, argv = _pcontext(t, {CTX: {"trainval/2008_000000.mat": mat_declaring("LabelMap", BIG)}})
    _forbid_decoding(monkeypatch)
    return run, argv, DataError, [f"{CTX}:trainval/2008_000000.mat: LabelMap is 28000x28000 = "
                                  "784000000 pixels, over the limit of 89478485 pixels",
                                  "ENCNET_MAX_IMAGE_PIXELS"]


def case_sbd_struct_field_over_limit(t, monkeypatch):
    monkeypatch.setenv("ENCNET_MAX_IMAGE_PIXELS", "1000")  # the miniature's maps are larger
    remotes = make_voc_miniature(t / "up", n_train=1, n_val=1, n_sbd=1)
    _forbid_decoding(monkeypatch)
    return (lambda: pvoc.prepare_voc(t / "root", t / "up", sbd=True, skip_download=True,
                                     remotes=remotes, progress=False),
            None, DataError, [f"{SBD}:benchmark_RELEASE/dataset/cls/", ".mat: GTcls.Segmentation is",
                              "over the limit of 1000 pixels", "ENCNET_MAX_IMAGE_PIXELS"])


def case_image_header_over_limit(t, monkeypatch):
    monkeypatch.setenv("ENCNET_MAX_IMAGE_PIXELS", "10000")  # the label maps stay under it
    jpeg = "VOCdevkit/VOC2010/JPEGImages/2008_000000.jpg"
    run, argv = _pcontext(t, {VOC10: {jpeg: _png_header(200, 100)}})
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", None)  # any decode would fail loudly
    return run, argv, DataError, ["JPEGImages/2008_000000.jpg is 200x100 = 20000 pixels, over "
                                  "the limit of 10000 pixels", "ENCNET_MAX_IMAGE_PIXELS"]


def case_links_and_a_device_instead_of_annotations(t, monkeypatch):
    kinds = {"trainval/2008_000000.mat": "hard", "trainval/2008_000001.mat": "sym",
             "trainval/2008_000002.mat": "dev"}
    run, argv = _pcontext(t, change=_not_regular(kinds))
    return run, argv, DataError, [
        "the train/val splits would come out 3 image(s) short",
        f"{CTX}:trainval/2008_000000.mat is a hard link to trainval/2009_000000.mat",
        f"{CTX}:trainval/2008_000001.mat is a symbolic link to 2009_000001.mat",
        f"{CTX}:trainval/2008_000002.mat is a device", "skipped for safety",
        "fetch it again from the official source"]


def case_a_link_instead_of_an_image(t, monkeypatch):
    remotes = make_pcontext_miniature(t / "up", n_train=2, n_val=1)
    jpeg = "VOCdevkit/VOC2010/JPEGImages/2009_000000.jpg"

    def change(member):
        if member.name == jpeg:
            member.type, member.linkname, member.size = tarfile.SYMTYPE, "/etc/passwd", 0
        return None

    _rewrite_tar(t / "up" / VOC10, change)
    return (lambda: ppc.prepare_pcontext(t / "root", t / "up", skip_download=True, verify=False,
                                         remotes=remotes, progress=False),
            None, DataError, ["would come out 1 image(s) short",
                              f"{VOC10}:{jpeg} is a symbolic link to /etc/passwd"])


def case_sbd_annotation_that_is_a_link(t, monkeypatch):
    remotes = make_voc_miniature(t / "up", n_train=2, n_val=1, n_sbd=2)
    member = "benchmark_RELEASE/dataset/cls/2011_000001.mat"  # only SBD labels this image
    sbd = t / "up" / SBD
    _rewrite_tar(sbd, _not_regular({member: "sym"}))
    remotes["sbd"] = dl.Remote(SBD, sbd.as_uri(), None)
    return (lambda: pvoc.prepare_voc(t / "root", t / "up", sbd=True, skip_download=True,
                                     verify=False, remotes=remotes, progress=False),
            None, DataError, ["train_aug would come out 1 image(s) short",
                              f"{SBD}:{member} is a symbolic link"])


def case_fifo_in_an_extracted_folder(t, monkeypatch):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    remotes = make_pcontext_miniature(t / "up", n_train=2, n_val=1)
    hand = t / "by_hand"
    for remote in remotes.values():
        with tarfile.open(remote.url[len("file://"):]) as tar:
            tar.extractall(hand, filter="data")
    fifo = hand / "trainval" / "2008_000001.mat"
    fifo.unlink()
    os.mkfifo(fifo)  # reading it would block for ever
    return (lambda: ppc.prepare_pcontext(t / "root", hand, skip_download=True, remotes=remotes,
                                         progress=False),
            None, DataError, ["would come out 1 image(s) short",
                              f"{fifo} is not a regular file"])


def case_archive_that_is_a_folder(t, monkeypatch):
    run, argv = _pcontext(t)
    (t / "up" / CTX).unlink()
    (t / "up" / CTX).mkdir()
    return run, argv, DownloadError, [f"{t / 'up' / CTX} is a folder, not the archive",
                                      "rename or remove it", "move its trainval folder into"]


def case_gzip_crc_broken_under_no_verify(t, monkeypatch):
    run, argv = _pcontext(t)
    data = bytearray((t / "up" / CTX).read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 in gzip's trailer; every member still reads fine
    (t / "up" / CTX).write_bytes(bytes(data))
    return run, argv, DataError, [f"cannot read archive {t / 'up' / CTX}: CRC check failed",
                                  "delete it, then run again"]


def case_gzip_cut_short(t, monkeypatch):
    run, argv = _pcontext(t)
    data = (t / "up" / CTX).read_bytes()
    (t / "up" / CTX).write_bytes(data[: len(data) - 20])
    return run, argv, DataError, [f"cannot read archive {t / 'up' / CTX}", "ended before",
                                  "delete it, then run again"]


def case_invisible_character_in_a_split_id(t, monkeypatch):
    lst = "VOCdevkit/VOC2010/ImageSets/Main/val.txt"
    run, argv = _pcontext(t, {VOC10: {lst: "2009_000000\n2009\u200b000001\n".encode()}})
    return run, argv, DataError, ["Main/val.txt: image id '2009\\u200b000001' is not a plain "
                                  "file name", "invisible character"]


def _prepared_pcontext(t):
    remotes = make_pcontext_miniature(t / "up", n_train=2, n_val=2)
    ppc.prepare_pcontext(t / "root", t / "up", variants=(59, 60), skip_download=True,
                         remotes=remotes, progress=False)
    return t / "root"


def case_image_missing_from_a_prepared_root(t, monkeypatch):
    root = _prepared_pcontext(t)
    ds = PascalContext(root, "val")
    image = ds.pairs[1][0]
    image.unlink()
    return (lambda: ds[1]), None, DatasetNotFoundError, [
        f"{image} does not exist",
        f"prepare_pcontext.py --root {root} --classes both --force"]


def case_folder_instead_of_a_mask_in_a_prepared_root(t, monkeypatch):
    remotes = make_voc_miniature(t / "up", n_train=2, n_val=1, n_sbd=1)
    pvoc.prepare_voc(t / "root", t / "up", sbd=True, skip_download=True, remotes=remotes,
                     progress=False)
    ds = PascalVOC(t / "root", "train")
    mask = ds.pairs[0][1]
    mask.unlink()
    mask.mkdir()
    return (lambda: ds[0]), None, DatasetNotFoundError, [
        f"{mask} is a folder, not a file", f"prepare_voc.py --root {t / 'root'} --sbd --force"]


def case_download_that_times_out_before_a_byte(t, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []  # accepted, never answered
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/x.tar"
    dest = t / "dl" / "x.tar"

    def run():
        try:
            dl.download(url, dest, progress=False, retries=0, timeout=0.3)
        finally:
            for conn, _ in held:  # kept open until here: the client must time out, not fail
                conn.close()
            server.close()
            assert not dest.with_name("x.tar.part").exists()

    return run, None, DownloadError, ["timed out", "nothing was saved, so the next run "
                                      "starts from the beginning"]


CASES = {name[len("case_"):]: f for name, f in sorted(globals().items())
         if name.startswith("case_")}
PREPARED_ROOT_CASES = {"image_missing_from_a_prepared_root",
                       "folder_instead_of_a_mask_in_a_prepared_root"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_case_ends_in_one_line_naming_the_file_and_the_fix(case, tmp_path, monkeypatch,
                                                                capsys):
    run, argv, error, phrases = CASES[case](tmp_path, monkeypatch)
    with pytest.raises(error) as info:
        run()
    message = str(info.value)
    assert "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, message
    root = tmp_path / "root"
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]  # nothing half-written
    if case not in PREPARED_ROOT_CASES:  # a preparation that failed is not marked ready
        assert not (root / "prepared.json").exists()
    if argv:  # the command line says the same in one line, exit status 1
        capsys.readouterr()
        assert ppc.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("prepare_pcontext.py: error: ") and err.count("\n") == 1, err
        assert phrases[0] in err and not (root / "prepared.json").exists()


# ---------------------------------------------------------------------------- the bomb, measured


def test_the_bomb_is_refused_from_its_header_in_milliseconds_and_kilobytes(monkeypatch):
    bomb = mat_declaring("LabelMap", BIG)
    assert len(bomb) < 2_000_000  # a member far under ENCNET_MAX_MEMBER_BYTES
    _forbid_decoding(monkeypatch)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataError, match="LabelMap is 28000x28000"):
        ppc.read_label_map(bomb, "bomb.mat")
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 0.5 and peak < 4 << 20, (seconds, peak)  # before: 56 s and 8.8 GiB


# ---------------------------------------------------------------------------- .mat headers


def _savemat(variables, **options):
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, **options)
    return buf.getvalue()


LABELS = (np.arange(40 * 48).reshape(40, 48) % 460).astype(np.uint16)
SBD_LIKE = {"GTcls": {"Segmentation": LABELS.astype(np.uint8),
                      "Boundaries": np.array([[scipy.sparse.csc_matrix(LABELS == k)]
                                              for k in (1, 2)], dtype=object),
                      "CategoriesPresent": np.array([1, 2], np.uint8)}}


@pytest.mark.parametrize("options", [{"do_compression": True}, {"do_compression": False},
                                     {"format": "4"}], ids=["v5-zlib", "v5-plain", "v4"])
def test_load_mat_reads_what_loadmat_reads(options):
    data = _savemat({"LabelMap": LABELS}, **options)
    assert np.array_equal(load_mat(data, "x.mat")["LabelMap"], LABELS)
    if "format" not in options:  # structs and cells of sparse matrices, as SBD has
        mat = load_mat(_savemat(SBD_LIKE, **options), "s.mat", squeeze_me=True,
                       struct_as_record=False)
        assert np.array_equal(mat["GTcls"].Segmentation, LABELS.astype(np.uint8))
        assert np.array_equal(mat["GTcls"].Boundaries[1].toarray(), LABELS == 2)


MAT_CASES = [
    ("uncompressed over the limit", lambda: _savemat({"LabelMap": LABELS}, do_compression=False),
     "1000", "LabelMap is 40x48 = 1920 pixels, over the limit of 1000"),
    ("v4 over the limit", lambda: _savemat({"LabelMap": LABELS}, format="4"), "1000",
     "LabelMap is 40x48 = 1920 pixels, over the limit of 1000"),
    ("arrays over the limit together", lambda: _savemat({"a": LABELS[:20], "b": LABELS[20:]}),
     "1000", "all arrays together is 1920 values or more, over the limit of 1000"),
    ("data larger than the dimensions", lambda: mat_declaring("LabelMap", (2, 2), 10 << 20),
     None, "LabelMap declares 10485816 bytes for a 2x2 array"),
    ("cut short", lambda: _savemat({"LabelMap": LABELS})[:200], None, "corrupt annotation"),
    ("HDF5 (MATLAB 7.3)", lambda: b"MATLAB 7.3 MAT-file".ljust(124) + b"\0\x02IM" + bytes(64),
     None, "MATLAB 7.3 (HDF5) file"),
    ("not a .mat", lambda: b"<html>not found</html>", None, "corrupt annotation file x.mat"),
]


@pytest.mark.parametrize("make,limit,phrase", [c[1:] for c in MAT_CASES],
                         ids=[c[0] for c in MAT_CASES])
def test_mat_files_refused_before_decoding(make, limit, phrase, monkeypatch):
    data = make()
    if limit:
        monkeypatch.setenv("ENCNET_MAX_IMAGE_PIXELS", limit)
    monkeypatch.setattr(scipy.io, "loadmat", None)  # never reached: refused from headers
    with pytest.raises(DataError) as info:
        load_mat(data, "x.mat")
    assert phrase in str(info.value) and "x.mat" in str(info.value), str(info.value)


# ---------------------------------------------------------------------------- correct results


def test_a_byte_order_mark_in_an_upstream_list_is_not_part_of_the_first_id(tmp_path):
    lst = "VOCdevkit/VOC2010/ImageSets/Main/val.txt"
    run, _ = _pcontext(tmp_path, {VOC10: {lst: b"\xef\xbb\xbf2009_000000\n2009_000001\n"}})
    info = run()
    assert info["val"] == 2  # before: 1, the first image silently dropped
    assert PascalContext(tmp_path / "root", "val").ids == ["2009_000000", "2009_000001"]


def test_a_byte_order_mark_in_a_prepared_list_is_dropped(tmp_path):
    root = _prepared_pcontext(tmp_path)
    val = root / "ImageSets" / "val.txt"
    ids = PascalContext(root, "val").ids
    val.write_bytes(b"\xef\xbb\xbf" + val.read_bytes())  # saved again by an editor
    (root / "prepared.json").write_bytes(b"\xef\xbb\xbf" + (root / "prepared.json").read_bytes())
    ds = PascalContext(root, "val")
    assert ds.ids == ids and ds[0][1].shape == ds[0][0].shape[1:]


def test_a_link_no_split_needs_is_noted_and_the_rest_prepared(tmp_path, capsys):
    run, _ = _pcontext(tmp_path, {CTX: {"trainval/2007_000000.mat": mat_bytes(
        {"LabelMap": LABELS})}}, change=_not_regular({"trainval/2007_000000.mat": "sym"}))
    info = run()
    assert (info["train"], info["val"]) == (3, 2)
    out = capsys.readouterr().out
    assert "note: 1 members" in out and "trainval/2007_000000.mat" in out


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"),
                                         (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_every_tar_compression_reads_the_same_members(tmp_path, suffix, mode):
    members = {"a/x.mat": b"x" * 3000, "a/y.txt": b"y\n", "b/z.mat": b""}
    path = tmp_path / f"t{suffix}"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = dict(iter_files(path, lambda n: n.endswith(".mat")))
    assert got == {"a/x.mat": members["a/x.mat"], "b/z.mat": b""}


def test_a_download_that_stops_part_way_says_what_it_kept(tmp_path):
    body = bytes(range(256)) * 40
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve():
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:1000])
        time.sleep(1.0)  # then silence: the client times out
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    dest = tmp_path / "x.tar"
    with pytest.raises(DownloadError) as info:
        dl.download(f"http://127.0.0.1:{server.getsockname()[1]}/x.tar", dest, progress=False,
                    retries=0, timeout=0.3)
    server.close()
    part = tmp_path / "x.tar.part"
    assert part.read_bytes() == body[:1000]
    assert f"the 1000 bytes fetched so far are kept in {part}" in str(info.value)


# ---------------------------------------------------------------------------- flags


def test_prepare_flags_are_keyword_only_with_one_name_each():
    def flags(f):
        sig = inspect.signature(f).parameters.values()
        return [p.name for p in sig if p.kind is p.KEYWORD_ONLY]

    pc_flags = [f for f in flags(ppc.prepare_pcontext) if f != "variants"]
    voc_flags = [f for f in flags(pvoc.prepare_voc) if f != "sbd"]
    assert pc_flags == voc_flags == ["skip_download", "force", "verify", "progress", "remotes"]
    assert flags(dl.fetch) == flags(dl.locate) == ["skip_download", "verify", "progress"]
    assert flags(dl.check_md5) == ["verify", "progress"] and not hasattr(dl, "verify")
    with pytest.raises(TypeError):
        ppc.prepare_pcontext("r", "d", True)
    with pytest.raises(TypeError):
        pvoc.prepare_voc("r", "d", True)
