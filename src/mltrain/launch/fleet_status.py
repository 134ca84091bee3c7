"""`mltrain fleet status FLEET.yaml --cluster CLUSTER.yaml`: one row per model of a fleet, with the plan beside it.

Each model's figures come from its run dir, through `mltrain.launch.status.run_status` (step, loss, tokens/s,
ETA, restarts, goodput, the Slurm job's state), plus what only the fleet knows: its nodes, when its clock
started and the date the plan promised (the fleet record `fleet submit` writes, mltrain.launch.fleet_state).
A fleet never submitted with `fleet submit` is read from each model's run_config and the cluster spec: its
run dirs are found, but there is no plan clock, so no dollars spent and no finish date to compare with.

Dollars follow the static split: a model's nodes are set aside for it from its submit on, whether its job
runs, waits in the queue or has failed, so a model costs its nodes x the hours since its submit x the price
per node-hour until it finishes. The cluster costs all its nodes (idle ones included) from the fleet's submit.

Every figure may be unknown (None in --json, "-" in the table): a run dir not written yet, a job Slurm no
longer knows, a run without metrics. Nothing here raises for those.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.text import Text

from mltrain import runstats
from mltrain.errors import ClusterError, MltrainError
from mltrain.tables import Column, fit_table

HOUR_S = 3600.0
DAY_S = 86400.0
HOLDING_STATES = ("running", "pending", "requeued", "unknown")  # a model in one of these holds (or may hold) its nodes
# restarts.jsonl causes (mltrain.launch.batch_helper) in a word or two
CAUSE_WORDS = {
    "admin_requeue": "requeue",
    "node_failure": "node",
    "preempted": "preempt",
    "time_limit": "timelimit",
    "cancelled": "cancel",
    "terminated": "term",
    "rank_failure": "rank",
    "hang": "hang",
    "health_check": "health",
    "config_error": "config",
    "unknown": "unknown",
}
UNRECORDED_CAUSE = "unrecorded"  # restarts seen as trainer starts without a launcher record (local runs)


@dataclass
class ModelStatus:
    """One model's row (and its --json object); every figure None when unknown."""

    name: str
    run_dir: str | None
    nodes: int | None
    state: str  # status's word: running, pending, requeued, done, failed, cancelled, stopped, -
    slurm_state: str | None  # the scheduler's word (RUNNING, PENDING, ...); None when Slurm does not know the job
    job_id: str | None
    step: int | None
    total_steps: int | None
    progress: float | None  # step / total_steps
    tokens_per_step: int | None  # from the trainer's own figures: tokens_per_s x step_time_s of a train record
    tokens: int | None  # step x tokens_per_step
    total_tokens: int | None
    loss: float | None  # last train loss (runstats.last_loss)
    val_loss: float | None  # last eval record's
    tokens_per_s: float | None
    eta_s: float | None  # only while running (runstats.eta_seconds)
    submitted_at: float | None  # the model's plan clock; None without a fleet record
    planned_days: float | None
    planned_finish: float | None
    finished_at: float | None  # the time of the "done" exit record
    est_finish: float | None  # finished_at, else now + eta, else now + the plan's time for the work left
    finish_basis: str | None  # "done", "eta" or "plan": where est_finish comes from
    finish_delta_days: float | None  # est_finish - planned_finish: + late, - early
    restarts: int
    restarts_by_cause: dict[str, int]
    preemptions: int
    goodput: float | None
    dollars_spent: float | None
    dollars_projected: float | None
    detail: str = ""  # status's explanation of the state
    notes: list[str] = field(default_factory=list)


@dataclass
class FleetTotals:
    """The cluster as a whole."""

    cluster_nodes: int
    nodes_busy: int  # nodes of the models whose job is running or waiting
    nodes_idle: int
    price_per_node_hour: float | None
    submitted_at: float | None
    last_finish: float | None  # the latest est_finish of the models (None when one is unknown)
    dollars_spent: float | None  # cluster_nodes x hours since the fleet's submit x price
    dollars_projected: float | None  # the same to last_finish


