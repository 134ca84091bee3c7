"""The fleet report PNG (`mltrain fleet status --png PATH`): each model's progress against the plan's.

One panel: per model, the fraction of its total steps reached against days since the fleet's submit (solid,
from the run's metrics.jsonl start/train/exit records), the plan's straight line from the model's submit
to its planned finish (dashed, same colour) and, while it runs, the line on to its ETA (dotted). A fleet without a record has no plan lines; its clock then starts
at the first record of any run. Written atomically, like `mltrain report`'s PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain import rundir
from mltrain.fsutil import read_jsonl

if TYPE_CHECKING:
    from mltrain.launch.fleet_status import FleetStatus

DAY_S = 86400.0


def progress_points(metrics: list[dict[str, Any]], total_steps: int) -> list[tuple[float, float]]:
    """(time, step / total_steps) of every start, train and exit record that has both; a resume from an older
    checkpoint shows as the drop it is."""
    out: list[tuple[float, float]] = []
    for rec in metrics:
        t, s = rec.get("time"), rec.get("step")
        if rec.get("kind") in ("start", "train", "exit") and isinstance(t, (int, float)) and isinstance(s, int):
            out.append((float(t), min(1.0, s / total_steps)))
    return out


def plot_fleet(fs: FleetStatus, out: Path) -> None:
    """Write the report to `out` (atomic: a temporary file beside it, then a rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: list[tuple[str, list[tuple[float, float]], Any]] = []
    for m in fs.models:
        pts: list[tuple[float, float]] = []
        if m.run_dir and m.total_steps:
            pts = progress_points(read_jsonl(Path(m.run_dir) / rundir.METRICS_FILE), m.total_steps)
        series.append((m.name, pts, m))
    starts = [t for _, pts, _ in series for t, _ in pts[:1]] + [m.submitted_at for m in fs.models if m.submitted_at]
    t0 = fs.totals.submitted_at or (min(starts) if starts else fs.now)

    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, pts, m) in enumerate(series):
        color = colors[i % len(colors)]
        if pts:
            ax.plot([(t - t0) / DAY_S for t, _ in pts], [p for _, p in pts], color=color, lw=1.6, label=name)
        else:
            ax.plot([], [], color=color, lw=1.6, label=f"{name} (no steps yet)")
        if pts and m.finish_basis == "eta" and m.est_finish is not None:  # where the current pace ends
            ax.plot(
                [(pts[-1][0] - t0) / DAY_S, (m.est_finish - t0) / DAY_S],
                [pts[-1][1], 1.0],
                color=color,
                ls=":",
                lw=1.2,
            )
        if m.submitted_at is not None and m.planned_finish is not None:
            ax.plot(
                [(m.submitted_at - t0) / DAY_S, (m.planned_finish - t0) / DAY_S],
                [0.0, 1.0],
                color=color,
                ls="--",
                lw=1.0,
                alpha=0.8,
            )
    ax.axvline((fs.now - t0) / DAY_S, color="grey", lw=0.8, ls="-.", label="now")
    ax.plot([], [], color="black", ls="--", lw=1.0, label="plan")
    ax.plot([], [], color="black", ls=":", lw=1.2, label="at the current ETA")
    ax.set_xlabel("days since the fleet's submit" if fs.totals.submitted_at else "days since the first record")
    ax.set_ylabel("fraction of total steps")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    ax.set_title(f"{Path(fs.fleet).stem}: progress vs plan")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    os.replace(tmp, out)
