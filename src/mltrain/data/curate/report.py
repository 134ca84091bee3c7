"""The curation report as a rich table: one row per step, one indented row per rule that removed documents."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def report_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"curation report: {report['files']} files -> {report['output']['path']}")
    for col, just in (
        ("step / rule", "left"),
        ("docs in", "right"),
        ("docs out", "right"),
        ("removed", "right"),
        ("MB in", "right"),
        ("MB out", "right"),
        ("", "left"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for s in report["steps"]:
        table.add_row(
            s["step"],
            f"{s['docs_in']:,}",
            f"{s['docs_out']:,}",
            f"{s['docs_in'] - s['docs_out']:,}",
            _mb(s["bytes_in"]),
            _mb(s["bytes_out"]),
            "reused" if s.get("reused") else f"{s.get('seconds', 0):.1f}s",
        )
        for reason, r in s["removed"].items():
            table.add_row(f"  {reason}", "", "", f"{r['docs']:,}", _mb(r["bytes"]), "", "", style="dim")
        sizes = s.get("clusters", {}).get("sizes")
        if sizes:
            shown = ", ".join(f"{n}x{size}" for size, n in list(sizes.items())[:6])
            table.add_row("  clusters (count x size)", "", "", "", "", "", shown, style="dim")
    out = report["output"]
    table.add_row(
        "output", "", f"{out['docs']:,}", "", "", _mb(out["bytes"]), f"{len(out.get('files', []))} files", style="bold"
    )
    return table