@dataclass
class FleetStatus:
    fleet: str
    cluster: str
    record: str | None  # the fleet record read; None when the fleet was never submitted with `fleet submit`
    now: float
    models: list[ModelStatus]
    totals: FleetTotals
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- collecting


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def tokens_per_step(metrics: list[dict[str, Any]]) -> int | None:
    """Tokens one optimizer step consumes, as the trainer counted them: its train records carry
    tokens_per_s = tokens_per_step / step_time_s, so the product gives them back (the run config alone does
    not know the data-parallel size). The newest record wins: a resume on another node count changes it."""
    for rec in reversed(metrics):
        if rec.get("kind") != "train":
            continue
        tps, dt = _num(rec.get("tokens_per_s")), _num(rec.get("step_time_s"))
        if tps is not None and dt is not None and tps > 0 and dt > 0:
            return int(round(tps * dt))
    return None


def last_val_loss(metrics: list[dict[str, Any]]) -> float | None:
    for rec in reversed(metrics):
        if rec.get("kind") == "eval" and _num(rec.get("val_loss")) is not None:
            return float(rec["val_loss"])
    return None


def finished_at(metrics: list[dict[str, Any]]) -> float | None:
    """The time of the run's "done" exit record, when that is the last thing it wrote."""
    if metrics and metrics[-1].get("kind") == "exit" and metrics[-1].get("reason") == "done":
        return _num(metrics[-1].get("time"))
    return None


def restarts_by_cause(metrics: list[dict[str, Any]], restarts: list[dict[str, Any]]) -> dict[str, int]:
    """Restarts (runstats' definition) counted by cause, in short words; trainer starts without a launcher
    record count as "unrecorded"."""
    out: dict[str, int] = {}
    if restarts:
        for r in restarts:
            if r.get("action") in runstats.RESTART_ACTIONS:
                word = CAUSE_WORDS.get(str(r.get("cause")), str(r.get("cause") or "unknown"))
                out[word] = out.get(word, 0) + 1
        return out
    n = runstats.restarts_of(metrics, restarts)
    return {UNRECORDED_CAUSE: n} if n else {}


def _hours(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, b - a) / HOUR_S


def _dollars(nodes: int | None, hours: float | None, price: float | None) -> float | None:
    if nodes is None or hours is None or price is None:
        return None
    return round(nodes * hours * price, 2)


