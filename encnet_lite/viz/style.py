"""The book's figure convention: figures as wide as the text column, text one can read.

The site's text column is 688 px wide in a 1280 px window (368 px in a 400 px one), with
16 px body text; its smallest text in the column is MathJax's sub- and superscripts, about
12 px. Figures are drawn at ``DPI`` = 100 and ``COLUMN_INCHES`` = 6.8 wide (680 px), so a
full-width figure is shown at its own size at 1280 px and scales down with the column on a
phone. No text is set below ``SMALL_PT`` = 9.5 pt (13.2 px at 100 dpi): at 1280 px every
figure's text is at least ``MIN_TEXT_PX`` = 12 px, the page's own smallest text, which
``tests/test_site.py`` checks from the stamp :func:`figure_png` puts into each PNG.

:func:`apply_style` (run when :mod:`encnet_lite.viz` is imported) sets these sizes as
matplotlib's defaults and, inside IPython, makes every displayed figure carry the stamp.
:func:`subplots` lays panels out at most two or three to a row, so wide multi-panel figures
are stacked instead of shrunk.
"""

from __future__ import annotations

import base64
import struct
import sys
import zlib
from io import BytesIO
from typing import Optional, Tuple

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.text import Text

COLUMN_PX = 688  # the site's text column at a 1280 px window (measured on the built site)
DPI = 100
COLUMN_INCHES = 6.8  # 680 px at DPI: never wider than the column, so never shrunk there
MIN_TEXT_PX = 12.0  # the smallest text a figure may show at 1280 px
FONT_PT = 10.5  # labels and text
SMALL_PT = 9.5  # tick labels, legends, numbers on bars: the smallest size any figure uses
TITLE_PT = 11.0
STAMP_KEY = "encnet-lite smallest text px"  # PNG tEXt keyword read by tests/test_site.py

RC = {
    "figure.dpi": DPI,
    "savefig.dpi": "figure",
    "figure.figsize": (COLUMN_INCHES, 0.6 * COLUMN_INCHES),
    "font.size": FONT_PT,
    "axes.titlesize": TITLE_PT,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": SMALL_PT,
    "ytick.labelsize": SMALL_PT,
    "legend.fontsize": SMALL_PT,
    "legend.title_fontsize": SMALL_PT,
    "figure.titlesize": TITLE_PT,
}


def grid(panels: int, max_cols: int = 2) -> Tuple[int, int]:
    """``(rows, cols)`` for ``panels`` panels, at most ``max_cols`` to a row."""
    cols = max(1, min(panels, max_cols))
    return -(-panels // cols), cols


def subplots(rows: int = 1, cols: int = 1, aspect: float = 0.75, width: float = COLUMN_INCHES,
             extra_height: float = 0.0, **kwargs):
    """``plt.subplots`` sized by the convention: ``width`` inches (the column by default),
    each panel ``aspect`` (height / width) of its share of the width, plus ``extra_height``
    inches (titles, legends). Returns ``(fig, axes)`` as ``plt.subplots`` does."""
    width = min(width, COLUMN_INCHES)
    height = rows * width / cols * aspect + extra_height
    return plt.subplots(rows, cols, figsize=(width, height), **kwargs)


def smallest_text_pt(fig: Figure) -> Optional[float]:
    """The smallest font size (points) of the text ``fig`` draws (titles, labels, tick
    labels, legends, annotations); None when it draws none. Tick labels count only where
    their axis is drawn and their tick lies in the view, as matplotlib draws them."""
    hidden, drawn = set(), []
    for ax in fig.axes:
        shown = ax.get_visible() and ax.axison
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.majorTicks + axis.minorTicks:
                hidden.update((tick.label1, tick.label2))
            if shown and axis.get_visible():
                drawn += axis.get_ticklabels(which="both")
            else:
                hidden.update((axis.label, axis.offsetText))
    texts = [t for t in fig.findobj(Text) if t not in hidden] + drawn
    sizes = [t.get_fontsize() for t in texts if t.get_visible() and t.get_text().strip()
             and (t.axes is None or t.axes.get_visible())]
    return min(sizes) if sizes else None


def _png_text_chunk(key: str, value: str) -> bytes:
    body = key.encode("latin-1") + b"\0" + value.encode("latin-1")
    return (struct.pack(">I", len(body)) + b"tEXt" + body
            + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF))


def figure_png(fig: Figure) -> bytes:
    """``fig`` as the PNG a notebook shows (``bbox_inches="tight"``, as IPython's inline
    backend saves it), with a tEXt chunk ``STAMP_KEY`` = the smallest text's size in PNG
    pixels (points x dpi / 72), so that a page can tell how large it displays it."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", facecolor=fig.get_facecolor(),
                edgecolor=fig.get_edgecolor())
    png = buffer.getvalue()
    smallest = smallest_text_pt(fig)  # after the draw: tick labels exist only once drawn
    if smallest is None:
        return png
    chunk = _png_text_chunk(STAMP_KEY, f"{smallest * fig.dpi / 72:.2f}")
    end_of_header = 8 + 4 + 4 + 13 + 4  # signature, then IHDR (length, type, 13 bytes, CRC)
    return png[:end_of_header] + chunk + png[end_of_header:]


def stamped_text_px(png: bytes) -> Optional[float]:
    """The ``STAMP_KEY`` value of a PNG written by :func:`figure_png` (None when absent)."""
    pos = 8
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"tEXt":
            key, _, value = png[pos + 8:pos + 8 + length].partition(b"\0")
            if key.decode("latin-1") == STAMP_KEY:
                return float(value.decode("latin-1"))
        if kind == b"IDAT":
            return None  # text chunks the stamp writes come before the image data
        pos += 12 + length
    return None


def _png_formatter(fig: Figure) -> Optional[str]:
    if not fig.axes and not fig.lines:  # as IPython: an empty figure shows nothing
        return None
    return base64.b64encode(figure_png(fig)).decode("ascii")


def install_png_stamp() -> bool:
    """Inside IPython, display every matplotlib figure through :func:`figure_png`; returns
    whether an IPython shell was there to configure."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return False
    # Load the inline backend now: it registers its own PNG formatter when it loads and
    # would replace this one if that happened later (at the first figure).
    if "matplotlib_inline.backend_inline" not in sys.modules:
        plt.switch_backend(matplotlib.get_backend())
    shell.display_formatter.formatters["image/png"].for_type(Figure, _png_formatter)
    return True


def apply_style() -> None:
    """Make the convention matplotlib's defaults (``RC``) and stamp displayed figures."""
    matplotlib.rcParams.update(RC)
    install_png_stamp()
