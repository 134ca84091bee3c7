"""`mltrain report RUN`: a picture of the run (loss, val loss, throughput) and a short summary."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from mltrain import rundir, runstats
from mltrain.errors import RunDirError


def summarize(
    records: list[dict[str, Any]],
    restarts: list[dict[str, Any]] | None = None,
    allocations: list[runstats.Allocation] | None = None,
) -> dict[str, Any]:
    """Figures a person asks first: did the loss fall, how fast, how far, how many restarts, how much
    of the time paid for was training (steps, losses, restarts and goodput as defined in mltrain.runstats,
    the same figures `status` and the trainer's end-of-run line show)."""
    train = runstats.surviving_trains(records)
    evals = [r for r in records if r.get("kind") == "eval"]
    lc = runstats.loss_change(records)
    if not train or lc is None:
        return {}
    out: dict[str, Any] = {
        "steps": runstats.steps_reached(records),
        "first_loss": lc[0],
        "last_loss": lc[1],
        "loss_window": lc[3],
        "first_loss_window": lc[2],
        "tokens_per_s": statistics.median_high(r["tokens_per_s"] for r in train),
        "restarts": runstats.restarts_of(records, restarts or []),
        "goodput": runstats.goodput(records, allocations),
    }
    mfus = [r["mfu"] for r in train if r.get("mfu") is not None]
    out["mfu"] = statistics.median_high(mfus) if mfus else None
    if evals:
        out["first_val_loss"] = evals[0]["val_loss"]
        out["last_val_loss"] = evals[-1]["val_loss"]
        out["last_val_ppl"] = evals[-1]["val_ppl"]
    return out


def plot(records: list[dict[str, Any]], out: Path, title: str) -> None:
    """Two panels: train/val loss and tokens/s against step. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = runstats.surviving_trains(records)
    evals = [r for r in records if r.get("kind") == "eval"]
    restarts = [r["step"] for r in records if r.get("kind") == "start" and r.get("step", 0) > 0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1.2)
    if evals:
        ax1.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss", lw=1.5)
    for i, s in enumerate(restarts):
        ax1.axvline(s, color="grey", ls="--", lw=0.8, label="resumed" if i == 0 else None)
    ax1.set_xlabel("step")
    ax1.set_ylabel("cross-entropy (nats/token)")
    ax1.set_title(f"{title}: loss")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.plot([r["step"] for r in train], [r["tokens_per_s"] for r in train], color="tab:green", lw=1.2)
    ax2.set_xlabel("step")
    ax2.set_ylabel("tokens / s")
    ax2.set_title("throughput")
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def write_report(run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    records, restarts, allocations = runstats.read_run_files(run_dir)
    summary = summarize(records, restarts, allocations)
    if not summary:
        raise RunDirError(f"{run_dir / rundir.METRICS_FILE}: no training steps recorded yet")
    out = run_dir / rundir.REPORT_FILE
    plot(records, out, run_dir.name)
    table = Table(title=f"run {run_dir.name}", show_header=False, box=box.SIMPLE, title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("steps", str(summary["steps"]))
    table.add_row(
        f"train loss ({runstats.loss_label(summary['first_loss_window'], summary['loss_window'])})",
        f"{summary['first_loss']:.3f} -> {summary['last_loss']:.3f}",
    )
    if "last_val_loss" in summary:
        table.add_row(
            "val loss (first / last eval)",
            f"{summary['first_val_loss']:.3f} -> {summary['last_val_loss']:.3f} (ppl {summary['last_val_ppl']:.1f})",
        )
    table.add_row("tokens/s (median)", f"{summary['tokens_per_s']:,.0f}")
    table.add_row("MFU (median)", f"{100 * summary['mfu']:.1f}%" if summary["mfu"] is not None else "n/a (CPU)")
    table.add_row("restarts", str(summary["restarts"]))
    g = summary["goodput"]
    table.add_row("goodput (step time / allocated)", f"{100 * g:.0f}%" if g is not None else "-")
    console.print(table)
    console.print(f"report: {out}", highlight=False, soft_wrap=True)
    return summary
