"""`mltrain plan`: the fleet's plan as a table (or JSON/YAML). `mltrain fleet submit` submits it
(mltrain.launch.fleet)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mltrain.cluster.fleet import load_fleet
from mltrain.cluster.layout import Layout
from mltrain.cluster.planner import Plan, SplitTotals, plan_fleet
from mltrain.cluster.reliability import ModelReliability, fleet_reliability, reliability_line
from mltrain.errors import ClusterError
from mltrain.tables import Column, fit_table


def _si(x: float) -> str:
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def _usd(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.0f}"


# priority 0 always shown; higher numbers are dropped first when the console is narrow
PLAN_COLUMNS = [
    Column("model", "left", 0),
    Column("nodes", "right", 0),
    Column("days", "right", 0),
    Column("$", "right", 1),
    Column("seed nodes", "right", 2, style="dim"),
    Column("seed days", "right", 2, style="dim"),
    Column("node-hours", "right", 3),
    Column("min nodes", "right", 4),
    Column("params", "right", 5),
    Column("tokens", "right", 6),
    Column("MFU", "right", 7),
    Column("GiB/GPU", "right", 8),
    Column("layout", "left", 9),
]


def layout_short(layout: dict | None) -> str:
    """A layout dict (ModelPlan.layout) as a table cell: `fsdp64`, `hsdp2x32 tp8 ac`, `-` when none fits."""
    if layout is None:
        return "-"
    lay = Layout(**{k: v for k, v in layout.items() if k in Layout.__dataclass_fields__})
    return lay.short()


def plan_title(plan: Plan) -> str:
    price = "n/a" if plan.price_per_node_hour is None else f"${plan.price_per_node_hour:,.2f}"
    return (
        f"{plan.nodes} x {plan.instance_type} ({plan.nodes * plan.gpus_per_node} x {plan.gpu}), "
        f"{plan.region or 'no region'}, {price}/node-hour ({plan.price_source}); {plan.objective}"
    )


def plan_rows(plan: Plan) -> tuple[list[Column], list[list[str]]]:
    """The per-model cells and a total row, in PLAN_COLUMNS order (no seed columns without a seed split)."""
    seed = plan.seed_totals is not None
    cols = [c for c in PLAN_COLUMNS if seed or not c.header.startswith("seed")]
    rows = []
    for m in plan.models:
        cell = {
            "model": m.name,
            "nodes": str(m.nodes),
            "days": f"{m.days:.2f}",
            "$": _usd(m.dollars),
            "seed nodes": str(m.seed_nodes) if seed else "",
            "seed days": (f"{m.seed_days:.2f}" + (" !" if m.seed_note else "")) if seed else "",
            "node-hours": f"{m.node_hours:,.0f}",
            "min nodes": str(m.min_nodes_fit),
            "params": _si(m.params),
            "tokens": _si(m.tokens),
            "MFU": f"{m.mfu:.2f}",
            "GiB/GPU": f"{m.mem_gib_per_gpu:.1f}",
            "layout": layout_short(m.layout),
        }
        rows.append([cell[c.header] for c in cols])
    tt, st = plan.totals, plan.seed_totals
    total = {
        "model": "total",
        "nodes": str(tt.nodes_used),
        "days": f"{tt.makespan_days:.2f}",
        "$": _usd(tt.busy_dollars),
        "seed nodes": str(st.nodes_used) if st else "",
        "seed days": f"{st.makespan_days:.2f}" if st else "",
        "node-hours": f"{tt.busy_node_hours:,.0f}",
    }
    rows.append([total.get(c.header, "") for c in cols])
    return cols, rows


def plan_table(plan: Plan, width: int = 10_000) -> tuple[Table, list[str]]:
    """The per-model table at most `width` columns wide (columns dropped by priority), and what it dropped."""
    cols, rows = plan_rows(plan)
    styles: list[str | None] = [None] * (len(rows) - 1) + ["bold"]
    return fit_table(cols, rows, width, sections={len(rows) - 1}, row_styles=styles)


def _totals_line(label: str, t: SplitTotals) -> str:
    return (
        f"{label}: makespan {t.makespan_days:.2f} days, {t.nodes_used} nodes busy, "
        f"{t.busy_node_hours:,.0f} busy + {t.idle_node_hours:,.0f} idle node-hours, "
        f"cluster held {t.cluster_node_hours:,.0f} node-hours = {_usd(t.cluster_dollars)}"
    )


def _hm(iso: str) -> str:
    """2026-12-08T11:30Z -> 2026-12-08 11:30 UTC."""
    return iso.replace("T", " ").replace("Z", " UTC")


def _per_hour(price: float | None) -> str:
    return "n/a" if price is None else f"${price:,.2f}/node-hour"


def capacity_lines(cap: dict) -> list[str]:
    """The plan's capacity section: how the nodes are bought, at what price, the blocks to buy and their cost,
    the spot assumptions, and warnings (plain text, one item a line)."""
    if not cap:
        return []
    models = cap["models"]
    shared = [m for m in models if not m["own"]]
    head = f"capacity: {cap['type']}"
    if cap["reservation_id"]:
        head += f" {cap['reservation_id']}"
    if shared:
        n = len(shared)
        head += " for every model" if n == len(models) else f" for {n} model{'s' if n > 1 else ''}"
    lines = [f"{head}, {_per_hour(cap['price_per_node_hour'])} ({cap['price_source']})"]
    if cap["end"]:
        lines.append(f"  held until {_hm(cap['end'])}, usable until {_hm(cap['usable_end'])}")
    for m in models:
        if m["own"]:
            rid = f" {m['reservation_id']}" if m["reservation_id"] else ""
            lines.append(
                f"  {m['model']}: {m['type']}{rid}, {_per_hour(m['price_per_node_hour'])} ({m['price_source']})"
                + (f", usable until {_hm(m['usable_end'])}" if m["usable_end"] else "")
            )
    for b in cap["blocks"]:
        who = "the fleet" if b["covers"] == "fleet" else b["covers"]
        lines.append(
            f"  buy {b['count']} capacity block{'s' if b['count'] > 1 else ''} of {b['instances']} instances for "
            f"{who}: {_hm(b['start'])} -> {_hm(b['end'])} ({b['days']} days; instances terminate from "
            f"{_hm(b['usable_end'])}), {_usd(b['usd'])}"
        )
    if cap["blocks"]:
        sized = cap.get("sized_for_days") or {}
        for b in cap["blocks"]:
            who = [m["model"] for m in models if not m["own"]] if b["covers"] == "fleet" else [b["covers"]]
            name = max(who, key=lambda n: sized.get(n, 0.0))
            lines.append(
                f"  {'fleet' if b['covers'] == 'fleet' else b['covers']}'s block sized for {sized.get(name, 0):.2f} "
                f"days: {name}'s days / its expected goodput (saves, failures; `mltrain plan simulate` has the spread)"
            )
        lines.append(f"  blocks: {cap['blocks_instances']} instances (at most 256), {_usd(cap['blocks_usd'])} up front")
    spot = [m for m in models if m["type"] == "spot"]
    groups = [[m for m in spot if not m["own"]]] + [[m] for m in spot if m["own"]]
    for group in (g for g in groups if g):
        m = group[0]
        who = m["model"] if m["own"] else "fleet"
        lines.append(
            f"  spot, {who}: {m['notice_s'] // 60}-minute notice; {m['interruptions_per_node_hour']:.6f} "
            f"interruptions per node-hour assumed ({m['interruption_rate_source']}): "
            f"~{sum(x['expected_interruptions'] for x in group):.1f} over {'its' if m['own'] else 'their'} node-hours"
        )
    return lines + [f"warning: {w}" for w in cap["warnings"]]


def print_plan(plan: Plan, console: Console, reliability: list[ModelReliability] | None = None) -> None:
    console.print(escape(plan_title(plan)), highlight=False)
    table, dropped = plan_table(plan, console.width)
    console.print(table)
    if dropped:
        console.print(f"[dim](narrow terminal: {', '.join(dropped)} not shown; --json has every figure)[/]")
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
    for line in capacity_lines(plan.capacity):
        style = "yellow" if line.startswith("warning:") else None
        console.print(escape(line), style=style, highlight=False)
    for m in plan.models:
        if m.layout_reason:
            console.print(
                f"[dim]layout[/] {escape(m.name)}: {escape(layout_short(m.layout))}: {escape(m.layout_reason)}",
                highlight=False,
            )
    for r in reliability or []:
        console.print(escape(reliability_line(r)), highlight=False)
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
    fleet = load_fleet(fleet_yaml, overrides)
    plan = plan_fleet(fleet)
    if json_out and yaml_out:
        raise ClusterError("--json and --yaml are exclusive: pick one")
    reliability = fleet_reliability(fleet, plan)
    data = {**plan.to_dict(), "reliability": {r.name: r.to_dict() for r in reliability}}
    if json_out:
        console.print(json.dumps(data, indent=2), markup=False, highlight=False, soft_wrap=True)
    elif yaml_out:
        console.print(yaml.safe_dump(data, sort_keys=False), markup=False, highlight=False, soft_wrap=True, end="")
    else:
        print_plan(plan, console, reliability)
    return plan
