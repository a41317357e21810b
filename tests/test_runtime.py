"""Quick/full mode switch and the Colab install cell."""

from pathlib import Path

import pytest
import torch

from encnet_lite import engine, runtime
from encnet_lite.errors import EncnetError


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


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_auto_device_without_cuda_is_the_cpu(monkeypatch):
    _no_cuda(monkeypatch)
    assert runtime.get_device() == engine.resolve_device("auto") == torch.device("cpu")
    assert engine.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, flag, words", [
    ("cuda", None, "device='cuda': no such CUDA GPU is visible (0 found); use auto, cpu"),
    ("cuda:1", "--device", "--device cuda:1: no such CUDA GPU is visible (0 found)"),
    ("tpu", "--device", "--device tpu: not a device torch knows; use auto, cpu or cuda"),
    ("cuda:x", None, "device='cuda:x': not a device torch knows"),
    ("meta", None, "device='meta': this library runs models on cpu, cuda or mps, not meta"),
])
def test_a_device_that_is_not_here_is_one_library_error(monkeypatch, name, flag, words):
    _no_cuda(monkeypatch)
    with pytest.raises(engine.DeviceError) as info:
        engine.resolve_device(name, flag=flag)
    assert str(info.value).startswith(words)
    assert isinstance(info.value, EncnetError)  # the CLIs print it as one line


def test_describe_mode_says_the_mode():
    assert runtime.describe_mode("quick", "train ResNet-50").startswith("QUICK mode")
    assert "train ResNet-50" in runtime.describe_mode("quick", "train ResNet-50")
    assert runtime.describe_mode("full").startswith("FULL mode")


def test_describe_mode_is_one_paragraph():
    # the page wraps it to the column; hard breaks leave a lone word on a narrow screen
    text = runtime.describe_mode("quick", "train the dilated ResNet-50 " * 5)
    assert "\n" not in text
    assert "Full mode (ENCNET_MODE=full, a CUDA GPU) would train" in text


def test_colab_cell_is_a_no_op_outside_colab(monkeypatch):
    calls = []
    monkeypatch.setattr("subprocess.run", lambda *a, **k: calls.append(a))
    exec(compile(runtime.colab_install_source(), "<cell>", "exec"), {})
    assert calls == []


def _run_cell_in_fake_colab(monkeypatch, tmp_path, env=None):
    import sys
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr("subprocess.run", lambda cmd, **k: calls.append(cmd))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for key in ("ENCNET_REPO", "ENCNET_REF", "ENCNET_SRC"):
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    exec(compile(runtime.colab_install_source(), "<cell>", "exec"), {})
    return calls, sys.path


def test_colab_cell_clones_the_repo_and_installs_it_editable_without_deps(monkeypatch,
                                                                         tmp_path):
    calls, path = _run_cell_in_fake_colab(monkeypatch, tmp_path)
    src = runtime.COLAB_SRC
    assert calls[0] == ["git", "clone", "-q", runtime.REPO_URL, src]
    assert calls[1] == ["git", "-C", src, "fetch", "-q", runtime.REPO_URL, runtime.REPO_REF]
    assert calls[2] == ["git", "-C", src, "checkout", "-q", "FETCH_HEAD"]
    pip = calls[3]
    assert pip[1:3] == ["-m", "pip"] and "--no-deps" in pip and pip[-2:] == ["-e", src]
    assert not any(word.startswith(("torch", "ipython")) for word in pip)
    assert path[0] == src  # importable at once, no runtime restart


def test_colab_cell_follows_the_environment_variables(monkeypatch, tmp_path):
    src = tmp_path / "clone"
    (src / ".git").mkdir(parents=True)  # an existing clone is updated, not cloned again
    calls, _ = _run_cell_in_fake_colab(monkeypatch, tmp_path, {
        "ENCNET_REPO": "https://example.org/fork.git", "ENCNET_REF": "v0.2",
        "ENCNET_SRC": str(src)})
    assert calls[0] == ["git", "-C", str(src), "fetch", "-q", "https://example.org/fork.git",
                        "v0.2"]
    assert calls[-1][-2:] == ["-e", str(src)] and len(calls) == 3


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


def test_benchmark_results_are_found_from_any_working_folder(tmp_path, monkeypatch):
    # Outside any checkout (Colab's /content): the source tree of the imported package.
    monkeypatch.chdir(tmp_path)
    found = runtime.benchmark_results("models_*.json")
    assert found and all(p.parent.name == "results" for p in found)
    assert found[0].parents[2] == Path(runtime.__file__).resolve().parents[1]


def test_one_dataset_location_for_every_chapter(monkeypatch):
    import sys
    import types

    monkeypatch.delenv("ENCNET_PCONTEXT_ROOT", raising=False)
    assert runtime.dataset_root("pcontext") == Path("../data/pcontext")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert runtime.dataset_root("pcontext") == Path("/content/data/pcontext")  # local disk
    monkeypatch.setenv("ENCNET_PCONTEXT_ROOT", "/somewhere/pc")
    assert runtime.dataset_root() == Path("/somewhere/pc")


def test_archives_on_drive_and_runs_under_the_working_folder(monkeypatch, tmp_path):
    import sys
    import types

    monkeypatch.chdir(tmp_path)
    assert runtime.archive_dir("pcontext") is None  # the prepare script's default
    assert runtime.runs_dir() == Path("runs")  # under the working folder
    assert runtime.runs_dir(persistent=True) == Path("runs")  # no Drive outside Colab
    colab = types.ModuleType("google.colab")
    mounted = []
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(runtime, "DRIVE_ROOT", str(tmp_path / "drive"))
    assert runtime.archive_dir("pcontext") == tmp_path / "drive" / "downloads" / "pcontext"
    assert runtime.runs_dir(persistent=True) == tmp_path / "drive" / "runs"
    assert runtime.runs_dir() == Path("runs")  # quick runs stay under /content
    assert mounted == ["/content/drive", "/content/drive"]
