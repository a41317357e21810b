"""Quick/full mode switch and the Colab install cell."""

import pytest
import torch

from encnet_lite import runtime


def test_env_var_forces_mode(monkeypatch):
    monkeypatch.setenv("ENCNET_MODE", "full")
    assert runtime.book_mode() == "full"
    monkeypatch.setenv("ENCNET_MODE", " Quick ")
    assert runtime.book_mode() == "quick"


def test_bad_mode_names_the_variable_and_choices(monkeypatch):
    monkeypatch.setenv("ENCNET_MODE", "fast")
    with pytest.raises(ValueError, match=r"ENCNET_MODE='fast'.*quick.*full"):
        runtime.book_mode()


def test_default_is_quick_without_cuda(monkeypatch):
    monkeypatch.delenv("ENCNET_MODE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.book_mode() == "quick"


def test_default_full_needs_cuda_and_the_dataset(monkeypatch, tmp_path):
    monkeypatch.delenv("ENCNET_MODE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.book_mode() == "full"
    assert runtime.book_mode(tmp_path) == "full"
    assert runtime.book_mode(tmp_path / "missing") == "quick"


def test_describe_mode_says_the_mode():
    assert runtime.describe_mode("quick", "train ResNet-50").startswith("QUICK mode")
    assert "train ResNet-50" in runtime.describe_mode("quick", "train ResNet-50")
    assert runtime.describe_mode("full").startswith("FULL mode")


def test_colab_cell_is_a_no_op_outside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr("subprocess.run", lambda *a, **k: calls.append(a))
    exec(compile(runtime.colab_install_source(), "<cell>", "exec"), {})
    assert calls == []


def test_colab_cell_installs_the_repo_without_deps(monkeypatch):
    import sys
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr("subprocess.run", lambda cmd, **k: calls.append(cmd))
    exec(compile(runtime.colab_install_source(), "<cell>", "exec"), {})
    assert len(calls) == 1
    cmd = calls[0]
    assert "--no-deps" in cmd
    assert f"encnet-lite @ git+{runtime.REPO_URL}@{runtime.REPO_REF}" in cmd
    assert not any(word.startswith(("torch", "ipython")) for word in cmd)


def test_persistent_dir_is_local_outside_colab(tmp_path):
    path = runtime.persistent_dir("runs/x", local_root=tmp_path)
    assert path == tmp_path / "runs" / "x" and path.is_dir()


def test_benchmark_results_finds_the_checkout_folder_from_below(tmp_path, monkeypatch):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "models_cpu.json").write_text("{}")
    (results / "ablation.json").write_text("{}")
    (tmp_path / "book").mkdir()
    monkeypatch.chdir(tmp_path / "book")
    assert runtime.benchmark_results("models_*.json") == [results / "models_cpu.json"]
    assert runtime.benchmark_results("missing.json") == []
