"""Fetch upstream archives: resumable HTTP downloads, progress bars, MD5 checks, atomic files.

A :class:`Remote` names one upstream file (file name, URL, MD5). :func:`fetch` returns its
local path in a download folder: a file already there (fetched earlier, or by hand) is
verified and used; otherwise it is downloaded to ``<name>.part``, resumed with an HTTP
``Range`` request after an interruption, verified, and only then renamed to ``<name>``.
A verified file leaves a small ``.<name>.md5ok`` stamp (size, mtime) so reruns skip the hash.

One name per idea, keyword-only everywhere: ``verify`` (an MD5 mismatch fails; False, the
``--no-verify`` flag, makes it a warning), ``skip_download`` (never download),
``progress`` (progress bars).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from ..errors import EncnetError
from ..files import write_text_atomic
from .common import PathLike

CHUNK = 1 << 20
BY_HAND = "You can also fetch the file by hand and pass its folder as --download-dir."


@dataclass(frozen=True)
class Remote:
    """One upstream file. ``md5=None`` means no confirmed checksum: verification is skipped
    with a printed warning."""

    filename: str
    url: str
    md5: Optional[str]
    size_hint: str = ""  # human-readable, for messages ("1.3 GB")


class DownloadError(EncnetError, RuntimeError):
    """A download failed or a file does not match its checksum."""


def file_digests(path: PathLike, algos: Sequence[str] = ("md5",), *,
                 progress: bool = False) -> Dict[str, str]:
    """``{algo: hex digest}`` of a file for each of ``algos`` (hashlib names), in one pass."""
    path = Path(path)
    digests = {algo: hashlib.new(algo) for algo in algos}
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"{'/'.join(algos)} {path.name}",
                                     disable=not progress, leave=False) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            for digest in digests.values():
                digest.update(block)
            bar.update(len(block))
    return {algo: digest.hexdigest() for algo, digest in digests.items()}


def md5sum(path: PathLike, *, progress: bool = False) -> str:
    return file_digests(path, ("md5",), progress=progress)["md5"]


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.md5ok")


def _stamp_value(path: Path, md5: str) -> str:
    st = path.stat()
    return json.dumps({"md5": md5, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def check_md5(path: PathLike, remote: Remote, *, verify: bool = True,
              progress: bool = True) -> bool:
    """Check ``path`` against ``remote.md5``. Returns True when it matches (or was stamped
    as matching), False when there is no checksum to check or, with ``verify=False``, when
    it does not match (a printed warning). A mismatch raises :class:`DownloadError` when
    ``verify``."""
    path = Path(path)
    if remote.md5 is None:
        print(f"WARNING: no confirmed MD5 for {remote.filename}; using {path} unverified.")
        return False
    stamp = _stamp_path(path)
    if stamp.exists() and stamp.read_text() == _stamp_value(path, remote.md5):
        return True
    actual = md5sum(path, progress=progress)
    if actual != remote.md5:
        msg = (f"{path} has MD5 {actual}, expected {remote.md5}: the file is incomplete or "
               f"corrupt. Delete it and run again (or fetch it by hand from {remote.url}).")
        if verify:
            raise DownloadError(msg)
        print(f"WARNING: {msg} Continuing because verification is off.")
        return False
    write_text_atomic(stamp, _stamp_value(path, remote.md5))
    return True


def download(url: str, dest: PathLike, *, progress: bool = True, retries: int = 3,
             timeout: float = 60.0, backoff: float = 1.0, by_hand: str = BY_HAND) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming an existing ``.part``.

    Resumes with ``Range: bytes=N-``; a server that ignores it (status 200) restarts the file.
    A 206 is appended only if its ``Content-Range`` starts at byte N (else the part is
    dropped and fetched again); a 416 (nothing after byte N) finishes a part of exactly the
    full size and restarts any other.
    Connection errors are retried ``retries`` times, each time resuming where it stopped.
    ``by_hand`` ends the message of a download that keeps failing (what else to do).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _download_once(url, part, progress, timeout)
            part.replace(dest)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code not in (408, 429, 500, 502,
                                                                          503, 504):
                raise DownloadError(f"downloading {url} failed: HTTP {err.code}") from err
            if attempt == retries:
                raise DownloadError(
                    f"downloading {url} failed after {retries + 1} attempts ({err}); "
                    f"{_what_is_kept(part)}.{' ' + by_hand if by_hand else ''}") from err
            print(f"download interrupted ({err}); resuming (attempt {attempt + 2})")
            time.sleep(min(backoff * 2.0**attempt, 30.0))
    raise AssertionError("unreachable")


def _what_is_kept(part: Path) -> str:
    """What a failed download leaves, truthfully: a part to resume from, or nothing (an
    empty part is removed)."""
    size = part.stat().st_size if part.is_file() else 0
    if size:
        return (f"the {size} bytes fetched so far are kept in {part} and the next run resumes "
                "from them")
    part.unlink(missing_ok=True)
    return "nothing was saved, so the next run starts from the beginning"


def _download_once(url: str, part: Path, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "encnet-lite"})
    if have and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range not satisfiable: the part is complete or too long
            _unsatisfiable_range(part, have, err.headers.get("Content-Range"))
            return
        raise
    with response:
        status = getattr(response, "status", None) or response.getcode()
        length = response.headers.get("Content-Length")
        if status == 206:  # partial content: append, if it starts where the part ends
            _check_content_range(part, have, response.headers.get("Content-Range"))
            mode, total = "ab", have + int(length) if length else None
        else:  # 200 (or file://): the server sends the whole file; start again
            mode, have = "wb", 0
            total = int(length) if length else None
        _copy_body(response, part, mode, have, total, progress)
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def _copy_body(response, part: Path, mode: str, have: int, total: Optional[int],
               progress: bool) -> None:
    # read1: whatever has arrived, at most CHUNK; read(CHUNK) would wait for a full chunk and
    # lose the bytes it already holds when the connection then stalls into a time-out.
    read = getattr(response, "read1", response.read)
    with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                       desc=part.name[:-5], disable=not progress) as bar:
        for block in iter(lambda: read(CHUNK), b""):
            out.write(block)
            bar.update(len(block))


def _range_numbers(header: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """``(first byte, full size)`` of a ``Content-Range`` header (None where absent or
    ``*``): ``"bytes 100-199/1000"`` -> ``(100, 1000)``, ``"bytes */1000"`` -> ``(None, 1000)``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None
    first, size = match.groups()
    return (int(first) if first else None), (int(size) if size and size != "*" else None)


