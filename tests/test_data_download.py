"""Download helper: file:// and a local HTTP server on 127.0.0.1 (never the network)."""

import hashlib
import http.server
from contextlib import contextmanager

import pytest
from helpers import local_server

from encnet_lite.data.download import (
    DownloadError,
    Remote,
    check_md5,
    download,
    fetch,
    locate,
)

PAYLOAD = bytes(range(256)) * 12_000  # ~3 MB: several 1 MiB chunks
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    honour_range = True
    truncate_next_at = None  # close the connection after this many body bytes, once
    wrong_offset_once = False  # answer the next Range request with a 206 from byte 0
    ranges: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        cls = type(self)
        header = self.headers.get("Range")
        cls.ranges.append(header)
        start = 0
        if header and cls.honour_range:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):  # as real servers do: 416 with the full size
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if cls.wrong_offset_once:
                start, cls.wrong_offset_once = 0, False
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.truncate_next_at is not None:
            body, cls.truncate_next_at = body[: cls.truncate_next_at], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def _server(honour_range=True, truncate_at=None):
    handler = type("Handler", (_Handler,), {"honour_range": honour_range,
                                             "truncate_next_at": truncate_at, "ranges": []})
    with local_server(handler) as base:
        yield f"{base}file.bin", handler


def test_fetch_from_file_url_verifies_and_is_idempotent(tmp_path, capsys):
    src = tmp_path / "upstream" / "file.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    remote = Remote("file.bin", src.as_uri(), MD5)
    path = fetch(remote, tmp_path / "dl", progress=False)
    assert path.read_bytes() == PAYLOAD and (tmp_path / "dl" / ".file.bin.md5ok").exists()
    assert not (tmp_path / "dl" / "file.bin.part").exists()
    mtime = path.stat().st_mtime_ns
    src.unlink()  # a second fetch must neither download nor fail
    assert fetch(remote, tmp_path / "dl", progress=False) == path
    assert path.stat().st_mtime_ns == mtime


def test_resume_sends_a_range_request_and_appends(tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1_234_567])
    with _server() as (url, handler):
        download(url, dest, progress=False)
    assert handler.ranges == ["bytes=1234567-"]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_resumes_where_it_stopped(tmp_path):
    dest = tmp_path / "file.bin"
    with _server(truncate_at=1_000_000) as (url, handler):
        download(url, dest, progress=False, retries=2, backoff=0.0)
    assert handler.ranges == [None, "bytes=1000000-"]
    assert hashlib.md5(dest.read_bytes()).hexdigest() == MD5


def test_server_ignoring_range_restarts_the_file(tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes from another file")
    with _server(honour_range=False) as (url, handler):
        download(url, dest, progress=False)
    assert handler.ranges == ["bytes=29-"] and dest.read_bytes() == PAYLOAD


def test_persistent_failure_keeps_the_part_and_says_so(tmp_path):
    dest = tmp_path / "file.bin"
    with _server(truncate_at=500_000) as (url, handler):
        handler.truncate_next_at = 500_000
        with pytest.raises(DownloadError, match="resumes"):
            download(url, dest, progress=False, retries=0, backoff=0.0)
    assert (tmp_path / "file.bin.part").stat().st_size == 500_000


def test_checksum_mismatch(tmp_path):
    src = tmp_path / "file.bin"
    src.write_bytes(PAYLOAD)
    bad = Remote("file.bin", src.as_uri(), "0" * 32)
    with pytest.raises(DownloadError, match="MD5"):
        check_md5(src, bad, progress=False)
    assert not check_md5(src, bad, verify=False, progress=False)  # --no-verify: a warning
    with pytest.raises(DownloadError, match="MD5"):  # fresh download that fails: moved aside
        fetch(bad, tmp_path / "dl", progress=False)
    assert (tmp_path / "dl" / "file.bin.bad").exists() and not (tmp_path / "dl" / "file.bin").exists()


def test_hand_fetched_file_and_missing_checksum(tmp_path, capsys):
    (tmp_path / "file.bin").write_bytes(PAYLOAD)
    path = fetch(Remote("file.bin", "http://invalid.example/file.bin", None), tmp_path,
                 skip_download=True, progress=False)
    assert path == tmp_path / "file.bin"
    assert "no confirmed MD5" in capsys.readouterr().out


def test_skip_download_names_the_file_and_url(tmp_path):
    remote = Remote("big.tar", "http://host.example/big.tar", MD5, "1.3 GB")
    with pytest.raises(DownloadError) as err:
        fetch(remote, tmp_path, skip_download=True, progress=False)
    assert "big.tar" in str(err.value) and "http://host.example/big.tar" in str(err.value)


def test_locate_accepts_an_extracted_folder(tmp_path):
    (tmp_path / "VOCdevkit" / "VOC2010").mkdir(parents=True)
    remote = Remote("VOC.tar", "http://host.example/VOC.tar", MD5)
    assert locate(remote, tmp_path, "VOCdevkit/VOC2010", skip_download=True) == tmp_path


def test_a_complete_part_answered_with_416_is_finished_not_retried_forever(tmp_path):
    remote = Remote("file.bin", "", MD5)
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)  # killed after the last byte
    with _server() as (url, handler):
        path = fetch(Remote("file.bin", url, MD5), tmp_path, progress=False)
    assert handler.ranges == [f"bytes={len(PAYLOAD)}-"]  # one request, no retries
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "file.bin.part").exists()
    assert check_md5(path, remote, progress=False)


def test_an_oversized_part_answered_with_416_restarts_cleanly(tmp_path, capsys):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD + b"junk after the end")
    with _server() as (url, handler):
        download(url, dest, progress=False, backoff=0.0)
    assert handler.ranges == [f"bytes={len(PAYLOAD) + 18}-", None]
    assert dest.read_bytes() == PAYLOAD
    assert "HTTP 416" in capsys.readouterr().out


def test_a_206_at_the_wrong_offset_is_not_appended(tmp_path, capsys):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1_000_000])
    with _server() as (url, handler):
        handler.wrong_offset_once = True
        download(url, dest, progress=False, backoff=0.0)
    assert handler.ranges == ["bytes=1000000-", None]
    assert hashlib.md5(dest.read_bytes()).hexdigest() == MD5
    assert "Content-Range 'bytes 0-" in capsys.readouterr().out