def model_status(
    name: str,
    run_dir: Path | None,
    nodes: int | None,
    now: float,
    price: float | None,
    record: Any | None = None,
) -> ModelStatus:
    """One model: run_status of its run dir, and the fleet's figures from its record (a ModelRecord or None)."""
    from mltrain.launch import status as status_mod

    notes: list[str] = []
    if run_dir is not None:
        st = status_mod.run_status(run_dir, now=now)
        metrics, restarts, _ = runstats.read_run_files(run_dir)
        if not run_dir.exists():
            notes.append(f"no run dir yet ({run_dir})")
    else:
        st = status_mod.RunStatus(name=name, run_dir=Path("-"))
        metrics, restarts = [], []
    job_id, slurm_state, state, detail = st.job_id, st.scheduler_state, st.state, st.explanation
    if job_id is None and record is not None and record.job_ids:
        # the run dir does not name the job yet (or is gone): the fleet record does
        job_id = str(record.job_ids[-1])
        try:
            info = status_mod.query_job(job_id)
        except status_mod.SlurmUnreachable as e:
            info, state, detail = None, "unknown", status_mod.may_still_run(str(e), job_id)
        if info is not None:
            slurm_state = info.get("state") or None
            reason = info.get("reason") or ""
            if slurm_state in status_mod.RUNNING_STATES:
                state = detail = "running"
            elif slurm_state in status_mod.ACTIVE_STATES:
                state = "pending"
                detail = "pending" + (f" ({reason})" if reason not in ("", "None") else "")

    tps = tokens_per_step(metrics)
    progress = st.step / st.total_steps if st.step is not None and st.total_steps else None
    done_t = finished_at(metrics) if state == "done" else None
    submitted = record.submitted_at if record is not None else None
    planned_days = record.planned_days if record is not None else None
    planned_finish = record.planned_finish if record is not None else None

    # when it will be done: done, or the ETA while running, else the plan's pace for the work left
    est_finish: float | None = None
    basis: str | None = None
    if done_t is not None:
        est_finish, basis = done_t, "done"
    elif st.eta_s is not None:
        est_finish, basis = now + st.eta_s, "eta"
    elif planned_days is not None:
        est_finish, basis = now + (1.0 - min(1.0, progress or 0.0)) * planned_days * DAY_S, "plan"
    delta = (est_finish - planned_finish) / DAY_S if est_finish is not None and planned_finish is not None else None

    # dollars: its nodes from its submit until it finishes (static split: held while it waits too)
    held_until = done_t if done_t is not None else now
    spent = _dollars(nodes, _hours(submitted, held_until), price)
    projected = (
        _dollars(nodes, _hours(submitted, max(est_finish, held_until)), price) if est_finish is not None else None
    )
    if record is None:
        notes.append("no fleet record: no plan clock (submit with mltrain fleet submit)")
    elif basis == "plan" and state != "done":
        notes.append("finish at the plan's pace (no ETA while not running)")
    return ModelStatus(
        name=name,
        run_dir=str(run_dir) if run_dir is not None else None,
        nodes=nodes,
        state=state,
        slurm_state=slurm_state,
        job_id=job_id,
        step=st.step,
        total_steps=st.total_steps,
        progress=progress,
        tokens_per_step=tps,
        tokens=st.step * tps if st.step is not None and tps is not None else None,
        total_tokens=st.total_steps * tps if st.total_steps is not None and tps is not None else None,
        loss=st.loss,
        val_loss=last_val_loss(metrics),
        tokens_per_s=st.tokens_per_s,
        eta_s=st.eta_s,
        submitted_at=submitted,
        planned_days=planned_days,
        planned_finish=planned_finish,
        finished_at=done_t,
        est_finish=est_finish,
        finish_basis=basis,
        finish_delta_days=delta,
        restarts=st.restarts,
        restarts_by_cause=restarts_by_cause(metrics, restarts),
        preemptions=st.preemptions,
        goodput=st.goodput,
        dollars_spent=spent,
        dollars_projected=projected,
        detail=detail,
        notes=notes + list(st.notes),
    )


def _plan_nodes(fleet: Any) -> tuple[dict[str, int], float | None]:
    """Nodes per model and the price from the plan, for a fleet never submitted; ({}, None) when it cannot
    be planned (the row then shows "-")."""
    from mltrain.cluster.planner import plan_fleet

    try:
        plan = plan_fleet(fleet)
    except MltrainError:
        return {}, fleet.cluster.price_per_node_hour
    return {p.name: p.nodes for p in plan.models}, plan.price_per_node_hour


