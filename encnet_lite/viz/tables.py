"""Tables: Markdown for the chapters' cells, plain text for the scripts' logs."""

from __future__ import annotations

from typing import List, Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]):
    """Rows as a Markdown table: rendered as a real table in Jupyter and on the built site."""
    from IPython.display import Markdown

    lines = [_row(header), "|" + "---|" * len(header)]
    lines += [_row(row) for row in rows]
    return Markdown("\n".join(lines))


def _row(cells: Sequence) -> str:
    """One table row; a ``|`` inside a cell (e.g. ``||x||``) is escaped, else it splits it,
    and the spaces around ``±`` are no-break spaces, so "64.1 ± 0.1" never breaks."""
    return "| " + " | ".join(_cell(v) for v in cells) + " |"


def _cell(value) -> str:
    text = str(value).replace("|", "\\|")
    return text.replace(" ± ", "\u00a0±\u00a0").replace(" ±", "\u00a0±").replace("± ", "±\u00a0")


def text_table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    """Rows as plain-text lines for a terminal (a script's log): columns right-aligned to
    their widest cell, separated by two spaces, a dashed rule under the header."""
    cells = [[str(v) for v in header]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return [lines[0], "-" * len(lines[0])] + lines[1:]
