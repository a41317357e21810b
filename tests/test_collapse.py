"""Checks of encnet_lite.collapse (the encoding chapter's collapse measurements) and of the
tables the chapter and benchmarks/encoding.py print (viz.encoding, viz.tables)."""

from __future__ import annotations

import math

import pytest
import torch

from encnet_lite import collapse, viz
from encnet_lite.ablation import gain_over_spread
from encnet_lite.context import assignment_health
from encnet_lite.encoding import Encoding


def test_rectified_descriptors_have_half_a_unit_mean_square():
    x = collapse.rectified_descriptors(4000, 64, torch.Generator().manual_seed(0))
    assert x.shape == (1, 4000, 64) and float(x.min()) == 0.0
    # E[relu(z)^2] = 1/2 for z ~ N(0, 1): ||x||^2 ~ D / 2 = 32
    assert float(x.pow(2).sum(-1).mean()) == pytest.approx(32.0, rel=0.02)


def test_material_descriptors_follow_their_centres():
    x, labels = collapse.material_descriptors(600, 16, 3, noise=0.0,
                                              generator=torch.Generator().manual_seed(1))
    assert x.shape == (1, 600, 16) and labels.shape == (600,)
    assert set(labels.tolist()) == {0, 1, 2}
    for m in range(3):  # without noise every position of a material is the same vector
        rows = x[0, labels == m]
        assert torch.equal(rows, rows[:1].expand_as(rows))


def test_collapse_norm_is_the_root_of_the_bound():
    lead, k = 0.1, 32
    t = collapse.collapse_norm(lead, k)
    # lead t^2 - 4 t / sqrt(K) - 1/K = 0 at the bound, > 0 beyond it
    assert lead * t * t - 4 * t / math.sqrt(k) - 1 / k == pytest.approx(0.0, abs=1e-12)
    assert lead * (1.01 * t) ** 2 - 4.04 * t / math.sqrt(k) - 1 / k > 0
    assert collapse.collapse_norm(0.0, k) == math.inf


def test_beyond_the_bound_the_largest_scale_wins_every_position():
    torch.manual_seed(2)
    layer = Encoding(8, 5)  # official initialisation: ||c_k|| <= 1/sqrt(K), scale in (-1, 0)
    k_star, lead = collapse.largest_scale_lead(layer)
    assert k_star == int(layer.scale.argmax()) and lead > 0
    directions = torch.nn.functional.normalize(torch.randn(1, 500, 8), dim=-1)
    x = 1.001 * collapse.collapse_norm(lead, 5) * directions  # any direction, past the bound
    assert bool((layer.assign(x).argmax(-1) == k_star).all())


def test_shared_factor_has_no_lead():
    assert collapse.largest_scale_lead(Encoding(8, 4, variant="shared"))[1] == 0.0


def test_norm_sweep_turns_the_official_layer_hard_on_one_codeword():
    torch.manual_seed(3)
    layer = Encoding(64, 8)
    x = collapse.rectified_descriptors(400, 64)
    records = collapse.norm_sweep(layer, x, (0.01, 3.0))
    assert [r["multiplier"] for r in records] == [0.01, 3.0]
    assert records[1]["mean_sq_norm"] == pytest.approx(9.0 * float(x.pow(2).sum(-1).mean()),
                                                       rel=1e-5)
    small, large = records
    assert small["assignment_perplexity"] > 7.5  # nearly uniform weights at a tiny norm
    assert large["live_codewords"] == 1.0 and large["largest_scale_share"] == 1.0
    assert large["assignment_perplexity"] == pytest.approx(1.0, abs=1e-3)


def test_variant_usage_separates_materials_only_without_the_collapse():
    torch.manual_seed(4)
    x, labels = collapse.material_descriptors(900, 32, 4)
    out = collapse.variant_usage(x, labels, 4, ("official", "shared_kmeans"), 16)
    assert out["official"]["health"]["live_codewords"] == 1.0
    assert len(set(out["official"]["favourite"])) == 1
    assert len(set(out["shared_kmeans"]["favourite"])) == 4  # k-means finds each material
    assert math.isnan(out["shared_kmeans"]["health"]["largest_scale_share"])
    usage = out["shared_kmeans"]["usage"]
    assert usage.shape == (4, 16)
    torch.testing.assert_close(usage.sum(1), torch.ones(4))


