"""One row of a PASS/WARN/FAIL table, shared by `doctor`, `health` and `bench collectives`.

Each row carries a remedy so the table says what to do, not just what is wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
_RANK = {PASS: 0, SKIP: 0, WARN: 1, FAIL: 2}
_STYLE = {PASS: "green", SKIP: "dim", WARN: "yellow", FAIL: "bold red"}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    remedy: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(checks: list[Check]) -> str:
    """The overall verdict: FAIL if any row fails, WARN if any warns, else PASS."""
    level = max((_RANK[c.status] for c in checks), default=0)
    return {0: PASS, 1: WARN, 2: FAIL}[level]


def print_table(checks: list[Check], title: str, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False)
    for col in ("check", "status", "detail", "remedy"):
        table.add_column(col, overflow="fold")
    for c in checks:  # details quote error text (botocore's regexes hold "[/:]"): plain text, never markup
        table.add_row(Text(c.name), Text(c.status, style=_STYLE[c.status]), Text(c.detail), Text(c.remedy))
    console.print(table)
