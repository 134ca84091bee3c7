"""`mltrain plan` and `mltrain fleet submit`: the plan as a table (or JSON/YAML), and one Slurm job
per model with its planned node count."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mltrain.cluster.fleet import load_fleet
from mltrain.cluster.planner import Plan, SplitTotals, plan_fleet
from mltrain.errors import ClusterError


def _si(x: float) -> str:
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def _usd(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.0f}"


def plan_table(plan: Plan) -> Table:
    """The per-model table, with the seed split side by side when the fleet has one."""
    seed = plan.seed_totals is not None
    price = "n/a" if plan.price_per_node_hour is None else f"${plan.price_per_node_hour:,.2f}"
    title = (
        f"{plan.nodes} x {plan.instance_type} ({plan.nodes * plan.gpus_per_node} x {plan.gpu}), "
        f"{plan.region or 'no region'}, {price}/node-hour ({plan.price_source}); {plan.objective}"
    )
    t = Table(title=escape(title), title_justify="left")
    for col in ("model", "params", "tokens", "MFU", "min nodes", "GiB/GPU", "nodes", "days", "node-hours", "$"):
        t.add_column(col, justify="left" if col == "model" else "right")
    if seed:
        for col in ("seed nodes", "seed days"):
            t.add_column(col, justify="right", style="dim")
    for m in plan.models:
        row = [
            m.name,
            _si(m.params),
            _si(m.tokens),
            f"{m.mfu:.2f}",
            str(m.min_nodes_fit),
            f"{m.mem_gib_per_gpu:.1f}",
            str(m.nodes),
            f"{m.days:.2f}",
            f"{m.node_hours:,.0f}",
            _usd(m.dollars),
        ]
        if seed:
            sd = f"{m.seed_days:.2f}" + (" !" if m.seed_note else "")
            row += [str(m.seed_nodes), sd]
        t.add_row(*row)
    tt = plan.totals
    total = [
        "total",
        "",
        "",
        "",
        "",
        "",
        str(tt.nodes_used),
        f"{tt.makespan_days:.2f}",
        f"{tt.busy_node_hours:,.0f}",
        _usd(tt.busy_dollars),
    ]
    if seed and plan.seed_totals:
        st = plan.seed_totals
        total += [str(st.nodes_used), f"{st.makespan_days:.2f}"]
    t.add_section()
    t.add_row(*total, style="bold")
    return t


def _totals_line(label: str, t: SplitTotals) -> str:
    return (
        f"{label}: makespan {t.makespan_days:.2f} days, {t.nodes_used} nodes busy, "
        f"{t.busy_node_hours:,.0f} busy + {t.idle_node_hours:,.0f} idle node-hours, "
        f"cluster held {t.cluster_node_hours:,.0f} node-hours = {_usd(t.cluster_dollars)}"
    )


def print_plan(plan: Plan, console: Console) -> None:
    console.print(plan_table(plan))
    console.print(_totals_line("plan", plan.totals), highlight=False)
    if plan.seed_totals is not None:
        st, tt = plan.seed_totals, plan.totals
        console.print(_totals_line("seed", st), highlight=False)
        if tt.cluster_dollars is not None and st.cluster_dollars is not None:
            console.print(
                f"plan vs seed: makespan {tt.makespan_days - st.makespan_days:+.2f} days, cluster cost "
                f"{tt.cluster_dollars - st.cluster_dollars:+,.0f} USD (per-model node-hours do not change "
                f"with the split; the idle tail does)",
                highlight=False,
            )
    for m in plan.models:
        if m.seed_note:
            console.print(f"[yellow]seed split, {escape(m.name)}: {escape(m.seed_note)}[/]")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    a = plan.assumptions
    console.print(
        f"[dim]assumptions: FSDP full shard; {a['state_bytes_per_param']:g} B/param sharded (fp32 master + fp32 "
        f"grads + AdamW m,v), {a['units_in_flight']} units x {a['working_bytes_per_param']:g} B/param unsharded, "
        f"activations {a['activation_bytes_per_token_hidden']:g} B x tokens x hidden per layer, logits "
        f"{a['logits_bytes_per_token_vocab']:g} B x tokens x vocab, {a['overhead_gib']:g} GiB overhead; "
        f"FLOPs 6N + 12·L·hidden·seq per token; MFU constant across node counts; static split (nodes of a "
        f"finished model stay idle).[/]"
    )


def plan_command(
    fleet_yaml: Path,
    json_out: bool = False,
    yaml_out: bool = False,
    console: Console | None = None,
    overrides: list[str] | None = None,
) -> Plan:
    """`mltrain plan`: the table, or the plan as JSON / YAML on stdout."""
    console = console or Console()
    plan = plan_fleet(load_fleet(fleet_yaml, overrides))
    if json_out and yaml_out:
        raise ClusterError("--json and --yaml are exclusive: pick one")
    if json_out:
        console.print(json.dumps(plan.to_dict(), indent=2), markup=False, highlight=False, soft_wrap=True)
    elif yaml_out:
        console.print(
            yaml.safe_dump(plan.to_dict(), sort_keys=False), markup=False, highlight=False, soft_wrap=True, end=""
        )
    else:
        print_plan(plan, console)
    return plan


def fleet_submit_command(
    fleet_yaml: Path, cluster_yaml: Path, dry_run: bool = False, console: Console | None = None
) -> list[object]:
    """`mltrain fleet submit`: plan, then one `submit_run` per model with its node count."""
    from mltrain.cluster.spec import load_cluster_spec

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
    try:
        from mltrain.launch.slurm import submit_run
    except ImportError as e:
        raise ClusterError(f"the Slurm launcher is not available (mltrain.launch.slurm.submit_run): {e}") from None
    results = []
    for m, p in zip(fleet.models, plan.models, strict=True):
        console.print(f"[bold]{m.name}[/]: {p.nodes} nodes, ~{p.days:.2f} days ({m.run_config})", highlight=False)
        results.append(
            submit_run(
                Path(m.run_config),
                cluster_yaml,
                overrides=[],
                nodes=p.nodes,
                time=None,
                dry_run=dry_run,
                console=console,
            )
        )
    return results
