"""`mltrain fleet submit`: plan a fleet file, then submit one Slurm job per model with its planned
node count (each one a `mltrain submit` of the model's run config)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from mltrain.cluster.capacity import BLOCK_TERMINATION_LEAD_S
from mltrain.cluster.fleet import load_fleet
from mltrain.cluster.layout import layout_overrides
from mltrain.cluster.plan_cli import layout_short
from mltrain.cluster.planner import plan_fleet
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.errors import ClusterError
from mltrain.launch.fleet_state import FleetState, ModelRecord, fleet_state_path, read_fleet_state, write_fleet_state


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
    state_path = fleet_state_path(spec.run_base_dir, fleet_yaml)
    state = None if dry_run else read_fleet_state(state_path)
    if state is None:
        state = FleetState(
            fleet=str(Path(fleet_yaml).resolve()),
            cluster=str(Path(cluster_yaml).resolve()),
            submitted_at=time.time(),
            price_per_node_hour=plan.price_per_node_hour,
            cluster_nodes=spec.nodes,
        )
    for m, p in zip(fleet.models, plan.models, strict=True):
        console.print(
            f"[bold]{m.name}[/]: {p.nodes} nodes, ~{p.days:.2f} days ({m.run_config}); layout {layout_short(p.layout)}",
            highlight=False,
        )
        job_id = submit_run(
            Path(m.run_config),
            cluster_yaml,
            overrides=planned_overrides(Path(m.run_config), p.layout),
            nodes=p.nodes,
            time=None,
            dry_run=dry_run,
            console=console,
            deadline=capacity_deadline(plan.capacity, m.name, spec),
        )
        results.append(job_id)
        if job_id is not None:
            _record_submit(state, m.name, Path(m.run_config), cluster_yaml, p.nodes, p.days, job_id)
            write_fleet_state(state_path, state)  # after each job: a refusal further on keeps what was submitted
    if not dry_run:
        console.print(
            f"fleet record: {state_path}    status: mltrain fleet status {fleet_yaml} --cluster {cluster_yaml}"
        )
    return results


def _record_submit(
    state: FleetState, name: str, run_yaml: Path, cluster_yaml: Path, nodes: int, days: float, job_id: str
) -> None:
    """The model's record: a first submit starts its clock; a resubmit keeps the clock and adds the job."""
    from mltrain.config import load_run_config
    from mltrain.launch.slurm import run_dir_for

    run_dir = str(run_dir_for(load_run_config(run_yaml), load_cluster_spec(cluster_yaml)))
    rec = state.models.get(name)
    t = time.time()
    if rec is None or rec.run_dir != run_dir:
        rec = ModelRecord(
            run_dir=run_dir, nodes=nodes, planned_days=days, submitted_at=t, planned_finish=t + days * 86400
        )
        state.models[name] = rec
    rec.nodes = nodes
    rec.job_ids.append(job_id)


def capacity_deadline(capacity: dict[str, Any] | None, model: str, spec: ClusterSpec) -> str | None:
    """The `--deadline` a model's job gets from the plan's capacity: the end of the capacity block (held or
    bought) or reservation its nodes come from, None when its capacity has no end. On a capacity-block cluster
    `submit --deadline` takes the block's end itself (it subtracts the termination lead); elsewhere the
    plan's usable end is the deadline."""
    entry = next((e for e in (capacity or {}).get("models", []) if e.get("model") == model), None)
    if entry is None or entry.get("usable_end") is None:
        return None
    usable = datetime.strptime(entry["usable_end"], "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
    block = entry.get("type") == "capacity-block"
    if block and spec.aws is not None and spec.aws.capacity_type == "capacity_block":
        usable += timedelta(seconds=BLOCK_TERMINATION_LEAD_S)  # submit takes the block's end
    return usable.strftime("%Y-%m-%dT%H:%M:%SZ")
