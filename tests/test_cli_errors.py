"""Every command-line misuse ends with exit status 2 and one line naming the problem, never
a traceback; outputs are checked before long work; no output replaces an input."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import evaluate, predict, presets, train
from encnet_lite.data import prepare_pcontext, prepare_voc
from encnet_lite.engine import build_model

ROOT = Path(__file__).resolve().parents[1]
MAINS = {"train": train.main, "eval": evaluate.main, "predict": predict.main,
         "prepare_voc": prepare_voc.main, "prepare_pcontext": prepare_pcontext.main}
PROGS = {"train": "encnet-train", "eval": "encnet-eval", "predict": "encnet-predict",
         "prepare_voc": "prepare_voc.py", "prepare_pcontext": "prepare_pcontext.py"}
SCENES = ["--num-train-images", "8", "--num-val-images", "4", "--image-size", "64",
          "--workers", "0", "--progress", "false"]


def _checkpoint(path, num_classes=7, drop=(), **config):
    """A best.pt-like file of an untrained tiny model (no training: fast)."""
    cfg = presets.scenes_encnet_tiny(image_size=64, num_val_images=4, **config)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes)
    saved = {"format": ckpt_io.FORMAT, "config": cfg.to_dict(), "num_classes": num_classes,
             "classes": [f"c{i}" for i in range(num_classes)], "model": model.state_dict(),
             "epoch": 1, "iteration": 1, "metrics": {}}
    for key in drop:
        saved.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_io.save_atomic(saved, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths every case may use (built once)."""
    d = tmp_path_factory.mktemp("cli")
    (d / "a_file").write_text("not a folder\n")
    run = d / "run"
    _checkpoint(run / "best.pt")
    _checkpoint(d / "no_config.pt", drop=("config",))
    _checkpoint(d / "no_classes.pt", drop=("num_classes",))
    bad_model = _checkpoint(d / "bad_model.pt")
    saved = ckpt_io.load(bad_model)
    saved["config"]["model"] = "unet"
    ckpt_io.save_atomic(saved, bad_model)
    _checkpoint(d / "three.pt", num_classes=3)  # fewer classes than the scenes' masks hold
    _checkpoint(d / "pc.pt", num_classes=59, dataset="pcontext")
    (d / "pc_root").mkdir()
    (d / "pc_root" / "prepared.json").write_text('{"dataset": "pascal-context", "varia')
    (d / "garbage.pt").write_bytes(b"PK not a checkpoint at all")
    (d / "photos").mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "photos" / "x.png")
    Image.fromarray(rgb).save(d / "photos" / "x.mask.png")  # what x.png would write
    return d


