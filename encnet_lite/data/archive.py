"""Read upstream files from a tar archive or from the folder it was extracted into.

A *source* is a path: a ``.tar``/``.tar.gz``/``.tgz`` file, or a directory holding the
archive's extracted contents. Member names are the archive's relative paths with ``/``.
Iteration streams the archive once, so a 1.4 GB ``.tgz`` is never decompressed twice.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Tuple

from .common import PathLike


def _clean(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def iter_files(source: PathLike, want: Callable[[str], bool]) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for every regular file whose name satisfies ``want``."""
    source = Path(source)
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            name = path.relative_to(source).as_posix()
            if path.is_file() and want(name):
                yield name, path.read_bytes()
        return
    try:
        with tarfile.open(source, "r|*") as tar:  # stream mode: one sequential pass
            for member in tar:
                name = _clean(member.name)
                if member.isfile() and want(name):
                    f = tar.extractfile(member)
                    yield name, f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"cannot read archive {source}: {err} (corrupt or incomplete? delete "
                         f"it and run again)") from err


def read_files(source: PathLike, names: Iterable[str]) -> Dict[str, bytes]:
    """Read the named members (small files, e.g. split lists); missing ones are left out."""
    wanted = set(names)
    source = Path(source)
    if source.is_dir():
        return {n: (source / n).read_bytes() for n in wanted if (source / n).is_file()}
    found: Dict[str, bytes] = {}
    try:
        # Random-access mode: on an uncompressed .tar it seeks past member data, and it stops
        # as soon as every wanted member was seen.
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                name = _clean(member.name)
                if member.isfile() and name in wanted:
                    f = tar.extractfile(member)
                    found[name] = f.read() if f is not None else b""
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"cannot read archive {source}: {err} (corrupt or incomplete? delete "
                         f"it and run again)") from err
    return found


def describe(source: PathLike, name: str) -> str:
    """How to name a member in an error message: ``archive.tar:member`` or the file path."""
    source = Path(source)
    return str(source / name) if source.is_dir() else f"{source}:{name}"
