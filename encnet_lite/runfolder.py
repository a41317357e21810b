"""The run folder: which runs may start in it, one trainer at a time, and its files.

:func:`open_run` enforces the rules before anything is written:

- a new run starts in a new or empty folder; one that holds a run (any of
  :data:`RUN_FILES`) is refused unless the run is resumed or explicitly overwritten, and one
  that holds other files (``--out .`` in a project, ``--out ""``) is refused; a run that
  stopped before it saved any checkpoint (only ``config.json`` and logs) is started afresh;
- resuming a path that holds no ``last.pt`` is an error, not a silent fresh start, and the
  error says what does work there (a plain run, or ``--overwrite``);
- ``--overwrite`` removes nothing until the new run has started: the old run's files and
  its evaluation reports (``best.eval*.json``) go only once the new run's setup (config,
  data, model, optimizer) has succeeded, so a bad flag value loses nothing;
- a lock file (``train.lock``: pid and host) keeps a second trainer out; the lock of a
  process that no longer runs on this host is stale and taken over;
- temporary files a killed writer left behind are removed.

:class:`RunFolder` then writes ``config.json``, ``metrics.jsonl``, ``iterations.jsonl``
and the checkpoints, every rewrite through :func:`encnet_lite.files.atomic_write`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import checkpoint as ckpt_io
from .errors import EncnetError, FileWriteError
from .files import (
    TMP_MARK,
    pid_alive,
    stale_temporaries,
    write_error,
    write_json_atomic,
    write_text_atomic,
)
from .presets import nest

RUN_FILES = ("config.json", "metrics.jsonl", "iterations.jsonl", "last.pt", "best.pt")
LOCK = "train.lock"
PathLike = Union[str, Path]
ResumeArg = Union[None, bool, str, Path]


class RunFolderError(EncnetError, RuntimeError):
    """The run folder cannot be used as asked (the message says why and what to pass)."""


def check_out(out: PathLike) -> Path:
    """``out`` as a Path; refuses the empty name, the current folder and a file."""
    if not str(out).strip():
        raise RunFolderError("--out is empty: name a folder for the run, e.g. --out runs/exp1")
    path = Path(out)
    if path.resolve() == Path.cwd().resolve():
        raise RunFolderError(f"--out {out} is the current folder: give the run its own "
                             "folder, e.g. --out runs/exp1")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder")
    return path


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def is_eval_report(name: str) -> bool:
    """``encnet-eval``'s files beside a checkpoint: ``best.eval.json``,
    ``best.eval-ms.json`` and their ``.partial`` states."""
    return ".eval" in name and (name.endswith(".json") or name.endswith(".json.partial"))


def foreign_files(path: Path) -> List[str]:
    """Entries of ``path`` a training run does not write (evaluation reports count as the
    run's: ``encnet-eval`` writes ``best.eval.json`` next to the checkpoint)."""
    if not path.is_dir():
        return []
    ours = set(RUN_FILES) | {LOCK}
    return sorted(p.name for p in path.iterdir() if p.name not in ours
                  and not (p.name.startswith(".") and ".tmp" in p.name)
                  and not is_eval_report(p.name))


def old_run_files(path: Path) -> List[Path]:
    """What ``--overwrite`` removes: the run's files and the evaluation reports of its
    checkpoints (a report beside the new best.pt would describe other weights)."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir()
                  if p.is_file() and (p.name in RUN_FILES or is_eval_report(p.name)))


def _run_config(path: Path) -> Optional[Dict[str, Any]]:
    """``path/config.json`` if it is a training config (a dict naming a model and a dataset;
    the flat config of earlier versions too)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(config, dict) and all(isinstance(nest(config).get(k), str)
                                          for k in ("arch", "backbone", "dataset"))
    return config if ok else None


def read_config_name(path: Path) -> Optional[str]:
    """The ``name`` (preset) in ``path/config.json``, if it is a training config."""
    config = _run_config(path)
    name = config.get("name") if config else None
    return name if isinstance(name, str) else None


def unsaved_run(path: Path) -> bool:
    """Whether ``path`` holds a run that stopped before its first checkpoint: its own
    config.json and logs, no last.pt or best.pt, nothing else (a plain run restarts it)."""
    if not holds_run(path) or any((path / n).exists() for n in ("last.pt", "best.pt")):
        return False
    has_config = (path / "config.json").exists()
    return not foreign_files(path) and (not has_config or _run_config(path) is not None)


def nothing_to_resume(resume: PathLike, folder: Path,
                      restart: str = "run the same command without --resume") -> str:
    """The error for resuming ``folder``, which holds no last.pt: what works instead."""
    if (folder / "best.pt").exists():
        return (f"--resume {resume}: nothing to resume there (no last.pt; best.pt holds "
                "weights only, from a run stopped before its first full checkpoint): pass "
                "--overwrite instead of --resume to start afresh (best.pt goes), or train in "
                "another --out to keep it")
    if unsaved_run(folder):
        return (f"--resume {resume}: nothing to resume there (the run stopped before its "
                f"first checkpoint, so there is no last.pt): {restart} to start it afresh")
    return f"--resume {resume}: nothing to resume there (no last.pt); drop --resume to start " \
        "a new run"


def resume_source(path: Path, resume: ResumeArg) -> Optional[Path]:
    """The ``last.pt`` to continue, or None for a new run.

    ``resume``: None/False (a new run); True or ``"auto"`` (``path/last.pt`` if there is
    one, else a new run: a chapter run again continues); a checkpoint or run folder
    (which must hold a ``last.pt``).
    """
    if resume is None or resume is False:
        return None
    if resume is True or resume == "auto":
        last = path / "last.pt"
        return last if last.is_file() else None
    source = Path(resume)
    if source.is_dir():
        source = source / "last.pt"
    if not source.is_file():
        folder = source.parent if source.name == "last.pt" else Path(resume)
        raise RunFolderError(nothing_to_resume(resume, folder))
    return source


def check_start(path: Path, source: Optional[Path], resume: ResumeArg,
                overwrite: bool) -> bool:
    """Raise :class:`RunFolderError` if this run may not start in ``path``; return whether
    the run files already there are to be removed first (a replaced run)."""
    if overwrite and resume not in (None, False):
        raise RunFolderError("give --resume or --overwrite, not both")
    continues = source is not None and source.parent.resolve() == path.resolve()
    if continues:
        return False
    if holds_run(path):
        auto = resume is True or resume == "auto"  # nothing saved yet to continue
        if overwrite or unsaved_run(path) or (auto and not (path / "last.pt").exists()):
            return True
        if (path / "last.pt").exists():
            raise RunFolderError(f"{path} holds a training run: pass --resume to continue it "
                                 "or --overwrite to replace it")
        if (path / "best.pt").exists():
            raise RunFolderError(f"{path} holds a run with best.pt but no last.pt (it stopped "
                                 "before its first full checkpoint), so it cannot be resumed: "
                                 "pass --overwrite to start afresh (best.pt goes), or train in "
                                 "another --out to keep it")
    others = foreign_files(path)
    if others:
        raise RunFolderError(f"{path} holds files that are not a training run ({others[0]}, "
                             f"...): give the run a new or empty folder with --out")
    if holds_run(path):  # a config.json that is not a run's
        raise RunFolderError(f"{path / 'config.json'} is not an encnet_lite run's config: give "
                             "the run a new or empty folder with --out, or pass --overwrite")
    return False


# --- the lock ------------------------------------------------------------------------------


def acquire_lock(path: Path) -> Path:
    """Create ``path/train.lock`` (pid and host of this process), taking over a stale one.

    The lock is written to a temporary file and hard-linked into place, which fails if the
    lock exists: two trainers starting at once cannot both get it, and it is never half
    written.
    """
    lock = path / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    tmp = write_json_atomic(path / f".{LOCK}{TMP_MARK}{os.getpid()}", me)
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)
                return lock
            except FileExistsError:
                holder = read_lock(lock)
                if not lock_is_stale(holder):
                    raise RunFolderError(_locked_message(path, holder)) from None
                if holder is None and lock.exists():
                    print(f"note: {lock} names no trainer (not a pid and host: edited or "
                          "damaged), so no trainer holds it; it is replaced", file=sys.stderr)
                lock.unlink(missing_ok=True)  # a trainer that died without cleaning up
    finally:
        tmp.unlink(missing_ok=True)
    raise RunFolderError(f"could not take the lock {lock}; is another trainer starting?")


