"""Markdown tables printed by the chapters' cells."""

from __future__ import annotations

from typing import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]):
    """Rows as a Markdown table: rendered as a real table in Jupyter and on the built site."""
    from IPython.display import Markdown

    lines = [_row(header), "|" + "---|" * len(header)]
    lines += [_row(row) for row in rows]
    return Markdown("\n".join(lines))


def _row(cells: Sequence) -> str:
    """One table row; a ``|`` inside a cell (e.g. ``||x||``) is escaped, else it splits it."""
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in cells) + " |"
