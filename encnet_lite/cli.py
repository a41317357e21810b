"""What every command line here shares: one-line errors and checks done before long work.

A misuse (a bad flag value, an output that cannot be written, a checkpoint that is not one)
ends with exit status 2 and one line on stderr, ``PROG: error: <problem>; <fix>``, never a
traceback. :func:`run` wraps a command's body to that effect: it catches the library's one
base class, :class:`~encnet_lite.errors.EncnetError`, so that any other exception (a bug)
keeps its traceback. The ``check_*`` functions raise :class:`UsageError` early, so that no
evaluation runs for an hour and then fails to write its result. The dataset preparation
scripts share their options and their runner here too (:func:`prepare_parser`,
:func:`run_prepare`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, NoReturn, Optional, Union

from . import errors

PathLike = Union[str, Path]
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(errors.EncnetError, ValueError):
    """A command-line misuse; the message names the problem and the fix."""


def error(prog: str, exc: Union[BaseException, str]) -> int:
    """Print ``PROG: error: MESSAGE`` (one line) to stderr; return exit status 2."""
    message = exc if isinstance(exc, str) else errors.one_line(exc)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(prog: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status; an :class:`~encnet_lite.errors.EncnetError` (bad input)
    becomes one line and status 2, Ctrl-C status 130. Any other exception is a bug and keeps
    its traceback; ``ENCNET_TRACEBACK=1`` shows the traceback of a library error too."""
    try:
        return body()
    except errors.EncnetError as exc:
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
    from .files import TMP_MARK
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


# --------------------------------------------------------------------------- prepare scripts


def prepare_parser(prog: str, description: str, root: str) -> argparse.ArgumentParser:
    """The options every ``prepare_*`` script shares (one name per idea, the same keyword
    in :func:`~encnet_lite.data.prepare_pcontext.prepare_pcontext` and its siblings:
    ``--download-dir``/``download_dir``, ``--skip-download``/``skip_download``,
    ``--no-verify``/``verify=False``, ``--quiet``/``progress=False``, ``--force``); each
    script adds its own after these."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--root", default=root, help="output folder")
    parser.add_argument("--download-dir", default=None,
                        help="where the upstream archives are (or go); default ROOT/downloads. "
                             "Files fetched by hand, or their extracted folders, work too.")
    parser.add_argument("--skip-download", action="store_true",
                        help="never download; fail with instructions if a file is missing")
    parser.add_argument("--force", action="store_true", help="redo every step")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="warn instead of failing on a checksum mismatch")
    parser.add_argument("--quiet", dest="progress", action="store_false",
                        help="no progress bars")
    return parser


def prepare_flags(args: argparse.Namespace) -> dict:
    """The keyword arguments :func:`prepare_parser`'s options give every ``prepare_*``
    function: ``download_dir``, ``skip_download``, ``force``, ``verify``, ``progress``."""
    return {name: getattr(args, name)
            for name in ("download_dir", "skip_download", "force", "verify", "progress")}


def run_prepare(prog: str, step: Callable[[], object],
                args: Optional[argparse.Namespace] = None) -> int:
    """Run a prepare step for a CLI: exit status 0; 2 with one line on stderr for a misuse
    (an output folder that cannot be written, checked before any download); 1 with one
    line for data that cannot be prepared (missing offline, corrupt, hostile: an
    :class:`~encnet_lite.errors.EncnetError`). Other exceptions (bugs) keep their traceback."""
    try:
        if args is not None:
            check_writable_dir(args.root, "--root")
            if args.download_dir and not args.skip_download:
                check_writable_dir(args.download_dir, "--download-dir")
    except UsageError as err:
        return error(prog, err)
    try:
        step()
    except errors.EncnetError as err:
        if os.environ.get("ENCNET_TRACEBACK", "") not in ("", "0"):
            raise
        error(prog, err)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; a rerun continues where this one stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