NO_GPU = not torch.cuda.is_available()
# (command, arguments with {d} = the files folder, a phrase the one line must contain)
CASES = [
    ("train", ["--preset", "scenes_encnet_tiny", "--threads", "-1"], "--threads -1"),
    ("train", ["--preset", "scenes_encnet_tiny", "--device", "tpu"], "--device tpu"),
    ("train", ["--preset", "scenes_encnet_tiny", "--device", "meta"], "not meta"),
    ("train", ["--preset", "scenes_encnet_tiny", "--device", "cuda:99"],
     "CUDA GPU is visible"),
    *([("train", ["--preset", "scenes_encnet_tiny", "--device", "cuda"],
        "CUDA GPU is visible")] if NO_GPU else []),
    ("train", ["--preset", "scenes_encnet_tiny", "--out", "{d}/a_file"], "is a file"),
    ("train", ["--preset", "scenes_encnet_tiny", "--out", "{d}/a_file/run"],
     "no folder can be made under it"),
    ("train", ["--preset", "scenes_encnet_tiny", "--num-val-images", "0"],
     "validation needs at least one image"),
    ("train", ["--preset", "scenes_encnet_tiny", "--epochs", "many"], "--epochs many"),
    ("train", ["--preset", "scenes_encnet_tiny", "--model", "unet"], "model='unet'"),
    ("train", ["--preset", "scenes_encnet_tiny", "--workers", "-2"], "--workers -2"),
    ("train", ["--preset", "nope"], "invalid choice"),
    ("train", ["--epochs", "2"], "give --preset"),
    ("train", ["--resume", "{d}/missing_run"], "no such run folder"),
    ("train", ["--preset", "scenes_encnet_tiny", "--resume", "{d}/missing_run", *SCENES],
     "nothing to resume"),
    ("train", ["--resume", "{d}/run/best.pt", *SCENES], "holds only a model"),
    ("train", ["--resume", "{d}/no_config.pt"], "no 'config' dict"),
    ("train", ["--preset", "scenes_encnet_tiny", "--backbone", "resnet50", "--backbone-weights",
               "{d}/garbage.pt", "--out", "{d}/weights_run", *SCENES],
     "is not a plain state dict"),
    ("train", ["--resume", "{d}/bad_model.pt"], "bad_model.pt: its config does not fit"),
    ("eval", ["--checkpoint", "{d}/no_config.pt"], "no 'config' dict"),
    ("eval", ["--checkpoint", "{d}/no_classes.pt"], "'num_classes' None"),
    ("eval", ["--checkpoint", "{d}/bad_model.pt"], "cannot build its model"),
    ("eval", ["--checkpoint", "{d}/garbage.pt"], "not a readable encnet_lite checkpoint"),
    ("eval", ["--checkpoint", "{d}/missing.pt"], "no checkpoint at"),
    ("eval", ["--checkpoint", "{d}/run/best.pt", "--out", "{d}/run/best.pt"],
     "is the input"),
    ("eval", ["--checkpoint", "{d}/run/best.pt", "--out", "{d}/a_file/x.json"],
     "a_file is a file"),
    ("eval", ["--checkpoint", "{d}/run/best.pt", "--out", "{d}/run"], "is a folder"),
    ("eval", ["--checkpoint", "{d}/run/best.pt", "--split", "bogus"], "--split bogus"),
    ("eval", ["--checkpoint", "{d}/run/best.pt", "--max-images", "-1"], "-1 is below 1"),
    ("eval", ["--checkpoint", "{d}/run/best.pt", "--threads", "-1"], "-1 is below 0"),
    ("eval", ["--checkpoint", "{d}/run/best.pt", "--device", "tpu"], "--device tpu"),
    ("eval", ["--checkpoint", "{d}/pc.pt", "--data-root", "{d}/pc_root"],
     "prepared.json is damaged"),
    ("eval", ["--checkpoint", "{d}/three.pt", "--max-images", "1", "--out", "{d}/3.json"],
     "outside 0..2"),
    ("predict", ["{d}/photos/x.png", "--checkpoint", "{d}/run/best.pt", "--out",
                 "{d}/a_file"], "is a file"),
    ("predict", ["{d}/photos/x.png", "{d}/photos/x.mask.png", "--checkpoint", "{d}/run/best.pt", "--out",
                 "{d}/photos"], "would replace the input"),
    ("predict", ["{d}/photos/x.png", "--checkpoint", "{d}/run/best.pt", "--out", "{d}/p",
                 "--alpha", "2"], "--alpha 2"),
    ("predict", ["{d}/photos/x.png", "--checkpoint", "{d}/run/best.pt", "--out", "{d}/p",
                 "--device", "tpu"], "--device tpu"),
    ("predict", ["{d}/photos/x.png", "--checkpoint", "{d}/no_config.pt", "--out", "{d}/p"],
     "no 'config' dict"),
    ("prepare_voc", ["--root", "{d}/a_file/voc", "--skip-download"],
     "no folder can be made under it"),
    ("prepare_pcontext", ["--root", "{d}/a_file", "--skip-download"], "is a file"),
    ("prepare_pcontext", ["--root", "{d}/pc2", "--download-dir", "{d}/a_file"], "is a file"),
]


@pytest.mark.parametrize("command,args,phrase", CASES,
                         ids=[f"{c}:{' '.join(a)[:60]}" for c, a, _ in CASES])
def test_misuse_exits_2_with_one_line(files, command, args, phrase, capsys):
    before = hashlib.sha256((files / "run" / "best.pt").read_bytes()).hexdigest()
    argv = [a.format(d=files) for a in args]
    if command == "eval":
        argv.append("--no-progress")
    try:
        code = MAINS[command](argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"{PROGS[command]}: error: ") and phrase in err, err
    # No case touches the checkpoint (the eval case with --out = checkpoint above all).
    assert hashlib.sha256((files / "run" / "best.pt").read_bytes()).hexdigest() == before
    assert not (files / "run" / "best.eval.json").exists()


def test_read_only_out_is_refused_before_training(files, tmp_path, capsys):
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    elif Path("/proc/self").is_dir():  # root writes anywhere, but not into procfs
        locked = Path("/proc")
    else:
        pytest.skip("no folder here that this user cannot write to")
    try:
        code = train.main(["--preset", "scenes_encnet_tiny", "--out", str(locked / "run")])
    finally:
        if locked != Path("/proc"):
            locked.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write in {locked}" in err and "\n" not in err.strip()


@pytest.mark.parametrize("module,args,phrase", [
    ("encnet_lite.train", ["--preset", "scenes_encnet_tiny", "--threads", "-1"],
     "--threads -1"),
    ("encnet_lite.evaluate", ["--checkpoint", "{d}/run/best.pt", "--out",
                              "{d}/run/best.pt"], "is the input"),
])
def test_no_traceback_reaches_the_terminal(files, module, args, phrase):
    before = (files / "run" / "best.pt").read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", module, *[a.format(d=files) for a in args]],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert phrase in proc.stderr and proc.stdout == ""
    assert (files / "run" / "best.pt").read_bytes() == before


def test_encnet_traceback_shows_the_traceback_of_a_known_error(monkeypatch, capsys):
    from encnet_lite import cli

    def body():
        raise ValueError("bad value deep inside")

    assert cli.run("prog", body) == 2
    assert capsys.readouterr().err == "prog: error: bad value deep inside\n"
    monkeypatch.setenv("ENCNET_TRACEBACK", "1")
    with pytest.raises(ValueError, match="deep inside"):
        cli.run("prog", body)
