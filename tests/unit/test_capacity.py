"""Capacity in the plan: the capacity-block rules (sizes, lengths, 11:30 UTC, the termination lead), the dated
price table and the override order, the blocks a plan buys, spot and held-capacity lines, JSON keys, and
one-line errors for a bad `capacity:`."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from rich.console import Console

from mltrain.cluster.capacity import (
    BLOCK_STARTUP_S,
    BLOCK_TERMINATION_LEAD_S,
    Capacity,
    block_duration_days,
    check_block_total,
    next_block_start,
    plan_blocks,
    split_block_instances,
    usable_end,
)
from mltrain.cluster.catalog import load_catalog
from mltrain.cluster.fleet import Fleet
from mltrain.cluster.plan_cli import plan_command, print_plan
from mltrain.cluster.planner import plan_fleet
from mltrain.cluster.prices import load_prices
from mltrain.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
SEVEN = ROOT / "configs" / "fleets" / "seven-models.yaml"
NOW = datetime(2026, 12, 7, 4, 56, tzinfo=UTC)
NEXT_1130 = datetime(2026, 12, 7, 11, 30, tzinfo=UTC)
MARGIN_DAYS = (BLOCK_STARTUP_S + BLOCK_TERMINATION_LEAD_S) / 86400
P5E_FLOPS = 8 * 989.4e12  # one p5e.48xlarge, dense bf16


def _tokens_for(days: float, nodes: int, mfu: float = 0.5) -> float:
    """Tokens a model of 6.12e9 FLOPs per token (the explicit model below) trains in `days` on `nodes` nodes."""
    return days * 86400 * nodes * P5E_FLOPS * mfu / 6.12e9


def _model(name: str, days: float, nodes: int, **kw) -> dict:
    """A model pinned to `nodes` nodes (min = max) that trains for `days` there."""
    return {"name": name, "params": 1e9, "n_layers": 10, "hidden_size": 1000, "seq_len": 1000,
            "tokens": _tokens_for(days, nodes), "mfu": 0.5, "min_nodes": nodes, "max_nodes": nodes, **kw}  # fmt: skip


def _fleet(
    models: list[dict], nodes: int = 80, capacity: dict | None = None, failures: dict | None = None, **cluster
) -> Fleet:
    data = {
        "cluster": {"instance_type": "p5e.48xlarge", "nodes": nodes, "region": "ap-southeast-3", **cluster},
        "models": models,
    }
    if capacity is not None:
        data["capacity"] = capacity
    if failures is not None:
        data["failures"] = failures
    return Fleet.model_validate(data)


# --------------------------------------------------------------------------- capacity-block rules


@pytest.mark.parametrize(
    "days, want", [(0.2, 1), (1, 1), (1.01, 2), (13.5, 14), (14, 14), (14.2, 21), (21, 21), (22, 28), (182, 182)]
)
def test_block_lengths_are_whole_days_to_14_then_weeks(days, want):
    assert block_duration_days(days) == want


@pytest.mark.parametrize("days", [0, -1, 182.01, 200])
def test_block_lengths_outside_what_aws_sells_are_refused(days):
    with pytest.raises(ValueError):
        block_duration_days(days)


@pytest.mark.parametrize(
    "n, want",
    [(1, [(1, 1)]), (64, [(1, 64)]), (65, [(1, 33), (1, 32)]), (80, [(2, 40)]), (130, [(1, 44), (2, 43)]),
     (256, [(4, 64)])],
)  # fmt: skip
def test_instances_split_into_balanced_blocks_of_at_most_64(n, want):
    assert split_block_instances(n) == want


def test_every_split_is_balanced_and_minimal():
    for n in range(1, 400):
        split = split_block_instances(n)
        sizes = [size for count, size in split for _ in range(count)]
        assert sum(sizes) == n and max(sizes) <= 64 and max(sizes) - min(sizes) <= 1
        assert len(sizes) == -(-n // 64)


def test_at_most_256_instances_across_blocks():
    start = NEXT_1130
    check_block_total(plan_blocks("fleet", 256, 3, start, 1.0))
    with pytest.raises(ValueError, match="257 instances in capacity blocks; an account holds at most 256"):
        check_block_total(plan_blocks("fleet", 200, 3, start, 1.0) + plan_blocks("m", 57, 3, start, 1.0))


def test_next_block_start_is_the_next_1130_utc():
    assert next_block_start(NOW) == NEXT_1130
    assert next_block_start(NEXT_1130) == NEXT_1130 + timedelta(days=1)  # strictly after now
    assert next_block_start(datetime(2026, 12, 7, 23, 0)) == datetime(2026, 12, 8, 11, 30, tzinfo=UTC)  # naive: UTC


def test_block_covers_the_days_plus_start_up_and_termination_lead():
    b = plan_blocks("fleet", 80, 10.0, NEXT_1130, 39.80)
    assert [(x.count, x.instances) for x in b] == [(2, 40)]
    x = b[0]
    assert x.days == 11 and x.start == NEXT_1130 and x.end == datetime(2026, 12, 18, 11, 30, tzinfo=UTC)
    assert x.end.hour == 11 and x.end.minute == 30
    assert x.usable_end == x.end - timedelta(minutes=30)
    assert x.usd == pytest.approx(2 * 40 * 11 * 24 * 39.80)
    # 13.9 days + 1.5 h margin still fit 14 days; 13.99 + 1.5 h do not: the next length AWS sells is 21
    assert plan_blocks("m", 8, 13.9, NEXT_1130, None)[0].days == 14
    assert plan_blocks("m", 8, 13.99, NEXT_1130, None)[0].days == 21
    assert plan_blocks("m", 8, 13.99, NEXT_1130, None)[0].usd is None


def test_block_starting_off_1130_still_ends_at_1130():
    start = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)  # 2.5 h after 11:30: the first day is short
    x = plan_blocks("m", 8, 2.0, start, 10.0)[0]
    assert x.end == datetime(2026, 12, 10, 11, 30, tzinfo=UTC) and x.days == 3
    assert (x.end - x.start).total_seconds() / 86400 >= 2.0 + MARGIN_DAYS
    assert x.usd == pytest.approx(8 * ((x.end - start).total_seconds() / 3600) * 10.0)


def test_usable_end_per_kind():
    end = datetime(2027, 1, 10, 11, 30, tzinfo=UTC)
    assert usable_end(Capacity(type="capacity-block", end=end)) == end - timedelta(seconds=BLOCK_TERMINATION_LEAD_S)
    assert usable_end(Capacity(type="capacity-block"), planned_end=end) == end - timedelta(minutes=30)
    assert usable_end(Capacity(type="capacity-block")) is None
    assert usable_end(Capacity(type="odcr", end=end)) == end
    assert usable_end(Capacity(type="spot", end=end)) == end
    assert usable_end(Capacity()) is None


def test_capacity_times_are_utc_and_end_follows_start():
    c = Capacity(type="capacity-block", start="2027-01-02T11:30:00", end="2027-01-09T20:30:00+09:00")
    assert c.start == datetime(2027, 1, 2, 11, 30, tzinfo=UTC) and c.end == datetime(2027, 1, 9, 11, 30, tzinfo=UTC)
    with pytest.raises(ValidationError, match="is not after start"):
        Capacity(start="2027-01-02T11:30:00Z", end="2027-01-01T11:30:00Z")


# --------------------------------------------------------------------------- the dated price table


def test_the_price_in_effect_on_the_start_date():
    t = load_prices()
    old = t.figure("p5e.48xlarge", "ap-southeast-3", "capacity-block", date(2025, 12, 31))
    new = t.figure("p5e.48xlarge", "ap-southeast-3", "capacity-block", datetime(2026, 1, 1, 11, 30, tzinfo=UTC))
    assert (old.usd_per_hour, new.usd_per_hour, str(new.effective_from)) == (34.61, 39.80, "2026-01-01")
    assert 80 * old.usd_per_hour == pytest.approx(2768.8)  # the users' $2,768/hour
    assert old.source in t.sources and new.date == date(2026, 12, 7)
    # an ODCR is billed at the on-demand price; no figure: None, never a guess
    assert t.figure("p5e.48xlarge", "ap-southeast-3", "odcr", date(2026, 12, 7)).usd_per_hour == 34.60
    assert t.figure("p5e.48xlarge", "eu-north-1", "capacity-block", date(2026, 12, 7)) is None
    assert t.figure("p5e.48xlarge", None, "on-demand", date(2026, 12, 7)) is None
    assert 0 < t.spot_interruptions_per_node_hour.value < 0.01


def test_every_figure_is_dated_and_sourced_and_names_a_catalog_type():
    t, catalog = load_prices(), load_catalog()
    for inst, regions in t.instances.items():
        assert inst in catalog
        for kinds in regions.values():
            for figures in kinds.values():
                assert all(f.source in t.sources and f.date for f in figures)


def test_catalog_on_demand_prices_come_from_the_table():
    catalog, t = load_catalog(), load_prices()
    for name, inst in catalog.items():
        want = {r: f.usd_per_hour for r, f in t.on_demand(name, datetime.now(UTC).date()).items()}
        assert inst.prices == want


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["instances"]["g5.xlarge"]["us-east-1"]["on-demand"][0].update(source="nowhere"),
         "instances.g5.xlarge.us-east-1.on-demand.0.source: unknown source 'nowhere'"),
        (lambda d: d["instances"]["g5.xlarge"]["us-east-1"]["on-demand"].append(
            {"usd_per_hour": 2.0, "source": "aws-on-demand", "date": "2026-12-07"}),
         "two figures without effective_from"),
        (lambda d: d["instances"]["g5.xlarge"]["us-east-1"].update(odcr=[]), "odcr"),
        (lambda d: d["instances"]["g5.xlarge"]["us-east-1"]["on-demand"][0].pop("date"), "date: required key"),
    ],
)  # fmt: skip
def test_price_table_is_validated_strictly(tmp_path, mutate, message):
    data = yaml.safe_load((ROOT / "src" / "mltrain" / "cluster" / "prices.yaml").read_text())
    mutate(data)
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ClusterError, match=message) as e:
        load_prices(path)
    assert "\n" not in str(e.value)


def test_a_price_written_into_the_catalog_is_refused(tmp_path):
    path = tmp_path / "catalog.yaml"
    text = (ROOT / "src" / "mltrain" / "cluster" / "catalog.yaml").read_text()
    path.write_text(text.replace("peak_bf16_tflops: 312\n", "peak_bf16_tflops: 312\n    prices: {us-east-1: 1}\n", 1))
    with pytest.raises(ClusterError, match=r"instances.p4d.24xlarge.prices: prices live in prices.yaml"):
        load_catalog(path)


# --------------------------------------------------------------------------- prices in the plan


def test_plan_uses_the_capacity_block_price_in_effect_at_its_start():
    models, then = [_model("a", 5, 80)], datetime(2025, 12, 1, tzinfo=UTC)
    before = plan_fleet(_fleet(models, capacity={"type": "capacity-block", "start": "2025-12-10T11:30:00Z"}), now=then)
    after = plan_fleet(_fleet(models, capacity={"type": "capacity-block", "start": "2026-02-01T11:30:00Z"}), now=then)
    assert before.price_per_node_hour == 34.61 and after.price_per_node_hour == 39.80
    assert after.price_source.startswith("price table, capacity-block ap-southeast-3 from 2026-01-01")
    assert after.models[0].capacity == "capacity-block" and after.models[0].price_per_node_hour == 39.80
    # no start given: the block starts at the next 11:30 UTC after `now`, priced on that day
    p = plan_fleet(_fleet(models, capacity={"type": "capacity-block"}), now=NOW)
    assert p.capacity["start"] == "2026-12-07T11:30Z" and p.price_per_node_hour == 39.80


def test_price_override_order():
    models = [_model("a", 5, 40), _model("b", 5, 40, capacity={"type": "capacity-block"})]
    # the fleet's capacity: its own price, then cluster.price_per_node_hour, then the table
    f = _fleet(models, capacity={"type": "capacity-block", "price_per_node_hour": 30.0}, price_per_node_hour=20.0)
    p = plan_fleet(f, now=NOW)
    assert (p.price_per_node_hour, p.price_source) == (30.0, "fleet file, capacity.price_per_node_hour")
    p = plan_fleet(_fleet(models, capacity={"type": "capacity-block"}, price_per_node_hour=20.0), now=NOW)
    assert (p.price_per_node_hour, p.price_source) == (20.0, "fleet file")
    a, b = p.models
    assert a.price_per_node_hour == 20.0
    # a model with its own capacity is priced by its own override or the table, not the cluster's price
    assert b.price_per_node_hour == 39.80 and b.price_source.startswith("price table")
    models[1]["capacity"]["price_per_node_hour"] = 25.0
    b = plan_fleet(_fleet(models, price_per_node_hour=20.0), now=NOW).models[1]
    assert (b.price_per_node_hour, b.price_source) == (25.0, "fleet file, models.1.capacity.price_per_node_hour")
    assert b.dollars == pytest.approx(b.node_hours * 25.0)


def test_unknown_price_names_the_key_to_set():
    p = plan_fleet(_fleet([_model("a", 5, 80)], capacity={"type": "spot"}), now=NOW)
    assert p.price_per_node_hour is None and p.models[0].dollars is None
    assert p.price_source == "unknown spot price for p5e.48xlarge in ap-southeast-3: set capacity.price_per_node_hour"


def test_mixed_prices_cost_each_models_nodes_at_its_own_price():
    models = [_model("a", 4, 40), _model("b", 8, 40, capacity={"type": "odcr", "price_per_node_hour": 10.0})]
    p = plan_fleet(_fleet(models, price_per_node_hour=20.0), now=NOW)
    a, b = p.models
    assert (a.nodes, b.nodes) == (40, 40)
    assert p.totals.busy_dollars == pytest.approx(a.node_hours * 20.0 + b.node_hours * 10.0)
    makespan_h = p.totals.makespan_days * 24
    assert p.totals.cluster_dollars == pytest.approx(40 * makespan_h * 20.0 + 40 * makespan_h * 10.0)


# --------------------------------------------------------------------------- blocks the plan buys


def test_fleet_capacity_block_covers_every_shared_model_for_the_makespan():
    models = [_model("a", 6, 40), _model("b", 9, 40)]
    p = plan_fleet(_fleet(models, capacity={"type": "capacity-block"}), now=NOW)
    cap = p.capacity
    assert [m.nodes for m in p.models] == [40, 40]
    (block,) = cap["blocks"]
    days = block_duration_days(p.totals.makespan_days + MARGIN_DAYS)
    assert days == 10
    assert block == {
        "covers": "fleet", "count": 2, "instances": 40, "start": "2026-12-07T11:30Z", "end": "2026-12-17T11:30Z",
        "usable_end": "2026-12-17T11:00Z", "days": 10, "usd": pytest.approx(80 * 10 * 24 * 39.80),
    }  # fmt: skip
    assert cap["blocks_instances"] == 80 and cap["blocks_usd"] == pytest.approx(80 * 10 * 24 * 39.80)
    assert cap["usable_end"] == "2026-12-17T11:00Z" and cap["warnings"] == []
    assert all(m["usable_end"] == "2026-12-17T11:00Z" for m in cap["models"])


def test_per_model_capacity_blocks_cover_each_models_nodes_for_its_days():
    models = [
        _model("a", 3, 16, capacity={"type": "capacity-block"}),
        _model("b", 12, 64, capacity={"type": "capacity-block", "start": "2027-01-04T11:30:00Z"}),
    ]
    p = plan_fleet(_fleet(models), now=NOW)
    a, b = p.models
    assert (a.nodes, b.nodes) == (16, 64)
    blocks = {x["covers"]: x for x in p.capacity["blocks"]}
    assert set(blocks) == {"a", "b"}  # the fleet's on-demand capacity buys nothing
    assert (blocks["a"]["count"], blocks["a"]["instances"], blocks["a"]["days"]) == (1, 16, 4)
    assert blocks["a"]["start"] == "2026-12-07T11:30Z" and blocks["a"]["end"] == "2026-12-11T11:30Z"
    assert (blocks["b"]["count"], blocks["b"]["instances"], blocks["b"]["days"]) == (1, 64, 13)
    assert blocks["b"]["start"] == "2027-01-04T11:30Z" and blocks["b"]["end"] == "2027-01-17T11:30Z"
    assert p.capacity["blocks_instances"] == 80
    assert p.capacity["blocks_usd"] == pytest.approx((16 * 4 + 64 * 13) * 24 * 39.80)


def test_a_block_is_sized_for_the_expected_days_with_saves_and_failures():
    """A block ends on time whatever happened: 9.9 failure-free days fit a 10-day block, but at a failure rate
    that costs more than the 0.04 days of slack the block is one day longer; the plan says what it sized for."""
    from mltrain.cluster.reliability import fleet_reliability

    models = [_model("a", 9.9, 40)]
    calm = plan_fleet(_fleet(models, capacity={"type": "capacity-block"}, failures={"rate_per_gpu_hour": 0}), now=NOW)
    assert calm.capacity["blocks"][0]["days"] == 10
    assert calm.capacity["sized_for_days"] == {"a": pytest.approx(calm.models[0].days, abs=1e-4)}
    rough = _fleet(models, capacity={"type": "capacity-block"}, failures={"rate_per_gpu_hour": 1e-4})
    p = plan_fleet(rough, now=NOW)
    (r,) = fleet_reliability(rough, p)
    assert r.goodput < 0.99
    assert p.capacity["sized_for_days"]["a"] == pytest.approx(p.models[0].days / r.goodput, abs=1e-4)
    assert p.capacity["blocks"][0]["days"] == block_duration_days(p.models[0].days / r.goodput + MARGIN_DAYS) == 11
    assert "fleet's block sized for" in " ".join(_printed(p).split())


def test_more_than_256_block_instances_is_one_clear_error():
    with pytest.raises(ClusterError) as e:
        plan_fleet(_fleet([_model("a", 5, 300)], nodes=300, capacity={"type": "capacity-block"}), now=NOW)
    assert str(e.value).startswith("the plan needs 300 instances in capacity blocks; an account holds at most 256")


def test_a_block_to_buy_starting_in_the_past_moves_to_the_next_1130():
    f = _fleet([_model("a", 5, 80)], capacity={"type": "capacity-block", "start": "2026-12-01T11:30:00Z"})
    p = plan_fleet(f, now=NOW)
    assert p.capacity["blocks"][0]["start"] == "2026-12-07T11:30Z"
    assert p.capacity["warnings"] == [
        "capacity.start is in the past: the block to buy is planned from 2026-12-07T11:30Z (for a block you hold, "
        "give its end or reservation_id)"
    ]
    # a block you hold may have started: training starts now, and its end is checked
    f = _fleet([_model("a", 5, 80)], capacity={"type": "capacity-block", "start": "2026-12-01T11:30:00Z",
                                              "end": "2026-12-15T11:30:00Z"})  # fmt: skip
    p = plan_fleet(f, now=NOW)
    assert p.capacity["blocks"] == [] and p.capacity["warnings"] == []
    assert p.capacity["models"][0]["finish"] == "2026-12-12T04:56Z"


def test_a_training_longer_than_the_longest_block_is_refused():
    models = [_model("a", 190, 8, capacity={"type": "capacity-block"})]
    with pytest.raises(ClusterError, match=r"^model a: capacity block: .* longer than the longest capacity block"):
        plan_fleet(_fleet(models, nodes=8), now=NOW)


def test_held_capacity_that_ends_before_the_finish_is_a_warning():
    models = [_model("a", 4, 40), _model("b", 8, 40)]
    end = "2026-12-12T11:30:00Z"  # 5 days + 6.5 h after NOW; b needs 8 days
    p = plan_fleet(_fleet(models, capacity={"type": "capacity-block", "end": end, "reservation_id": "cr-1"}), now=NOW)
    assert p.capacity["blocks"] == []  # held, nothing to buy
    (w,) = p.capacity["warnings"]
    finish = NOW + timedelta(days=p.models[1].days)
    short = (finish - datetime(2026, 12, 12, 11, 0, tzinfo=UTC)).total_seconds() / 86400
    assert w.startswith("model b: its capacity-block capacity is usable until 2026-12-12T11:00Z")
    assert f"{short:.2f} days before its planned finish" in w
    # an ODCR's end counts as given, without the block's 30-minute lead
    p = plan_fleet(_fleet(models, capacity={"type": "odcr", "end": "2026-12-20T00:00:00Z"}), now=NOW)
    assert p.capacity["warnings"] == [] and p.capacity["usable_end"] == "2026-12-20T00:00Z"


def test_spot_notice_and_interruption_rate():
    rate = load_prices().spot_interruptions_per_node_hour.value
    models = [_model("a", 4, 40), _model("b", 4, 40, capacity={"type": "spot", "interruptions_per_node_hour": 0.01})]
    p = plan_fleet(_fleet(models, capacity={"type": "spot", "price_per_node_hour": 15.0}), now=NOW)
    a, b = p.capacity["models"]
    assert a["notice_s"] == 120 and a["interruptions_per_node_hour"] == rate
    assert a["interruption_rate_source"].startswith("price table: spot-advisor-band")
    assert a["expected_interruptions"] == pytest.approx(rate * p.models[0].node_hours)
    assert b["interruptions_per_node_hour"] == 0.01
    assert b["interruption_rate_source"] == "fleet file, models.1.capacity.interruptions_per_node_hour"
    lines = _printed(p)
    assert "spot, fleet: 2-minute notice; 0.000278 interruptions per node-hour assumed" in lines
    assert "spot, b: 2-minute notice; 0.010000 interruptions per node-hour assumed" in lines


def _printed(plan) -> str:
    c = Console(record=True, width=300, color_system=None)
    print_plan(plan, c)
    return c.export_text()


def test_table_prints_the_capacity_section_under_the_totals():
    models = [_model("a", 6, 40), _model("b", 9, 40, capacity={"type": "odcr", "reservation_id": "cr-0abc"})]
    p = plan_fleet(_fleet(models, nodes=80, capacity={"type": "capacity-block"}), now=NOW)
    text = _printed(p)
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("plan: makespan"))
    assert lines[i + 1].startswith("capacity: capacity-block for 1 model, $39.80/node-hour (price table")
    assert "b: odcr cr-0abc, $34.60/node-hour (catalog, ap-southeast-3 (estimate))" in text
    assert (
        "buy 1 capacity block of 40 instances for the fleet: 2026-12-07 11:30 UTC -> 2026-12-14 11:30 UTC (7 days; "
        "instances terminate from 2026-12-14 11:00 UTC)" in text
    )
    assert "blocks: 40 instances (at most 256)" in text


# --------------------------------------------------------------------------- JSON and the CLI


def test_plan_json_has_the_capacity_key():
    c = Console(record=True, width=220, color_system=None)
    plan_command(SEVEN, json_out=True, console=c, overrides=["capacity.type=capacity-block"])
    data = json.loads(c.export_text())
    cap = data["capacity"]
    assert set(cap) >= {"type", "price_per_node_hour", "price_source", "start", "usable_end", "blocks",
                        "blocks_instances", "blocks_usd", "models", "warnings"}  # fmt: skip
    assert [(b["count"], b["instances"]) for b in cap["blocks"]] == [(2, 40)]
    assert set(cap["blocks"][0]) == {"covers", "count", "instances", "start", "end", "usable_end", "days", "usd"}
    assert cap["price_source"] == "fleet file"  # the seed file's cluster.price_per_node_hour prices the fleet
    assert all(m["capacity"] == "capacity-block" for m in data["models"])


def test_seven_models_stays_on_demand():
    plan = plan_command(SEVEN, console=Console(record=True, width=220, color_system=None))
    assert plan.capacity["type"] == "on-demand" and plan.capacity["blocks"] == []
    assert plan.capacity["warnings"] == [] and plan.price_source == "fleet file"


@pytest.mark.parametrize(
    "capacity, message",
    [
        ({"type": "reserved"}, "capacity.type: Input should be 'on-demand', 'odcr', 'capacity-block' or 'spot'"),
        ({"type": "capacity-block", "start": "2027-01-02T11:30:00Z", "end": "2027-01-01T11:30:00Z"},
         "capacity: end 2027-01-01T11:30Z is not after start 2027-01-02T11:30Z"),
        ({"type": "spot", "interruptions_per_node_hour": -1}, "capacity.interruptions_per_node_hour"),
        ({"type": "spot", "notice_s": 60}, "capacity.notice_s: unknown key"),
        ({"type": "on-demand", "interruptions_per_node_hour": 0.1},
         "capacity: interruptions_per_node_hour is for spot capacity, not on-demand"),
        ({"type": "spot", "reservation_id": "cr-1"}, "capacity: reservation_id is for odcr or capacity-block"),
    ],
)  # fmt: skip
def test_bad_capacity_is_one_line_from_the_cli(tmp_path, capacity, message):
    bad = tmp_path / "fleet.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "cluster": {"instance_type": "p5e.48xlarge", "nodes": 8},
                "capacity": capacity,
                "models": [{"name": "a", "preset": "llama3.2-1b", "tokens": "1B", "mfu": 0.3}],
            }
        )
    )
    r = subprocess.run([sys.executable, "-m", "mltrain", "plan", str(bad)], capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "COLUMNS": "300"})  # fmt: skip
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_too_many_block_instances_is_one_line_from_the_cli(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "cluster": {"instance_type": "p5e.48xlarge", "nodes": 300, "region": "ap-southeast-3"},
                "capacity": {"type": "capacity-block"},
                "models": [{"name": "a", "preset": "llama3.2-1b", "tokens": "1T", "mfu": 0.3}],
            }
        )
    )
    r = subprocess.run([sys.executable, "-m", "mltrain", "plan", str(bad)], capture_output=True, text=True, timeout=60,
                       env={**__import__("os").environ, "COLUMNS": "300"})  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "an account holds at most 256" in r.stderr and len(r.stderr.strip().splitlines()) == 1