def collect_fleet_status(fleet_yaml: Path, cluster_yaml: Path, now: float | None = None) -> FleetStatus:
    """Every model's figures and the cluster's totals (no printing)."""
    from mltrain.cluster.fleet import load_fleet
    from mltrain.cluster.spec import load_cluster_spec
    from mltrain.config import load_run_config
    from mltrain.launch.fleet_state import fleet_state_path, read_fleet_state
    from mltrain.launch.slurm import run_dir_for

    now = time.time() if now is None else now
    fleet = load_fleet(fleet_yaml)
    spec = load_cluster_spec(cluster_yaml)
    state_path = fleet_state_path(spec.run_base_dir, fleet_yaml)
    state = read_fleet_state(state_path)
    notes: list[str] = []
    if state is None:
        missing = [m.name for m in fleet.models if not m.run_config]
        if missing:
            raise ClusterError(
                f"{fleet_yaml}: models.run_config is missing for {', '.join(missing)} and there is no fleet "
                f"record ({state_path}): nothing says where their runs are"
            )
        plan_nodes, price = _plan_nodes(fleet)
        cluster_nodes, fleet_submitted = spec.nodes, None
        notes.append(f"no fleet record ({state_path}): no plan clock, no dollars; nodes are the plan's")
    else:
        plan_nodes, price = {}, state.price_per_node_hour
        cluster_nodes, fleet_submitted = state.cluster_nodes, state.submitted_at

    models: list[ModelStatus] = []
    names = [m.name for m in fleet.models]
    if state is not None:
        names += [n for n in state.models if n not in names]  # submitted once, since dropped from the file
    by_name = {m.name: m for m in fleet.models}
    for name in names:
        rec = state.models.get(name) if state is not None else None
        m = by_name.get(name)
        run_dir: Path | None = None
        nodes: int | None = None
        if rec is not None:
            run_dir, nodes = Path(rec.run_dir), rec.nodes
        elif m is not None and m.run_config:
            try:
                run_dir = run_dir_for(load_run_config(m.run_config), spec)
            except MltrainError as e:  # a broken run config is that model's "-" row, not the fleet's failure
                notes.append(f"{name}: {(str(e).splitlines() or [type(e).__name__])[0]}")
            nodes = plan_nodes.get(name)
        ms = model_status(name, run_dir, nodes, now, price, rec)
        if state is not None and rec is None:
            ms.notes.insert(0, "not in the fleet record: never submitted with mltrain fleet submit")
        models.append(ms)

    busy = sum(m.nodes or 0 for m in models if m.state in HOLDING_STATES)
    finishes = [m.est_finish for m in models]
    last = max(finishes) if finishes and all(f is not None for f in finishes) else None  # type: ignore[type-var]
    totals = FleetTotals(
        cluster_nodes=cluster_nodes,
        nodes_busy=busy,
        nodes_idle=max(0, cluster_nodes - busy),
        price_per_node_hour=price,
        submitted_at=fleet_submitted,
        last_finish=last,
        dollars_spent=_dollars(cluster_nodes, _hours(fleet_submitted, now), price),
        dollars_projected=_dollars(cluster_nodes, _hours(fleet_submitted, max(last, now)), price)
        if last is not None
        else None,
    )
    if price is None:
        notes.append("no price per node-hour (set cluster.price_per_node_hour in the fleet file): no dollars")
    return FleetStatus(
        fleet=str(Path(fleet_yaml).resolve()),
        cluster=str(Path(cluster_yaml).resolve()),
        record=str(state_path) if state is not None else None,
        now=now,
        models=models,
        totals=totals,
        notes=notes,
    )


def fleet_status_json(fs: FleetStatus) -> dict[str, Any]:
    """The --json document: {fleet, cluster, record, now, models: [...], totals: {...}, notes}."""
    doc = asdict(fs)
    return doc


# --------------------------------------------------------------------------- rendering


def fmt_dollars(x: float | None) -> str:
    """$950, $12.3k, $1.25M."""
    if x is None:
        return "-"
    if abs(x) < 1000:
        return f"${x:,.0f}"
    if abs(x) < 1e6:
        return f"${x / 1e3:.1f}k"
    return f"${x / 1e6:.2f}M"


def fmt_count(x: float | None) -> str:
    """950, 12.3k, 4.5M, 1.2B, 3.0T."""
    if x is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suffix}"
    return f"{x:.0f}"


