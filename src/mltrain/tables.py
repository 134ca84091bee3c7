"""Tables that fit the terminal: columns are dropped by priority instead of wrapping or truncating.

A wrapped row or a run name split over two lines is harder to read than a missing column, so a
table built here never wraps a cell: it keeps the most important columns that fit the console's
width at their full size and names the ones it left out (the full figures stay in --json / the
detail lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Column:
    """One column: header, alignment and priority (0 = always shown; higher = dropped first)."""

    header: str
    justify: str = "right"
    priority: int = 0
    style: str | None = None


def _build(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    keep: list[int],
    sections: set[int],
    row_styles: Sequence[str | None],
) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for i in keep:
        c = columns[i]
        t.add_column(escape(c.header), justify=c.justify, no_wrap=True, style=c.style)  # type: ignore[arg-type]
    for r, (row, style) in enumerate(zip(rows, row_styles, strict=True)):
        if r in sections:
            t.add_section()
        t.add_row(*(Text(row[i]) for i in keep), style=style)
    return t


def _width(table: Table) -> int:
    wide = Console(width=10_000, color_system=None, record=False)
    with wide.capture() as cap:
        wide.print(table)
    return max((len(line.rstrip()) for line in cap.get().splitlines()), default=0)


def fit_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    width: int,
    sections: set[int] | None = None,
    row_styles: Sequence[str | None] | None = None,
) -> tuple[Table, list[str]]:
    """A table no wider than `width`; returns it and the headers of the columns it left out.

    Columns go in order of priority (highest number first) until the rest fit; priority-0 columns
    always stay (a table that still does not fit then overflows rather than split a name).
    """
    sections = sections or set()
    row_styles = list(row_styles) if row_styles is not None else [None] * len(rows)
    # a column with nothing to say (every cell "-" or empty) goes first and is not reported as dropped
    empty = {i for i, c in enumerate(columns) if c.priority > 0 and rows and all(r[i] in ("", "-") for r in rows)}
    keep = [i for i in range(len(columns)) if i not in empty]
    droppable = sorted((i for i in keep if columns[i].priority > 0), key=lambda i: -columns[i].priority)
    table = _build(columns, rows, keep, sections, row_styles)
    while _width(table) > width and droppable:
        keep.remove(droppable.pop(0))
        table = _build(columns, rows, keep, sections, row_styles)
    dropped = [c.header for i, c in enumerate(columns) if i not in keep and i not in empty]
    return table, dropped
