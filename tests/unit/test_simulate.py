"""`mltrain plan simulate`: the Monte Carlo equals the plan without failures, is fixed by its seed, matches the
closed form of a periodic-checkpoint job with exponential failures, and cuts a model at a capacity end."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from mltrain.cluster.capacity import BLOCK_TERMINATION_LEAD_S, block_duration_days
from mltrain.cluster.fleet import Fleet
from mltrain.cluster.planner import plan_fleet
from mltrain.cluster.reliability import daly_interval
from mltrain.cluster.simulate import (
    Recovery,
    SimModel,
    next_block_start,
    run_trials,
    saves_needed,
    simulate_command,
    simulate_fleet,
)
from mltrain.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
SEVEN = ROOT / "configs" / "fleets" / "seven-models.yaml"
NOW = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


def _fleet(failures: dict[str, Any] | None = None, capacity: dict[str, Any] | None = None, **extra: Any) -> Fleet:
    """Two small models (explicit params: no layout import) on 6 nodes, 2.8 and 2.2 days."""
    data: dict[str, Any] = {
        "cluster": {"instance_type": "p5e.48xlarge", "nodes": 6, "price_per_node_hour": 10.0},
        "models": [
            {"name": "a", "params": 1e9, "n_layers": 16, "hidden_size": 2048, "tokens": "300B", "mfu": 0.3},
            {"name": "b", "params": 5e8, "n_layers": 16, "hidden_size": 1024, "tokens": "200B", "mfu": 0.25},
        ],
        "seed_split": [3, 3],
        "failures": failures or {},
        **extra,
    }
    if capacity is not None:
        data["capacity"] = capacity
    return Fleet.model_validate(data)


def test_zero_failures_equal_the_plan_exactly():
    """Rate 0 gives Daly's interval infinity: no checkpoints, no failures, so every trial finishes at the plan's
    days (to float rounding: hours and days convert) and costs the plan's dollars; the fleet's cluster dollars too."""
    fleet = _fleet({"rate_per_gpu_hour": 0})
    plan = plan_fleet(fleet)
    r = simulate_fleet(fleet, runs=50, seed=3, now=NOW, plan=plan)
    for m, mp in zip(r["models"], plan.models, strict=True):
        assert m["checkpoint_interval_min"] is None
        for q in ("p10", "p50", "p90"):
            assert m["finish_days"][q] == pytest.approx(mp.days, rel=1e-12)
            assert m["dollars"][q] == pytest.approx(mp.dollars, rel=1e-12)
        assert m["failures_mean"] == 0 and m["overhead_hours_mean"] == 0 and m["p_not_finished"] == 0
    assert r["fleet"]["makespan_days"]["p50"] == pytest.approx(plan.totals.makespan_days, rel=1e-12)
    assert r["fleet"]["dollars"]["p90"] == pytest.approx(plan.totals.cluster_dollars, rel=1e-12)


def test_zero_failures_with_checkpoints_add_exactly_the_saves():
    """With a set interval tau and save C, a failure-free run takes W + (ceil(W/tau) - 1) x C: one save after
    every full interval but none at the end."""
    fleet = _fleet({"rate_per_gpu_hour": 0, "checkpoint_interval_min": 45, "checkpoint_save_s": 30})
    plan = plan_fleet(fleet)
    r = simulate_fleet(fleet, runs=20, seed=0, now=NOW, plan=plan)
    for m, mp in zip(r["models"], plan.models, strict=True):
        work_h = mp.days * 24
        saves = math.ceil(work_h / 0.75) - 1
        assert saves > 10
        want_days = (work_h + saves * 30 / 3600) / 24
        assert m["finish_days"]["p10"] == pytest.approx(want_days, rel=1e-12)
        assert m["finish_days"]["p90"] == pytest.approx(want_days, rel=1e-12)
        assert m["save_hours_mean"] == pytest.approx(saves * 30 / 3600, rel=1e-12)
        assert m["dollars"]["p50"] == pytest.approx(mp.nodes * want_days * 24 * 10.0, rel=1e-12)


def test_saves_needed():
    assert saves_needed(10.0, 2.0) == 4  # at 2, 4, 6, 8; not at 10
    assert saves_needed(10.5, 2.0) == 5
    assert saves_needed(1.0, 2.0) == 0
    assert saves_needed(10.0, math.inf) == 0


def test_same_seed_same_json_other_seed_differs():
    fleet = _fleet({"rate_per_gpu_hour": 2e-3, "spare_nodes": 1})
    plan = plan_fleet(fleet)
    one = json.dumps(simulate_fleet(fleet, runs=300, seed=7, now=NOW, plan=plan))
    two = json.dumps(simulate_fleet(fleet, runs=300, seed=7, now=NOW, plan=plan))
    other = json.dumps(simulate_fleet(fleet, runs=300, seed=8, now=NOW, plan=plan))
    assert one == two
    assert one != other
    assert json.loads(one)["fleet"]["failures_mean"] > 1  # failures happen: the seeds have something to change


def test_mean_lost_time_matches_the_closed_form():
    """In-place restarts only, save cost 0, tau = 1 h, W = 100 h: each of the 100 intervals is retried until it
    runs failure-free, so it sees e^(lam tau) - 1 failures on average, each losing the truncated-exponential mean
    1/lam - tau/(e^(lam tau) - 1) (about tau/2) plus the restart R. The tolerance is 4 standard errors of the
    trial mean (a false failure about 1 in 16,000)."""
    lam, tau, work, restart_h, runs = 0.05, 1.0, 100.0, 0.1, 4000
    model = SimModel("m", nodes=1, work_h=work, failure_rate_h=lam, spot_rate_h=0, tau_h=tau, save_h=0.0)
    rec = Recovery(1.0, restart_h, 0.25, 1.0, spare_nodes=0)
    t = run_trials([model], rec, runs, np.random.default_rng(11))
    growth = math.expm1(lam * tau)
    per_failure = 1 / lam - tau / growth
    want_failures = work / tau * growth
    want_lost = want_failures * (per_failure + restart_h)
    lost = (t.lost_work_h + t.recovery_h)[:, 0]
    se = lost.std(ddof=1) / math.sqrt(runs)
    assert abs(lost.mean() - want_lost) < 4 * se
    fails = t.failures[:, 0]
    assert abs(fails.mean() - want_failures) < 4 * fails.std(ddof=1) / math.sqrt(runs)
    assert per_failure == pytest.approx(tau / 2, rel=0.01)  # the simple form: half an interval per failure
    assert t.recovery_h[:, 0] == pytest.approx(fails * restart_h)
    # every wall hour is work, a save, lost work or recovery
    assert t.finish_h[:, 0] == pytest.approx(work + t.saves_h[:, 0] + t.lost_work_h[:, 0] + t.recovery_h[:, 0])


def test_spares_shorten_a_lost_node():
    """Every failure loses a node: with spares always free each costs requeue_s, with none node_replace_s; one
    spare shared by two busy models costs something between (the pool is shared)."""
    models = [
        SimModel(n, nodes=1, work_h=200.0, failure_rate_h=0.2, spot_rate_h=0, tau_h=0.5, save_h=0.0) for n in "ab"
    ]

    def per_failure(spares: int) -> float:
        rec = Recovery(0.0, 0.05, 0.25, 2.0, spare_nodes=spares)
        t = run_trials(models, rec, 30, np.random.default_rng(1))
        return float(t.recovery_h.sum() / t.failures.sum())

    assert per_failure(1000) == pytest.approx(0.25)
    assert per_failure(0) == pytest.approx(2.0)
    assert 0.25 < per_failure(1) < 2.0


def test_spot_notice_saves_the_work_when_the_save_fits():
    model = SimModel("s", nodes=4, work_h=100.0, failure_rate_h=0, spot_rate_h=0.1, tau_h=3.0, save_h=60 / 3600)
    fits = Recovery(0.5, 0.05, 0.25, 1.0, spare_nodes=0)
    t = run_trials([model], fits, 200, np.random.default_rng(2))
    assert t.reclaims.mean() > 5 and t.failures.sum() == 0
    assert t.lost_work_h.sum() == 0
    assert t.finish_h[:, 0] == pytest.approx(100.0 + t.saves_h[:, 0] + t.recovery_h[:, 0])
    slow = dataclasses.replace(model, save_h=180 / 3600)  # a 3-minute save does not fit the 2-minute notice
    assert run_trials([slow], fits, 200, np.random.default_rng(2)).lost_work_h.mean() > 1.0


def test_spot_without_periodic_checkpoints_keeps_the_work_at_each_notice():
    """No failures and a save that fits the notice: Daly's interval is infinite, and each reclaim still keeps
    all the work, so the finish is the work plus the notices and replacements."""
    model = SimModel("s", nodes=2, work_h=50.0, failure_rate_h=0, spot_rate_h=0.2, tau_h=math.inf, save_h=0.0)
    rec = Recovery(0.5, 0.05, 0.25, 1.0, spare_nodes=0)
    t = run_trials([model], rec, 100, np.random.default_rng(4))
    assert t.reclaims.mean() > 5 and not np.isnan(t.finish_h).any()
    assert t.lost_work_h.sum() == 0 and t.saves_h.sum() == 0
    assert t.finish_h[:, 0] == pytest.approx(50.0 + t.recovery_h[:, 0])
    # each reclaim: a replacement node (1 h) and the notice (2 min, less when it came within 2 min of a start)
    assert (t.recovery_h[:, 0] <= t.reclaims[:, 0] * (1.0 + 120 / 3600) + 1e-9).all()
    assert (t.recovery_h[:, 0] >= t.reclaims[:, 0] * 1.0 - 1e-9).all()


def test_spot_capacity_reclaims_nodes():
    fleet = _fleet(
        {"rate_per_gpu_hour": 0, "checkpoint_interval_min": 30}, {"type": "spot", "interruptions_per_node_hour": 0.05}
    )
    r = simulate_fleet(fleet, runs=200, seed=0, now=NOW)
    a = r["models"][0]
    assert a["spot_reclaims_mean"] > 0.5 and a["failures_mean"] == 0 and a["lost_work_hours_mean"] == 0
    assert a["recovery_hours_mean"] > 0
    # Daly's interval counts only the interruptions that lose work: not reclaims a save fits in the notice of
    spot = {"type": "spot", "interruptions_per_node_hour": 0.05}
    fits = simulate_fleet(_fleet({"rate_per_gpu_hour": 0}, spot), runs=5, seed=0, now=NOW)
    assert fits["models"][0]["checkpoint_interval_min"] is None
    slow = simulate_fleet(_fleet({"rate_per_gpu_hour": 0, "checkpoint_save_s": 300}, spot), runs=5, seed=0, now=NOW)
    nodes = slow["models"][0]["nodes"]
    want = daly_interval(300 / 3600, 1 / (0.05 * nodes)) * 60
    assert slow["models"][0]["checkpoint_interval_min"] == pytest.approx(want)


def test_a_capacity_end_before_the_work_is_done_misses_every_trial():
    end = datetime(2027, 3, 1, 20, 0, tzinfo=UTC)  # 12 h after the start; the models need more
    fleet = _fleet({"rate_per_gpu_hour": 0}, {"type": "capacity-block", "start": NOW.isoformat(), "end": end})
    r = simulate_fleet(fleet, runs=40, seed=0, now=NOW)
    a = r["models"][0]
    assert a["plan_days"] > 0.5
    assert a["usable_end_days"] == pytest.approx((12 - BLOCK_TERMINATION_LEAD_S / 3600) / 24)
    assert a["p_not_finished"] == 1.0 and a["p_miss_deadline"] == 1.0
    assert a["finish_days"]["p50"] is None and a["finish_date"]["p50"] is None
    assert a["dollars"]["p50"] == pytest.approx(a["nodes"] * 12 * 10.0)  # a block is paid to its end, used or not
    assert r["fleet"]["p_not_finished"] == 1.0 and r["fleet"]["makespan_days"]["p90"] is None


def test_a_capacity_end_that_leaves_no_time_is_refused():
    """A block that ends 20 minutes after its start: its instances terminate 30 minutes before the end."""
    end = (NOW + timedelta(minutes=20)).isoformat()
    fleet = _fleet(capacity={"type": "capacity-block", "start": NOW.isoformat(), "end": end})
    with pytest.raises(ClusterError, match="capacity.end 2027-03-01T08:20.*leaves no time to train"):
        simulate_fleet(fleet, runs=5, seed=0, now=NOW)


def test_a_block_without_end_is_the_one_the_plan_buys():
    fleet = _fleet({"rate_per_gpu_hour": 0}, {"type": "capacity-block"})
    plan = plan_fleet(fleet, now=NOW)
    r = simulate_fleet(fleet, runs=10, seed=0, now=NOW, plan=plan)
    assert r["start"] == "2027-03-01T11:30+00:00"  # the next 11:30 UTC
    (block,) = plan.capacity["blocks"]  # the block `mltrain plan` buys: sized for the expected days
    days = block["days"]
    assert days >= block_duration_days(plan.totals.makespan_days)
    for m, mp in zip(r["models"], plan.models, strict=True):
        assert m["usable_end_days"] == pytest.approx(days - BLOCK_TERMINATION_LEAD_S / 86400)
        assert m["p_not_finished"] == 0.0
        # paid for the whole block although it finishes before: nodes x block hours x price
        assert m["dollars"]["p10"] == m["dollars"]["p90"] == pytest.approx(mp.nodes * days * 24 * 10.0)
    assert next_block_start(datetime(2027, 3, 1, 12, 0, tzinfo=UTC)) == datetime(2027, 3, 2, 11, 30, tzinfo=UTC)


def test_deadline_probability_and_comparisons():
    """Deadline 2.8 days: model a's plan (2.78 days) meets it, but not with its checkpoint saves; b has room."""
    fleet = _fleet(
        {"rate_per_gpu_hour": 0, "checkpoint_interval_min": 45, "checkpoint_save_s": 60},
        constraints={"deadline_days": 2.8},
    )
    plan = plan_fleet(fleet)
    assert [round(m.days, 2) for m in plan.models] == [2.78, 2.23]
    r = simulate_fleet(fleet, runs=10, seed=0, now=NOW, plan=plan)
    assert [m["p_miss_deadline"] for m in r["models"]] == [1.0, 0.0]
    assert r["fleet"]["p_miss_deadline"] == 1.0 and r["fleet"]["p_not_finished"] == 0.0
    splits = {s["split"]: s for s in r["compare"]["splits"]}
    assert splits["plan"]["nodes"] == [m.nodes for m in plan.models] and splits["seed"]["nodes"] == [3, 3]
    assert splits["seed"]["makespan_days"]["p50"] > plan.seed_totals.makespan_days  # the seed's 3.71 + saves
    names = [c["interval"] for c in r["compare"]["checkpoint_intervals"]]
    assert names == ["configured", "0.5x Daly", "1x Daly", "2x Daly"]


