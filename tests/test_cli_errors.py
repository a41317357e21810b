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
    saved["config"]["model"]["arch"] = "unet"
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
    ("train", ["--preset", "scenes_encnet_tiny", "--arch", "unet"], "arch='unet'"),
    ("train", ["--preset", "scenes_encnet_tiny", "--workers", "-2"], "--workers -2"),
    ("train", ["--preset", "nope"], "invalid choice"),
    ("train", ["--epochs", "2"], "give --preset"),
    ("train", ["--resume", "{d}/missing_run"], "no such run folder"),
    ("train", ["--preset", "scenes_encnet_tiny", "--resume", "{d}/missing_run", *SCENES],
     "nothing to resume"),
    ("train", ["--resume", "{d}/run/best.pt", *SCENES], "holds only a model"),
    ("train", ["--resume", "{d}/no_config.pt"], "no 'config' dict"),
    ("train", ["--preset", "scenes_encnet_tiny", "--backbone", "resnet50", "--weights-backbone",
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


def test_a_library_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from encnet_lite import cli
    from encnet_lite.data import DataError

    def bad_input():
        raise DataError("mask x.png is truncated; delete it and prepare again")

    def bug():
        raise ValueError("bad value deep inside")

    assert cli.run("prog", bad_input) == 2
    assert capsys.readouterr().err == \
        "prog: error: mask x.png is truncated; delete it and prepare again\n"
    with pytest.raises(ValueError, match="deep inside"):  # not caught: a bug
        cli.run("prog", bug)
    monkeypatch.setenv("ENCNET_TRACEBACK", "1")
    with pytest.raises(DataError, match="truncated"):
        cli.run("prog", bad_input)


# ---------------------------------------------------------------- training: numbers, checkpoints


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """Checkpoint files as a careless hand or a full disk leaves them (built once)."""
    d = tmp_path_factory.mktemp("damaged")
    last = _checkpoint(d / "run" / "last.pt")  # no optimizer: enough for the header checks
    saved = ckpt_io.load(last)
    (d / "zero.pt").write_bytes(b"")
    (d / "text.pt").write_text("hello world\n")
    torch.save({**saved, "format": "encnet_lite.checkpoint/2"}, d / "newer.pt")
    first = next(iter(saved["model"]))
    torch.save({**saved, "optimizer": {}, "model": {**saved["model"],
                                                    first: saved["model"][first].to_sparse()}},
               d / "sparse.pt")
    huge = {**saved["config"], "model": {**saved["config"]["model"], "num_codes": 2**31}}
    torch.save({**saved, "optimizer": {}, "config": huge}, d / "huge.pt")
    torch.save({"classifier.weight": torch.ones(2, 2)}, d / "other_net.pth")
    return d


TRAIN = ["--preset", "scenes_encnet_tiny", *SCENES]
# (arguments with {d} = the damaged folder, a phrase the one line must contain)
TRAIN_CASES = [
    ([*TRAIN, "--lr", "nan"], "--lr nan: give a finite number above 0, e.g. --lr 0.001"),
    ([*TRAIN, "--lr", "-1"], "--lr -1: give a finite number above 0"),
    ([*TRAIN, "--head-lr-mult", "-1"], "--head-lr-mult -1: give a finite number above 0"),
    ([*TRAIN, "--poly-power", "-1"], "--poly-power -1: give a finite number at least 0"),
    ([*TRAIN, "--momentum", "1"], "--momentum 1: give a finite number at least 0 and below 1"),
    ([*TRAIN, "--weight-decay", "inf"], "--weight-decay inf: give a finite number"),
    ([*TRAIN, "--se-weight", "-0.5"], "--se-weight -0.5: give a finite number at least 0"),
    ([*TRAIN, "--num-codes", "2147483648"], "--num-codes 2147483648: give a whole number at "
     "least 1 and at most 1024"),
    ([*TRAIN, "--image-size", "8"], "--image-size 8: give a whole number at least 32"),
    ([*TRAIN, "--crop-size", "0"], "--crop-size 0: give a whole number at least 32"),
    ([*TRAIN, "--seed", "-1"], "--seed -1: give a whole number at least 0"),
    ([*TRAIN, "--data-seed", "-5"], "--data-seed -5: give a whole number at least 0"),
    ([*TRAIN, "--batch-size", "0"], "--batch-size 0: give a whole number at least 1"),
    ([*TRAIN, "--epochs", "0"], "--epochs 0: give a whole number at least 1"),
    ([*TRAIN, "--checkpoint-every", "-3"], "--checkpoint-every -3: give a whole number"),
    ([*TRAIN, "--backbone", "resnet50", "--weights-backbone", "{d}/run/last.pt", "--out",
      "{d}/bw"], "is an encnet_lite checkpoint (a whole trained model), not ImageNet ResNet "
     "weights: continue its run with --resume"),
    ([*TRAIN, "--backbone", "resnet50", "--weights-backbone", "{d}/run", "--out", "{d}/bw"],
     "--weights-backbone {d}/run is a folder"),
    ([*TRAIN, "--backbone", "resnet50", "--weights-backbone", "{d}/nope.pth", "--out",
      "{d}/bw"], "--weights-backbone {d}/nope.pth: no such file"),
    ([*TRAIN, "--backbone", "resnet50", "--weights-backbone", "{d}/other_net.pth", "--out",
      "{d}/bw"], "--weights-backbone {d}/other_net.pth does not fit the resnet50 backbone"),
    (["--resume", "{d}/zero.pt"], "the file is empty (0 bytes)"),
    (["--resume", "{d}/text.pt"], "it is not a file torch.save writes (it begins with "
     "b'hello wo')"),
    (["--resume", "{d}/newer.pt"], "was written by a newer encnet_lite (format "
     "encnet_lite.checkpoint/2"),
    (["--resume", "{d}/sparse.pt", "--out", "{d}/o1"], "is torch.sparse_coo (a checkpoint "
     "holds dense tensors)"),
    (["--resume", "{d}/huge.pt", "--out", "{d}/o2"], "num_codes=2147483648: give a whole "
     "number at least 1 and at most 1024"),
    ([*TRAIN, "--resume", "{d}/sparse.pt", "--out", "{d}/o3"], "is torch.sparse_coo"),
]


@pytest.mark.parametrize("args,phrase", TRAIN_CASES,
                         ids=[" ".join(a[len(TRAIN) if a[0] == "--preset" else 0:])[:60]
                              for a, _ in TRAIN_CASES])
def test_training_misuse_exits_2_with_one_line(damaged, args, phrase, capsys):
    before = {p.name: p.read_bytes() for p in damaged.rglob("*") if p.is_file()}
    try:
        code = train.main([a.format(d=damaged) for a in args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("encnet-train: error: ") and phrase.format(d=damaged) in err, err
    assert {p.name: p.read_bytes() for p in damaged.rglob("*") if p.is_file()} == before


def test_a_folder_given_as_a_checkpoint_names_the_file_inside(files, capsys):
    code = evaluate.main(["--checkpoint", str(files / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"{files / 'run'} is a folder, not a checkpoint file: give the file inside, e.g. " \
        f"{files / 'run' / 'best.pt'}" in err


# ------------------------------------------------------- evaluation and prediction: inputs, outputs


def _png_header(path, width, height):
    """A PNG that claims ``width x height`` RGB pixels but holds no pixel data: its header
    is all a size check reads (a few dozen bytes for a 9000 x 9000 image)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


def _voc_root(root, split_ids):
    """A prepared-looking PASCAL VOC root: ``split_ids`` maps a split to its ids; every
    image is 16 x 16 and its mask all 255 (ignore)."""
    import json

    for sub in ("ImageSets", "JPEGImages", "SegmentationClass"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "prepared.json").write_text(json.dumps({"dataset": "pascal-voc-2012", "format": 1,
                                                    "sbd": False}))
    for split, ids in split_ids.items():
        (root / "ImageSets" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
            Image.fromarray(np.full((16, 16), 255, np.uint8)).save(
                root / "SegmentationClass" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Run folders with every file a run holds, datasets that do not match, and images the
    model cannot take (built once)."""
    import json
    import shutil

    d = tmp_path_factory.mktemp("outputs")
    run = d / "run"
    _checkpoint(run / "best.pt")
    shutil.copy(run / "best.pt", run / "last.pt")
    (run / "config.json").write_text(json.dumps(presets.scenes_encnet_tiny().to_dict()))
    for name in ("metrics.jsonl", "iterations.jsonl"):
        (run / name).write_text('{"epoch": 1}\n')
    (run / "train.lock").write_text('{"pid": 1, "host": "elsewhere"}\n')
    _checkpoint(d / "other" / "best.pt")
    _checkpoint(d / "loose" / "model.pt")  # a checkpoint alone in a folder
    shutil.copy(d / "loose" / "model.pt", d / "loose" / "renamed.json")
    _checkpoint(d / "voc.pt", num_classes=21, dataset="voc")
    _checkpoint(d / "pc.pt", num_classes=59, dataset="pcontext")
    _voc_root(d / "voc", {"val": [], "train": ["a"]})  # empty val, all-ignored train
    (d / "pc").mkdir()
    (d / "pc" / "prepared.json").write_text('{"dataset": "pascal-context", "variants": [59]}')
    (d / "img").mkdir()
    for name, side in (("tiny.png", (5, 7)), ("twelve.png", (12, 12)), ("strip.png", (10, 2000))):
        Image.fromarray(np.zeros((*side, 3), np.uint8)).save(d / "img" / name)
    Image.fromarray(np.full((16, 16), 4.0, np.float32)).save(d / "img" / "bright.tif")
    Image.fromarray(np.full((16, 16), -7, np.int32)).save(d / "img" / "signed.tif")
    _png_header(d / "img" / "bomb.png", 100_000, 100_000)
    for sub in ("p1/same", "p2/same"):
        (d / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / sub / "x.png")
    return d


RUN = "{d}/run/best.pt"
PRED = ["--checkpoint", RUN, "--out", "{d}/pred"]
# (command, arguments with {d} = the outputs folder, a phrase the one line must contain)
IO_CASES = [
    ("eval", ["--checkpoint", RUN, "--out", "{d}/run/last.pt"], "holds a training run or the "
     "checkpoint, and last.pt would replace (or pose as) one of the run's files"),
    *[("eval", ["--checkpoint", RUN, "--out", f"{{d}}/run/{name}"], f"and {name} would replace")
      for name in ("config.json", "metrics.jsonl", "iterations.jsonl", "train.lock",
                   "epoch5.pt", "LAST.PT")],
    ("eval", ["--checkpoint", RUN, "--out", "{d}/other/best.pt"], "and best.pt would replace"),
    ("eval", ["--checkpoint", "{d}/loose/model.pt", "--out", "{d}/loose/last.pt"],
     "and last.pt would replace"),
    ("eval", ["--checkpoint", RUN, "--out", "{d}/loose/model.pt"], "is a checkpoint"),
    ("eval", ["--checkpoint", RUN, "--out", "{d}/loose/renamed.json"], "is a checkpoint"),
    ("eval", ["--checkpoint", RUN, "--data-root", "{d}/voc"], "--data-root {d}/voc (it holds "
     "PASCAL VOC 2012): {d}/run/best.pt was trained on ContextScenes"),
    ("eval", ["--checkpoint", "{d}/pc.pt", "--data-root", "{d}/voc"], "--data-root {d}/voc "
     "holds PASCAL VOC 2012, but {d}/pc.pt was trained on PASCAL-Context"),
    ("eval", ["--checkpoint", "{d}/voc.pt", "--data-root", "{d}/pc"], "--data-root {d}/pc "
     "holds PASCAL-Context, but {d}/voc.pt was trained on PASCAL VOC 2012"),
    ("eval", ["--checkpoint", "{d}/voc.pt", "--data-root", "{d}/voc", "--out", "{d}/e.json"],
     "--split val: {d}/voc lists no val images, so there is nothing to evaluate"),
    ("eval", ["--checkpoint", "{d}/voc.pt", "--data-root", "{d}/voc", "--split", "train",
              "--out", "{d}/e.json"], "every mask pixel of its 1 image(s) is the ignore label"),
    ("predict", ["{d}/img/tiny.png", *PRED], "{d}/img/tiny.png is 7x5 px: the model needs at "
     "least 8 px a side; give a larger image"),
    ("predict", ["{d}/img/twelve.png", *PRED, "--multi-scale"], "needs at least 15 px a side "
     "with --multi-scale"),
    ("predict", ["{d}/img/strip.png", *PRED], "is 2000x10 px, 1024x5 once its long side is "
     "fitted to --max-side 1024"),
    ("predict", ["{d}/img/bright.tif", *PRED], "values in [4, 4]; only [0, 1]"),
    ("predict", ["{d}/img/signed.tif", *PRED], "outside the 16-bit range"),
    ("predict", ["{d}/img/bomb.png", *PRED], "bomb.png is too many pixels"),
    ("predict", ["{d}/img", *PRED], "{d}/img is a folder, not an image file"),
    ("predict", ["{d}/p1/same/x.png", "{d}/p1/same/x.png", *PRED], "is given twice"),
    ("predict", ["{d}/p1/same/x.png", "{d}/p2/same/x.png", *PRED],
     "have the same file and folder names"),
    ("predict", ["{d}/p1/same/x.png", *PRED, "--crop-size", "4"], "--crop-size 4: the model "
     "needs views of at least 8 px; give 0 (no limit) or 8 or more"),
    ("predict", ["{d}/p1/same/x.png", *PRED, "--max-side", "3"], "--max-side 3: the model "
     "needs views of at least 8 px"),
]


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("command,args,phrase", IO_CASES,
                         ids=[f"{c}:{' '.join(a)[-60:]}" for c, a, _ in IO_CASES])
def test_eval_and_predict_misuse_exits_2_with_one_line(outputs, command, args, phrase, capsys):
    before = _tree(outputs)
    argv = [a.format(d=outputs) for a in args]
    try:
        code = MAINS[command]([*argv, "--no-progress"] if command == "eval" else argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"{PROGS[command]}: error: ") and phrase.format(d=outputs) in err, err
    assert _tree(outputs) == before  # nothing written, nothing replaced


def test_a_photo_over_the_pixel_limit_is_refused_before_decoding(outputs, monkeypatch, capsys):
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("decoded")

    big = _png_header(outputs / "img" / "big9000.png", 9000, 9000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setenv("ENCNET_MAX_IMAGE_PIXELS", "10000000")
    code = predict.main([str(big), "--checkpoint", str(outputs / "run" / "best.pt"), "--out",
                         str(outputs / "big")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"{big} is 9000x9000 = 81000000 pixels, over the limit of 10000000 pixels" in err
    assert "ENCNET_MAX_IMAGE_PIXELS" in err and not (outputs / "big").exists()


def test_a_photo_that_does_not_fit_in_memory_ends_in_one_line(outputs, monkeypatch, capsys):
    """A 9000 x 9000 PNG under the pixel limit, decoded under a memory limit."""
    from PIL import ImageFile

    def out_of_memory(self):
        raise MemoryError

    big = _png_header(outputs / "img" / "big9000.png", 9000, 9000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    code = predict.main([str(big), "--checkpoint", str(outputs / "run" / "best.pt"), "--out",
                         str(outputs / "big")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert f"image {big} does not fit in the memory available when decoded" in err
    assert not (outputs / "big").exists()


def test_resume_with_another_recipe_or_no_val_images_is_one_line(tmp_path, capsys):
    """Errors raised deep in training setup are library errors: one line, nothing changed."""
    run = tmp_path / "run"
    small = [*TRAIN, "--epochs", "1", "--batch-size", "4"]
    assert train.main([*small, "--out", str(run)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cases = [(["--resume", str(run), "--lr", "0.5"], "the recipe changed (lr"),
             (["--num-val-images", "0", "--out", str(tmp_path / "b")],
              "validation needs at least one image")]
    for extra, phrase in cases:
        try:
            code = train.main([*small, *extra])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "Traceback" not in err, err
        assert err.startswith("encnet-train: error: ") and phrase in err, err
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
