"""Checkpoints: the checkpoint schema (:class:`TrainState`), RNG states, finite and
compatibility checks on load; written whole or not at all through :mod:`encnet_lite.files`.

A checkpoint is a plain dict saved with ``torch.save``; it loads with ``weights_only=True``
(only tensors, numbers, strings, lists and dicts inside), so opening one never runs code.

``last.pt`` (:func:`training_checkpoint`): ``format``, ``config`` (``TrainConfig.to_dict()``;
read back with :func:`saved_config`, which also reads the flat config of earlier versions),
``num_classes``, ``classes``, the state dicts ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``rng`` (one entry per process) and the :class:`TrainState` fields ``epoch``
(completed epochs), ``iteration`` (completed optimizer steps), ``history`` (per-epoch
metrics so far), ``best_mIoU``, ``best_epoch``, ``epoch_sums``, ``epoch_seconds``.
``best.pt`` (:func:`best_checkpoint`) holds only ``format``, ``config``, ``num_classes``,
``classes``, ``model``, ``epoch``, ``iteration``, ``metrics``: no optimizer, so it is for
evaluation and prediction, not for resuming.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .errors import EncnetError, one_line
from .files import atomic_write
from .metrics import upgrade_scores
from .presets import ConfigRangeError, TrainConfig, check_ranges, nest

FORMAT = "encnet_lite.checkpoint/1"
PathLike = Union[str, Path]


class CheckpointError(EncnetError, RuntimeError):
    """A checkpoint cannot be read or does not fit the run that loads it (a failed write is
    an :class:`~encnet_lite.errors.FileWriteError`)."""


class IncompatibleCheckpointError(CheckpointError, ValueError):
    """The checkpoint was made for another model or another number of classes."""


class NonFiniteError(CheckpointError):
    """A state dict holds NaN or Inf values: saving or evaluating it would mislead."""


def save_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` so that ``path`` is never half written."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def check_finite(state_dict: Mapping[str, Any], what: str = "state dict") -> None:
    """Raise :class:`NonFiniteError` naming the first floating tensor with NaN or Inf."""
    for name, value in state_dict.items():
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and not bool(torch.isfinite(value).all())):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(f"{what}: tensor {name!r} has {bad} non-finite value(s) "
                                 f"(NaN or Inf) out of {value.numel()}")


def load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint dict; a one-line error for a missing, empty, foreign or newer file."""
    path = Path(path)
    if path.is_dir():
        inside = [n for n in ("best.pt", "last.pt") if (path / n).is_file()]
        hint = (f"give the file inside, e.g. {path / inside[0]}" if inside
                else "give a best.pt or last.pt file (this folder holds neither)")
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: {hint}")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: check the path (a run's best.pt or "
                              "last.pt)")
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
    return f"the file ({size} bytes) is cut short or damaged ({one_line(exc)[:160]})"


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
    ``config`` dict with every number in range (:data:`encnet_lite.presets.RANGES`),
    ``num_classes`` >= 1 and a ``model`` state dict of dense tensors. (A config value this
    version does not know, such as a model name, is :func:`saved_config`'s error.)"""
    problems = []
    config = ckpt.get("config")
    if not isinstance(config, dict):
        problems.append("no 'config' dict")
    n = ckpt.get("num_classes")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        problems.append(f"'num_classes' {n!r} (need a count >= 1)")
    problems += _model_problems(ckpt.get("model"))
    leaves = nest(config) if isinstance(config, dict) else {}
    if isinstance(config, dict) and not all(isinstance(leaves.get(k), str)
                                            for k in ("arch", "backbone")):
        problems.append("a 'config' without the model's 'arch' and 'backbone' names")
    if isinstance(config, dict):
        try:
            check_ranges(leaves)
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
    best_mIoU: float = float("-inf")
    best_epoch: int = 0  # the epoch whose weights best.pt holds (0: none yet)
    epoch_sums: Tensor = field(default_factory=_zero_sums)  # LOSS_KEYS summed this epoch
    epoch_seconds: float = 0.0  # training time of this epoch so far

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "epoch_sums": self.epoch_sums.clone(),
                "history": list(self.history)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainState:
        # Checkpoints from before the one score format: "best_miou", per-class "iou".
        best = float(d["best_mIoU"] if "best_mIoU" in d else d["best_miou"])
        history = upgrade_scores(list(d["history"]))
        # Checkpoints from before best_epoch was saved: the first epoch that reached the best.
        best_epoch = d.get("best_epoch", next(
            (r["epoch"] for r in history if r.get("mIoU") == best), 0))
        return cls(epoch=int(d["epoch"]), iteration=int(d["iteration"]),
                   history=history, best_mIoU=best, best_epoch=int(best_epoch),
                   epoch_sums=d["epoch_sums"].double(), epoch_seconds=float(d["epoch_seconds"]))

    def improves(self, score: float) -> bool:
        """Whether a validation mIoU ``score`` beats the best so far (the first one always)."""
        return self.best_epoch == 0 or math.isnan(self.best_mIoU) or score > self.best_mIoU


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


def saved_config(ckpt: Mapping[str, Any], path: PathLike) -> TrainConfig:
    """The :class:`~encnet_lite.presets.TrainConfig` ``ckpt`` was trained with (a flat
    config of earlier versions too: :func:`encnet_lite.presets.nest`); one this version
    cannot build (a model name it lacks) is an :class:`IncompatibleCheckpointError`."""
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise IncompatibleCheckpointError(
            f"{path}: its config does not fit this version ({exc}); resume a run of this "
            "version, or start a new one with --preset") from None


def check_compatible(ckpt: Mapping[str, Any], num_classes: int,
                     changes: Sequence[str] = ()) -> None:
    """Raise :class:`IncompatibleCheckpointError` if ``ckpt`` was trained for another
    number of classes or ``changes`` (``"num_codes: 32 -> 8"``: the config fields whose
    change means other weights, :func:`encnet_lite.presets.resume_changes`) is not empty."""
    problems = list(changes)
    if ckpt.get("num_classes") != num_classes:
        problems.insert(0, f"num_classes {ckpt.get('num_classes')} != {num_classes}")
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
