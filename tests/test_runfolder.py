"""The run folder's rules: no run replaced by accident, one trainer at a time, best.pt
never lost, no temporary files left, no checkpoint with non-finite weights."""

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
    assert "--resume" in capsys.readouterr().err  # config.json looks like a run: refused too
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
    stale = out / f".last.pt{ckpt_io.TMP_MARK}{dead_pid()}"
    stale.write_bytes(b"\0" * 2**20)  # what a kill mid-write leaves
    live = out / f".best.eval.json{ckpt_io.TMP_MARK}{os.getpid()}"  # a writer still at work
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
    assert best["metrics"]["mIoU"] == last["history"][0]["mIoU"] == last["best_miou"]
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
    at_best = TrainState(epoch=1, iteration=4, history=history[:1], best_miou=0.3,
                         best_epoch=1)
    later = TrainState(epoch=2, iteration=8, history=history, best_miou=0.3, best_epoch=1)
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
