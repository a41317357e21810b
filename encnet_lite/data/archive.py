"""Read upstream files from a tar archive or from the folder it was extracted into.

A *source* is a path: a ``.tar`` (plain, gzip, bzip2 or xz compressed) file, or a directory
holding the archive's extracted contents. Member names are the archive's relative paths
with ``/``. Iteration streams the archive once, so a 1.4 GB ``.tgz`` is never decompressed
twice, and to its very end, so that the compressor's checksum (gzip's CRC-32) is checked
even when the tar data stop earlier; it holds one member at a time, read in chunks up to a
size limit (``ENCNET_MAX_MEMBER_BYTES``, default 64 MiB): a small archive with a huge
member cannot exhaust memory.

Only regular files are read. A wanted member that is a link (hard or symbolic), a device,
a FIFO or a folder is skipped for safety and reported in the ``skipped`` mapping that the
caller passes: it counts as missing, and the caller names it when that leaves a split short.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zlib
from pathlib import Path
from typing import (
    IO,
    Callable,
    Collection,
    Dict,
    Iterable,
    Iterator,
    Mapping,
    Optional,
    Pattern,
    Tuple,
)

from .common import MEMBER_BYTES_ENV, DataError, PathLike, max_member_bytes, too_large

CHUNK = 1 << 20
# Compressed streams by their first bytes; each of these readers checks the stream's own
# checksum when it reaches the end (tarfile's "r|gz" never checks gzip's CRC on reading).
_OPENERS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _clean(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _read_member(f: Optional[IO[bytes]], size: int, where: str, limit: int) -> bytes:
    """A member's bytes, read in chunks and never more than ``limit`` + 1 of them (the header
    size is checked first; the bound also holds if the header lies)."""
    if size > limit:
        raise too_large(where, f"{size} bytes", f"{limit} bytes", MEMBER_BYTES_ENV)
    if f is None:
        return b""
    chunks, got = [], 0
    while True:
        block = f.read(min(CHUNK, limit + 1 - got))
        if not block:
            break
        chunks.append(block)
        got += len(block)
        if got > limit:
            raise too_large(where, f"more than {limit} bytes", f"{limit} bytes",
                            MEMBER_BYTES_ENV)
    return b"".join(chunks)


def _why_not(source: Path, path: Path) -> str:
    """Why ``path`` (under the extracted folder ``source``) is not read: ``""`` for a regular
    file or a link to one inside the folder (read), else what it is. A link to a file
    outside the folder is an error (it could copy any file of this machine into the
    dataset)."""
    if path.is_symlink() and path.is_file() and not path.resolve().is_relative_to(
            source.resolve()):
        raise DataError(f"{path} is a link to {path.resolve()}, outside {source}: "
                        "replace it with the file itself")
    if path.is_file():
        return ""
    if not path.exists() and not path.is_symlink():
        return "missing"
    return ("a folder" if path.is_dir() else "a broken link" if path.is_symlink()
            else "not a regular file")


def _dir_files(source: Path) -> Iterator[Tuple[str, Path, str]]:
    """``(name, path, why not)`` of everything under an extracted folder (see
    :func:`_why_not`)."""
    for path in sorted(source.rglob("*")):
        yield path.relative_to(source).as_posix(), path, _why_not(source, path)


def _wants(want: Callable[[str], bool], name: str) -> bool:
    """``want(name)``; False when ``want`` cannot look at the entry (e.g. a broken link)."""
    try:
        return want(name)
    except OSError:
        return False


def _member_kind(member: tarfile.TarInfo) -> str:
    """What a tar member that is not a regular file is, for messages."""
    if member.islnk():
        return f"a hard link to {member.linkname}"
    if member.issym():
        return f"a symbolic link to {member.linkname}"
    if member.isdir():
        return "a folder"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    return f"a tar entry of type {member.type!r}"


def _open_stream(source: Path) -> IO[bytes]:
    """The archive's bytes, decompressed on the fly by the reader its magic bytes name."""
    with open(source, "rb") as f:
        magic = f.read(6)
    for prefix, opener in _OPENERS:
        if magic.startswith(prefix):
            return opener(source, "rb")
    return open(source, "rb")


