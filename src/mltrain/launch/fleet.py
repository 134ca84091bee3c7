"""`mltrain fleet submit`: plan a fleet file, then submit one Slurm job per model with its planned
node count (each one a `mltrain submit` of the model's run config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from mltrain.cluster.fleet import load_fleet
from mltrain.cluster.layout import layout_overrides
from mltrain.cluster.plan_cli import layout_short
from mltrain.cluster.planner import plan_fleet
from mltrain.cluster.spec import load_cluster_spec
from mltrain.errors import ClusterError


def planned_overrides(run_yaml: Path, layout: dict[str, Any] | None) -> list[str]:
    """The planned layout as `--set` overrides of a model's run config; none for a script run (its script
    parallelizes itself)."""
    from mltrain.config import _read_yaml

    data = _read_yaml(run_yaml)
    if isinstance(data, dict) and data.get("script") is not None:
        return []
    return layout_overrides(layout)


def fleet_submit_command(
    fleet_yaml: Path, cluster_yaml: Path, dry_run: bool = False, console: Console | None = None
) -> list[object]:
    """`mltrain fleet submit`: plan, then one `submit_run` per model with its node count."""
    from mltrain.launch.slurm import submit_run

    console = console or Console()
    fleet = load_fleet(fleet_yaml)
    missing = [m.name for m in fleet.models if not m.run_config]
    if missing:
        raise ClusterError(
            f"{fleet_yaml}: models.run_config is missing for {', '.join(missing)} "
            "(fleet submit needs a run YAML per model)"
        )
    spec = load_cluster_spec(cluster_yaml)
    if spec.instance_type != fleet.cluster.instance_type:
        raise ClusterError(
            f"{cluster_yaml}: instance_type {spec.instance_type} differs from the fleet's "
            f"{fleet.cluster.instance_type} ({fleet_yaml})"
        )
    plan = plan_fleet(fleet)
    if plan.totals.nodes_used > spec.nodes:
        raise ClusterError(f"{cluster_yaml}: nodes {spec.nodes} < the {plan.totals.nodes_used} nodes the plan uses")
    results = []
    for m, p in zip(fleet.models, plan.models, strict=True):
        console.print(
            f"[bold]{m.name}[/]: {p.nodes} nodes, ~{p.days:.2f} days ({m.run_config}); layout {layout_short(p.layout)}",
            highlight=False,
        )
        results.append(
            submit_run(
                Path(m.run_config),
                cluster_yaml,
                overrides=planned_overrides(Path(m.run_config), p.layout),
                nodes=p.nodes,
                time=None,
                dry_run=dry_run,
                console=console,
            )
        )
    return results
