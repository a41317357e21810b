"""The budget: a few measured iterations say what a run will cost, and nothing is written."""

import math

import pytest

from encnet_lite import budget, presets

GiB = 2**30


def test_suggest_batch_follows_the_linear_lr_rule():
    # 2 GiB of weights + 0.5 GiB per image at batch 16 = 10 GiB; 90 % of 8 GiB leaves 10 images.
    s = budget.suggest_batch(16, 1e-3, peak=10 * GiB, fixed=2 * GiB, limit=8 * GiB)
    assert s["batch_size"] == 10 and s["lr"] == pytest.approx(1e-3 * 10 / 16)
    assert budget.suggest_batch(16, 1e-3, peak=6 * GiB, fixed=2 * GiB, limit=8 * GiB) is None
    assert budget.suggest_batch(16, 1e-3, 10 * GiB, 2 * GiB, limit=None) is None
    assert budget.suggest_batch(16, 1e-3, 10 * GiB, 9 * GiB, limit=8 * GiB)["batch_size"] == 0


def test_duration_picks_a_readable_unit():
    assert budget.duration(4.25) == "4.2 s" and budget.duration(42) == "42 s"
    assert budget.duration(600) == "10.0 min" and budget.duration(7200) == "2.0 h"


def test_measure_budget_on_the_tiny_preset_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = presets.scenes_encnet_tiny(epochs=3, val_every=2)
    b = budget.measure_budget(cfg, iterations=2, eval_images=1)
    assert list(tmp_path.iterdir()) == []
    assert b["iterations_per_epoch"] == 512 // 16  # the preset's own sizes
    assert b["iterations_per_s"] == pytest.approx(1 / b["seconds_per_iteration"])
    assert b["images_per_s"] == pytest.approx(16 / b["seconds_per_iteration"])
    assert b["epoch_s"] == pytest.approx(32 * b["seconds_per_iteration"])
    assert b["validations"] == 2  # after epoch 2 and the last one
    assert b["schedule_s"] == pytest.approx(3 * b["epoch_s"] + 2 * b["validation_s"])
    assert b["eval_images"] == 128 and 0 < b["eval_single_s"] < b["eval_multi_s"]
    assert b["peak_memory"] >= b["fixed_memory"] > 0 and b["memory_kind"] == "CPU peak RSS"
    assert b["suggestion"] is None  # the tiny run fits in this machine's memory
    assert all(math.isfinite(v) for v in b.values() if isinstance(v, float))
    text = budget.format_budget(b)
    for words in ("iterations/s", "peak memory", "one epoch", "whole schedule", "multi-scale"):
        assert words in text
    # A limit that holds the measured fixed part and half of the per-batch part: batch 8.
    half = (b["fixed_memory"] + (b["peak_memory"] - b["fixed_memory"]) / 2) / budget.HEADROOM
    s = budget.suggest_batch(16, cfg.optim.lr, b["peak_memory"], b["fixed_memory"], int(half) + 1)
    assert s["batch_size"] == 8 and s["lr"] == pytest.approx(cfg.optim.lr / 2)
    text = budget.format_budget({**b, "suggestion": s})
    assert "batch_size=8 with lr=0.025" in text
    assert max(map(len, text.splitlines())) <= 76  # fits the book's column


def test_cli_budget_from_an_empty_folder_prints_and_writes_nothing(tmp_path, monkeypatch,
                                                                   capsys):
    from encnet_lite import train

    monkeypatch.chdir(tmp_path)
    assert train.main(["--preset", "scenes_encnet_tiny", "--budget", "2"]) == 0
    out = capsys.readouterr().out
    for words in ("iterations/s", "peak memory", "one epoch      32 iterations",
                  "whole schedule 12 epochs", "evaluation     128 images"):
        assert words in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no checkpoint
