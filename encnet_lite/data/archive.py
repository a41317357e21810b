"""Read upstream files from a tar archive or from the folder it was extracted into.

A *source* is a path: a ``.tar``/``.tar.gz``/``.tgz`` file, or a directory holding the
archive's extracted contents. Member names are the archive's relative paths with ``/``.
Iteration streams the archive once, so a 1.4 GB ``.tgz`` is never decompressed twice, and
holds one member at a time, read in chunks up to a size limit (``ENCNET_MAX_MEMBER_BYTES``,
default 64 MiB): a small archive with a huge member cannot exhaust memory.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import IO, Callable, Dict, Iterable, Iterator, Optional, Tuple

from .common import MEMBER_BYTES_ENV, DataError, PathLike, max_member_bytes, too_large

CHUNK = 1 << 20


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


def _dir_files(source: Path) -> Iterator[Tuple[str, Path]]:
    """``(name, path)`` of the regular files under an extracted folder; a link to a file
    outside it is an error (it could copy any file of this machine into the dataset)."""
    root = source.resolve()
    for path in sorted(source.rglob("*")):
        if path.is_symlink() and path.is_file() and not path.resolve().is_relative_to(root):
            raise DataError(f"{path} is a link to {path.resolve()}, outside {source}: "
                            "replace it with the file itself")
        if path.is_file():
            yield path.relative_to(source).as_posix(), path


def _read_path(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return _read_member(f, path.stat().st_size, str(path), limit)


def _archive_error(source: Path, err: BaseException) -> ValueError:
    return ValueError(f"cannot read archive {source}: {err} (corrupt or incomplete? delete it "
                      f"and run again)")


def iter_files(source: PathLike, want: Callable[[str], bool]) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for every regular file whose name satisfies ``want``.

    One member at a time (the archive is streamed, never held whole); a member larger than
    :func:`~encnet_lite.data.common.max_member_bytes` raises :class:`DataError` naming it.
    """
    source, limit = Path(source), max_member_bytes()
    if source.is_dir():
        for name, path in _dir_files(source):
            if want(name):
                yield name, _read_path(path, limit)
        return
    try:
        with tarfile.open(source, "r|*") as tar:  # stream mode: one sequential pass
            for member in tar:
                name = _clean(member.name)
                if member.isfile() and want(name):
                    yield name, _read_member(tar.extractfile(member), member.size,
                                             describe(source, name), limit)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise _archive_error(source, err) from err


def read_files(source: PathLike, names: Iterable[str]) -> Dict[str, bytes]:
    """Read the named members (small files, e.g. split lists); missing ones are left out."""
    wanted, limit = set(names), max_member_bytes()
    source = Path(source)
    if source.is_dir():
        return {n: _read_path(source / n, limit) for n in wanted if (source / n).is_file()}
    found: Dict[str, bytes] = {}
    try:
        # Random-access mode: on an uncompressed .tar it seeks past member data, and it stops
        # as soon as every wanted member was seen.
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                name = _clean(member.name)
                if member.isfile() and name in wanted:
                    found[name] = _read_member(tar.extractfile(member), member.size,
                                               describe(source, name), limit)
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise _archive_error(source, err) from err
    return found


def describe(source: PathLike, name: str) -> str:
    """How to name a member in an error message: ``archive.tar:member`` or the file path."""
    source = Path(source)
    return str(source / name) if source.is_dir() else f"{source}:{name}"
