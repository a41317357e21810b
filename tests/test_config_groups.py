"""TrainConfig grouped by concern: its shape, flat names as the interface, and a run saved
with the flat config of earlier versions (``fixtures/config_flat_2026.json``, 45 fields
as checkpoints and ``config.json`` stored them) still resumes and evaluates."""

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from helpers import crash_during

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import evaluate, presets
from encnet_lite import train as train_mod
from encnet_lite.presets import LEAVES, TrainConfig
from encnet_lite.train import load_history, train

FLAT = Path(__file__).parent / "fixtures" / "config_flat_2026.json"


def test_few_top_level_fields_unique_leaves_and_a_flag_for_each():
    assert len(fields(TrainConfig)) <= 8
    leaves = [leaf.name for f in fields(TrainConfig)
              for leaf in (fields(f.default_factory) if callable(f.default_factory) else [f])]
    assert len(leaves) == len(set(leaves)) == len(LEAVES)  # a flat name finds one field
    flags = {a.dest for a in train_mod.build_parser()._actions}
    assert set(LEAVES) <= flags
    cfg = presets.get_preset("scenes_encnet_tiny", lr=0.2, num_codes=8, arch="fcn",
                             image_size=96, workers=1)
    assert (cfg.optim.lr, cfg.model.num_codes, cfg.model.arch, cfg.scenes.image_size,
            cfg.runtime.workers) == (0.2, 8, "fcn", 96, 1)
    assert cfg.flat()["lr"] == 0.2 and set(cfg.flat()) == set(LEAVES)


def test_the_flat_dict_of_earlier_versions_reads_as_the_same_config():
    flat = json.loads(FLAT.read_text())
    assert len(flat) == 45 and flat["model"] == "encnet"
    cfg = TrainConfig.from_dict(flat)
    assert cfg.model.arch == "encnet" and cfg.model.encoder == "shared_kmeans"
    assert (cfg.scenes.num_train_images, cfg.optim.batch_size, cfg.runtime.checkpoint_every) \
        == (24, 4, 4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the nested form round-trips
    # Every other old value is the same leaf under its group.
    renamed = {"model", "pretrained_backbone", "backbone_weights"}
    assert {k: v for k, v in flat.items() if k not in renamed} == {
        k: v for k, v in cfg.flat().items() if k not in ("arch", "weights_backbone")}
    # The two backbone-initialisation fields became one.
    for pretrained, path, expected in [(False, "", ""), (True, "", "imagenet"),
                                       (True, "r50.pth", "r50.pth")]:
        old = {**flat, "pretrained_backbone": pretrained, "backbone_weights": path}
        assert TrainConfig.from_dict(old).runtime.weights_backbone == expected


def test_resume_rule_is_decided_by_the_groups(tmp_path):
    cfg = TrainConfig.from_dict(json.loads(FLAT.read_text()))
    free = cfg.replace(workers=2, device="cpu", out=str(tmp_path), progress=True,
                       weights_backbone="imagenet", name="other")
    assert presets.resume_changes(cfg, free) == {"weights": [], "recipe": []}
    changed = cfg.replace(num_codes=8, lr=0.1, image_size=96)
    assert presets.resume_changes(cfg, changed) == {
        "weights": ["num_codes: 32 -> 8"], "recipe": ["image_size: 64 -> 96", "lr: 0.05 -> 0.1"]}


def _as_before(folder: Path, flat: dict) -> None:
    """Store ``flat`` in ``folder``'s checkpoints and config.json, as earlier versions did."""
    for name in ("last.pt", "best.pt"):
        if not (folder / name).is_file():  # no epoch finished yet: no best.pt
            continue
        saved = ckpt_io.load(folder / name)
        saved["config"] = dict(flat)
        ckpt_io.save_atomic(saved, folder / name)
    (folder / "config.json").write_text(json.dumps(flat, indent=2) + "\n")


@pytest.mark.numerics
def test_a_run_saved_with_the_flat_config_resumes_and_evaluates(tmp_path, monkeypatch,
                                                               capsys):
    flat = json.loads(FLAT.read_text())
    cfg = TrainConfig.from_dict(flat).replace(device="cpu")
    full = train(cfg.replace(out=str(tmp_path / "full")))
    # The same run (checkpoint every 4 iterations) crashes in iteration 10 of 12; its files
    # are then rewritten to hold the committed flat config, as a run of before would.
    crashed = cfg.replace(out=str(tmp_path / "old"))
    crash_during(crashed, monkeypatch, at=10)
    assert ckpt_io.load(tmp_path / "old" / "last.pt")["iteration"] == 8
    _as_before(tmp_path / "old", flat)
    resumed = train(crashed, resume=True)
    steps = [(s["iteration"], s["loss"]) for s in load_history(tmp_path / "old",
                                                               "iterations.jsonl")]
    assert steps == [(s["iteration"], s["loss"])
                     for s in load_history(tmp_path / "full", "iterations.jsonl")]
    assert [h["mIoU"] for h in resumed.history] == [h["mIoU"] for h in full.history]
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)
    # The resumed run stores the grouped config; its best.pt, put back to the flat form,
    # is scored by encnet-eval as the run's own validation scored it.
    assert ckpt_io.load(tmp_path / "old" / "last.pt")["config"] == crashed.to_dict()
    _as_before(tmp_path / "old", flat)
    best = tmp_path / "old" / "best.pt"
    assert evaluate.main(["--checkpoint", str(best), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "old" / "best.eval.json").read_text())
    assert report["mIoU"] == pytest.approx(max(h["mIoU"] for h in full.history), abs=1e-9)
    assert report["num_images"] == 8
    capsys.readouterr()


def test_the_cli_resumes_a_flat_config_run_by_its_folder(tmp_path, monkeypatch):
    flat = json.loads(FLAT.read_text())
    crashed = TrainConfig.from_dict(flat).replace(device="cpu", out=str(tmp_path / "old"))
    crash_during(crashed, monkeypatch, at=6)
    _as_before(tmp_path / "old", flat)
    args = train_mod.build_parser().parse_args(["--resume", str(tmp_path / "old")])
    cfg = train_mod.config_from_args(args)  # read from last.pt's flat config
    assert cfg == TrainConfig.from_dict(flat).replace(out=str(tmp_path / "old"))
    assert train_mod.main(["--resume", str(tmp_path / "old"), "--device", "cpu"]) == 0
    assert ckpt_io.load(tmp_path / "old" / "last.pt")["iteration"] == 12