def test_assignment_health_of_a_one_hot_assignment():
    assign = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 2]), 4).float()
    health = assignment_health(assign, torch.tensor([-0.1, -0.5, -0.2, -0.9]))
    assert health["live_codewords"] == 2.0
    assert health["largest_scale_share"] == 0.75  # codeword 0 has the largest scale
    # mean assignment (0.75, 0, 0.25, 0): exp of its entropy
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert health["assignment_perplexity"] == pytest.approx(math.exp(entropy))


def test_gain_over_spread():
    step = gain_over_spread([0.94, 0.96], [0.95, 0.951, 0.952])
    assert step["gain"] == pytest.approx(0.951 - 0.95)
    assert step["spread"] == pytest.approx(math.sqrt(2e-4) + 0.001)
    assert not step["beyond_spread"]
    assert gain_over_spread([0.5, 0.51], [0.7, 0.71])["beyond_spread"]


def _bench_result():
    def row(batch, impl, ms, mib, **extra):
        return {"batch": batch, "impl": impl, "time_ms": ms, "extra_peak_mib": mib, **extra}
    default = dict(passes_over_x_ms={"norms": 1.0, "norm_gradient": 2.0},
                   subnormal_weight_share=0.05)
    rows = [row(1, "default", 10.0, 5.0, **default), row(1, "reference", 400.0, 600.0),
            row(1, "floor", 6.0, 1.0), row(4, "default", 40.0, 20.0, **default),
            {"batch": 4, "impl": "reference", "skipped": "over budget"},
            row(4, "floor", 30.0, 4.0)]
    ratios = [{"batch": 1, "floor_ratio": 10 / 6, "floor_ratio_after_small": 1.5,
               "speedup": 40.0, "memory_ratio": 120.0},
              {"batch": 4, "floor_ratio": 40 / 30, "floor_ratio_after_small": 1.25,
               "speedup": None, "memory_ratio": None}]
    return {"rows": rows, "rows_after_small": rows, "ratios": ratios}


def test_encoding_benchmark_tables_read_the_rows():
    tables = viz.encoding_benchmark_tables(_bench_result())
    assert tables["speed"][1] == [(1, "10.0", "6.0", "1.67x", "1.50x"),
                                  (4, "40.0", "30.0", "1.33x", "1.25x")]
    assert tables["literal"][1] == [(1, "5", "600", "120x", "40x"),
                                    (4, "20", "skipped", "", "")]
    # the rest beyond the floor: 10 - 6 - (1 + 2) = 1 ms; 40 - 30 - 3 = 7 ms
    assert [r[3] for r in tables["split"][1]] == ["1.0", "7.0"]
    assert all(len(header) == len(rows[0]) for header, rows in tables.values())


def test_codeword_study_tables_one_column_per_variant():
    result = {"variants": {"official": {"seeds": [0, 1], "mIoU": [0.9, 0.92],
                                        "live_codewords": [1.0, 1.0],
                                        "largest_scale_share": [1.0, 1.0]},
                           "shared_kmeans": {"seeds": [0], "mIoU": [0.95],
                                             "live_codewords": [12.0],
                                             "largest_scale_share": [float("nan")]}},
              "screen": {"budget": "4 epochs", "seed": 0,
                         "variants": {"l2": {"mIoU": 0.5, "live_codewords": 1.0}}}}
    tables = collapse.codeword_study_tables(result)
    header, rows = tables["variants"]
    assert header == ["", "`official`", "`shared_kmeans`"]
    assert rows[1] == ("live codewords", "1, 1", "12")
    assert rows[2] == ("top-scale share", "1.00, 1.00", "n/a")
    assert rows[3] == ("val mIoU (%)", "91.0 ± 1.4", "95.0")  # one seed: no ±
    assert tables["screen"][1] == [("`l2`", "1", "50.0")]
    assert "4 epochs, seed 0" in tables["screen"][0][0]


def test_text_table_aligns_columns():
    lines = viz.text_table(["a", "bb"], [(1, "x"), (100, "yyy")])
    assert lines == ["  a   bb", "--------", "  1    x", "100  yyy"]
