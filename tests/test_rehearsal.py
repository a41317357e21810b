"""Chapter 07 in FULL mode, rehearsed on a CPU against a fabricated PASCAL-Context.

The GPU path of the training chapter (prepare the data, budget, train ResNet-50 EncNet,
single- and multi-scale evaluation, codeword analysis, a prediction on a photo) runs here
top to bottom at the smallest sizes the code allows (``ENCNET_TINY=1``), from a clean
working folder, with the dataset prepared from a miniature in the upstream formats.
"""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
import kernel_replies  # noqa: E402  (the book build's Sphinx extension, see make book)

CHAPTER = ROOT / "book" / "07_pcontext.ipynb"


def execute_chapter(path: Path, cwd: Path, timeout: int = 180, tries: int = 2):
    """Run every cell of ``path`` in a fresh kernel started in ``cwd``; the executed notebook.

    nbclient could miss the wake-up for a reply the kernel had sent and wait out the cell
    timeout (``_ext/kernel_replies.py``, installed here as in ``make book``). As a second
    line of defence, a cell that exceeds ``timeout`` seconds is run again once, notebook
    and kernel afresh: every cell of these chapters takes seconds.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernel_replies.install()
    for attempt in range(1, tries + 1):
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(cwd)}})
        try:
            client.execute()
            return nb
        except nbclient.exceptions.CellTimeoutError:
            if attempt == tries:
                raise


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_rehearsal_chapter_07_full_mode_on_a_fabricated_pcontext(tmp_path, monkeypatch):
    from encnet_lite.data import miniature
    from encnet_lite.data.prepare_pcontext import prepare_pcontext

    upstream = tmp_path / "upstream"
    remotes = miniature.make_pcontext_miniature(upstream, n_train=4, n_val=2)
    data_root = tmp_path / "data" / "pcontext"
    prepare_pcontext(data_root, download_dir=upstream, skip_download=True, remotes=remotes,
                     progress=False)
    prepared = (data_root / "prepared.json").read_text()
    work = tmp_path / "work"
    work.mkdir()
    for key, value in {"ENCNET_MODE": "full", "ENCNET_TINY": "1", "OMP_NUM_THREADS": "1",
                       "ENCNET_PCONTEXT_ROOT": str(data_root), "MKL_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ENCNET_PHOTO", raising=False)
    nb = execute_chapter(CHAPTER, work)
    text = outputs_text(nb)

    assert "FULL mode" in text and "pcontext_encnet_r50: encnet, backbone resnet50, K=32" in text
    assert "align_corners=True" in text  # the official upsampling in the PASCAL preset
    for words in ("iterations/s", "peak memory", "whole schedule", "multi-scale + flip"):
        assert words in text  # the budget ran before training
    run = work / "runs" / "pcontext_encnet_r50_short"  # named by its schedule
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "last.pt"]
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 1 and 0 <= epochs[0]["mIoU"] <= 1
    assert "single scale" in text and "(2 images" in text  # the whole fabricated val split
    assert not list(run.glob("*.partial.json"))  # finished evaluations leave no partial state
    assert (run / "predictions" / "example.mask.png").is_file()
    assert (run / "predictions" / "example.overlay.png").is_file()
    # Everything was written under the working folder; the dataset was left as it was.
    assert {p.name for p in work.iterdir()} == {"runs"}
    assert (data_root / "prepared.json").read_text() == prepared
    assert os.environ["ENCNET_MODE"] == "full"
