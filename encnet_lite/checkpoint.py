"""Checkpoints and the one atomic file writer: atomic writes, the checkpoint schema
(:class:`TrainState`), RNG states, finite and compatibility checks on load.

A checkpoint is a plain dict saved with ``torch.save``; it loads with ``weights_only=True``
(only tensors, numbers, strings, lists and dicts inside), so opening one never runs code.

``last.pt`` (:func:`training_checkpoint`): ``format``, ``config`` (``TrainConfig.to_dict()``),
``num_classes``, ``classes``, the state dicts ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``rng`` (one entry per process) and the :class:`TrainState` fields ``epoch``
(completed epochs), ``iteration`` (completed optimizer steps), ``history`` (per-epoch
metrics so far), ``best_miou``, ``best_epoch``, ``epoch_sums``, ``epoch_seconds``.
``best.pt`` (:func:`best_checkpoint`) holds only ``format``, ``config``, ``num_classes``,
``classes``, ``model``, ``epoch``, ``iteration``, ``metrics``: no optimizer, so it is for
evaluation and prediction, not for resuming.
"""
from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .presets import ConfigRangeError, check_ranges

FORMAT = "encnet_lite.checkpoint/1"
PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or does not fit the run that loads it."""


class IncompatibleCheckpointError(CheckpointError, ValueError):
    """The checkpoint was made for another model or another number of classes."""


class NonFiniteError(CheckpointError):
    """A state dict holds NaN or Inf values: saving or evaluating it would mislead."""


TMP_MARK = ".tmp-"  # temporary names are ``.{name}.tmp-{pid}``: see :func:`stale_temporaries`


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file, then rename it over ``path``.

    The temporary file ``.{name}.tmp-{pid}`` lives in the same folder (a rename across file
    systems would not be atomic), is flushed and fsynced, then ``os.replace``-d over ``path``:
    readers see the old file or the new one, never half of one. If anything fails (a full
    disk, a folder turned read-only, Ctrl-C) the temporary file is removed where it can be,
    the previous ``path`` is untouched, and a one-line :class:`CheckpointError` names the
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


def _remove_quietly(tmp: Path) -> Optional[Path]:
    """Delete ``tmp``; returns it if it could not be deleted (e.g. the folder is read-only)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        return tmp if tmp.exists() else None
    return None


def write_error(path: Path, exc: BaseException, left: Optional[Path] = None) -> CheckpointError:
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
        why, fix = f"{type(exc).__name__}: {_one_line(exc)}", "run the command again"
    free = "" if free_mib is None else f", {free_mib:.0f} MiB free"
    kept = f"; the temporary file {left} could not be removed: delete it" if left else ""
    return CheckpointError(f"{why} while writing {path}{free}; the previous file there (if "
                           f"any) is intact{kept}. Fix: {fix}")


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing parent (disk_usage needs a path that exists)."""
    return next((p for p in (folder, *folder.parents) if p.exists()), Path("."))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: PathLike, obj: Any, indent: Optional[int] = 2) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def save_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is never half written."""
    return atomic_write(path, lambda f: torch.save(obj, f))


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
    """Whether a process with this id exists on this machine."""
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


def check_finite(state_dict: Mapping[str, Any], what: str = "state dict") -> None:
    """Raise :class:`NonFiniteError` naming the first floating tensor with NaN or Inf."""
    for name, value in state_dict.items():
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and not bool(torch.isfinite(value).all())):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(f"{what}: tensor {name!r} has {bad} non-finite value(s) "
                                 f"(NaN or Inf) out of {value.numel()}")


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


