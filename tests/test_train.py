"""End-to-end tests of train(): logs and checkpoints, exact resume, error paths, the CLIs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import crash_during, tiny

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import evaluate
from encnet_lite import train as train_mod
from encnet_lite.errors import FileWriteError
from encnet_lite.files import TMP_MARK
from encnet_lite.runfolder import RunFolderError
from encnet_lite.train import load_history, train

ROOT = Path(__file__).resolve().parents[1]


def test_train_writes_logs_and_checkpoints(tmp_path):
    cfg = tiny(tmp_path / "run")
    result = train(cfg)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} == {
        "config.json", "metrics.jsonl", "iterations.jsonl", "last.pt", "best.pt"}
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert load_history(out) == json.loads(json.dumps(result.history))
    for key in ("loss", "main", "aux", "se", "lr", "pixAcc", "mIoU", "seconds", "images_per_s",
                "live_codewords", "assignment_perplexity"):
        assert key in result.history[-1]
    # the preset's shared_kmeans layer has one smoothing factor: no "largest scale" to report
    assert cfg.model.encoder == "shared_kmeans" and "largest_scale_share" not in result.history[-1]
    assert 1 <= result.history[-1]["live_codewords"] <= cfg.model.num_codes
    # The returned confusion matrix is the last validation's: the same scores.
    assert result.confusion.compute()["mIoU"] == pytest.approx(result.history[-1]["mIoU"])
    assert int(result.confusion.matrix.sum()) == 8 * 64 * 64
    steps = load_history(out, "iterations.jsonl")
    assert [s["iteration"] for s in steps] == list(range(1, 13))
    assert steps[0]["lr"] == pytest.approx(cfg.optim.lr) and result.history[-1]["lr"] == 0.0
    last = ckpt_io.load(out / "last.pt")
    assert (last["epoch"], last["iteration"], last["num_classes"]) == (2, 12, 7)
    best = ckpt_io.load(out / "best.pt")
    assert best["metrics"]["mIoU"] == max(h["mIoU"] for h in result.history)
    assert not result.model.training and result.classes[0] == "ground"
    import matplotlib

    matplotlib.use("Agg")
    from encnet_lite import viz

    assert len(viz.plot_history(result, keys=("loss", "mIoU")).axes) == 2


def test_mixed_precision_and_fcn_train_on_cpu(tmp_path):
    result = train(tiny(tmp_path / "amp", epochs=1, amp="bf16", channels_last=True))
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))
    fcn = train(tiny(tmp_path / "fcn", epochs=1, arch="fcn", se_loss=False, aux=False))
    assert fcn.history[0]["se"] == 0.0 and fcn.history[0]["aux"] == 0.0
    assert "live_codewords" not in fcn.history[0]  # no Context Encoding Module: no health


@pytest.mark.numerics
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    full = train(tiny(tmp_path / "full"))
    # Same run, checkpointing every 4 iterations, crashes during iteration 10 (epoch 2).
    cfg = tiny(tmp_path / "crash", checkpoint_every=4)
    crash_during(cfg, monkeypatch, at=10)
    assert ckpt_io.load(tmp_path / "crash" / "last.pt")["iteration"] == 8
    with open(tmp_path / "crash" / "iterations.jsonl", "a") as f:
        f.write('{"iteration": 10, "lo')  # a line torn by the crash
    resumed = train(cfg, resume=True)

    def losses(out):
        return [(s["iteration"], s["loss"], s["main"], s["aux"], s["se"], s["lr"])
                for s in load_history(out, "iterations.jsonl")]

    assert losses(tmp_path / "crash") == losses(tmp_path / "full")  # exactly, bit for bit
    for a, b in zip(resumed.history, full.history):
        assert (a["loss"], a["mIoU"], a["pixAcc"]) == (b["loss"], b["mIoU"], b["pixAcc"])
    for (name, a), b in zip(resumed.model.state_dict().items(), full.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_refuses_another_model_or_recipe(tmp_path):
    train(tiny(tmp_path / "run", epochs=1))
    with pytest.raises(ckpt_io.IncompatibleCheckpointError, match="num_codes"):
        train(tiny(tmp_path / "run", epochs=1, num_codes=8), resume=True)
    with pytest.raises(ValueError, match="lr"):
        train(tiny(tmp_path / "run", epochs=1, lr=0.5), resume=True)
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(tiny(tmp_path / "run"), resume=tmp_path / "nowhere")


def test_full_disk_mid_training_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # epoch 1 wrote last.pt and best.pt; epoch 2's last.pt fails
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(FileWriteError, match="disk full"):
        train(tiny(tmp_path / "run"))
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt_io.load(tmp_path / "run" / "last.pt")["iteration"] == 6
    assert not [p for p in (tmp_path / "run").iterdir() if TMP_MARK in p.name]


def test_seed_makes_a_cpu_run_bit_reproducible(tmp_path):
    a = train(tiny(tmp_path / "a", epochs=1, seed=3))
    b = train(tiny(tmp_path / "b", epochs=1, seed=3))
    c = train(tiny(tmp_path / "c", epochs=1, seed=4))
    steps = [[s["loss"] for s in load_history(r.out, "iterations.jsonl")] for r in (a, b, c)]
    assert steps[0] == steps[1] and steps[0] != steps[2]


def test_cli_errors_are_clear(tmp_path, capsys):
    code = train_mod.main(["--preset", "pcontext_fcn_r50", "--data-root", str(tmp_path / "no"),
                           "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert train_mod.main(["--epochs", "2"]) == 2  # neither --preset nor --resume
    assert "give --preset NAME" in capsys.readouterr().err


def test_eval_cli_scores_a_checkpoint_and_writes_json(tmp_path, capsys):
    train(tiny(tmp_path / "run", epochs=1))
    ckpt = tmp_path / "run" / "best.pt"
    assert evaluate.main(["--checkpoint", str(ckpt), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "run" / "best.eval.json").read_text())
    assert 0 <= report["mIoU"] <= 1 and report["num_images"] == 8
    assert "mIoU" in capsys.readouterr().out
    assert evaluate.main(["--checkpoint", str(ckpt), "--multi-scale", "--no-progress",
                          "--max-images", "2"]) == 0
    assert (tmp_path / "run" / "best.eval-ms.json").is_file()
    # A checkpoint of another model is refused with a clear message, not a traceback.
    saved = ckpt_io.load(ckpt)
    saved["config"]["model"]["arch"] = "fcn"
    ckpt_io.save_atomic(saved, tmp_path / "other.pt")
    assert evaluate.main(["--checkpoint", str(tmp_path / "other.pt"), "--no-progress"]) == 2
    assert "does not fit" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.numerics
def test_cli_run_killed_mid_way_resumes_to_the_same_losses(tmp_path):
    args = ["--preset", "scenes_encnet_tiny", "--num-train-images", "48", "--num-val-images",
            "8", "--image-size", "64", "--batch-size", "4", "--epochs", "2", "--workers", "0",
            "--checkpoint-every", "5", "--progress", "false"]
    cfg = train_mod.config_from_args(train_mod.build_parser().parse_args(
        args + ["--out", str(tmp_path / "full")]))
    train(cfg)  # the uninterrupted reference, in this process (one thread, as the child)
    out = tmp_path / "cli"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "encnet_lite.train", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "iterations.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 7:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: only the checkpoints remain
    proc.wait()
    killed_at = ckpt_io.load(out / "last.pt")["iteration"]
    assert 5 <= killed_at < 24
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mIoU" in done.stdout
    a = load_history(tmp_path / "full", "iterations.jsonl")
    b = load_history(out, "iterations.jsonl")
    assert [s["loss"] for s in b] == [s["loss"] for s in a]
    assert [h["mIoU"] for h in load_history(out)] == [h["mIoU"] for h in load_history(
        tmp_path / "full")]
