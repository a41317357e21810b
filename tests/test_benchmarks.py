"""The benchmark scripts' shared part (benchmarks/_common.py) and each script's main() at its
smallest sizes (the measuring itself, encnet_lite.measure, is tested in tests/test_measure.py).

The scripts run on the CPU with ``--quick`` (seconds each); the checks are that the JSON has
the keys the chapters read and that every ratio is computed from the numbers measured in the
same run. benchmarks/ablation.py's seconds-long run lives in tests/test_ablation.py.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from encnet_lite import measure

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common():
    load("encoding")  # puts benchmarks/ on sys.path, as running a script does
    return sys.modules["_common"]


def run_main(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    threads = torch.get_num_threads()
    try:
        assert load(name).main(["--quick", "--device", "cpu", "--threads", "1", "--out",
                                str(out), *args]) == 0
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide; leave the test process as is
    return json.loads(out.read_text())


def check_machine(result: dict, common) -> None:
    m = result["machine"]
    assert m["device"] == "cpu" and m["torch"] == torch.__version__
    # one description of the CPU everywhere: the model name, not the architecture
    assert m["cpu"] == m["device_name"] == measure.cpu_name()
    assert m["torch_threads"] == 1 and m["peak_rss_mib"] > 0
    assert result["wall_s"] >= 0 and result["quick"] is True


# --- the toolkit --------------------------------------------------------------------------


def test_ratio_and_write_result(common, tmp_path):
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(1.0, 0) is None and common.ratio(None, 1.0) is None
    path = common.write_result(tmp_path / "sub" / "r.json", {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left


def test_shared_cli_options(common):
    args = common.parser("Doc line.\n\nmore").parse_args(["--quick", "--device", "cpu"])
    assert (args.quick, args.device, args.out, args.threads) == (True, "cpu", None, 0)
    assert common.out_path(args, "x", torch.device("cpu")) == common.RESULTS / "x_cpu.json"
    if not torch.cuda.is_available():  # one line naming the flag and the fix, no traceback
        args = common.parser("Doc.").parse_args(["--device", "cuda"])
        with pytest.raises(SystemExit, match="--device cuda: no such CUDA GPU.*use auto, cpu"):
            common.setup(args)


# --- the scripts --------------------------------------------------------------------------


def test_encoding_benchmark_ratios_come_from_its_rows(tmp_path, common):
    result = run_main("encoding", tmp_path, "--repeats", "4")
    check_machine(result, common)
    # the fields the encoding chapter prints
    for key in ("device_name", "threads", "torch", "date", "time_method", "memory_method",
                "floor", "orders", "malloc"):
        assert key in result
    assert sorted(result["orders"]) == ["after_small", "fresh"]
    expected = sorted((b, impl) for b in (1, 2) for impl in ("default", "floor", "reference"))
    fresh = {(r["batch"], r["impl"]): r for r in result["rows"]}
    after = {(r["batch"], r["impl"]): r for r in result["rows_after_small"]}
    assert sorted(fresh) == sorted(after) == expected
    for r in result["rows"] + result["rows_after_small"]:
        # the literal form takes part in the first three interleaved rounds only
        assert len(r["time_ms_all"]) == (3 if r["impl"] == "reference" else 4)
        assert r["time_ms"] == pytest.approx(min(r["time_ms_all"]), abs=0.01)
        assert r["extra_peak_mib"] > 0
    for q in result["ratios"]:
        b = q["batch"]
        new, ref, floor = (fresh[b, impl] for impl in ("default", "reference", "floor"))
        assert q["speedup"] == pytest.approx(ref["time_ms"] / new["time_ms"])
        assert q["memory_ratio"] == pytest.approx(ref["extra_peak_mib"] / new["extra_peak_mib"])
        assert q["floor_ratio"] == pytest.approx(new["time_ms"] / floor["time_ms"])
        assert q["floor_ratio_after_small"] == pytest.approx(
            after[b, "default"]["time_ms"] / after[b, "floor"]["time_ms"])
        assert q["after_small_over_fresh"] == pytest.approx(
            after[b, "default"]["time_ms"] / new["time_ms"])
        assert q["floor_ratio_cpu"] == pytest.approx(new["cpu_ms"] / floor["cpu_ms"])
        assert q["floor_ratio_cpu_after_small"] == pytest.approx(
            after[b, "default"]["cpu_ms"] / after[b, "floor"]["cpu_ms"])
        assert 0 <= new["subnormal_weight_share"] < 1
        assert sorted(new["passes_over_x_ms"]) == ["norm_gradient", "norms"]
        assert all(t > 0 for t in new["passes_over_x_ms"].values())
    # the literal form holds a (B, N, K, D) tensor: more memory than the expanded one
    assert all(q["memory_ratio"] > 1 for q in result["ratios"])
    # the target is judged at batch 4, not measured by --quick
    assert result["target"] == {"floor_ratio_max": 1.5, "batch": 4, "worst_floor_ratio": None,
                                "met": None}


def test_encoding_benchmark_target_is_the_worse_order(common):
    bench = load("encoding")
    ratios = [{"batch": 4, "floor_ratio": 1.2, "floor_ratio_after_small": 1.6}]
    assert bench.target(ratios) == {"floor_ratio_max": 1.5, "batch": 4,
                                    "worst_floor_ratio": 1.6, "met": False}
    ratios[0]["floor_ratio_after_small"] = 1.4
    assert bench.target(ratios)["met"] is True


def test_encoding_benchmark_floor_runs_the_six_products_of_the_layer_sizes(common, monkeypatch):
    bench = load("encoding")
    x = torch.randn(2, 6, 10).transpose(1, 2)  # (B, N, D) view of (B, D, N) memory
    shapes = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: shapes.append(
        (tuple(a.shape), tuple(b.shape))) or real_bmm(a, b))
    bench.floor_call(x, k=3)()
    monkeypatch.undo()
    b, n, d, k = 2, 10, 6, 3
    assert shapes == [((b, k, d), (b, d, n)), ((b, d, n), (b, n, k)),  # X C^T, A^T X
                      ((b, k, d), (b, d, n)), ((b, d, k), (b, k, n)),  # X G^T, A G
                      ((b, d, k), (b, k, n)), ((b, d, n), (b, n, k))]  # dS C, dS^T X


def test_encoding_benchmark_skips_the_reference_over_budget(tmp_path):
    result = run_main("encoding", tmp_path, "--batches", "1", "--budget-gib", "0")
    ref = next(r for r in result["rows"] if r["impl"] == "reference")
    assert "budget 0 GiB" in ref["skipped"] and "time_ms" not in ref
    (q,) = result["ratios"]
    assert (q["batch"], q["speedup"], q["memory_ratio"]) == (1, None, None)
    assert q["floor_ratio"] > 0  # the layer and the floor are still measured


def test_models_benchmark_ratios_come_from_its_results(tmp_path, common):
    result = run_main("models", tmp_path)
    check_machine(result, common)
    fcn, enc = result["results"]["fcn"], result["results"]["encnet"]
    q = result["ratios"]
    assert q["step_time"] == pytest.approx(enc["step_s"] / fcn["step_s"])
    assert q["step_cpu_time"] == pytest.approx(enc["cpu_s"] / fcn["cpu_s"])
    assert q["step_time_from_module"] == pytest.approx(1 + enc["module_s"] / fcn["step_s"])
    assert q["params"] == pytest.approx(enc["params"] / fcn["params"]) and q["params"] > 1
    assert q["peak_memory"] == pytest.approx(enc["peak_mib"] / fcn["peak_mib"])
    assert fcn["images_per_s"] == pytest.approx(result["config"]["input"][0] / fcn["step_s"])
    t = result["target"]
    assert t["judged_on"] == "step_cpu_time"
    assert t["met"] == (q["step_cpu_time"] <= t["step_time_ratio_max"])
    # the fields chapter 05's table reads
    assert result["config"]["amp"] == "off" and "cpu_count" in result["machine"]


def test_train_step_benchmark_ratios_come_from_its_variants(tmp_path, common):
    result = run_main("train_step", tmp_path)
    check_machine(result, common)
    (setup,) = result["setups"]
    batch = setup["input"][0]
    for m in setup["models"].values():
        v = m["variants"]
        assert sorted(v) == ["amp", "amp+cl", "fp32", "fp32+cl"]  # no compile in --quick
        for row in v.values():
            assert row["images_per_s"] == pytest.approx(batch / row["step_s"])
            assert row["peak_step_mib"] > 0
        assert m["ratios"]["amp_over_fp32_images_per_s"] == pytest.approx(
            v["amp"]["images_per_s"] / v["fp32"]["images_per_s"])
        assert m["ratios"]["channels_last_on_over_off_fp32"] == pytest.approx(
            v["fp32+cl"]["images_per_s"] / v["fp32"]["images_per_s"])
    fcn, enc = (setup["models"][k]["variants"] for k in ("fcn", "encnet"))
    for name, value in setup["encnet_over_fcn_step_time"].items():
        assert value == pytest.approx(enc[name]["step_s"] / fcn[name]["step_s"])
    assert "targets" not in setup and "not checked on CPU" in result["targets_note"]


def test_ablation_cli_keeps_its_options_and_adds_the_shared_ones():
    args = load("ablation").build_parser().parse_args([])
    assert (args.seeds, args.ks, args.jobs, args.threads, args.device) == (
        [0, 1, 2], [0, 4, 16, 32], 2, 1, "cpu")
    args = load("ablation").build_parser().parse_args(
        ["--quick", "--epochs", "3", "--k-seeds", "5", "--runs-dir", "r", "--out", "x.json"])
    assert (args.quick, args.epochs, args.k_seeds, args.runs_dir, args.out) == (
        True, 3, [5], "r", Path("x.json"))
