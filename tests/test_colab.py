"""The chapters as a Colab user runs them, simulated: a fake ``google.colab`` module, the
install cell pointed at this repository's clone via ENCNET_REPO / ENCNET_REF / ENCNET_SRC,
and a working folder outside the checkout (Colab's ``/content``).

pip is replaced by a stub that records its arguments: installing the clone into the test's
own environment would re-point it. The install cell puts the clone on ``sys.path`` itself,
so the chapter imports the clone's ``encnet_lite``, as it does on Colab.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_rehearsal import execute_chapter, outputs_text

ROOT = Path(__file__).resolve().parents[1]

FAKE_COLAB = '''
"""A stand-in for Colab's google.colab package: drive.mount and files.upload stubs."""
import types

mounted = []
drive = types.SimpleNamespace(mount=lambda path, **kw: mounted.append(path))
files = types.SimpleNamespace(upload=lambda: {})
'''

FAKE_PIP = '''
import json, os, sys
with open(os.environ["FAKE_PIP_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
'''

PROBE = '''
import json as _json
import encnet_lite as _pkg
from encnet_lite import runtime as _rt
print("PROBE" + _json.dumps({"file": _pkg.__file__, "colab": _rt.in_colab(),
                             "results": [str(p) for p in _rt.benchmark_results("*.json")]}))
'''


def _fake_colab_runtime(tmp_path: Path, monkeypatch) -> Path:
    """PYTHONPATH with the fake google.colab (imported at start, as on Colab) and pip."""
    fake = tmp_path / "fake"
    (fake / "google" / "colab").mkdir(parents=True)  # google: a namespace package
    (fake / "google" / "colab" / "__init__.py").write_text(FAKE_COLAB)
    (fake / "sitecustomize.py").write_text("import google.colab  # noqa: F401\n")
    (fake / "pip").mkdir()
    (fake / "pip" / "__init__.py").write_text("")
    (fake / "pip" / "__main__.py").write_text(FAKE_PIP)
    log = tmp_path / "pip.log"
    content = tmp_path / "content"
    content.mkdir()
    env = {"PYTHONPATH": str(fake), "FAKE_PIP_LOG": str(log), "ENCNET_REPO": str(ROOT),
           "ENCNET_REF": "HEAD", "ENCNET_SRC": str(content / "encnet-lite"),
           "ENCNET_MODE": "quick", "ENCNET_TINY": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return content


@pytest.mark.slow
@pytest.mark.parametrize("chapter", ["00_setup.ipynb", "07_pcontext.ipynb"])
def test_chapter_runs_in_a_simulated_colab(chapter, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    content = _fake_colab_runtime(tmp_path, monkeypatch)
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                      capture_output=True).returncode:
        pytest.skip("not a git checkout: nothing for the install cell to clone")
    nb = nbformat.read(ROOT / "book" / chapter, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(textwrap.dedent(PROBE)))
    path = content / chapter
    nbformat.write(nb, path)
    nb = execute_chapter(path, content)
    text = outputs_text(nb)

    src = content / "encnet-lite"
    pip = [json.loads(line) for line in (tmp_path / "pip.log").read_text().splitlines()]
    assert pip == [["install", "-q", "--no-deps", "-e", str(src)]]
    assert (src / ".git").is_dir()  # cloned at ENCNET_REF from ENCNET_REPO
    probe = json.loads(text.split("PROBE", 1)[1].splitlines()[0])
    assert probe["colab"] is True
    assert Path(probe["file"]).resolve().is_relative_to(src.resolve())  # the clone's package
    # The committed results are found from /content, outside any checkout.
    names = {Path(p).name for p in probe["results"]}
    assert {"models_cpu.json", "ablation.json"} <= names
    assert all(Path(p).resolve().is_relative_to(src.resolve()) for p in probe["results"])
    if chapter == "07_pcontext.ipynb":
        run = content / "runs" / "ch07_scenes_encnet_tiny_quick"  # under the working folder
        assert (run / "best.pt").is_file()
        assert (run / "predictions" / "example.overlay.png").is_file()
    assert sys.version_info >= (3, 9)
