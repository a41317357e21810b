"""What every command line here shares: one-line errors and checks done before long work.

A misuse (a bad flag value, an output that cannot be written, a checkpoint that is not one)
ends with exit status 2 and one line on stderr, ``PROG: error: <problem>; <fix>``, never a
traceback. :func:`run` wraps a command's body to that effect; the ``check_*`` functions
raise :class:`UsageError` early, so that no evaluation runs for an hour and then fails to
write its result.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, NoReturn, Optional, Tuple, Type, Union

import torch

PathLike = Union[str, Path]
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A command-line misuse; the message names the problem and the fix."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (indented follow-up lines joined with spaces)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError):  # str(KeyError('x')) is "'x'": say what it is
        text = f"missing key {text}"
    return re.sub(r"\s*\n\s*", " ", text).strip()


def error(prog: str, exc: Union[BaseException, str]) -> int:
    """Print ``PROG: error: MESSAGE`` (one line) to stderr; return exit status 2."""
    message = exc if isinstance(exc, str) else one_line(exc)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def known_errors() -> Tuple[Type[BaseException], ...]:
    """The error types a command reports in one line: the library's own (data, checkpoint,
    run folder, download), plus the built-in ones its checks raise."""
    from .checkpoint import CheckpointError
    from .data.common import DataError, DatasetNotFoundError
    from .data.download import DownloadError
    from .models.backbones import WeightsError
    from .runfolder import RunFolderError

    return (UsageError, DataError, DatasetNotFoundError, CheckpointError, RunFolderError,
            DownloadError, WeightsError, FileNotFoundError, PermissionError, NotADirectoryError,
            IsADirectoryError, FileExistsError, ValueError, FloatingPointError)


def run(prog: str, body: Callable[[], int],
        errors: Optional[Iterable[Type[BaseException]]] = None) -> int:
    """``body()``'s exit status; a known error (see :func:`known_errors`) becomes one line
    and status 2, Ctrl-C status 130. Other exceptions (bugs) keep their traceback, and so
    does every error when ``ENCNET_TRACEBACK=1`` (a ``ValueError`` from deep inside the
    library is reported in one line otherwise: set it to see where it came from)."""
    try:
        return body()
    except tuple(errors or known_errors()) as exc:
        if os.environ.get("ENCNET_TRACEBACK", "") not in ("", "0"):
            raise
        return error(prog, exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --------------------------------------------------------------------------- argument checks


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a one-line error (no usage block): ``PROG: error: MESSAGE
    (PROG --help lists the options)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} ({self.prog} --help lists the "
                              "options)\n")


def positive_int(text: str) -> int:
    """argparse ``type`` for a count >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type`` for a count >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is below {low}; give {low} or more")
    return value


def check_threads(threads: int, flag: str = "--threads") -> None:
    """0 (torch's default) or a positive thread count."""
    if not isinstance(threads, int) or threads < 0:
        raise UsageError(f"{flag} {threads}: give a positive thread count, or 0 for torch's "
                         "default")


def check_device(name: str, flag: str = "--device") -> torch.device:
    """The device ``name`` means (see :func:`encnet_lite.engine.resolve_device`), or a
    :class:`UsageError` for one that does not exist here or cannot train and evaluate."""
    from .engine import resolve_device

    fix = "use auto, cpu or cuda (cuda:N for the N-th GPU)"
    try:
        device = resolve_device(name)
    except RuntimeError as exc:  # torch's 'Expected one of cpu, cuda, ...' or no GPU
        why = ("not a device type torch knows" if "Expected one of" in str(exc)
               else one_line(exc))
        raise UsageError(f"{flag} {name}: {why}; {fix}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{flag} {name}: this library runs models on cpu, cuda or mps, "
                         f"not {device.type}; {fix}")
    if device.type == "cuda" and (not torch.cuda.is_available() or (
            device.index is not None and device.index >= torch.cuda.device_count())):
        raise UsageError(f"{flag} {name}: no such CUDA GPU is visible "
                         f"({torch.cuda.device_count()} found); {fix}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{flag} {name}: MPS is not available here; {fix}")
    return device


# --------------------------------------------------------------------------- output checks


def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_writable_dir(path: PathLike, flag: str = "--out") -> Path:
    """``path`` can be (or is) a folder this process may write into; else :class:`UsageError`
    (a file in its place or on its way, or no write permission)."""
    path = Path(path).expanduser()
    if not str(path).strip():
        raise UsageError(f"{flag} is empty: name a folder, e.g. {flag} runs/exp1")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder: give a folder path")
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise UsageError(f"{flag} {path}: {base} is a file, so no folder can be made under "
                         "it; give another path")
    try:  # a real write, not os.access: that one says yes to root on a read-only mount
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {base} ({exc.strerror or exc}); "
                         "give a folder you can write to") from None
    return path


def check_writable_file(path: PathLike, flag: str = "--out",
                        inputs: Iterable[PathLike] = ()) -> Path:
    """``path`` can be written as a file and is none of ``inputs`` (an output that would
    replace its own input, e.g. the checkpoint being evaluated); else :class:`UsageError`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name, e.g. "
                         f"{path / 'result.json'}")
    for source in inputs:
        if same_file(path, source):
            raise UsageError(f"{flag} {path} is the input {source} itself: writing it would "
                             "destroy the input; give another file name")
    check_keeps_runs(path, flag, inputs)
    check_writable_dir(path.parent, f"{flag} {path}: its folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path} is read-only; give a file you can write")
    return path


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file (links and ``..`` resolved)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def check_keeps_runs(path: PathLike, flag: str = "--out",
                     inputs: Iterable[PathLike] = ()) -> Path:
    """``path`` replaces no file of a training run; else :class:`UsageError`.

    Refused: a run folder's own files (``RUN_FILES``, the lock, a writer's temporary file)
    and any ``*.pt`` name in a folder that holds a run or one of ``inputs`` (the checkpoint
    being read), and an existing checkpoint anywhere (by suffix, or a file ``torch.save``
    wrote: a zip holding ``data.pkl``, or the legacy pickle format).
    """
    from .checkpoint import TMP_MARK
    from .runfolder import LOCK, RUN_FILES, holds_run

    path = Path(path).expanduser()
    folder, name = path.parent, path.name.casefold()  # casefold: macOS, Windows
    run_dir = holds_run(folder) or any(same_file(folder, Path(s).expanduser().parent)
                                       for s in inputs)
    run_file = (name in {n.casefold() for n in (*RUN_FILES, LOCK)} or name.endswith(
        CHECKPOINT_SUFFIXES) or (name.startswith(".") and TMP_MARK in name))
    if run_dir and run_file:
        raise UsageError(f"{flag} {path}: {folder} holds a training run or the checkpoint, and "
                         f"{path.name} would replace (or pose as) one of the run's files; give "
                         "another file name or folder")
    if is_checkpoint_file(path):
        raise UsageError(f"{flag} {path} is a checkpoint: writing it would destroy it; give "
                         "another file name")
    return path


def is_checkpoint_file(path: Path) -> bool:
    """Whether ``path`` is an existing file that holds (or is named as) a checkpoint."""
    import zipfile

    if not path.is_file():
        return False
    if path.name.casefold().endswith(CHECKPOINT_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"\x80\x02\x8a"):  # torch's legacy format: pickle + magic number
            return True
        if head == b"PK\x03\x04":  # torch's zip format: ARCHIVE/data.pkl
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return False
