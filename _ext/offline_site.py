"""Sphinx extension: the built site works with no network.

MathJax is served from the site itself: after an HTML build, the parts of MathJax 3
that ``tex-mml-chtml.js`` loads (the bundle, its fonts, the TeX extensions, the menu
and the accessibility components it may load on demand) are copied from the
``django-static-mathjax`` package into ``_static/mathjax/``, and ``mathjax_path``
in ``_config.yml`` points there. Interactive widgets are not loaded from a CDN
(``nb_ipywidgets_js: {}``); ``_static/widget-fallback.js`` says where they run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

# What tex-mml-chtml.js may request at run time, relative to MathJax's es5/ folder.
MATHJAX_PARTS = (
    "tex-mml-chtml.js",
    "input/tex/extensions",
    "input/mml/extensions",
    "input/mml/entities.js",
    "output/chtml/fonts/woff-v2",
    "ui",
    "a11y",
    "sre",
    "adaptors",
)
FIX_MESSAGE = (
    "the offline MathJax copy is missing: pip install 'django-static-mathjax>=3.2' "
    "(it is in the project's dev extra: pip install -e '.[book,dev]')"
)


def mathjax_source() -> Path:
    """The es5/ folder of the installed django-static-mathjax package."""
    try:
        import mathjax  # django-static-mathjax
    except ImportError as err:
        raise ExtensionError(FIX_MESSAGE) from err
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise ExtensionError(f"{FIX_MESSAGE}; no tex-mml-chtml.js under {es5}")
    return es5


def copy_mathjax(es5: Path, dest: Path) -> int:
    """Copy MATHJAX_PARTS (and MathJax's licence) from ``es5`` into ``dest``; returns bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in MATHJAX_PARTS:
        src = es5 / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        elif src.is_file():
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    licence = es5.parent / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, dest / "LICENSE")
    return sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())


def _check_config(app: Sphinx, config) -> None:
    """Fail early (before reading any page) when the offline copy cannot be made."""
    if str(config.mathjax_path).startswith(("http://", "https://", "//")):
        raise ExtensionError(
            f"mathjax_path is a web address ({config.mathjax_path}); the site must work "
            "offline: set it to mathjax/tex-mml-chtml.js"
        )
    mathjax_source()


def _build_finished(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    copy_mathjax(mathjax_source(), Path(app.outdir) / "_static" / "mathjax")


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _check_config)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
