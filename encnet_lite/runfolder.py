"""The run folder: which runs may start in it, one trainer at a time, and its files.

:func:`open_run` enforces the rules before anything is written:

- a new run starts in a new or empty folder; one that holds a run (any of
  :data:`RUN_FILES`) is refused unless the run is resumed or explicitly overwritten, and one
  that holds other files (``--out .`` in a project, ``--out ""``) is refused;
- resuming a path that holds no ``last.pt`` is an error, not a silent fresh start;
- a lock file (``train.lock``: pid and host) keeps a second trainer out; the lock of a
  process that no longer runs on this host is stale and taken over;
- temporary files a killed writer left behind are removed.

:class:`RunFolder` then writes ``config.json``, ``metrics.jsonl``, ``iterations.jsonl``
and the checkpoints, every rewrite through :func:`encnet_lite.checkpoint.atomic_write`.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import checkpoint as ckpt_io

RUN_FILES = ("config.json", "metrics.jsonl", "iterations.jsonl", "last.pt", "best.pt")
LOCK = "train.lock"
PathLike = Union[str, Path]
ResumeArg = Union[None, bool, str, Path]


class RunFolderError(RuntimeError):
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


def foreign_files(path: Path) -> List[str]:
    """Entries of ``path`` a training run does not write (evaluation reports count as the
    run's: ``encnet-eval`` writes ``best.eval.json`` next to the checkpoint)."""
    if not path.is_dir():
        return []
    ours = set(RUN_FILES) | {LOCK}
    return sorted(p.name for p in path.iterdir() if p.name not in ours
                  and not (p.name.startswith(".") and ".tmp" in p.name)
                  and not (p.suffix == ".json" and ".eval" in p.name))


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
        raise FileNotFoundError(f"--resume {resume}: nothing to resume there (no last.pt); "
                                "drop --resume to start a new run")
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
        if not (overwrite or (auto and not (path / "last.pt").exists())):
            raise RunFolderError(f"{path} holds a training run: pass --resume to continue it "
                                 "or --overwrite to replace it")
        return True
    others = foreign_files(path)
    if others:
        raise RunFolderError(f"{path} holds files that are not a training run ({others[0]}, "
                             f"...): give the run a new or empty folder with --out")
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
    tmp = ckpt_io.write_json_atomic(path / f".{LOCK}{ckpt_io.TMP_MARK}{os.getpid()}", me)
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)
                return lock
            except FileExistsError:
                holder = read_lock(lock)
                if not lock_is_stale(holder):
                    raise RunFolderError(_locked_message(path, holder)) from None
                lock.unlink(missing_ok=True)  # a trainer that died without cleaning up
    finally:
        tmp.unlink(missing_ok=True)
    raise RunFolderError(f"could not take the lock {lock}; is another trainer starting?")


def read_lock(lock: Path) -> Optional[Dict[str, Any]]:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def lock_is_stale(holder: Optional[Mapping[str, Any]]) -> bool:
    """A lock is stale when its process is gone (checked only for locks of this host)."""
    if holder is None:  # unreadable: not written by the link above, so no trainer's
        return True
    same_host = holder.get("host") == socket.gethostname()
    return same_host and not ckpt_io.pid_alive(int(holder.get("pid", -1)))


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
    stale = ckpt_io.stale_temporaries(path)
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# --- the folder ----------------------------------------------------------------------------


@dataclass
class RunFolder:
    """The files of one run. ``active=False`` (a non-main process under torchrun): every
    method does nothing, so the training loop needs no rank checks."""

    path: Path
    active: bool = True
    _step_log: Optional[IO[str]] = None

    def start(self, config: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
              iteration: int) -> None:
        """Write ``config.json`` and the logs as of ``iteration`` (steps a crash logged
        after the checkpoint are dropped: the resumed run logs them again)."""
        if not self.active:
            return
        ckpt_io.write_json_atomic(self.path / "config.json", dict(config))
        self.write_history(history)
        steps = [r for r in read_jsonl(self.path / "iterations.jsonl")
                 if r["iteration"] <= iteration] if iteration else []
        ckpt_io.write_text_atomic(self.path / "iterations.jsonl", _jsonl(steps))
        self._step_log = open(self.path / "iterations.jsonl", "a")

    def log_step(self, record: Mapping[str, Any]) -> None:
        if self._step_log is not None:
            self._step_log.write(json.dumps(record) + "\n")
            self._step_log.flush()

    def write_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        if self.active:
            ckpt_io.write_text_atomic(self.path / "metrics.jsonl", _jsonl(history))

    def save(self, name: str, ckpt: Mapping[str, Any]) -> None:
        """Save ``last.pt`` or ``best.pt`` atomically."""
        if self.active:
            ckpt_io.save_atomic(dict(ckpt), self.path / name)

    def close(self) -> None:
        if self._step_log is not None:
            self._step_log.close()
            self._step_log = None
        if self.active:
            release_lock(self.path)


def open_run(out: PathLike, resume: ResumeArg = None, overwrite: bool = False,
             active: bool = True) -> Tuple[RunFolder, Optional[Path]]:
    """Check the rules, take the lock, clean up; returns ``(RunFolder, last.pt to resume or
    None)``. ``active=False``: only find the checkpoint (the other processes of a run)."""
    path = check_out(out)
    source = resume_source(path, resume)
    if not active:
        return RunFolder(path, active=False), source
    replace = check_start(path, source, resume, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    acquire_lock(path)
    try:
        remove_stale_temporaries(path)
        if replace:
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
    except BaseException:
        release_lock(path)
        raise
    return RunFolder(path), source


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
