"""The ablation chapter's tables and verdicts (encnet_lite.ablation_report) on made-up results."""

import json

import pytest

from encnet_lite import ablation
from encnet_lite import ablation_report as report

CLASSES = ["ground", "boat", "car", "pigeon", "bat"]


def run(m_iou, iou, pix_acc=None):
    """A row over seeds: ``m_iou`` (mIoU) per seed, ``iou`` per seed and class (fractions)."""
    return {"seeds": list(range(len(m_iou))), "mIoU": m_iou, "IoU": iou,
            "pixAcc": pix_acc or [0.9] * len(m_iou)}


def result(birds=True):
    out = {
        "classes": CLASSES if birds else CLASSES[:3],
        "context_classes": ["boat", "car"],
        "lookalike_fraction": 0.12,
        "blind_caps": {"mIoU": 0.66, "pixAcc": 0.9, "mIoU_kind_only": 0.88},
        "fcn": run([0.60, 0.62], [[0.97, 0.2, 0.1, 0.3, 0.3], [0.97, 0.2, 0.3, 0.3, 0.3]]),
        "fcn_enc": run([0.80, 0.84], [[0.97, 0.9, 0.9, 0.3, 0.3], [0.97, 0.9, 0.9, 0.3, 0.3]]),
        "encnet": run([0.95, 0.93], [[0.97, 0.9, 0.9, 0.8, 0.9], [0.97, 0.9, 0.9, None, 0.9]]),
    }
    if birds:
        out["bird_classes"] = ["pigeon", "bat"]
        out["bird_fraction"] = 0.05
    else:
        for k in ("fcn", "fcn_enc", "encnet"):
            out[k]["IoU"] = [per_seed[:3] for per_seed in out[k]["IoU"]]
    return out


def test_score_shows_a_spread_only_with_several_seeds():
    assert report.score([0.641]) == "64.1"
    assert report.score([0.5, 0.7]) == "60.0 ± 14.1"


def test_class_groups_with_and_without_birds():
    assert report.class_groups(result()) == {"look-alike": [1, 2], "bird": [3, 4], "other": [0]}
    assert report.class_groups(result(birds=False)) == {"look-alike": [1, 2], "other": [0]}


def test_group_gain_skips_missing_ious():
    r = result()
    # step 1 on the look-alikes: (0.2 + 0.1 + 0.2 + 0.3) / 4 = 0.2 -> 0.9
    assert report.group_gain(r, "fcn", "fcn_enc", [1, 2]) == pytest.approx(0.7)
    # pigeon of encnet: one seed without an IoU (None) is left out of the mean
    assert report.group_gain(r, "fcn_enc", "encnet", [3]) == pytest.approx(0.5)


def test_score_table_gains_over_the_fcn():
    header, rows = report.score_table(result())
    assert header == ["model", "pixAcc (%)", "mIoU (%)", "mIoU vs FCN"]
    assert [row[0] for row in rows] == ["FCN", "FCN + Enc.", "EncNet"]
    assert rows[0][2] == "61.0 ± 1.4" and rows[0][3] == ""
    assert rows[1][3] == "+21.0" and rows[2][3] == "+33.0"


def test_per_class_table_marks_context_classes():
    header, rows = report.per_class_table(result())
    assert header == ["class", "FCN IoU (%)", "FCN + Enc. IoU (%)", "EncNet IoU (%)"]
    assert [row[0] for row in rows] == ["ground", "**boat**", "**car**", "*pigeon*", "*bat*"]
    assert rows[2][1:] == ("20.0", "90.0", "90.0")
    assert rows[3][1:] == ("30.0", "30.0", "80.0")  # a seed without an IoU is left out


def test_gains_never_show_minus_zero():
    r = result()
    r["fcn_enc"]["IoU"][0][0] = 0.9699  # a gain of -0.005 points rounds to 0.0, unsigned
    assert report.gain_lines(r)[-1] == "other classes: step 1 +0.0, step 2 +0.0 points of IoU"


def test_gain_and_cap_lines():
    lines = report.gain_lines(result())
    assert lines[0] == "look-alike classes: step 1 +70.0, step 2 +0.0 points of IoU"
    assert lines[1].startswith("bird classes: step 1 +0.0, step 2 +56.7")
    caps = report.cap_lines(result())
    assert "  FCN: 0 of 2 / 0 of 2" in caps and "  EncNet: 2 of 2 / 2 of 2" in caps
    assert "  FCN + Enc.: 2 of 2 / 0 of 2" in caps
    assert "look-alikes: 12.0 % of the val pixels, birds: 5.0 %" in caps


def test_k_sweep_table_with_one_seed_has_no_spread():
    r = result()
    r["k_ablation"] = {"rows": {"0": {"source": "fcn", **run([0.6], [r["fcn"]["IoU"][0]])},
                                "32": {"source": "encnet", **run([0.95], [r["encnet"]["IoU"][0]])}}}
    header, rows = report.k_sweep_table(r)
    assert header[-2:] == ["look-alike IoU (%)", "bird IoU (%)"]
    assert header[:3] == ["K", "mIoU (%)", "pixAcc (%)"]
    assert rows[0] == ("0", "60.0", "90.0", "15.0", "30.0")
    assert rows[1] == ("32", "95.0", "90.0", "90.0", "85.0")
    assert not any("±" in str(cell) for row in rows for cell in row)