def _check_content_range(part: Path, have: int, header: Optional[str]) -> None:
    """A 206 must continue the part exactly; otherwise appending would corrupt it, so the
    part is dropped and the retry downloads the whole file."""
    first, _ = _range_numbers(header)
    if first != have:
        part.unlink(missing_ok=True)
        raise ConnectionError(f"the server answered the resume request at byte {have} with "
                              f"Content-Range {header!r}; the partial file was discarded and "
                              "the download starts again")


def _unsatisfiable_range(part: Path, have: int, header: Optional[str]) -> None:
    """HTTP 416 for ``Range: bytes=have-``: a part of exactly the full size is complete
    (the MD5 check that follows judges it); any other part is discarded and fetched again."""
    _, size = _range_numbers(header)
    if size == have:
        return
    part.unlink(missing_ok=True)
    raise ConnectionError(f"the server has no bytes after {have} (HTTP 416, full size "
                          f"{size if size is not None else 'unknown'}): the partial file "
                          f"{part.name} does not fit it; it was discarded and the download "
                          "starts again")


def _not_a_file(path: Path, extracted: Optional[str] = None) -> DownloadError:
    """A folder (or other non-file) where the archive should be."""
    hint = (f" (if it holds the extracted archive, move its {extracted} folder into "
            f"{path.parent} instead)" if extracted else "")
    return DownloadError(f"{path} is a folder, not the archive {path.name}: rename or remove "
                         f"it{hint}, then run again")


def fetch(remote: Remote, download_dir: PathLike, *, skip_download: bool = False,
          verify: bool = True, progress: bool = True) -> Path:
    """Local, checked copy of ``remote`` in ``download_dir`` (downloading it if needed)."""
    download_dir = Path(download_dir)
    path = download_dir / remote.filename
    if path.exists() and not path.is_file():
        raise _not_a_file(path)
    if not path.exists():
        if skip_download:
            raise DownloadError(
                f"{path} is missing and --skip-download is set. Fetch {remote.filename}"
                f"{' (' + remote.size_hint + ')' if remote.size_hint else ''} by hand from "
                f"{remote.url} into {download_dir}, or drop --skip-download.")
        print(f"downloading {remote.url} -> {path}")
        download(remote.url, path, progress=progress)
        try:
            check_md5(path, remote, verify=verify, progress=progress)
        except DownloadError:
            # A fresh download that fails its checksum is useless: remove it.
            bad = path.with_name(path.name + ".bad")
            shutil.move(str(path), bad)
            raise DownloadError(f"{remote.url} was downloaded but fails its MD5 check; moved "
                                f"to {bad}. Try again later or fetch it by hand.") from None
        return path
    check_md5(path, remote, verify=verify, progress=progress)
    return path


def locate(remote: Remote, download_dir: PathLike, extracted: str, *,
           skip_download: bool = False, verify: bool = True, progress: bool = True) -> Path:
    """The source to read ``remote`` from: the archive in ``download_dir`` (verified), else a
    folder ``download_dir/extracted`` holding it already unpacked (then ``download_dir`` is
    returned), else the archive freshly downloaded."""
    download_dir = Path(download_dir)
    archive = download_dir / remote.filename
    if archive.exists() and not archive.is_file():
        raise _not_a_file(archive, extracted)
    if not archive.exists() and (download_dir / extracted).is_dir():
        print(f"using the extracted folder {download_dir / extracted} for {remote.filename}")
        return download_dir
    return fetch(remote, download_dir, skip_download=skip_download, verify=verify,
                 progress=progress)

