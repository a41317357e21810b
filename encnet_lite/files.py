"""Files written whole or not at all: the library's one atomic writer and its temporaries.

Every file the library writes (checkpoints, run logs, evaluation reports, prediction PNGs,
downloaded weights, prepared datasets, benchmark results) goes through :func:`atomic_write`:
it writes a temporary file ``.{name}.tmp-{pid}`` beside the target, flushes and fsyncs it,
then renames it over the target, so a reader sees the old file or the new one, never half of
one. A failed write is one :class:`~encnet_lite.errors.FileWriteError` naming the cause and
the fix. :func:`stale_temporaries` finds the temporary files of writers killed between write
and rename. This module imports only :mod:`encnet_lite.errors`, so any module can use it.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, List, Optional, Union

from .errors import FileWriteError, one_line

PathLike = Union[str, Path]
TMP_MARK = ".tmp-"  # temporary names are ``.{name}.tmp-{pid}``: see :func:`stale_temporaries`


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file, then rename it over ``path``.

    The temporary file ``.{name}.tmp-{pid}`` lives in the same folder (a rename across file
    systems would not be atomic), is flushed and fsynced, then ``os.replace``-d over ``path``:
    readers see the old file or the new one, never half of one. If anything fails (a full
    disk, a folder turned read-only, Ctrl-C) the temporary file is removed where it can be,
    the previous ``path`` is untouched, and a one-line :class:`FileWriteError` names the
    first cause (KeyboardInterrupt and SystemExit pass through).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        left = _remove_quietly(tmp)  # a cleanup failure must not hide ``exc``
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise write_error(path, exc, left) from exc
    _fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, obj: Any, indent: Optional[int] = 2) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def write_error(path: Path, exc: BaseException, left: Optional[Path] = None) -> FileWriteError:
    """One line: what failed while writing ``path``, that the old file is intact, the fix."""
    try:
        free_mib: Optional[float] = shutil.disk_usage(_existing(path.parent)).free / 2**20
    except OSError:
        free_mib = None
    code = exc.errno if isinstance(exc, OSError) else None
    # torch's zip writer reports a full disk as RuntimeError("... unexpected pos ...").
    if code == errno.ENOSPC or (free_mib is not None and free_mib < 64):
        why, fix = "disk full", "free some space, then run the command again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = f"no permission to write ({exc.strerror})"
        fix = f"make {path.parent} writable, or write somewhere else"
    else:
        why, fix = f"{type(exc).__name__}: {one_line(exc)}", "run the command again"
    free = "" if free_mib is None else f", {free_mib:.0f} MiB free"
    kept = f"; the temporary file {left} could not be removed: delete it" if left else ""
    return FileWriteError(f"{why} while writing {path}{free}; the previous file there (if "
                          f"any) is intact{kept}. Fix: {fix}")


def stale_temporaries(folder: PathLike) -> List[Path]:
    """Temporary files of :func:`atomic_write` in ``folder`` whose writer process is gone
    (a kill between write and rename leaves them; a checkpoint's can be hundreds of MB)."""
    stale = []
    for p in Path(folder).glob(f".*{TMP_MARK}*"):
        pid = p.name.rsplit(TMP_MARK, 1)[1]
        if p.is_file() and pid.isdigit() and not pid_alive(int(pid)):
            stale.append(p)
    return stale


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a temporary file's writer,
    a run folder's lock holder)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _remove_quietly(tmp: Path) -> Optional[Path]:
    """Delete ``tmp``; returns it if it could not be deleted (e.g. the folder is read-only)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        return tmp if tmp.exists() else None
    return None


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing parent (disk_usage needs a path that exists)."""
    return next((p for p in (folder, *folder.parents) if p.exists()), Path("."))


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX only; a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