def _read_path(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return _read_member(f, path.stat().st_size, str(path), limit)


def _archive_error(source: Path, err: BaseException) -> DataError:
    return DataError(f"cannot read archive {source}: {err or type(err).__name__} (corrupt or "
                     "incomplete: delete it, then run again to download it anew or fetch it "
                     "again by hand)")


def iter_files(source: PathLike, want: Callable[[str], bool],
               skipped: Optional[Dict[str, str]] = None) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for every regular file whose name satisfies ``want``.

    One member at a time (the archive is streamed, never held whole, and read to its end:
    a damaged compressed stream fails after the last member); a member larger than
    :func:`~encnet_lite.data.common.max_member_bytes` raises :class:`DataError` naming it.
    A wanted member that is not a regular file is not read: ``skipped[name]`` says what it
    is (see :func:`skipped_error`).
    """
    source, limit = Path(source), max_member_bytes()
    skipped = {} if skipped is None else skipped
    if source.is_dir():
        for name, path, why in _dir_files(source):
            if not _wants(want, name):
                continue
            if why:
                skipped[name] = why
            else:
                yield name, _read_path(path, limit)
        return
    try:
        with _open_stream(source) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:  # stream mode: one sequential pass
                name = _clean(member.name)
                if not want(name):
                    continue
                if not member.isfile():
                    skipped[name] = _member_kind(member)
                else:
                    yield name, _read_member(tar.extractfile(member), member.size,
                                             describe(source, name), limit)
            while stream.read(CHUNK):  # the tar ends before the stream: read on to its
                pass  # checksum
    except _READ_ERRORS as err:
        raise _archive_error(source, err) from err


class Skipped(Dict[str, str]):
    """The members of one ``source`` that were not read because they are not regular files:
    ``{name: what it is}`` (pass it to :func:`iter_files` or :func:`read_files`)."""

    def __init__(self, source: PathLike):
        super().__init__()
        self.source = Path(source)

    def of(self, pattern: Pattern[str], ids: Collection[str]) -> Dict[str, str]:
        """The skipped members whose id (``pattern``'s first group) is one of ``ids``."""
        return {name: kind for name, kind in self.items()
                if (m := pattern.search(name)) and m.group(1) in ids}

    def check(self, what: str, pattern: Pattern[str], ids: Collection[str]) -> None:
        """Raise :func:`skipped_error` if a member of ``ids`` was skipped: the data it held
        count as missing. ``what`` says what came out short (``{n}``: how many)."""
        lost = self.of(pattern, ids)
        if lost:
            raise skipped_error(what.format(n=len(lost)), self.source, lost)


def skipped_error(what: str, source: PathLike, skipped: Mapping[str, str]) -> DataError:
    """One line for ``what`` came out short because ``skipped`` members (name -> what it
    is) were not read: names the first five."""
    items = sorted(skipped.items())
    listed = "; ".join(f"{describe(source, name)} is {kind}" for name, kind in items[:5])
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return DataError(f"{what}: {listed}{more}. Members that are not regular files are skipped "
                     "for safety; the archive is damaged or hostile: fetch it again from the "
                     "official source")


def read_files(source: PathLike, names: Iterable[str],
               skipped: Optional[Dict[str, str]] = None) -> Dict[str, bytes]:
    """Read the named members (small files, e.g. split lists); missing ones are left out,
    and so are those that are not regular files (then named in ``skipped``, as by
    :func:`iter_files`)."""
    wanted, limit = set(names), max_member_bytes()
    source, skipped = Path(source), ({} if skipped is None else skipped)
    if source.is_dir():
        found = {}
        for name in sorted(wanted):
            why = _why_not(source, source / name)
            if why == "":
                found[name] = _read_path(source / name, limit)
            elif why != "missing":
                skipped[name] = why
        return found
    found = {}
    try:
        # Random-access mode: on an uncompressed .tar it seeks past member data, and it stops
        # as soon as every wanted member was seen.
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                name = _clean(member.name)
                if name in wanted and not member.isfile():
                    skipped[name] = _member_kind(member)
                elif name in wanted:
                    found[name] = _read_member(tar.extractfile(member), member.size,
                                               describe(source, name), limit)
                if len(found) + len(skipped) >= len(wanted):
                    break
    except _READ_ERRORS as err:
        raise _archive_error(source, err) from err
    return found


def describe(source: PathLike, name: str) -> str:
    """How to name a member in an error message: ``archive.tar:member`` or the file path."""
    source = Path(source)
    return str(source / name) if source.is_dir() else f"{source}:{name}"
