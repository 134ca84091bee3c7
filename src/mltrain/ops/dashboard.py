"""The shipped Grafana dashboard (dashboards/training.json): its PromQL, evaluated against a real
Prometheus through the HTTP API, and a matplotlib rendering of its panels (docs/operate-dashboard.png).
Grafana itself is not needed for either."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def panel_queries(dashboard: dict[str, Any], run_regex: str = ".+") -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, with the $run variable filled in."""
    out = []
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["expr"].replace("$run", run_regex)))
    return out


def query_range(prom_url: str, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
    """The `matrix` result of /api/v1/query_range (raises on an error status)."""
    qs = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom_url}/api/v1/query_range?{qs}", timeout=30) as r:
        doc = json.loads(r.read())
    if doc.get("status") != "success":
        raise RuntimeError(f"{expr}: {doc.get('error')}")
    return doc["data"]["result"]


def render_png(
    prom_url: str, dashboard: dict[str, Any], start: float, end: float, out: Path, run_regex: str = ".+"
) -> Path:
    """One small chart per panel, from the series Prometheus returns for the panel's queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dashboard["panels"]
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for t in panel.get("targets", []):
            for series in query_range(prom_url, t["expr"].replace("$run", run_regex), start, end):
                xs = [float(v[0]) - start for v in series["values"]]
                ys = [float(v[1]) for v in series["values"]]
                label = t.get("legendFormat", "")
                for k, v in series["metric"].items():
                    label = label.replace("{{" + k + "}}", v)
                ax.plot(xs, ys, marker="o", markersize=2, linewidth=1, label=label or None)
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("s since start", fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(dashboard.get("title", "dashboard"))
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
