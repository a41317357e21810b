"""Sphinx extension: the References page labels entries the way chapters cite them.

Chapters cite author-year (``bibtex_reference_style: author_year``: "Zhang et al.,
2018"); pybtex's default labels are alphabetic codes ("ZDS+18"). The style registered
here, ``authoryear`` (``bibtex_default_style`` in ``_config.yml``), is pybtex's plain
style with labels "Zhang et al., 2018", "Yu and Koltun, 2016", sorted by author and year.
"""

from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle
from sphinx.application import Sphinx


def _last_name(person) -> str:
    return Text.from_latex(" ".join(person.last_names)).render_as("text")


def author_year(entry) -> str:
    """ "Zhang", "Yu and Koltun" or "Zhang et al.", then ", <year>"."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(p) for p in people]
    if len(names) >= 3:
        who = f"{names[0]} et al."
    elif names:
        who = " and ".join(names)
    else:
        who = entry.fields.get("title", "Anonymous")
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year(e) for e in entries]
        seen, counts = Counter(), Counter(labels)
        for label in labels:  # "Zhang, 2018a", "Zhang, 2018b" when two would collide
            seen[label] += 1
            yield label + ("abcdefghij"[seen[label] - 1] if counts[label] > 1 else "")


class AuthorYearStyle(PlainStyle):
    default_label_style = AuthorYearLabels
    default_sorting_style = SortingStyle


def setup(app: Sphinx) -> dict:
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