def read_lock(lock: Path) -> Optional[Dict[str, Any]]:
    """The lock's ``{"pid": int, "host": str}``; None if it is unreadable or not of that form
    (``{"pid": null}``): :func:`acquire_lock` writes no such lock, so no trainer holds it."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(holder, dict) and isinstance(holder.get("host"), str)
          and isinstance(holder.get("pid"), int) and not isinstance(holder["pid"], bool))
    return holder if ok else None


def lock_is_stale(holder: Optional[Mapping[str, Any]]) -> bool:
    """A lock is stale when its process is gone (checked only for locks of this host)."""
    if holder is None:  # unreadable: not written by the link above, so no trainer's
        return True
    same_host = holder.get("host") == socket.gethostname()
    return same_host and not pid_alive(int(holder["pid"]))


def _locked_message(path: Path, holder: Mapping[str, Any]) -> str:
    return (f"{path} is in use by another trainer (pid {holder.get('pid')} on "
            f"{holder.get('host')}); wait for it, or delete {path / LOCK} if no trainer runs")


def release_lock(path: Path) -> None:
    """Remove the lock if this process holds it."""
    lock = path / LOCK
    holder = read_lock(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> List[Path]:
    """Delete the temporary files of writers that are gone; returns them."""
    stale = stale_temporaries(path)
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# --- the folder ----------------------------------------------------------------------------


@dataclass
class RunFolder:
    """The files of one run. ``active=False`` (a non-main process under torchrun): every
    method does nothing, so the training loop needs no rank checks. ``replace``: the old
    run's files (:func:`old_run_files`) are removed by :meth:`start`, not before."""

    path: Path
    active: bool = True
    replace: bool = False
    _step_log: Optional[IO[str]] = None

    def start(self, config: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
              iteration: int) -> None:
        """The run has started (its setup succeeded): remove a replaced run, then write
        ``config.json`` and the logs as of ``iteration`` (steps a crash logged after the
        checkpoint are dropped: the resumed run logs them again)."""
        if not self.active:
            return
        with self._writing("config.json"):
            if self.replace:
                for old in old_run_files(self.path):
                    old.unlink(missing_ok=True)
                self.replace = False
            write_json_atomic(self.path / "config.json", dict(config))
            self.write_history(history)
            steps = [r for r in read_jsonl(self.path / "iterations.jsonl")
                     if r["iteration"] <= iteration] if iteration else []
            write_text_atomic(self.path / "iterations.jsonl", _jsonl(steps))
            self._step_log = open(self.path / "iterations.jsonl", "a")

    def log_step(self, record: Mapping[str, Any]) -> None:
        if self._step_log is not None:
            with self._writing("iterations.jsonl"):
                self._step_log.write(json.dumps(record) + "\n")
                self._step_log.flush()

    def write_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        if self.active:
            with self._writing("metrics.jsonl"):
                write_text_atomic(self.path / "metrics.jsonl", _jsonl(history))

    def save(self, name: str, ckpt: Mapping[str, Any]) -> None:
        """Save ``last.pt`` or ``best.pt`` atomically."""
        if self.active:
            with self._writing(name):
                ckpt_io.save_atomic(dict(ckpt), self.path / name)

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """A failed write (full disk, read-only folder) becomes one
        :class:`~encnet_lite.errors.FileWriteError` that also says how to go on with
        this run afterwards (nested writes add it once)."""
        try:
            yield
        except FileWriteError as exc:
            if getattr(exc, "run_advice", False):
                raise
            raise _with_advice(str(exc), self.path) from exc
        except OSError as exc:  # the step log is appended to, not written atomically
            raise _with_advice(str(write_error(self.path / name, exc)),
                               self.path) from exc

    def close(self) -> None:
        if self._step_log is not None:
            self._step_log.close()
            self._step_log = None
        if self.active:
            release_lock(self.path)