def fmt_date(t: float | None) -> str:
    """UTC, to the minute: 2026-12-19 06:00."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M")


def fmt_delta(days: float | None) -> str:
    """+1.3d (late) / -0.5d (early)."""
    return "-" if days is None else f"{days:+.1f}d"


# priority: 0 = always shown; higher numbers are dropped first when the console is narrow
FLEET_COLUMNS = [
    Column("model", "left", 0),
    Column("state", "left", 0),
    Column("nodes", "right", 6),
    Column("step", "right", 0),
    Column("tokens", "right", 8),
    Column("loss", "right", 4),
    Column("val", "right", 9),
    Column("tok/s", "right", 7),
    Column("ETA", "right", 0),
    Column("finish", "right", 10),
    Column("vs plan", "right", 1),
    Column("rst", "right", 3),
    Column("good", "right", 5),
    Column("$ so far", "right", 0),
    Column("$ proj", "right", 2),
]


def _cells(m: ModelStatus) -> list[str]:
    rst = f"{m.restarts}" + (f" ({m.preemptions}p)" if m.preemptions else "")
    return [
        m.name,
        m.state,
        str(m.nodes) if m.nodes is not None else "-",
        f"{m.step if m.step is not None else '-'}/{m.total_steps or '?'}",
        fmt_count(m.tokens),
        f"{m.loss:.3f}" if m.loss is not None else "-",
        f"{m.val_loss:.3f}" if m.val_loss is not None else "-",
        fmt_count(m.tokens_per_s),
        runstats.fmt_duration(m.eta_s),
        fmt_date(m.est_finish)[5:10] if m.est_finish is not None else "-",
        fmt_delta(m.finish_delta_days),
        rst,
        f"{100 * m.goodput:.0f}%" if m.goodput is not None else "-",
        fmt_dollars(m.dollars_spent),
        fmt_dollars(m.dollars_projected),
    ]


def _total_cells(fs: FleetStatus) -> list[str]:
    t = fs.totals
    cells = ["-"] * len(FLEET_COLUMNS)
    cells[0] = "cluster"
    cells[1] = f"{t.nodes_idle} idle"
    cells[2] = str(t.cluster_nodes)
    cells[9] = fmt_date(t.last_finish)[5:10] if t.last_finish is not None else "-"
    cells[13] = fmt_dollars(t.dollars_spent)
    cells[14] = fmt_dollars(t.dollars_projected)
    return cells


def detail_line(m: ModelStatus) -> str:
    """What the table has no room for: job, tokens, val loss, finish vs plan, restarts by cause, exact dollars."""
    parts: list[str] = []
    if m.job_id:
        parts.append(f"job {m.job_id} {m.slurm_state or '(unknown to Slurm)'}")
    if m.nodes is not None:
        parts.append(f"{m.nodes} nodes")
    if m.tokens is not None:
        parts.append(f"{fmt_count(m.tokens)} of {fmt_count(m.total_tokens)} tokens")
    if m.val_loss is not None:
        parts.append(f"val loss {m.val_loss:.3f}")
    if m.est_finish is not None:
        word = {"done": "finished", "eta": "finish", "plan": "finish ~"}.get(m.finish_basis or "", "finish")
        when = f"{word} {fmt_date(m.est_finish)} UTC"
        if m.planned_finish is not None and m.finish_delta_days is not None:
            late = "late" if m.finish_delta_days > 0 else "early"
            when += f" (plan {fmt_date(m.planned_finish)}, {abs(m.finish_delta_days):.1f}d {late})"
        parts.append(when)
    if m.restarts:
        causes = ", ".join(f"{n} {c}" for c, n in sorted(m.restarts_by_cause.items(), key=lambda kv: -kv[1]))
        parts.append(f"restarts {m.restarts}" + (f" ({causes})" if causes else ""))
    if m.goodput is not None:
        parts.append(f"goodput {100 * m.goodput:.0f}%")
    if m.dollars_spent is not None:
        proj = f", ${m.dollars_projected:,.2f} projected" if m.dollars_projected is not None else ""
        parts.append(f"${m.dollars_spent:,.2f} so far{proj}")
    if m.detail and m.detail not in ("-", m.state, "finished", "not started"):
        parts.append(m.detail)
    parts.extend(m.notes)
    return "; ".join(p for p in parts if p)


def totals_line(fs: FleetStatus) -> str:
    t = fs.totals
    parts = [f"{t.cluster_nodes} nodes, {t.nodes_busy} held by running or waiting jobs, {t.nodes_idle} idle"]
    if t.dollars_spent is not None:
        parts.append(f"${t.dollars_spent:,.2f} so far at ${t.price_per_node_hour:,.2f}/node-hour")
    if t.dollars_projected is not None:
        parts.append(
            f"${t.dollars_projected:,.2f} projected to {fmt_date(t.last_finish)} UTC (the last model's finish)"
        )
    elif t.dollars_spent is not None:
        parts.append("projected: - (a model's finish is unknown)")
    return "; ".join(parts)


def render(fs: FleetStatus, width: int) -> RenderableType:
    """The table (fits `width`), one detail line per model, the totals line and any notes."""
    from mltrain.launch.status import wrap_line

    rows = [_cells(m) for m in fs.models] + [_total_cells(fs)]
    table, dropped = fit_table(FLEET_COLUMNS, rows, width, sections={len(fs.models)})
    parts: list[RenderableType] = [table]
    lines: list[tuple[str, str | None]] = []
    for m in fs.models:
        lines += [(line, None) for line in wrap_line(f"{m.name}: ", detail_line(m), width)]
    lines += [(line, "bold") for line in wrap_line("cluster: ", totals_line(fs), width)]
    for note in fs.notes:
        lines += [(line, "dim") for line in wrap_line("note: ", note, width)]
    if dropped:
        lines += [(line, "dim") for line in wrap_line("", f"(narrow terminal: {', '.join(dropped)} not shown)", width)]
    parts += [Text(line, style=style or "", no_wrap=True) for line, style in lines]
    return Group(*parts)


def _write_png(fs: FleetStatus, png: Path) -> None:
    from mltrain.launch.fleet_report import plot_fleet

    try:
        plot_fleet(fs, png)
    except OSError as e:
        raise ClusterError(f"{png}: cannot write the fleet report: {e.strerror or e}") from None


def fleet_status_command(
    fleet_yaml: Path,
    cluster_yaml: Path,
    json_out: bool = False,
    watch_s: float | None = None,
    png: Path | None = None,
    console: Console | None = None,
    now: float | None = None,
) -> FleetStatus | None:
    """`mltrain fleet status`: the table (or --json); --png also writes the fleet report; --watch redraws
    every `watch_s` seconds until Ctrl-C (exit 0). Returns the last view (None when Ctrl-C came before one)."""
    console = console or Console()
    if watch_s is not None and watch_s <= 0:
        raise ClusterError(f"--watch {watch_s:g}: give a number of seconds > 0")
    if watch_s is not None:
        return _watch(fleet_yaml, cluster_yaml, json_out, watch_s, png, console, now)
    fs = _snapshot(fleet_yaml, cluster_yaml, png, now)
    if json_out:
        console.out(json.dumps(fleet_status_json(fs), indent=2), highlight=False)
    else:
        console.print(render(fs, console.width))
        if png is not None:
            console.print(f"fleet report: {escape(str(png))}", highlight=False, soft_wrap=True)
    return fs


def _snapshot(fleet_yaml: Path, cluster_yaml: Path, png: Path | None, now: float | None) -> FleetStatus:
    fs = collect_fleet_status(fleet_yaml, cluster_yaml, now=now)
    if png is not None:
        _write_png(fs, png)
    return fs


def _watch(
    fleet_yaml: Path,
    cluster_yaml: Path,
    json_out: bool,
    watch_s: float,
    png: Path | None,
    console: Console,
    now: float | None = None,
) -> FleetStatus | None:
    """Redraw until Ctrl-C (then return: exit 0); --json prints one compact JSON document per line instead
    (for a pipe). `now` freezes the first view only (tests); the redraws read the clock."""
    from rich.live import Live

    fs: FleetStatus | None = None
    try:
        fs = _snapshot(fleet_yaml, cluster_yaml, png, now)
        if json_out:
            while True:
                console.out(json.dumps(fleet_status_json(fs)), highlight=False)
                time.sleep(watch_s)
                fs = _snapshot(fleet_yaml, cluster_yaml, png, None)
        with Live(render(fs, console.width), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch_s)
                fs = _snapshot(fleet_yaml, cluster_yaml, png, None)
                live.update(render(fs, console.width), refresh=True)
    except KeyboardInterrupt:
        pass
    return fs
