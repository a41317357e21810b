"""Where the code runs: quick vs full mode, the device, and the Colab set-up.

Every chapter has one parameters cell that calls :func:`book_mode`. Quick mode
runs the same code paths as full mode, on the synthetic ``ContextScenes`` data
and a tiny backbone, so that CI (a 2-core CPU) executes each chapter in minutes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Union

import torch

from .engine import resolve_device

MODES = ("quick", "full")
MODE_ENV = "ENCNET_MODE"

# The one place the repository's address lives. Every chapter's first cell is
# a copy of :func:`colab_install_source`; a test keeps those copies identical.
REPO_URL = "https://github.com/encnet-lite/encnet-lite"
REPO_REF = "main"
# Environment variables that point the install cell elsewhere without editing it: another
# repository (a fork, a local clone), another ref (a tag, a commit), another folder.
REPO_ENV, REF_ENV, SRC_ENV = "ENCNET_REPO", "ENCNET_REF", "ENCNET_SRC"
COLAB_SRC = "/content/encnet-lite"  # where the install cell clones the repository on Colab
COLAB_DATA = "/content/data"  # the runtime's local disk: fast, forgotten when it stops
DRIVE_ROOT = "/content/drive/MyDrive/encnet-lite"  # survives the runtime


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def get_device() -> torch.device:
    """The CUDA device when one is visible, else the CPU (``resolve_device("auto")``)."""
    return resolve_device("auto")


def persistent_dir(name: str, local_root: Union[str, Path] = "..") -> Path:
    """A folder that outlives the runtime: Google Drive on Colab, ``local_root/name`` elsewhere.

    On Colab, datasets and checkpoints written here survive a disconnect, so a long
    training run resumes where it stopped. Mounting Drive asks the user for permission.
    """
    if in_colab():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount("/content/drive")
        path = Path(DRIVE_ROOT) / name
    else:
        path = Path(local_root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def benchmark_results(pattern: str) -> list:
    """Committed benchmark JSON files matching ``pattern`` in ``benchmarks/results``, sorted
    by name: of the checkout a chapter runs in (the working folder or one above it), else of
    the source tree ``encnet_lite`` was imported from (the clone the Colab install cell
    makes, or any editable install), whatever the working folder.

    ``[]`` where neither exists, e.g. a copy installed from a wheel.
    """
    package_tree = Path(__file__).resolve().parents[1]
    for root in (Path.cwd(), *Path.cwd().parents, package_tree):
        folder = root / "benchmarks" / "results"
        if folder.is_dir():
            return sorted(folder.glob(pattern))
    return []


def dataset_root(name: str = "pcontext") -> Path:
    """Where a prepared dataset lives, the same for every chapter (07 and the appendix).

    ``ENCNET_<NAME>_ROOT`` when set; on Colab the runtime's local disk
    (``/content/data/<name>``: reading ten thousand small files from Google Drive is slow);
    elsewhere ``../data/<name>``, the checkout's ``data/`` seen from ``book/``.
    """
    forced = os.environ.get(f"ENCNET_{name.upper()}_ROOT", "").strip()
    if forced:
        return Path(forced)
    return Path(COLAB_DATA) / name if in_colab() else Path("..") / "data" / name


def archive_dir(name: str = "pcontext") -> Optional[Path]:
    """Where the downloaded archives of a dataset are kept: Google Drive on Colab (fetched
    once, then reused by every new runtime), None elsewhere (the prepare script's default,
    ``ROOT/downloads``)."""
    return persistent_dir(f"downloads/{name}") if in_colab() else None


def runs_dir(persistent: bool = False) -> Path:
    """The folder for run folders: ``runs`` under the working folder (a relative path);
    with ``persistent`` on Colab, Google Drive instead, so that checkpoints outlive a
    disconnect."""
    if persistent and in_colab():
        return persistent_dir("runs")
    return Path("runs")


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


QUICK_DOES = "synthetic ContextScenes data, tiny backbone, short runs"


def describe_mode(mode: str, full_does: str = "", quick_does: str = QUICK_DOES) -> str:
    """Plain sentences for a chapter's output: which mode ran (``quick_does``: what quick
    mode uses in this chapter), what full would do.

    One paragraph without hard line breaks: the page wraps it to the column's width
    (fixed breaks leave a ragged line, a lone word, on a narrow screen).
    """
    device = get_device()
    if mode == "quick":
        text = f"QUICK mode on {device.type}: {quick_does}."
        if full_does:
            text += f" Full mode ({MODE_ENV}=full, a CUDA GPU) would {full_does}."
        return text
    return f"FULL mode on {device.type}" + (f": {full_does}." if full_does else ".")


def colab_install_source(url: str = REPO_URL, ref: str = REPO_REF) -> str:
    """The source of every chapter's first cell.

    On Colab it clones the repository at ``ref`` into ``/content/encnet-lite`` and
    pip-installs that clone editable with ``--no-deps``, so the preinstalled torch and
    IPython stay as they are (reinstalling torch costs gigabytes; upgrading IPython
    crash-loops the runtime) and the committed results (``benchmarks/results``) are there
    for :func:`benchmark_results`. ``ENCNET_REPO`` / ``ENCNET_REF`` / ``ENCNET_SRC`` point
    it at another repository, ref or folder. Elsewhere it does nothing.
    """
    return (
        "# Colab only: install encnet_lite from the repository (does nothing elsewhere).\n"
        f"# {REPO_ENV} / {REF_ENV} choose another repository (a fork) or ref (a tag) without editing this.\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    REPO = os.environ.get("{REPO_ENV}", "{url}")\n'
        f'    REF = os.environ.get("{REF_ENV}", "{ref}")\n'
        f'    SRC = os.environ.get("{SRC_ENV}", "{COLAB_SRC}")\n'
        '    if not os.path.isdir(os.path.join(SRC, ".git")):\n'
        '        subprocess.run(["git", "clone", "-q", REPO, SRC], check=True)\n'
        '    subprocess.run(["git", "-C", SRC, "fetch", "-q", REPO, REF], check=True)\n'
        '    subprocess.run(["git", "-C", SRC, "checkout", "-q", "FETCH_HEAD"], check=True)\n'
        "    # --no-deps: Colab already has torch, numpy, matplotlib, scipy, tqdm; never reinstall them.\n"
        '    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", SRC]\n'
        "    subprocess.run(cmd, check=True)\n"
        "    if SRC not in sys.path:  # importable now, without restarting the runtime\n"
        "        sys.path.insert(0, SRC)\n"
    )