def test_step_lines_and_density_table_verdicts():
    r = result()
    lines = report.step_lines(r)
    assert lines[0] == "FCN -> FCN + Enc.: +21.0 mIoU points,"
    assert lines[1] == "  sum of stds 4.2: the step holds"
    flat = result(birds=False)
    flat["encnet"]["mIoU"] = [0.83, 0.81]  # inside the spread of fcn_enc
    sweep = {(4, 8): r, (2, 4): flat}
    header, rows = report.density_table(sweep)
    assert header == ["row", "2-4 per image", "4-8 per image"]
    assert rows[2] == ("EncNet", "82.0 ± 1.4", "94.0 ± 1.4")
    assert report.density_lines(sweep) == [
        "2-4 look-alikes: step 1 holds, step 2 does not hold",
        "4-8 look-alikes: step 1 holds, step 2 holds"]


def test_read_result_gives_an_old_config_the_data_defaults(tmp_path):
    from encnet_lite.data.scenes import LOOKALIKES

    path = tmp_path / "old.json"
    path.write_text(json.dumps({"units": "fractions", "config": {"dataset": "scenes",
                                                                 "epochs": 12}}))
    config = ablation.read_result(path)["config"]
    assert (config["min_lookalikes"], config["max_lookalikes"]) == LOOKALIKES
    assert config["day_night"] is False and config["epochs"] == 12
    path.write_text(json.dumps({"units": "fractions", "config": {
        "dataset": "scenes", "min_lookalikes": 2, "max_lookalikes": 4, "day_night": True}}))
    config = ablation.read_result(path)["config"]  # fields the file has are kept
    assert (config["min_lookalikes"], config["max_lookalikes"], config["day_night"]) == (2, 4, True)


def test_codeword_lines_count_seeds_and_sum_the_spread_from_its_parts():
    variants = {"official": {"mIoU": [0.94, 0.96], "live_codewords": [1, 1]},
                "shared_kmeans": {"mIoU": [0.95, 0.96, 0.94], "live_codewords": [12, 10, 9]}}
    lines = report.codeword_lines(variants)
    # stds: 0.01 * sqrt(2) = 1.41 and 1.00 points; gain 95.0 - 95.0 = 0
    assert lines == ["official (2 seeds): mIoU 95.0 ± 1.4 %, live codewords: 1, 1",
                     "shared_kmeans (3 seeds): mIoU 95.0 ± 1.0 %, live codewords: 12, 10, 9",
                     "shared_kmeans - official: +0.00 points, inside the spread "
                     "1.41 + 1.00 = 2.41"]
    variants["shared_kmeans"]["mIoU"] = [0.99, 0.99, 0.99]  # +4 points, no spread of its own
    assert report.codeword_lines(variants)[-1] == (
        "shared_kmeans - official: +4.00 points, outside the spread 1.41 + 0.00 = 1.41")


def test_provenance_lines_leave_out_the_runs_dir():
    saved = {"date": "2026-11-26", "seconds": 600.0, "jobs": 2,
             "machine": {"cpu": "Some", "cpu_count": 2, "torch": "2.0"},
             "config": {"threads": 1, "epochs": 20, "num_train_images": 512,
                        "batch_size": 16, "lr": 0.05}}
    for command in ("benchmarks/ablation.py --k-seeds 0 --runs-dir runs/x --ks 0",
                    "benchmarks/ablation.py --k-seeds 0 --runs-dir=runs/x --ks 0"):
        lines = report.provenance_lines({**saved, "command": command}, "a.json")
        assert lines[2] == "  `benchmarks/ablation.py --k-seeds 0 --ks 0`"
    lines = report.provenance_lines({**saved, "command": "benchmarks/ablation.py"}, "a.json")
    assert lines[0] == "showing: a.json, 2026-11-26" and lines[2] == "  `benchmarks/ablation.py`"
    assert lines[3] == "  10.0 min wall time, 2 runs at a time, 1 thread(s) each"


def test_variant_table_counts_the_parameters_of_each_row():
    header, rows = report.variant_table(ablation.ablation_config(), num_classes=11)
    assert header == ["row", "model", "overrides", "params"]
    # a zero-width space after "_", so that the name can break in a narrow table
    assert [row[:2] for row in rows] == [("`fcn`", "FCN"), ("`fcn_\u200benc`", "FCN + Enc."),
                                         ("`encnet`", "EncNet")]
    counts = [float(row[3].split()[0]) for row in rows]
    assert counts[0] < counts[1] < counts[2]  # + the module, + the SE branch
    assert rows[1][2] == "arch=encnet, se_loss=False"