def load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint dict; a one-line error for a missing, empty, foreign or newer file."""
    path = Path(path)
    if path.is_dir():
        inside = [n for n in ("best.pt", "last.pt") if (path / n).is_file()]
        hint = (f"give the file inside, e.g. {path / inside[0]}" if inside
                else "give a best.pt or last.pt file (this folder holds neither)")
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file: {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: check the path (a run's best.pt "
                                "or last.pt)")
    try:
        with warnings.catch_warnings():  # a hand-made file's sparse tensors are refused below
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, pickle from elsewhere, ...
        raise CheckpointError(f"{path} is not a readable encnet_lite checkpoint: "
                              f"{_unreadable(path, exc)}; use a best.pt or last.pt written "
                              "by encnet-train") from exc
    made_by = ckpt.get("format") if isinstance(ckpt, dict) else None
    if made_by != FORMAT:
        raise CheckpointError(_foreign_message(path, made_by))
    return ckpt


def _unreadable(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` failed, in words (its own messages are empty, "101" or 20 lines)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes): a copy or a write that was cut off"
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        return f"it is not a file torch.save writes (it begins with {head!r})"
    if "weights_only" in str(exc).lower() or "unsupported global" in str(exc).lower():
        return ("it holds Python objects other than tensors, numbers and strings, which are "
                "never loaded (nothing was run)")
    return f"the file ({size} bytes) is cut short or damaged ({_one_line(exc)[:160]})"


def _foreign_message(path: Path, made_by: Any) -> str:
    prefix = FORMAT.rsplit("/", 1)[0] + "/"
    version = made_by[len(prefix):] if isinstance(made_by, str) and \
        made_by.startswith(prefix) else ""
    if version.isdigit() and int(version) > int(FORMAT.rsplit("/", 1)[1]):
        return (f"{path} was written by a newer encnet_lite (format {made_by}; this version "
                f"reads {FORMAT}): upgrade encnet_lite to use it")
    return (f"{path} is not an encnet_lite checkpoint (its 'format' is {made_by!r}, not "
            f"{FORMAT!r}); use a best.pt or last.pt written by encnet-train")


def check_header(ckpt: Mapping[str, Any], path: PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` has what building its model needs: a
    ``config`` dict naming a model with every number in range
    (:data:`encnet_lite.presets.RANGES`), ``num_classes`` >= 1 and a ``model`` state dict
    of dense tensors."""
    problems = []
    config = ckpt.get("config")
    if not isinstance(config, dict):
        problems.append("no 'config' dict")
    elif not isinstance(config.get("model"), str) or not isinstance(config.get("backbone"),
                                                                      str):
        problems.append("a 'config' without 'model' and 'backbone' names")
    n = ckpt.get("num_classes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        problems.append(f"'num_classes' {n!r} (need a count >= 1)")
    problems += _model_problems(ckpt.get("model"))
    if isinstance(config, dict):
        try:
            check_ranges(config)
        except ConfigRangeError as exc:
            problems.append(f"a 'config' value out of range ({exc})")
    if problems:
        raise CheckpointError(f"{path} cannot be used to build its model: "
                              f"{'; '.join(problems)} (edited by hand, or made elsewhere?). "
                              "Use a best.pt or last.pt written by encnet-train (or "
                              "encnet_lite.train.train)")


def _model_problems(state: Any) -> List[str]:
    """What makes ``state`` no state dict of dense tensors (a hand-edited file)."""
    if not isinstance(state, dict):
        return ["no 'model' state dict"]
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            return [f"'model' entry {name!r} is a {type(value).__name__}, not a tensor"]
        if value.layout != torch.strided:
            return [f"'model' tensor {name!r} is {value.layout} (a checkpoint holds dense "
                    "tensors)"]
    return []


def load_training(path: PathLike) -> Dict[str, Any]:
    """Load a checkpoint to resume from (``last.pt``); a clear error for a ``best.pt``."""
    ckpt = load(path)
    if "optimizer" not in ckpt:
        raise CheckpointError(
            f"{path} holds only a model (best.pt keeps no optimizer state), so a run cannot "
            f"resume from it; resume from the run folder {Path(path).parent} (its last.pt)")
    check_header(ckpt, path)
    return ckpt


# --- the checkpoint schema --------------------------------------------------------------

LOSS_KEYS = ("loss", "main", "aux", "se")
STATEFUL = ("model", "optimizer", "scheduler", "scaler")  # objects with state_dict()


def _zero_sums() -> Tensor:
    return torch.zeros(len(LOSS_KEYS), dtype=torch.float64)


@dataclass
class TrainState:
    """The progress of a training run: what ``last.pt`` saves besides the state dicts."""

    epoch: int = 0  # completed epochs
    iteration: int = 0  # completed optimizer steps
    history: List[Dict[str, Any]] = field(default_factory=list)  # one record per epoch
    best_miou: float = float("-inf")
    best_epoch: int = 0  # the epoch whose weights best.pt holds (0: none yet)
    epoch_sums: Tensor = field(default_factory=_zero_sums)  # LOSS_KEYS summed this epoch
    epoch_seconds: float = 0.0  # training time of this epoch so far

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "epoch_sums": self.epoch_sums.clone(),
                "history": list(self.history)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainState:
        best_miou = float(d["best_miou"])
        # Checkpoints from before best_epoch was saved: the first epoch that reached the best.
        best_epoch = d.get("best_epoch", next(
            (r["epoch"] for r in d["history"] if r.get("mIoU") == best_miou), 0))
        return cls(epoch=int(d["epoch"]), iteration=int(d["iteration"]),
                   history=list(d["history"]), best_miou=best_miou, best_epoch=int(best_epoch),
                   epoch_sums=d["epoch_sums"].double(), epoch_seconds=float(d["epoch_seconds"]))

    def improves(self, miou: float) -> bool:
        """Whether a validation score ``miou`` beats the best so far (the first one always)."""
        return self.best_epoch == 0 or math.isnan(self.best_miou) or miou > self.best_miou


def training_checkpoint(header: Mapping[str, Any], state: TrainState,
                        parts: Mapping[str, Any], rng: List[Any]) -> Dict[str, Any]:
    """``last.pt``: ``header`` (``config``, ``num_classes``, ``classes``), the state dicts of
    ``parts`` (:data:`STATEFUL`), every process's RNG states and ``state``."""
    return {"format": FORMAT, **header, **{k: parts[k].state_dict() for k in STATEFUL},
            "rng": rng, **state.to_dict()}


def restore(ckpt: Mapping[str, Any], parts: Mapping[str, Any]) -> TrainState:
    """Load ``ckpt``'s state dicts into ``parts`` (all but the model, which is loaded when it
    is built) and return its :class:`TrainState`."""
    for key in STATEFUL[1:]:
        parts[key].load_state_dict(ckpt[key])
    return TrainState.from_dict(ckpt)


def best_checkpoint(header: Mapping[str, Any], model_state: Mapping[str, Any],
                    state: TrainState) -> Dict[str, Any]:
    """``best.pt``: the weights of epoch ``state.best_epoch`` with that epoch's record."""
    record = next(r for r in state.history if r["epoch"] == state.best_epoch)
    return {"format": FORMAT, **header, "model": model_state, "epoch": state.best_epoch,
            "iteration": record["iteration"], "metrics": record}


def check_compatible(ckpt: Mapping[str, Any], config: Mapping[str, Any],
                     num_classes: int, keys: tuple = ()) -> None:
    """Raise :class:`IncompatibleCheckpointError` if ``ckpt`` was trained for another
    number of classes or with different values of the ``keys`` of ``config``."""
    problems = []
    if ckpt.get("num_classes") != num_classes:
        problems.append(f"num_classes {ckpt.get('num_classes')} != {num_classes}")
    saved = ckpt.get("config", {})
    for key in keys:
        if key in saved and saved[key] != config.get(key):
            problems.append(f"{key} {saved[key]!r} != {config.get(key)!r}")
    if problems:
        raise IncompatibleCheckpointError(
            "checkpoint does not match this run: " + "; ".join(problems))


# --- random number generators -----------------------------------------------------------

def rng_state() -> Dict[str, Any]:
    """The state of every global RNG this process uses, as weights_only-safe objects."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_lists(obj: Any) -> Any:
    return [_to_lists(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuples(obj: Any) -> Any:
    return tuple(_to_tuples(o) for o in obj) if isinstance(obj, list) else obj


def find_resume(path_or_dir: PathLike) -> Optional[Path]:
    """``last.pt`` inside a run folder, or the file itself; None if there is none."""
    path = Path(path_or_dir)
    if path.is_dir():
        path = path / "last.pt"
    return path if path.is_file() else None
