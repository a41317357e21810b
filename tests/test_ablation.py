"""The ablation helpers, benchmarks/ablation.py (a seconds-long run) and its saved results."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from encnet_lite import ablation
from encnet_lite.data.scenes import LOOKALIKES
from encnet_lite.metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ablation.py"
RESULTS = ROOT / "benchmarks" / "results" / "ablation.json"
ROWS = ("fcn", "fcn_enc", "encnet")


def load_script():
    spec = importlib.util.spec_from_file_location("ablation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_schema(result: dict) -> None:
    assert result["units"].startswith("fractions")
    for name in ROWS:
        run = result[name]
        n = len(run["seeds"])
        assert n >= 1 and len(run["mIoU"]) == len(run["pixAcc"]) == n
        assert all(0 <= v <= 1 for v in run["mIoU"] + run["pixAcc"])
        assert len(run["IoU"]) == n and all(len(r) == len(result["classes"]) for r in run["IoU"])
        assert len(run["confusion"]) == n
        for i, confusion in enumerate(run["confusion"]):  # the scores are compute()'s
            cm = ConfusionMatrix(len(result["classes"]))
            cm.matrix = torch.tensor(confusion)
            got = cm.compute()
            assert got["mIoU"] == pytest.approx(run["mIoU"][i], abs=1e-12)
            assert got["pixAcc"] == pytest.approx(run["pixAcc"][i], abs=1e-12)
            assert got["IoU"] == pytest.approx(run["IoU"][i], abs=1e-12)
    assert 0 < result["lookalike_fraction"] < 1 and 0 < result["blind_caps"]["mIoU"] < 1
    assert set(result["context_classes"]) <= set(result["classes"])
    rows = result["k_ablation"]["rows"]
    assert rows["0"]["source"] == "fcn"
    for row in rows.values():
        assert len(row["mIoU"]) == len(row["seeds"])
    assert result["seconds"] > 0


def test_mean_std_and_format():
    assert ablation.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert ablation.mean_std([5.0]) == (5.0, 0.0)
    assert ablation.format_mean_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0"
    assert ablation.format_mean_std([0.641, None], percent=True) == "64.1"  # one seed: no ±
    # scores are fractions: shown in percent; a class without an IoU (None) is left out
    assert ablation.format_mean_std([0.5, None, 0.7], percent=True) == "60.0 ± 14.1"
    assert ablation.mean_std([None, float("nan"), 0.25]) == (0.25, 0.0)


def test_read_result_converts_a_file_in_the_old_percent_format(tmp_path):
    old = {"units": "percent (miou, pixacc, iou, caps); confusion in pixel counts, rows = truth",
           "lookalike_fraction": 12.0, "blind_caps": {"miou": 66.0, "pixacc": 90.0},
           "fcn": {"seeds": [0], "miou": [64.0], "pixacc": [88.0], "iou": [[96.0, 32.0]],
                   "confusion": [[[10, 0], [0, 5]]]},
           "k_ablation": {"rows": {"0": {"source": "fcn", "miou": [64.0]}}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    got = ablation.read_result(path)
    assert got["fcn"]["mIoU"] == pytest.approx([0.64]) and "miou" not in got["fcn"]
    assert got["fcn"]["IoU"] == [pytest.approx([0.96, 0.32])]
    assert got["fcn"]["confusion"] == old["fcn"]["confusion"]  # counts stay counts
    assert got["blind_caps"] == pytest.approx({"mIoU": 0.66, "pixAcc": 0.9})
    assert got["lookalike_fraction"] == pytest.approx(0.12)
    assert got["k_ablation"]["rows"]["0"]["mIoU"] == pytest.approx([0.64])
    assert got["units"].startswith("converted on reading to fractions")
    # a file in the current format comes back as written
    path.write_text(json.dumps(got))
    assert ablation.read_result(path) == got


def test_ordering_steps_in_fractions():
    result = {"fcn": {"mIoU": [0.60, 0.62]}, "fcn_enc": {"mIoU": [0.64, 0.62]},
              "encnet": {"mIoU": [0.90, 0.92]}}
    step1, step2 = ablation.ordering_steps(result)
    assert step1["gain"] == pytest.approx(0.02) and not step1["holds"]  # under 3 points
    assert step2["gain"] == pytest.approx(0.28) and step2["holds"]


def test_restricted_confusion_rows_sum_to_one():
    m = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 4, 4]])
    out = ablation.restricted_confusion(m, [1, 2])
    assert out.shape == (2, 3)
    assert torch.allclose(out.sum(1), torch.ones(2, dtype=torch.float64))
    assert out[0].tolist() == pytest.approx([3 / 6, 1 / 6, 2 / 6])  # car->car, wagon, other


def test_ablation_config_is_the_preset_on_two_contexts_for_longer():
    from encnet_lite import presets

    cfg = ablation.ablation_config()
    preset = presets.scenes_encnet_tiny()
    assert cfg.scenes.day_night and not preset.scenes.day_night
    assert cfg.optim.epochs == ablation.ABLATION_EPOCHS > preset.optim.epochs
    assert cfg.runtime.val_every == 0 and not cfg.runtime.progress
    assert cfg.replace(epochs=preset.optim.epochs, day_night=False,
                       val_every=preset.runtime.val_every,
                       progress=True) == preset  # nothing else differs
    assert ablation.ablation_config(epochs=3, day_night=False).optim.epochs == 3


def test_k_variants_skip_zero():
    assert set(ablation.k_variants([0, 4, 16])) == {"encnet_k4", "encnet_k16"}
    assert ablation.k_variants([4])["encnet_k4"]["num_codes"] == 4


def test_script_quick_run_writes_the_schema(tmp_path):
    """A seconds-long run of the real script: FCN, FCN + encoding, EncNet, and K = 4."""
    out = tmp_path / "ablation.json"
    assert load_script().main(["--quick", "--jobs", "1", "--seeds", "0", "--ks", "0", "4", "32",
                               "--out", str(out)]) == 0
    result = ablation.read_result(out)
    check_schema(result)
    assert list(result["k_ablation"]["rows"]) == ["0", "4", "32"]
    assert result["k_ablation"]["rows"]["4"]["source"] == "encnet_k4"
    assert result["encnet_k4"]["overrides"]["num_codes"] == 4
    assert result["fcn_enc"]["overrides"] == {"arch": "encnet", "se_loss": False}


def group_iou(result: dict, row: str, names: list) -> list:
    """Mean IoU of the classes ``names`` in each seed of ``row``."""
    ids = [result["classes"].index(c) for c in names]
    return [sum(run[c] for c in ids) / len(ids) for run in result[row]["IoU"]]


@pytest.mark.data_check
@pytest.mark.skipif(not RESULTS.is_file(), reason="no saved ablation results")
def test_saved_results_show_the_context_gap():
    result = ablation.read_result(RESULTS)
    check_schema(result)
    assert all(len(result[name]["seeds"]) == 3 for name in ROWS)
    fcn, encnet = (ablation.mean_std(result[k]["mIoU"])[0] for k in ("fcn", "encnet"))
    assert encnet - fcn >= 0.10, "EncNet should beat the FCN by 10 mIoU points on ContextScenes"
    # No context-blind model can pass the cap: the FCN must stay below it.
    assert max(result["fcn"]["mIoU"]) <= result["blind_caps"]["mIoU"] + 0.01  # finite val split
    look = group_iou(result, "encnet", result["context_classes"])
    assert all(e - f > 0 and not math.isnan(e - f) for e, f in
               zip(look, group_iou(result, "fcn", result["context_classes"])))


@pytest.mark.data_check
@pytest.mark.skipif(not RESULTS.is_file(), reason="no saved ablation results")
def test_saved_results_reproduce_the_papers_ordering_step_by_step():
    """FCN < FCN + Context Encoding < EncNet, each step >= 3 mIoU points and larger than the
    sum of the two rows' standard deviations, on the scenes with two pieces of
    context; and each step's gain sits where it should: the look-alikes, then the birds."""
    result = ablation.read_result(RESULTS)
    assert result["config"]["day_night"] and result["bird_classes"] == ["pigeon", "bat"]
    steps = ablation.ordering_steps(result)
    assert [(s["lo"], s["hi"]) for s in steps] == [("fcn", "fcn_enc"), ("fcn_enc", "encnet")]
    for step in steps:
        assert step["holds"], step
        assert step["gain"] >= 0.03 and step["gain"] > step["spread"]
    caps = result["blind_caps"]
    # The module alone reads the kind but not the time: above the blind cap, at most the
    # kind-only cap; EncNet passes the kind-only cap in every seed.
    assert min(result["fcn_enc"]["mIoU"]) > caps["mIoU"] + 0.01
    assert max(result["fcn_enc"]["mIoU"]) <= caps["mIoU_kind_only"] + 0.01
    assert min(result["encnet"]["mIoU"]) > caps["mIoU_kind_only"]
    birds = {k: group_iou(result, k, result["bird_classes"]) for k in ROWS}
    assert max(birds["fcn_enc"]) <= caps["bird_IoU"] + 0.05  # random guessing between 2
    assert min(e - f for e, f in zip(birds["encnet"], birds["fcn_enc"])) > 0.20


