"""`mltrain plan simulate`: a Monte Carlo of the planned fleet with failures, so the plan's single finish date
becomes a spread (p10/p50/p90) with the dollars, the lost hours and the chance of missing a deadline or the end
of a capacity block.

One trial runs every model of the fleet from the same start on its planned nodes:
  - the work is the plan's days on those nodes (compute hours); a checkpoint is saved after every `tau` hours of
    compute (failures.checkpoint_interval_min, else Daly's optimum for the save cost C and the model's MTBF), each
    save blocking training for C (failures.checkpoint_save_s, else 60 s); the interval restarts at every resume;
  - failures arrive as a Poisson process at failures.rate_per_gpu_hour x the model's GPUs while it runs (computing
    or saving, not while it recovers); a failure loses the work since the last completed checkpoint and costs a
    recovery: in place (in_place_restart_s) with probability in_place_fraction, else a node is lost: requeue_s
    when a spare of the fleet's shared pool (failures.spare_nodes) is free at that moment (the spare's
    replacement joins the pool node_replace_s later), else node_replace_s waiting for a new instance;
  - spot capacity adds reclaims at interruptions_per_node_hour x nodes; the 2-minute notice lets the job save the
    work done until the notice when a save fits in it (else the reclaim loses work like a failure); the reclaimed
    node is replaced like a lost one;
  - a hard end (capacity.end, or a capacity block's bought length) cuts the trial: a model still training at the
    usable end (a block's instances start terminating BLOCK_TERMINATION_LEAD_S before it) is not finished.
Dollars are the plan's price x nodes x wall hours (per model), and for the fleet the whole cluster plus the spare
nodes held until the last model finishes (a cut trial is billed to the cut).
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mltrain.cluster.capacity import (
    BLOCK_TERMINATION_LEAD_S,
    SPOT_NOTICE_S,
    Capacity,
    next_block_start,
    plan_blocks,
)
from mltrain.cluster.fleet import Fleet, load_fleet
from mltrain.cluster.planner import HOURS_PER_DAY, Plan, plan_fleet
from mltrain.cluster.prices import load_prices
from mltrain.cluster.reliability import Failures, daly_interval, mtbf_hours, save_cost
from mltrain.errors import ClusterError
from mltrain.tables import Column, fit_table

HORIZON_FACTOR = 100.0  # a trial gives up on a model after this many times its failure-free work (no hard end)
CHECKPOINT_SCALES = (0.5, 1.0, 2.0)  # the checkpoint intervals compared, as multiples of Daly's optimum
QUANTILES = (10, 50, 90)


# --------------------------------------------------------------------------- the trials


@dataclass(frozen=True)
class SimModel:
    """One model as the simulator sees it; every time in hours."""

    name: str
    nodes: int
    work_h: float  # failure-free compute hours on `nodes`
    failure_rate_h: float  # failures per wall hour while running
    spot_rate_h: float  # spot reclaims per wall hour while running
    tau_h: float  # compute hours between checkpoints (inf: none)
    save_h: float  # one save's blocking time
    end_h: float = math.inf  # usable end from the start (inf: none)
    paid_h: float = 0.0  # hours paid whatever happens: a capacity block is paid to its end, up front


@dataclass(frozen=True)
class Recovery:
    """What a failure costs, in hours, and the shared spare pool."""

    in_place_fraction: float
    in_place_h: float
    requeue_h: float
    node_replace_h: float
    spare_nodes: int


@dataclass
class Trials:
    """Per trial (rows) and model (columns): finish hours (nan when not finished), failures, reclaims, and where
    the wall hours beyond the work went: checkpoint saves, work lost since the last checkpoint, recovery downtime
    (a finished model's finish = its work + saves + lost work + recovery)."""

    finish_h: np.ndarray
    failures: np.ndarray
    reclaims: np.ndarray
    saves_h: np.ndarray
    lost_work_h: np.ndarray
    recovery_h: np.ndarray


def saves_needed(rem_h: float, tau_h: float) -> int:
    """Checkpoint saves on the way through `rem_h` of compute: one after every full `tau_h` but not at the end."""
    if not math.isfinite(tau_h) or rem_h <= tau_h:
        return 0
    return math.ceil(rem_h / tau_h - 1e-12) - 1


def recovery_from(f: Failures) -> Recovery:
    return Recovery(
        in_place_fraction=f.in_place_fraction,
        in_place_h=f.in_place_restart_s / 3600,
        requeue_h=f.requeue_s / 3600,
        node_replace_h=f.node_replace_s / 3600,
        spare_nodes=f.spare_nodes,
    )


def run_trials(
    models: list[SimModel],
    rec: Recovery,
    runs: int,
    rng: np.random.Generator,
    tick: Callable[[int], None] | None = None,
) -> Trials:
    """`runs` trials of the fleet. Events of all models are handled in time order (a heap), so the spare pool
    is shared as it would be; the random draws come from `rng` alone, in a fixed order, so a seed fixes them."""
    k = len(models)
    shape = (runs, k)
    out = Trials(np.full(shape, np.nan), *(np.zeros(shape) for _ in range(5)))
    notice_h = SPOT_NOTICE_S / 3600
    rates = [m.failure_rate_h + m.spot_rate_h for m in models]
    cut = [min(m.end_h, HORIZON_FACTOR * m.work_h) for m in models]
    exp_buf, uni_buf = rng.standard_exponential(4096).tolist(), rng.random(4096).tolist()
    ie = iu = 0
    done: list[float] = []  # checkpointed work per model, this trial
    heap: list[tuple[float, int, float]] = []  # (event time, model, run time before it: -1 = finish)

    def start(i: int, t: float) -> None:
        """Model i (re)starts at t: push its finish, or its next failure if that comes first."""
        nonlocal ie, exp_buf
        m = models[i]
        rem = m.work_h - done[i]
        length = rem + saves_needed(rem, m.tau_h) * m.save_h
        if rates[i] > 0:
            if ie == len(exp_buf):
                exp_buf, ie = rng.standard_exponential(4096).tolist(), 0
            x = exp_buf[ie] / rates[i]
            ie += 1
            if x < length:
                heapq.heappush(heap, (t + x, i, x))
                return
        heapq.heappush(heap, (t + length, i, -1.0))

    for r in range(runs):
        done[:] = [0.0] * k
        spares = [0.0] * rec.spare_nodes  # when each spare is free
        for i in range(k):
            start(i, 0.0)
        while heap:
            t, i, ran = heapq.heappop(heap)
            m = models[i]
            if t > cut[i]:
                continue  # not finished by the end: finish stays nan
            if ran < 0:
                out.finish_h[r, i] = t
                out.saves_h[r, i] += saves_needed(m.work_h - done[i], m.tau_h) * m.save_h
                continue
            if iu + 2 > len(uni_buf):
                uni_buf, iu = rng.random(4096).tolist(), 0
            u_kind, u_where = uni_buf[iu], uni_buf[iu + 1]
            iu += 2
            spot = u_kind * rates[i] < m.spot_rate_h
            saved = spot and m.save_h <= notice_h  # the notice stops training and saves what was done until then
            y = max(0.0, ran - notice_h) if saved else ran  # the run time that counts
            # whole intervals (compute + save) completed before y, and the time since the last of them
            full = int(y // (m.tau_h + m.save_h)) if math.isfinite(m.tau_h) else 0
            since = y - full * (m.tau_h + m.save_h) if full else y
            done[i] += full * m.tau_h if full else 0.0
            out.saves_h[r, i] += full * m.save_h
            if saved:  # nothing lost: the work since the last checkpoint is saved in the notice
                done[i] += min(since, m.tau_h)
                out.saves_h[r, i] += max(0.0, since - m.tau_h)
                out.recovery_h[r, i] += ran - y
            else:
                out.lost_work_h[r, i] += since
            if spot:
                out.reclaims[r, i] += 1
            else:
                out.failures[r, i] += 1
            if not spot and u_where < rec.in_place_fraction:
                down = rec.in_place_h
            else:  # a node is gone: a free spare, else wait for a new instance
                free = min(range(len(spares)), key=spares.__getitem__, default=None)
                if free is not None and spares[free] <= t:
                    spares[free] = t + rec.node_replace_h
                    down = rec.requeue_h
                else:
                    down = rec.node_replace_h
            out.recovery_h[r, i] += down
            start(i, t + down)
        if tick is not None:
            tick(1)
    return out


# --------------------------------------------------------------------------- from the fleet to the trials


def daly_h(save_h: float, losing_rate_h: float) -> float:
    """Daly's optimum interval (hours) for interruptions that lose work at `losing_rate_h`; inf at rate 0."""
    return math.inf if losing_rate_h <= 0 else daly_interval(save_h, 1.0 / losing_rate_h)


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def fleet_start(fleet: Fleet, now: datetime) -> datetime:
    """capacity.start when given; else a capacity block's next 11:30 UTC; else now (to the minute)."""
    cap = fleet.capacity
    if cap.start is not None:
        return _utc(cap.start)
    if cap.type == "capacity-block":
        return next_block_start(now)
    return _utc(now).replace(second=0, microsecond=0)


def block_end(cap: Capacity, start: datetime, days: float, planned_end: datetime | None = None) -> datetime | None:
    """A capacity block's end: `end` when held, else the end of the block the plan buys (`planned_end`, from
    the plan's capacity: sized for the expected days), else one bought for `days` from the block's start
    (capacity.plan_blocks); None for other capacity."""
    if cap.type != "capacity-block":
        return None
    if cap.end is not None:
        return _utc(cap.end)
    if planned_end is not None:
        return planned_end
    block_start = _utc(cap.start) if cap.start is not None else start
    try:
        return plan_blocks("sim", 1, days, block_start, None)[0].end
    except ValueError as e:
        raise ClusterError(f"capacity: {e}") from None


def usable_end_h(cap: Capacity, start: datetime, days: float, planned_end: datetime | None = None) -> float:
    """Hours from `start` to the last moment a model can train: a capacity block's end (held or bought for
    `days`) less its termination lead, a reservation's `end`; inf without an end."""
    lead = BLOCK_TERMINATION_LEAD_S / 3600 if cap.type == "capacity-block" else 0.0
    end = block_end(cap, start, days, planned_end) if cap.type == "capacity-block" else cap.end
    if end is None:
        return math.inf
    hours = (_utc(end) - start).total_seconds() / 3600 - lead
    if hours <= 0:
        raise ClusterError(
            f"capacity.end {_utc(end).isoformat(timespec='minutes')} leaves no time to train after the start "
            f"{start.isoformat(timespec='minutes')}" + (" (a block stops 30 minutes before its end)" if lead else "")
        )
    return hours


def sim_models(
    fleet: Fleet,
    plan: Plan,
    start: datetime,
    nodes: list[int] | None = None,
    tau_scale: float | None = None,
) -> list[SimModel]:
    """The simulator's models: the plan's split (or `nodes`), and the planned checkpoint interval (or
    `tau_scale` x Daly's optimum for the model's MTBF)."""
    f = fleet.failures
    gpn = plan.gpus_per_node
    default_spot = load_prices().spot_interruptions_per_node_hour.value
    out = []
    for fm, mp, n in zip(fleet.models, plan.models, nodes or [p.nodes for p in plan.models], strict=True):
        cap = fm.capacity or fleet.capacity
        gpus = n * gpn
        save_s = save_cost(fm, f)[0]  # measured (the model's run or bench result), else the fleet's, else 60 s
        save_h = save_s / 3600
        spot = 0.0
        if cap.type == "spot":
            per_node = cap.interruptions_per_node_hour
            spot = n * (default_spot if per_node is None else per_node)
        # the interruptions that lose work: failures, and spot reclaims whose notice is too short for a save
        mtbf = mtbf_hours(f.rate_per_gpu_hour, gpus)
        losing = (0.0 if not math.isfinite(mtbf) else 1.0 / mtbf) + (0.0 if save_s <= SPOT_NOTICE_S else spot)
        if tau_scale is None and f.checkpoint_interval_min is not None:
            tau = f.checkpoint_interval_min / 60
        else:
            tau = (1.0 if tau_scale is None else tau_scale) * daly_h(save_h, losing)
        block_days = plan.totals.makespan_days if fm.capacity is None else mp.days
        planned_end = _planned_block_end(plan, "fleet" if fm.capacity is None else fm.name)
        out.append(
            SimModel(
                name=fm.name,
                nodes=n,
                work_h=mp.node_days_work * HOURS_PER_DAY / n,
                failure_rate_h=f.rate_per_gpu_hour * gpus,
                spot_rate_h=spot,
                tau_h=tau,
                save_h=save_h if math.isfinite(tau) else 0.0,
                end_h=usable_end_h(cap, start, block_days, planned_end),
                paid_h=_paid_h(cap, start, block_days, planned_end),
            )
        )
    return out


# --------------------------------------------------------------------------- summaries


def _q(x: np.ndarray) -> dict[str, float | None]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {f"p{p}": None for p in QUANTILES}
    return {f"p{p}": float(v) for p, v in zip(QUANTILES, np.percentile(x, QUANTILES), strict=True)}


def _days(q: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else v / HOURS_PER_DAY for k, v in q.items()}


def _dates(q_days: dict[str, float | None], start: datetime) -> dict[str, str | None]:
    return {
        k: None if v is None else (start + timedelta(days=v)).isoformat(timespec="minutes") for k, v in q_days.items()
    }


def _dollars(x: np.ndarray, price: float | None) -> dict[str, float | None]:
    return {f"p{p}": None for p in QUANTILES} if price is None else _q(x * price)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else 0.0


def _planned_block_end(plan: Plan, covers: str) -> datetime | None:
    """The end of the capacity block the plan buys for `covers` ("fleet" or a model), None when it buys none."""
    for b in (plan.capacity or {}).get("blocks", []):
        if b["covers"] == covers:
            return datetime.strptime(b["end"], "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
    return None


def _paid_h(cap: Capacity, start: datetime, days: float, planned_end: datetime | None = None) -> float:
    """Hours from `start` to a capacity block's end (paid up front, used or not); 0 for pay-as-you-go capacity."""
    end = block_end(cap, start, days, planned_end)
    return 0.0 if end is None else max(0.0, (end - start).total_seconds() / 3600)


def _billed_h(t: Trials, models: list[SimModel]) -> np.ndarray:
    """Wall hours each model pays for its nodes: to its finish, or to its cut when it did not finish; a capacity
    block's to the block's end whatever happens (no refund for finishing early)."""
    cut = np.array([min(m.end_h, HORIZON_FACTOR * m.work_h) for m in models])
    used = np.where(np.isnan(t.finish_h), cut[None, :], t.finish_h)
    return np.maximum(used, np.array([m.paid_h for m in models])[None, :])


def fleet_summary(
    t: Trials, models: list[SimModel], deadlines_h: list[float], cluster_nodes: int, spares: int, price: float | None
) -> dict[str, Any]:
    """The fleet's makespan (over trials where every model finished), dollars (cluster + spares held to the
    last finish or cut), P(not finished) and P(some model misses its deadline)."""
    finished = ~np.isnan(t.finish_h).any(axis=1)
    makespan = np.where(finished, np.nanmax(np.where(np.isnan(t.finish_h), -np.inf, t.finish_h), axis=1), np.nan)
    held = _billed_h(t, models).max(axis=1)
    late = np.isnan(t.finish_h) | (t.finish_h > np.array(deadlines_h)[None, :])
    return {
        "makespan_days": _days(_q(makespan)),
        "dollars": _dollars(held * (cluster_nodes + spares), price),
        "p_not_finished": float(1.0 - finished.mean()),
        "p_miss_deadline": float(late.any(axis=1).mean()),
        "failures_mean": float(t.failures.sum(axis=1).mean()),
        "spot_reclaims_mean": float(t.reclaims.sum(axis=1).mean()),
        "lost_hours_mean": float((t.lost_work_h + t.recovery_h).sum(axis=1).mean()),
        "overhead_hours_mean": float((t.saves_h + t.lost_work_h + t.recovery_h).sum(axis=1).mean()),
    }


def simulate_fleet(
    fleet: Fleet,
    runs: int,
    seed: int,
    now: datetime | None = None,
    plan: Plan | None = None,
    tick: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The whole report (what --json prints): per model and fleet figures for the plan, then the seed split and
    the checkpoint intervals compared. Every variant draws from a generator seeded with `seed` (common random
    numbers), so their differences are the variants', not the draws'."""
    if runs <= 0:
        raise ClusterError(f"--runs must be a positive number of trials, not {runs}")
    plan = plan or plan_fleet(fleet, now=now)
    start = fleet_start(fleet, now or datetime.now(UTC))
    f = fleet.failures
    rec = recovery_from(f)
    price = plan.price_per_node_hour
    deadlines = [m.deadline_days or fleet.constraints.deadline_days for m in fleet.models]
    deadlines_h = [math.inf if d is None else d * HOURS_PER_DAY for d in deadlines]

    def trials(models: list[SimModel]) -> Trials:
        return run_trials(models, rec, runs, np.random.default_rng(seed), tick)

    def compare_row(models: list[SimModel], t: Trials) -> dict[str, Any]:
        s = fleet_summary(t, models, deadlines_h, plan.nodes, f.spare_nodes, price)
        return {
            "makespan_days": s["makespan_days"],
            "dollars": s["dollars"],
            "p_not_finished": s["p_not_finished"],
            "p_miss_deadline": s["p_miss_deadline"],
            "lost_hours_mean": s["lost_hours_mean"],
            "overhead_hours_mean": s["overhead_hours_mean"],
        }

    base = sim_models(fleet, plan, start)
    t = trials(base)
    billed = _billed_h(t, base)
    per_model = []
    for i, (m, mp) in enumerate(zip(base, plan.models, strict=True)):
        q = _days(_q(t.finish_h[:, i]))
        late = np.isnan(t.finish_h[:, i]) | (t.finish_h[:, i] > deadlines_h[i])
        per_model.append(
            {
                "name": m.name,
                "nodes": m.nodes,
                "gpus": m.nodes * plan.gpus_per_node,
                "plan_days": mp.days,
                "mtbf_hours": None if m.failure_rate_h <= 0 else 1.0 / m.failure_rate_h,
                "checkpoint_interval_min": None if not math.isfinite(m.tau_h) else m.tau_h * 60,
                "usable_end_days": None if not math.isfinite(m.end_h) else m.end_h / HOURS_PER_DAY,
                "deadline_days": deadlines[i],
                "finish_days": q,
                "finish_date": _dates(q, start),
                "dollars": _dollars(billed[:, i] * m.nodes, mp.price_per_node_hour),
                "failures_mean": _mean(t.failures[:, i]),
                "spot_reclaims_mean": _mean(t.reclaims[:, i]),
                "save_hours_mean": _mean(t.saves_h[:, i]),
                "lost_work_hours_mean": _mean(t.lost_work_h[:, i]),
                "recovery_hours_mean": _mean(t.recovery_h[:, i]),
                "lost_hours_mean": _mean(t.lost_work_h[:, i] + t.recovery_h[:, i]),
                "overhead_hours_mean": _mean(t.saves_h[:, i] + t.lost_work_h[:, i] + t.recovery_h[:, i]),
                "p_not_finished": float(np.isnan(t.finish_h[:, i]).mean()),
                "p_miss_deadline": float(late.mean()),
            }
        )
    fleet_row = fleet_summary(t, base, deadlines_h, plan.nodes, f.spare_nodes, price)
    fleet_row["finish_date"] = _dates(fleet_row["makespan_days"], start)
    fleet_row["plan_days"] = plan.totals.makespan_days

    splits = [{"split": "plan", "nodes": [m.nodes for m in base], **compare_row(base, t)}]
    if fleet.seed_split is not None:
        seed_models = sim_models(fleet, plan, start, nodes=list(fleet.seed_split))
        splits.append(
            {"split": "seed", "nodes": list(fleet.seed_split), **compare_row(seed_models, trials(seed_models))}
        )
    intervals = []
    if f.checkpoint_interval_min is not None:
        intervals.append({"interval": "configured", **_interval_cols(base), **compare_row(base, t)})
    for scale in CHECKPOINT_SCALES:
        models = sim_models(fleet, plan, start, tau_scale=scale)
        same = f.checkpoint_interval_min is None and scale == 1.0
        intervals.append(
            {
                "interval": f"{scale:g}x Daly",
                **_interval_cols(models),
                **compare_row(models, t if same else trials(models)),
            }
        )
    return {
        "runs": runs,
        "seed": seed,
        "start": start.isoformat(timespec="minutes"),
        "instance_type": plan.instance_type,
        "cluster_nodes": plan.nodes,
        "spare_nodes": f.spare_nodes,
        "price_per_node_hour": price,
        "capacity": fleet.capacity.type,
        "failures": {**f.model_dump(), "checkpoint_save_s_used": sorted({round(m.save_h * 3600, 3) for m in base})},
        "models": per_model,
        "fleet": fleet_row,
        "compare": {"splits": splits, "checkpoint_intervals": intervals},
    }


def _interval_cols(models: list[SimModel]) -> dict[str, Any]:
    return {"intervals_min": [None if not math.isfinite(m.tau_h) else m.tau_h * 60 for m in models]}


def variants(fleet: Fleet) -> int:
    """How many fleets of trials simulate_fleet runs (for the progress bar)."""
    n = 1 + (fleet.seed_split is not None) + len(CHECKPOINT_SCALES)
    return n - (fleet.failures.checkpoint_interval_min is None)


# --------------------------------------------------------------------------- the command


def _d(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _usd(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"${x / 1e6:.2f}M" if x >= 1e6 else f"${x / 1e3:.0f}k"


def _p(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 or x == 0 else "<1%"


SIM_COLUMNS = [
    Column("model", "left", 0),
    Column("p10 d", "right", 3),
    Column("p50 d", "right", 0),
    Column("p90 d", "right", 0),
    Column("date", "right", 5),
    Column("p50 $", "right", 1),
    Column("p90 $", "right", 4),
    Column("fails", "right", 6),
    Column("lost h", "right", 2),
    Column("late", "right", 1),
    Column("cut", "right", 1),  # "-" (so dropped) when the capacity has no end
]


def _row(name: str, days: dict, date: dict, dollars: dict, fails: float, lost: float, late: float, cut: float | None):
    p50 = date["p50"]
    return [
        name,
        _d(days["p10"]),
        _d(days["p50"]),
        _d(days["p90"]),
        "-" if p50 is None else datetime.fromisoformat(p50).strftime("%b %d"),
        _usd(dollars["p50"]),
        _usd(dollars["p90"]),
        f"{fails:.2f}",
        f"{lost:.1f}",
        _p(late),
        "-" if cut is None else _p(cut),
    ]


def compare_columns(what: str) -> list[Column]:
    """Columns of a comparison table whose last column says what differs (`what`)."""
    return [
        Column("variant", "left", 0),
        Column("p50 d", "right", 0),
        Column("p90 d", "right", 0),
        Column("p50 $", "right", 0),
        Column("p90 $", "right", 1),
        Column("overhead h", "right", 2),
        Column("late", "right", 3),
        Column(what, "left", 4),
    ]


def _compare_rows(rows: list[dict[str, Any]], label: str) -> list[list[str]]:
    out = []
    for c in rows:
        if "nodes" in c:
            what = ",".join(str(n) for n in c["nodes"])
        else:
            mins = [x for x in c["intervals_min"] if x is not None]
            what = f"{min(mins):.0f}-{max(mins):.0f} min" if mins else "none"
        md, dl = c["makespan_days"], c["dollars"]
        out.append(
            [
                c[label],
                _d(md["p50"]),
                _d(md["p90"]),
                _usd(dl["p50"]),
                _usd(dl["p90"]),
                f"{c['overhead_hours_mean']:.1f}",
                _p(c["p_miss_deadline"]),
                what,
            ]
        )
    return out


def print_report(r: dict[str, Any], console: Console) -> None:
    price = "n/a" if r["price_per_node_hour"] is None else f"${r['price_per_node_hour']:,.2f}"
    fl = r["failures"]
    start = datetime.fromisoformat(r["start"]).strftime("%Y-%m-%d %H:%M")
    console.print(
        f"{r['runs']} trials, seed {r['seed']}, start {start} UTC; {r['cluster_nodes']} x {r['instance_type']} + "
        f"{r['spare_nodes']} spare, {price}/node-hour, {r['capacity']}; {fl['rate_per_gpu_hour']:.3g} failures per "
        f"GPU-hour, checkpoint save {'/'.join(f'{x:g}' for x in fl['checkpoint_save_s_used'])} s",
        highlight=False,
    )
    rows = [
        _row(
            m["name"],
            m["finish_days"],
            m["finish_date"],
            m["dollars"],
            m["failures_mean"] + m["spot_reclaims_mean"],
            m["lost_hours_mean"],
            m["p_miss_deadline"],
            None if m["usable_end_days"] is None else m["p_not_finished"],
        )
        for m in r["models"]
    ]
    fr = r["fleet"]
    rows.append(
        _row(
            "fleet",
            fr["makespan_days"],
            fr["finish_date"],
            fr["dollars"],
            fr["failures_mean"] + fr["spot_reclaims_mean"],
            fr["lost_hours_mean"],
            fr["p_miss_deadline"],
            None if all(m["usable_end_days"] is None for m in r["models"]) else fr["p_not_finished"],
        )
    )
    styles: list[str | None] = [None] * (len(rows) - 1) + ["bold"]
    table, dropped = fit_table(SIM_COLUMNS, rows, console.width, sections={len(rows) - 1}, row_styles=styles)
    console.print(table)
    dropped_all = list(dropped)
    console.print(
        f"Without failures the plan finishes in {fr['plan_days']:.2f} days. Days and dates: over the trials that "
        "finished; $: nodes x wall hours x price (fleet: cluster + spares until the last finish); lost h: work "
        "since the last checkpoint + recovery; date: the p50 finish; late: P(past the deadline or not finished); "
        "cut: P(not finished by the capacity's end).",
        highlight=False,
        style="dim",
    )
    for title, key, label, what in (
        ("node split", "splits", "split", "nodes"),
        ("checkpoint interval", "checkpoint_intervals", "interval", "every"),
    ):
        console.print(f"[bold]{title}[/]: fleet makespan and dollars")
        table, dropped = fit_table(compare_columns(what), _compare_rows(r["compare"][key], label), console.width)
        console.print(table)
        dropped_all += [d for d in dropped if d not in dropped_all]
    console.print(
        "[dim]overhead h: checkpoint saves + lost work + recovery, all models, mean per trial.[/]", highlight=False
    )
    if dropped_all:
        shown = ", ".join(dropped_all)
        console.print(f"[dim](narrow terminal: {shown} not shown; --json has every figure)[/]")


def simulate_command(
    fleet_yaml: Path,
    runs: int = 1000,
    seed: int = 0,
    json_out: bool = False,
    overrides: list[str] | None = None,
    console: Console | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`mltrain plan simulate`: the table (on a terminal, a progress bar when the trials take over a second), or
    --json."""
    console = console or Console()
    if runs <= 0:
        raise ClusterError(f"--runs must be a positive number of trials, not {runs}")
    fleet = load_fleet(fleet_yaml, overrides)
    plan = plan_fleet(fleet)
    total = runs * variants(fleet)
    began = time.monotonic()
    state: dict[str, Any] = {"done": 0, "bar": None, "task": None}

    def tick(n: int) -> None:
        state["done"] += n
        if json_out or not console.is_terminal or state["done"] % 50:
            return
        if state["bar"] is None:
            elapsed = time.monotonic() - began
            if elapsed * total / state["done"] <= 1.0:
                return
            from rich.progress import Progress

            state["bar"] = Progress(console=console, transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task("trials", total=total)
        state["bar"].update(state["task"], completed=state["done"])

    try:
        report = simulate_fleet(fleet, runs, seed, now=now, plan=plan, tick=tick)
    finally:
        if state["bar"] is not None:
            state["bar"].stop()
    if json_out:
        console.print(json.dumps(report, indent=2), markup=False, highlight=False, soft_wrap=True)
    else:
        print_report(report, console)
    return report
