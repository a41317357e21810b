"""Where the code runs: quick vs full mode, the device, and the Colab set-up.

Every chapter has one parameters cell that calls :func:`book_mode`. Quick mode
runs the same code paths as full mode, on the synthetic ``ContextScenes`` data
and a tiny backbone, so that CI (a 2-core CPU) executes each chapter in minutes.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Optional, Union

import torch

MODES = ("quick", "full")
MODE_ENV = "ENCNET_MODE"

# The one place the repository's address lives. Every chapter's first cell is
# a copy of :func:`colab_install_source`; a test keeps those copies identical.
REPO_URL = "https://github.com/encnet-lite/encnet-lite"
REPO_REF = "main"


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def get_device() -> torch.device:
    """The CUDA device when one is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def persistent_dir(name: str, local_root: Union[str, Path] = "..") -> Path:
    """A folder that outlives the runtime: Google Drive on Colab, ``local_root/name`` elsewhere.

    On Colab, datasets and checkpoints written here survive a disconnect, so a long
    training run resumes where it stopped. Mounting Drive asks the user for permission.
    """
    if in_colab():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount("/content/drive")
        path = Path("/content/drive/MyDrive/encnet-lite") / name
    else:
        path = Path(local_root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def benchmark_results(pattern: str) -> list:
    """Committed benchmark JSON files matching ``pattern`` in ``benchmarks/results`` of the
    checkout a chapter runs in (the working folder or one above it), sorted by name.

    ``[]`` where there is no checkout, e.g. a pip-installed copy on Colab.
    """
    for root in (Path.cwd(), *Path.cwd().parents):
        folder = root / "benchmarks" / "results"
        if folder.is_dir():
            return sorted(folder.glob(pattern))
    return []


def book_mode(dataset_root: Optional[Union[str, Path]] = None) -> str:
    """Return ``"quick"`` or ``"full"``.

    ``ENCNET_MODE`` wins when set. Otherwise full mode needs a CUDA GPU and, for
    chapters that read a real dataset, that ``dataset_root`` exists; anything
    else is quick mode.
    """
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(
                f"{MODE_ENV}={forced!r} is not a mode; set it to one of {MODES} or unset it."
            )
        return forced
    if not torch.cuda.is_available():
        return "quick"
    if dataset_root is not None and not Path(dataset_root).is_dir():
        return "quick"
    return "full"


def describe_mode(mode: str, full_does: str = "") -> str:
    """Plain sentences for a chapter's output: which mode ran, what full would do.

    Wrapped at 88 characters, so that no line is wider than a book page's column.
    """
    device = get_device()
    if mode == "quick":
        text = f"QUICK mode on {device.type}: synthetic ContextScenes data, tiny backbone, short runs."
        if full_does:
            text += "\n" + textwrap.fill(f"Full mode ({MODE_ENV}=full, a CUDA GPU) would {full_does}.", 88)
        return text
    return textwrap.fill(f"FULL mode on {device.type}" + (f": {full_does}." if full_does else "."), 88)


def colab_install_source(url: str = REPO_URL, ref: str = REPO_REF) -> str:
    """The source of every chapter's first cell.

    On Colab it pip-installs this repository at ``ref`` with ``--no-deps``, so the
    preinstalled torch and IPython stay as they are (reinstalling torch costs
    gigabytes; upgrading IPython crash-loops the runtime). Elsewhere it does nothing.
    """
    return (
        "# Colab only: install encnet_lite from the repository (does nothing elsewhere).\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    REPO, REF = "{url}", "{ref}"\n'
        "    # --no-deps: Colab already has torch, numpy, matplotlib, scipy, tqdm; never reinstall them.\n"
        "    cmd = [sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"--no-deps\"]\n"
        "    subprocess.run(cmd + [f\"encnet-lite @ git+{REPO}@{REF}\"], check=True)\n"
    )