def _with_advice(message: str, path: Path) -> FileWriteError:
    """``message`` and how this run goes on once the cause is fixed (by what it holds)."""
    if (path / "last.pt").is_file():
        advice = "For this run, that means --resume: it continues from its last.pt."
    elif (path / "best.pt").is_file():
        advice = ("This run saved no last.pt yet, so not --resume: rerun it with --overwrite "
                  "(its best.pt holds weights only).")
    else:
        advice = ("This run saved no last.pt yet, so not --resume: the same command without "
                  "--resume starts it afresh.")
    error = FileWriteError(f"{message} {advice}")
    error.run_advice = True  # type: ignore[attr-defined]
    return error


def open_run(out: PathLike, resume: ResumeArg = None, overwrite: bool = False,
             active: bool = True) -> Tuple[RunFolder, Optional[Path]]:
    """Check the rules, take the lock, clean up; returns ``(RunFolder, last.pt to resume or
    None)``. ``active=False``: only find the checkpoint (the other processes of a run).
    Nothing of a replaced run is removed here: :meth:`RunFolder.start` does it."""
    path = check_out(out)
    source = resume_source(path, resume)
    if not active:
        return RunFolder(path, active=False), source
    replace = check_start(path, source, resume, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    acquire_lock(path)
    try:
        remove_stale_temporaries(path)
    except BaseException:
        release_lock(path)
        raise
    return RunFolder(path, replace=replace), source


def best_action(path: Path, state: ckpt_io.TrainState) -> str:
    """What a resumed run does about ``best.pt`` given ``last.pt``'s ``state``: ``"keep"``
    (it holds epoch ``state.best_epoch``, or there is no best yet and no best.pt),
    ``"rebuild"`` (it is missing or holds another epoch, and last.pt's weights are those
    of the best epoch: a crash came between the two writes), ``"reset"`` (it cannot be
    rebuilt: forget the best, so that the next validated epoch writes a new best.pt)."""
    exists = (path / "best.pt").exists()
    if state.best_epoch == 0:
        return "reset" if exists else "keep"
    try:
        saved_epoch = ckpt_io.load(path / "best.pt").get("epoch") if exists else None
    except ckpt_io.CheckpointError:  # a torn or foreign file
        saved_epoch = None
    if saved_epoch == state.best_epoch:
        return "keep"
    best = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    return "rebuild" if best.get("iteration") == state.iteration else "reset"


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """The records of a log; a torn last line (the process was killed mid-write) is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _jsonl(records: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)