SWEEP = sorted(RESULTS.parent.glob("ablation_lookalikes_*.json"))


@pytest.mark.data_check
@pytest.mark.parametrize("path", SWEEP, ids=[p.name for p in SWEEP])
def test_saved_sweep_files_are_what_their_names_say(path):
    """Checks on committed data (benchmarks/ablation.py --lookalikes ... wrote them)."""
    result = ablation.read_result(path)
    check_schema(result)
    lo, hi = (int(v) for v in path.stem.rsplit("_", 2)[-2:])
    config = result["config"]  # a file written before the fields existed: the defaults
    assert (config.get("min_lookalikes", LOOKALIKES[0]),
            config.get("max_lookalikes", LOOKALIKES[1])) == (lo, hi)
    assert not config.get("day_night", False)  # the plain scenes: kind only
    if (lo, hi) != LOOKALIKES:  # the default range was run without the flag
        assert f"--lookalikes {lo} {hi}" in result["command"]
    for name in ROWS:
        assert len(result[name]["mIoU"]) == len(result[name]["seeds"]) == 3
    # No context-blind model passes the cap, at any density (finite val split: 1 point slack).
    assert max(result["fcn"]["mIoU"]) <= result["blind_caps"]["mIoU"] + 0.01


@pytest.mark.slow
def test_run_grid_in_parallel_processes_gives_the_serial_results(tmp_path):
    """jobs=2 (spawned processes) and jobs=1 (this process) train the same runs alike."""
    from encnet_lite import presets

    base = presets.scenes_encnet_tiny(num_train_images=4, num_val_images=2, image_size=32,
                                      batch_size=4, epochs=1, progress=False, threads=1)
    variants = {"fcn": {"arch": "fcn", "se_loss": False}, "encnet": {}}
    seeds = {"fcn": [1], "encnet": [1, 0]}
    lines = []
    parallel = ablation.run_grid(variants, seeds, base, tmp_path / "par", jobs=2,
                                 log=lines.append)
    serial = ablation.run_grid(variants, seeds, base, tmp_path / "ser", jobs=1, log=None)
    assert len(lines) == 3 and sum("encnet" in s for s in lines) == 2
    assert list(parallel) == ["fcn", "encnet"] and parallel["encnet"]["seeds"] == [1, 0]
    for name in variants:
        assert parallel[name]["overrides"] == variants[name]
        assert parallel[name]["confusion"] == serial[name]["confusion"], name
        for key in ("mIoU", "pixAcc", "loss"):
            assert parallel[name][key] == pytest.approx(serial[name][key], abs=1e-9), (name, key)
        for run in parallel[name]["confusion"]:  # every val pixel counted once
            assert sum(map(sum, run)) == 2 * 32 * 32
    # The seeds change the runs: EncNet's two seeds differ, each wrote its own run folder.
    assert parallel["encnet"]["loss"][0] != parallel["encnet"]["loss"][1]
    assert sorted(p.name for p in (tmp_path / "par").iterdir()) == [
        "encnet_s0", "encnet_s1", "fcn_s1"]
    assert all((tmp_path / "par" / d / "last.pt").is_file() for d in ("encnet_s0", "fcn_s1"))
