"""The run folder's rules: no run replaced by accident, one trainer at a time, best.pt
never lost, no temporary files left, no checkpoint with non-finite weights."""

import errno
import os
import socket
import subprocess
import sys

import pytest
import torch
from helpers import tiny as tiny_run

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import runfolder
from encnet_lite import train as train_mod
from encnet_lite.checkpoint import TrainState
from encnet_lite.files import TMP_MARK, atomic_write
from encnet_lite.runfolder import RunFolderError
from encnet_lite.train import load_history, train

TINY = ["--preset", "scenes_encnet_tiny", "--num-train-images", "16", "--num-val-images", "8",
        "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--workers", "0",
        "--progress", "false", "--threads", "1"]
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.json")


def tiny(out, **kw):
    """4 iterations of 4 images of 64 px: about a second."""
    return tiny_run(out, **{"num_train_images": 16, "epochs": 1, "threads": 1, **kw})


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.fixture
def finished(tmp_path):
    """A finished one-epoch run made by the CLI, and its files' bytes."""
    out = tmp_path / "run"
    assert train_mod.main(TINY + ["--out", str(out)]) == 0
    return out, {name: (out / name).read_bytes() for name in RUN_FILES}


def test_rerunning_a_finished_run_is_refused_and_changes_nothing(finished, capsys):
    out, before = finished
    assert train_mod.main(TINY + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--overwrite" in err
    assert {name: (out / name).read_bytes() for name in RUN_FILES} == before
    assert not (out / runfolder.LOCK).exists()
    # --overwrite replaces it: a new run, with its own (fresh) logs.
    assert train_mod.main(TINY + ["--out", str(out), "--overwrite"]) == 0
    assert [h["epoch"] for h in load_history(out)] == [1]
    assert ckpt_io.load(out / "best.pt")["epoch"] == 1
    # --resume of a finished run trains nothing and keeps the checkpoints.
    assert train_mod.main(TINY + ["--out", str(out), "--resume"]) == 0
    assert ckpt_io.load(out / "last.pt")["iteration"] == 4


def test_resume_dir_trains_there_not_in_the_presets_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "exp1"
    real_step, calls = train_mod.train_step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_mod.main(TINY + ["--checkpoint-every", "2", "--out", str(run)])
    monkeypatch.setattr(train_mod, "train_step", real_step)
    assert ckpt_io.load(run / "last.pt")["iteration"] == 2
    assert train_mod.main(TINY + ["--checkpoint-every", "2", "--resume", str(run)]) == 0
    assert ckpt_io.load(run / "last.pt")["iteration"] == 4
    assert [s["iteration"] for s in load_history(run, "iterations.jsonl")] == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp1"]  # no runs/scenes_... folder


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_mod.main(TINY + ["--resume", str(empty)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert train_mod.main(TINY + ["--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and list(empty.iterdir()) == []


def test_resume_from_best_pt_says_why_it_cannot(finished, capsys):
    out, before = finished
    assert train_mod.main(TINY + ["--resume", str(out / "best.pt")]) == 2
    err = capsys.readouterr().err
    assert "no optimizer state" in err and "last.pt" in err and "KeyError" not in err
    assert {name: (out / name).read_bytes() for name in RUN_FILES} == before


def test_bad_out_folders_and_an_empty_val_split_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for out in ("", "."):
        assert train_mod.main(TINY + ["--out", out]) == 2
        assert "--out" in capsys.readouterr().err
    other = tmp_path / "project"
    other.mkdir()
    (other / "config.json").write_text("{}")  # a run file name, but also ...
    (other / "README.md").write_text("not a run")  # ... someone else's files
    assert train_mod.main(TINY + ["--out", str(other)]) == 2
    assert "not a training run (README.md" in capsys.readouterr().err
    (other / "README.md").unlink()  # a config.json alone, but not a run's: refused too
    assert train_mod.main(TINY + ["--out", str(other)]) == 2
    assert "config.json is not an encnet_lite run's config" in capsys.readouterr().err
    assert (other / "config.json").read_text() == "{}"
    (other / "README.md").write_text("not a run")
    (other / "config.json").unlink()
    assert train_mod.main(TINY + ["--out", str(other), "--overwrite"]) == 2
    assert "not a training run (README.md" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["README.md"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert train_mod.main(TINY + ["--out", str(tmp_path / "v"), "--num-val-images", "0"]) == 2
    assert "--num-val-images 8" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = out / runfolder.LOCK
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f'{{"pid": {sleeper.pid}, "host": "{socket.gethostname()}"}}')
        with pytest.raises(RunFolderError, match=f"in use by another trainer \\(pid {sleeper.pid}"):
            train(tiny(out))
        assert sorted(p.name for p in out.iterdir()) == [runfolder.LOCK]
    finally:
        sleeper.kill()
        sleeper.wait()
    # Another machine's lock cannot be checked: refused, naming the file to delete.
    lock.write_text('{"pid": 1, "host": "another-host"}')
    with pytest.raises(RunFolderError, match="delete .*train.lock"):
        train(tiny(out))
    # The lock of a process that died: taken over; the run releases it when it ends.
    lock.write_text(f'{{"pid": {dead_pid()}, "host": "{socket.gethostname()}"}}')
    result = train(tiny(out))
    assert result.history[-1]["epoch"] == 1 and not lock.exists()


def test_stale_temporaries_are_removed_on_start(finished):
    out, _ = finished
    stale = out / f".last.pt{TMP_MARK}{dead_pid()}"
    stale.write_bytes(b"\0" * 2**20)  # what a kill mid-write leaves
    live = out / f".best.eval.json{TMP_MARK}{os.getpid()}"  # a writer still at work
    live.write_text("{")
    train(tiny(out), resume=True)
    assert not stale.exists() and live.exists()


def test_a_kill_between_best_and_last_loses_no_best_model(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = runfolder.RunFolder.save

    def killed_after_best(self, name, ckpt):
        if name == "last.pt" and ckpt["epoch"] == 1:
            raise KeyboardInterrupt  # best.pt is written, last.pt not yet
        real_save(self, name, ckpt)

    monkeypatch.setattr(runfolder.RunFolder, "save", killed_after_best)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(out, checkpoint_every=2))
    monkeypatch.setattr(runfolder.RunFolder, "save", real_save)
    assert ckpt_io.load(out / "last.pt")["iteration"] == 2  # the mid-epoch checkpoint
    assert ckpt_io.load(out / "best.pt")["epoch"] == 1
    train(tiny(out, checkpoint_every=2), resume=True)
    last, best = ckpt_io.load(out / "last.pt"), ckpt_io.load(out / "best.pt")
    assert (last["best_epoch"], best["epoch"]) == (1, 1)
    assert best["metrics"]["mIoU"] == last["history"][0]["mIoU"] == last["best_mIoU"]
    for name, value in last["model"].items():
        assert torch.equal(best["model"][name], value), name


def test_resume_rebuilds_a_missing_best_pt_from_last_pt(finished):
    out, before = finished
    (out / "best.pt").unlink()  # e.g. the disk filled up while writing it
    train(tiny(out), resume=True)
    last, best = ckpt_io.load(out / "last.pt"), ckpt_io.load(out / "best.pt")
    assert best["epoch"] == last["best_epoch"] == 1
    assert best["metrics"] == last["history"][0]
    for name, value in last["model"].items():
        assert torch.equal(best["model"][name], value), name
    assert (out / "last.pt").read_bytes() == before["last.pt"]


def test_best_action_decides_from_the_saved_state(tmp_path):
    history = [{"epoch": 1, "iteration": 4, "mIoU": 0.3}, {"epoch": 2, "iteration": 8,
                                                           "mIoU": 0.2}]
    at_best = TrainState(epoch=1, iteration=4, history=history[:1], best_mIoU=0.3,
                         best_epoch=1)
    later = TrainState(epoch=2, iteration=8, history=history, best_mIoU=0.3, best_epoch=1)
    assert runfolder.best_action(tmp_path, TrainState()) == "keep"
    assert runfolder.best_action(tmp_path, at_best) == "rebuild"
    assert runfolder.best_action(tmp_path, later) == "reset"  # epoch 1's weights are gone
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "epoch": 1}, tmp_path / "best.pt")
    assert runfolder.best_action(tmp_path, later) == "keep"
    assert runfolder.best_action(tmp_path, TrainState()) == "reset"  # a best from the future
    (tmp_path / "best.pt").write_bytes(b"torn")
    assert runfolder.best_action(tmp_path, at_best) == "rebuild"


def test_non_finite_weights_stop_the_run_before_any_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_step, calls = train_mod.train_step, []

    def poisoning_step(model, *args, **kwargs):
        terms = real_step(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # the loss of this step was finite; the update was not
            with torch.no_grad():
                next(model.parameters())[0].fill_(float("nan"))
        return terms

    monkeypatch.setattr(train_mod, "train_step", poisoning_step)
    args = TINY + ["--checkpoint-every", "2", "--out", str(out)]
    assert train_mod.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "iteration 4" in err and "non-finite" in err and "backbone" in err
    assert ckpt_io.load(out / "last.pt")["iteration"] == 2
    assert not (out / "best.pt").exists()
    ckpt_io.check_finite(ckpt_io.load(out / "last.pt")["model"])


def test_train_restores_the_thread_count_and_the_global_rngs(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        train(tiny(tmp_path / "run", threads=1))
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.rand(3), expected)
    finally:
        torch.set_num_threads(before)


def test_resume_dir_sets_the_out_folder_of_the_config(tmp_path):
    args = train_mod.build_parser().parse_args(TINY + ["--resume", str(tmp_path / "a")])
    assert train_mod.config_from_args(args).out == str(tmp_path / "a")
    args = train_mod.build_parser().parse_args(
        TINY + ["--resume", str(tmp_path / "a" / "last.pt"), "--out", str(tmp_path / "b")])
    assert train_mod.config_from_args(args).out == str(tmp_path / "b")


# ---------------------------------------------------------------- nothing lost, no circles


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory):
    """One finished CLI run with two evaluation reports beside its best.pt (made once)."""
    out = tmp_path_factory.mktemp("once") / "run"
    assert train_mod.main(TINY + ["--out", str(out)]) == 0
    (out / "best.eval.json").write_text('{"mIoU": 0.5}\n')
    (out / "best.eval-ms.json.partial").write_text('{"done": 3}\n')
    return out


def _copy(run, to):
    import shutil

    shutil.copytree(run, to)
    return to, {p.name: p.read_bytes() for p in to.iterdir()}


# --overwrite of a finished run with a value that fails: (arguments, a phrase of the line)
BAD_OVERWRITES = [
    (["--lr", "-1"], "--lr -1: give a finite number above 0"),
    (["--lr", "nan"], "--lr nan: give a finite number above 0"),
    (["--head-lr-mult", "-1"], "--head-lr-mult -1"),
    (["--poly-power", "-1"], "--poly-power -1"),
    (["--num-train-images", "2"], "2 training images are fewer than one batch (4)"),
    (["--backbone", "resnet50", "--weights-backbone", "{out}/missing.pt"],
     "--weights-backbone {out}/missing.pt: no such file"),
    (["--backbone", "resnet50", "--weights-backbone", "{out}/best.pt"],
     "is an encnet_lite checkpoint (a whole trained model), not ImageNet ResNet weights"),
    (["--weights-backbone", "{out}/best.pt"], "the tiny backbone has no ImageNet weights"),
]


@pytest.mark.parametrize("args,phrase", BAD_OVERWRITES, ids=[" ".join(a) for a, _ in BAD_OVERWRITES])
def test_overwrite_with_a_bad_value_loses_nothing(finished_once, tmp_path, args, phrase, capsys):
    out, before = _copy(finished_once, tmp_path / "run")
    argv = TINY + ["--out", str(out), "--overwrite"] + [a.format(out=out) for a in args]
    assert train_mod.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and phrase.format(out=out) in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no lock left either


def test_overwrite_that_fails_inside_setup_loses_nothing(finished_once, tmp_path, monkeypatch):
    out, before = _copy(finished_once, tmp_path / "run")

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(train_mod, "build_optimizer", no_memory)
    with pytest.raises(RuntimeError, match="simulated"):
        train(tiny(out), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_removes_the_old_run_and_its_reports_once_the_new_run_started(
        finished_once, tmp_path, monkeypatch):
    out, before = _copy(finished_once, tmp_path / "run")
    (out / "notes.txt").write_text("mine")  # not the run's: --overwrite keeps it
    seen = []
    real_start = train_mod.start_state

    def watching(run, saved):  # setup has succeeded; the new run starts here
        seen.append(sorted(p.name for p in out.iterdir()))
        return real_start(run, saved)

    monkeypatch.setattr(train_mod, "start_state", watching)
    train(tiny(out, lr=0.01), overwrite=True)
    assert seen == [sorted([*before, "notes.txt", runfolder.LOCK])]  # all there until then
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, "iterations.jsonl",
                                                             "notes.txt"])
    assert (out / "best.pt").read_bytes() != before["best.pt"]  # the new run's (lr 0.01)
    assert (out / "notes.txt").read_text() == "mine"


def _full_disk_on(monkeypatch, name: str, at: int):
    """The ``at``-th write of ``name`` (in a run folder) fails as a full disk does."""
    real, count = ckpt_io.save_atomic, []

    def save(obj, path):
        if path.name == name:
            count.append(1)
            if len(count) == at:
                def write(f):
                    raise OSError(errno.ENOSPC, "No space left on device")

                return atomic_write(path, write)
        return real(obj, path)

    monkeypatch.setattr(ckpt_io, "save_atomic", save)


def _stop_in_step(monkeypatch, at: int):
    """A kill (as SIGTERM) inside iteration ``at``: the process ends, its lock stays."""
    real, calls = train_mod.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)


# How a run stops before (or after) its first last.pt, what its one line advises, and
# that the advice works: (stop, extra flags, a phrase of the line or None for a kill,
# the command that then works)
STOPS = [
    ("killed in step 2", [], None, "plain"),
    ("disk full at the first last.pt (mid-epoch)", ["--checkpoint-every", "2"],
     "the same command without --resume starts it afresh", "plain"),
    ("disk full at last.pt after best.pt", [], "rerun it with --overwrite", "--overwrite"),
    ("disk full at the second last.pt", ["--checkpoint-every", "2"],
     "that means --resume: it continues from its last.pt", "--resume"),
]


@pytest.mark.parametrize("stop,extra,phrase,fix", STOPS, ids=[s[0] for s in STOPS])
def test_a_stopped_run_is_told_what_works_and_it_does(tmp_path, monkeypatch, capsys, stop,
                                                      extra, phrase, fix):
    out = tmp_path / "run"
    argv = TINY + extra + ["--out", str(out)]
    if stop.startswith("killed"):
        _stop_in_step(monkeypatch, 2)
        with pytest.raises(KeyboardInterrupt):
            train_mod.run_cli(train_mod.build_parser().parse_args(argv))
        (out / runfolder.LOCK).write_text(  # a kill leaves the lock of a dead process
            f'{{"pid": {dead_pid()}, "host": "{socket.gethostname()}"}}')
    else:
        _full_disk_on(monkeypatch, "last.pt", 2 if "second" in stop else 1)
        assert train_mod.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "disk full while writing" in err and phrase in err, err
    monkeypatch.undo()
    capsys.readouterr()
    if fix != "--resume":  # the advice of the old messages went in a circle: not any more
        assert train_mod.main(argv + ["--resume"]) == 2
        err = capsys.readouterr().err
        assert "nothing to resume" in err and "drop --resume" not in err
        assert ("without --resume" if fix == "plain" else "pass --overwrite") in err, err
    if fix == "--overwrite":
        assert train_mod.main(argv) == 2
        assert "pass --overwrite" in capsys.readouterr().err
    assert train_mod.main(argv + ([] if fix == "plain" else [fix])) == 0
    assert ckpt_io.load(out / "last.pt")["iteration"] == 4
    assert [r["epoch"] for r in load_history(out)] == [1]


def test_resume_of_a_run_that_saved_nothing_names_the_preset_to_restart_it(tmp_path,
                                                                          monkeypatch, capsys):
    out = tmp_path / "run"
    _stop_in_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_mod.run_cli(train_mod.build_parser().parse_args(TINY + ["--out", str(out)]))
    assert train_mod.main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"run encnet-train --preset scenes_encnet_tiny --out {out} (no --resume)" in err


@pytest.mark.parametrize("text", ['{"pid": null}', '{"pid": "123", "host": "h"}',
                                  '{"pid": true, "host": "h"}', '{"host": "h"}', "[1, 2]"])
def test_a_lock_that_names_no_trainer_is_taken_over_with_a_note(tmp_path, text, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / runfolder.LOCK).write_text(text)
    assert runfolder.read_lock(out / runfolder.LOCK) is None
    assert train(tiny(out)).history[-1]["epoch"] == 1
    err = capsys.readouterr().err.strip()
    assert err == f"note: {out / runfolder.LOCK} names no trainer (not a pid and host: edited " \
        "or damaged), so no trainer holds it; it is replaced"
    assert not (out / runfolder.LOCK).exists()