def test_checkpoint_interval_comparison_scales_daly():
    fleet = _fleet({"rate_per_gpu_hour": 1e-3, "checkpoint_interval_min": 20})
    r = simulate_fleet(fleet, runs=50, seed=0, now=NOW)
    rows = {c["interval"]: c for c in r["compare"]["checkpoint_intervals"]}
    assert rows["configured"]["intervals_min"] == [20, 20]
    half, one, two = (rows[f"{s}x Daly"]["intervals_min"] for s in ("0.5", "1", "2"))
    for h, o, t in zip(half, one, two, strict=True):
        assert h == pytest.approx(o / 2) and t == pytest.approx(2 * o)


def test_runs_must_be_positive():
    with pytest.raises(ClusterError, match="--runs"):
        simulate_fleet(_fleet(), runs=0, seed=0, now=NOW)


def test_table_fits_80_columns_and_names_everything():
    c = Console(record=True, width=80, color_system=None)
    r = simulate_command(SEVEN, runs=100, seed=1, console=c, now=NOW, overrides=["failures.spare_nodes=2"])
    text = c.export_text()
    for m in r["models"]:
        assert m["name"] in text
    for word in ("fleet", "seed", "0.5x Daly", "2x Daly", "p50 d", "p90 $", "2027-03-01 08:00 UTC", "+ 2 spare"):
        assert word in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_cli_json_has_the_keys_and_bad_runs_is_one_line():
    cmd = [sys.executable, "-m", "mltrain", "plan", "simulate", str(SEVEN), "--runs", "200", "--seed", "1"]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["runs"] == 200 and data["seed"] == 1 and len(data["models"]) == 7
    for key in ("finish_days", "finish_date", "dollars", "failures_mean", "lost_hours_mean", "p_miss_deadline"):
        assert key in data["models"][0]
    assert {"makespan_days", "dollars", "p_not_finished", "p_miss_deadline"} <= set(data["fleet"])
    assert [s["split"] for s in data["compare"]["splits"]] == ["plan", "seed"]
    assert len(data["compare"]["checkpoint_intervals"]) == 3
    bad = subprocess.run([*cmd[:-4], "--runs", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "--runs" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_progress_bar_only_for_slow_tables(monkeypatch):
    """A clock that says each call took a second makes the trials 'slow': the table on a terminal shows a bar (and
    stops it); --json and a table piped elsewhere never do."""
    import rich.progress

    import mltrain.cluster.simulate as sim

    events: list[str] = []

    class FakeProgress:
        def __init__(self, *a: Any, **k: Any) -> None:
            events.append("new")

        def start(self) -> None:
            events.append("start")

        def add_task(self, *a: Any, **k: Any) -> int:
            return 0

        def update(self, *a: Any, **k: Any) -> None:
            events.append("update")

        def stop(self) -> None:
            events.append("stop")

    clock = iter(range(10**6))
    monkeypatch.setattr(rich.progress, "Progress", FakeProgress)
    monkeypatch.setattr(sim.time, "monotonic", lambda: float(next(clock)))
    tty = {"record": True, "width": 80, "force_terminal": True}
    simulate_command(SEVEN, runs=100, json_out=True, console=Console(**tty), now=NOW)
    simulate_command(SEVEN, runs=100, console=Console(record=True, width=80, force_terminal=False), now=NOW)
    assert events == []
    simulate_command(SEVEN, runs=100, console=Console(**tty), now=NOW)
    assert events[:2] == ["new", "start"] and "update" in events and events[-1] == "stop"


def test_the_block_the_plan_buys_holds_the_seven_model_fleet_with_failures():
    """The plan sizes its capacity block for the expected days (saves, failures); the simulator, drawing those
    failures, finds the fleet done inside that block, where a block for the failure-free days (11 days for
    10.92) is cut in most trials. docs/fleet.md shows both."""
    from mltrain.cluster.fleet import load_fleet

    now = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)  # before the block's start

    sets = ["capacity.type=capacity-block", "capacity.start=2027-01-04T11:30:00Z", "cluster.price_per_node_hour=null"]
    fleet = load_fleet(SEVEN, sets)
    plan = plan_fleet(fleet, now=now)
    assert plan.capacity["blocks"][0]["days"] == 12
    bought = simulate_fleet(fleet, runs=300, seed=1, now=now, plan=plan)
    assert bought["fleet"]["p_not_finished"] < 0.02
    tight = load_fleet(SEVEN, [*sets, "capacity.end=2027-01-15T11:30:00Z"])
    cut = simulate_fleet(tight, runs=300, seed=1, now=now)
    assert cut["fleet"]["p_not_finished"] > 0.3
