"""Failures and the checkpoint interval: Daly's worked examples, Young, the limits, MTBF at the Llama 3 rate,
goodput by hand, every_steps, measured save and restart times, the plan's line and key, the CLI command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mltrain.cluster.fleet import Fleet, load_fleet
from mltrain.cluster.plan_cli import plan_command
from mltrain.cluster.planner import plan_fleet
from mltrain.cluster.reliability import (
    DEFAULT_RATE_PER_GPU_HOUR,
    DEFAULT_SAVE_S,
    Failures,
    checkpoint_interval_command,
    daly_first_order,
    daly_interval,
    every_steps,
    fleet_reliability,
    goodput,
    mean_recovery_s,
    mtbf_hours,
    read_recovery_seconds,
    read_save_seconds,
    young_interval,
)
from mltrain.errors import ClusterError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
SEVEN = ROOT / "configs" / "fleets" / "seven-models.yaml"


def _console() -> Console:
    return Console(record=True, width=400, color_system=None)


# --------------------------------------------------------------------------- the formulas


@pytest.mark.parametrize(
    ("mtbf_min", "expected_min"),
    [(24 * 60, 117), (6 * 60, 57), (15, 9.1)],
)
def test_daly_higher_order_reproduces_his_worked_examples(mtbf_min, expected_min):
    # Daly, FGCS 22 (2006), figs. 3-5: delta = 5 min, R = 10 min (R does not enter the optimum), M = 24 h, 6 h,
    # 15 min; "the new model predicts tau_opt = 117, 57, 9.1 min" (the higher-order form, rounded as printed)
    tau = daly_interval(5.0, mtbf_min)
    assert round(tau, 1 if expected_min < 10 else 0) == expected_min
    # the same in seconds and hours: the formula is unit-free
    assert daly_interval(300.0, mtbf_min * 60.0) == pytest.approx(tau * 60.0)


def test_daly_examples_to_more_digits_and_first_order():
    assert daly_interval(5, 1440) == pytest.approx(116.69, abs=0.01)
    assert daly_interval(5, 360) == pytest.approx(56.71, abs=0.01)
    assert daly_interval(5, 15) == pytest.approx(9.14, abs=0.01)
    # the first-order form sqrt(2CM) - C lands below the higher-order one, the gap growing with C/M
    assert daly_first_order(5, 1440) == pytest.approx(115.0)  # sqrt(14400) - 5
    assert daly_first_order(5, 360) == pytest.approx(55.0)  # sqrt(3600) - 5
    assert daly_first_order(5, 15) == pytest.approx(math.sqrt(150) - 5)  # 7.25, vs 9.14
    for m in (1440, 360, 15):
        assert daly_first_order(5, m) < daly_interval(5, m) < young_interval(5, m)


def test_young():
    assert young_interval(5, 1440) == pytest.approx(120.0)
    assert young_interval(60, 3600 * 79.2) == pytest.approx(math.sqrt(2 * 60 * 3600 * 79.2))


def test_limits_save_at_least_twice_the_mtbf():
    # Daly: for C >= 2M the optimum is M itself (checkpoint once per MTBF); both of his forms agree there
    for save, mtbf in ((10, 5), (20, 5), (1e6, 1)):
        assert daly_interval(save, mtbf) == mtbf
        assert daly_first_order(save, mtbf) == mtbf
    assert daly_interval(9.99, 5) < 2 * 5 + 5  # just below the edge the formula still applies
    assert daly_interval(1.0, math.inf) == math.inf  # no failures: never checkpoint for them


def test_mtbf_for_640_gpus_at_the_llama3_rate():
    # 419 interruptions in 54 days on 16,384 GPUs: 54 x 24 x 16384 / (419 x 640) = 79.18 h
    assert pytest.approx(DEFAULT_RATE_PER_GPU_HOUR) == 419 / (54 * 24 * 16384)
    assert Failures().rate_per_gpu_hour == DEFAULT_RATE_PER_GPU_HOUR
    assert mtbf_hours(DEFAULT_RATE_PER_GPU_HOUR, 640) == pytest.approx(79.18, abs=0.01)
    assert mtbf_hours(DEFAULT_RATE_PER_GPU_HOUR, 64) == pytest.approx(791.8, abs=0.1)
    assert mtbf_hours(0.0, 640) == math.inf


def test_goodput_against_a_hand_calculation():
    # tau = 60 min, C = 5, R = 10, M = 1440: 60 / (1440 e^(10/1440) (e^(65/1440) - 1))
    #   = 60 / (1440 x 1.0069686 x 0.0461732) = 60 / 66.953 = 0.8962
    assert goodput(60, 5, 10, 1440) == pytest.approx(0.8962, abs=1e-4)
    # the first-order waste C/tau + (tau/2 + R)/M = 0.0833 + 0.0278 gives 0.889: close, and below
    assert goodput(60, 5, 10, 1440) == pytest.approx(1 - (5 / 60 + 40 / 1440), abs=0.01)
    assert goodput(60, 5, 10, math.inf) == pytest.approx(60 / 65)  # no failures: only the saves cost
    assert goodput(60, 5, 20, 1440) < goodput(60, 5, 10, 1440)  # a slower restart costs goodput
    with pytest.raises(ValueError):
        goodput(0, 5, 10, 1440)


@pytest.mark.parametrize(("save", "mtbf"), [(5, 1440), (5, 360), (5, 15), (60, 79.2 * 3600)])
def test_daly_interval_maximises_the_same_goodput_model(save, mtbf):
    tau = daly_interval(save, mtbf)
    best = goodput(tau, save, 600, mtbf)
    for factor in (0.7, 0.9, 1.1, 1.4):
        assert goodput(tau * factor, save, 600, mtbf) <= best + 1e-12


def test_mean_recovery_from_the_failures_mix():
    f = Failures()
    # half in place (300 s), half requeued (900 s) and waiting for a replacement node (3600 s)
    assert mean_recovery_s(f) == pytest.approx(0.5 * 300 + 0.5 * (900 + 3600))
    # a spare node replaces the lost one at once
    assert mean_recovery_s(Failures(spare_nodes=1)) == pytest.approx(0.5 * 300 + 0.5 * 900)
    assert mean_recovery_s(Failures(in_place_fraction=1.0)) == pytest.approx(300)


def test_every_steps():
    assert every_steps(35 * 60, 5.0) == 420
    assert every_steps(100.0, 30.0) == 3  # nearest
    assert every_steps(10.0, 60.0) == 1  # at least one step
    assert every_steps(math.inf, 2.0) == 0  # nothing fails: only at the end and on a stop
    with pytest.raises(ClusterError, match="step time"):
        every_steps(100.0, 0.0)


# --------------------------------------------------------------------------- measured save and restart times


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _run(tmp_path: Path, stalls=(44.0, 38.0, 40.0)) -> Path:
    """A run dir: three timed saves (one failed save ignored), a failure recovered in 120 s, a preemption."""
    recs = [{"time": 1000.0, "kind": "start", "step": 0}, {"time": 1010.0, "kind": "train", "step": 10, "mfu": 0.4}]
    for i, s in enumerate(stalls):
        recs.append({"time": 1020.0 + i, "kind": "checkpoint", "step": 10 * (i + 1), "ok": True, "stall_s": s})
    recs.append({"time": 1025.0, "kind": "checkpoint", "step": 40, "ok": False, "stall_s": 999.0})
    recs += [
        {"time": 1030.0, "kind": "train", "step": 40, "mfu": 0.4},
        {"time": 1150.0, "kind": "start", "step": 30},  # failure at ~1030, restart record at 1040
        {"time": 1160.0, "kind": "train", "step": 40, "mfu": 0.4},
        {"time": 2000.0, "kind": "start", "step": 40},  # after a preemption: not a failure
    ]
    run = tmp_path / "runs" / "r1"
    _write_jsonl(run / "metrics.jsonl", recs)
    _write_jsonl(
        run / "restarts.jsonl",
        [
            {"time": 1040.0, "cause": "rank_failure", "action": "restart_in_place", "step": 30},
            {"time": 1900.0, "cause": "preempted", "action": "requeue", "step": 40},
        ],
    )
    return run


def test_save_seconds_from_a_runs_metrics(tmp_path):
    run = _run(tmp_path)
    sec, how = read_save_seconds(run / "metrics.jsonl")
    assert sec == 40.0 and "median of 3 saves" in how  # the failed save is not counted
    assert read_save_seconds(run)[0] == 40.0  # the run dir works too
    empty = _write_jsonl(tmp_path / "other" / "metrics.jsonl", [{"kind": "train", "step": 1}])
    assert read_save_seconds(empty) is None
    with pytest.raises(ClusterError, match="no such file"):
        read_save_seconds(tmp_path / "missing" / "metrics.jsonl")


def test_save_seconds_from_a_checkpoint_bench_json(tmp_path):
    bench = tmp_path / "ckpt.json"
    bench.write_text(json.dumps({"benchmark": "checkpoint", "sync_blocked_s": 12.5, "async_blocked_s": 0.8}))
    assert read_save_seconds(bench) == (12.5, f"bench, sync save: {bench}")
    assert read_save_seconds(bench, async_save=True)[0] == 0.8
    older = tmp_path / "modes.json"
    older.write_text(json.dumps({"modes": {"sync": {"blocked_s_median": 7.0}}}))
    assert read_save_seconds(older)[0] == 7.0
    other = tmp_path / "mfu.json"
    other.write_text(json.dumps({"mfu": 0.4}))
    assert read_save_seconds(other) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ClusterError, match="not JSON"):
        read_save_seconds(bad)


def test_recovery_seconds_from_a_runs_restarts(tmp_path):
    run = _run(tmp_path)
    # last record before the restart record (1030) to the next start (1150); the preemption is left out
    assert read_recovery_seconds(run) == [120.0]
    assert read_recovery_seconds(tmp_path / "nothing") == []


# --------------------------------------------------------------------------- the plan


def _fleet_file(tmp_path: Path, model_extra: dict, failures: dict | None = None) -> Path:
    data = {
        "cluster": {"instance_type": "p5e.48xlarge", "nodes": 80, "region": "ap-southeast-3"},
        "models": [
            {"name": "a", "preset": "llama3.1-8b", "tokens": "100B", "mfu": 0.4, "max_nodes": 11, **model_extra},
            {"name": "b", "preset": "llama3.2-1b", "tokens": "50B", "mfu": 0.3, "max_nodes": 5},
        ],
    }
    if failures is not None:
        data["failures"] = failures
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_line_and_json_with_a_measured_run(tmp_path):
    _run(tmp_path)
    fleet_yaml = _fleet_file(tmp_path, {"checkpoint_result": "runs/r1/metrics.jsonl"})  # relative to the file
    fleet = load_fleet(fleet_yaml)
    assert fleet.models[0].checkpoint_result == str(tmp_path / "runs" / "r1" / "metrics.jsonl")
    plan = plan_fleet(fleet)
    a, b = fleet_reliability(fleet, plan)

    assert a.gpus == 88 and a.mtbf_h == pytest.approx(mtbf_hours(DEFAULT_RATE_PER_GPU_HOUR, 88))
    assert a.save_s == 40.0 and a.save_source.startswith("measured")
    assert a.restart_s == 120.0 and a.restart_source.startswith("measured, mean of 1 recovery")
    assert a.interval_source == "Daly"
    assert a.daly_min == pytest.approx(daly_interval(40.0, a.mtbf_h * 3600) / 60)
    assert a.step_source == "layout estimate" and a.step_s == plan.models[0].layout["step_estimate_s"]["step"]
    assert a.every_steps == round(a.daly_min * 60 / a.step_s)
    assert a.goodput == pytest.approx(goodput(a.every_steps * a.step_s, 40.0, 120.0, a.mtbf_h * 3600))
    # the model without a measurement: the defaults, said so
    assert b.save_s == DEFAULT_SAVE_S and b.save_source == "default: nothing measured"
    assert b.restart_s == mean_recovery_s(Failures()) and b.restart_source == "failures mix"

    c = _console()
    plan_command(fleet_yaml, console=c)
    text = c.export_text()
    line = next(x for x in text.splitlines() if x.startswith("checkpoints a:"))
    assert f"on 88 GPUs, save 40 s (measured, median of 3 saves: {tmp_path}" in line
    assert f"-> every {a.interval_min:,.0f} min (Daly) = checkpoint.every_steps {a.every_steps} " in line
    assert f"expected goodput {100 * a.goodput:.1f}% (restart 2.0 min, measured" in line
    assert "checkpoints b:" in text and "save 60 s (default: nothing measured)" in text

    c = _console()
    plan_command(fleet_yaml, json_out=True, console=c)
    data = json.loads(c.export_text())
    assert set(data["reliability"]) == {"a", "b"}
    assert data["reliability"]["a"]["every_steps"] == a.every_steps
    assert data["reliability"]["a"]["save_s"] == 40.0
    c = _console()
    plan_command(fleet_yaml, yaml_out=True, console=c)
    assert yaml.safe_load(c.export_text())["reliability"]["b"]["save_source"] == "default: nothing measured"


def test_plan_uses_the_fleets_failures_overrides(tmp_path):
    bench = tmp_path / "ckpt.json"
    bench.write_text(json.dumps({"sync_blocked_s": 12.0, "async_blocked_s": 1.0}))
    fleet_yaml = _fleet_file(
        tmp_path,
        {"checkpoint_result": "ckpt.json"},
        {"checkpoint_save_s": 30, "checkpoint_interval_min": 20, "rate_per_gpu_hour": 1e-4, "spare_nodes": 2},
    )
    fleet = load_fleet(fleet_yaml)
    a, b = fleet_reliability(fleet, plan_fleet(fleet))
    assert a.save_s == 12.0 and a.save_source == f"measured, bench, sync save: {bench}"  # measured beats the default
    assert b.save_s == 30.0 and b.save_source == "failures.checkpoint_save_s"
    assert a.interval_min == 20 and a.interval_source == "failures.checkpoint_interval_min"
    assert a.every_steps == round(20 * 60 / a.step_s)
    assert a.mtbf_h == pytest.approx(1 / (1e-4 * 88))
    assert b.restart_s == pytest.approx(0.5 * 300 + 0.5 * 900)  # spares: no wait for a replacement


def test_no_failures_means_checkpoint_only_at_the_end(tmp_path):
    fleet = load_fleet(_fleet_file(tmp_path, {}, {"rate_per_gpu_hour": 0}))
    a, _ = fleet_reliability(fleet, plan_fleet(fleet))
    assert a.mtbf_h is None and a.interval_min is None and a.every_steps == 0
    assert a.goodput == 1.0 and a.expected_failures == 0.0
    json.dumps(a.to_dict(), allow_nan=False)  # no inf in the JSON


def test_step_time_without_a_layout_estimate(tmp_path):
    fleet = Fleet.model_validate(yaml.safe_load(_fleet_file(tmp_path, {}).read_text()))
    plan = plan_fleet(fleet)
    mp = plan.models[1]
    mp.layout = None
    _, b = fleet_reliability(fleet, plan)
    tokens_per_step = fleet.models[1].micro_batch_size * fleet.models[1].seq_len * mp.nodes * plan.gpus_per_node
    assert b.step_s == pytest.approx(tokens_per_step / (mp.tokens / (mp.days * 86400)))
    assert b.step_source.startswith("tokens per step")


def test_a_checkpoint_result_without_a_save_time_is_one_error(tmp_path):
    _write_jsonl(tmp_path / "runs" / "x" / "metrics.jsonl", [{"kind": "train", "step": 1, "time": 1.0}])
    fleet = load_fleet(_fleet_file(tmp_path, {"checkpoint_result": "runs/x"}))
    with pytest.raises(ClusterError, match="model a: checkpoint_result .*no save time"):
        fleet_reliability(fleet, plan_fleet(fleet))


def test_seven_models_plan_prints_a_checkpoint_line_per_model():
    c = _console()
    plan = plan_command(SEVEN, console=c)
    lines = [x for x in c.export_text().splitlines() if x.startswith("checkpoints ")]
    assert [x.split(":")[0] for x in lines] == [f"checkpoints {m.name}" for m in plan.models]
    assert all("(Daly) = checkpoint.every_steps" in x and "expected goodput" in x for x in lines)


# --------------------------------------------------------------------------- `mltrain plan checkpoint-interval`


def test_checkpoint_interval_command_text_and_json():
    c = _console()
    r = checkpoint_interval_command(300, 24, restart_s=600, console=c)
    text = c.export_text()
    assert "Young, sqrt(2CM):" in text and "120.0 min" in text
    assert "Daly first order, sqrt(2CM) - C:" in text and "115.0 min" in text
    assert "Daly higher order (use this one):" in text and "116.7 min" in text
    assert f"expected goodput at 116.7 min with a 600 s restart: {100 * r['goodput']:.1f}%" in text
    assert r["goodput"] == pytest.approx(goodput(r["daly_min"] * 60, 300, 600, 24 * 3600))

    c = _console()
    checkpoint_interval_command(300, 0.25, json_out=True, console=c)
    data = json.loads(c.export_text())
    assert round(data["daly_min"], 1) == 9.1 and data["goodput"] is None and data["restart_s"] is None
    assert data["young_min"] == pytest.approx(math.sqrt(150))

    c = _console()
    checkpoint_interval_command(7200, 1, console=c)
    assert "at least twice the MTBF" in c.export_text()


@pytest.mark.parametrize(
    ("save", "mtbf", "restart", "says"),
    [
        (0, 24, 0, "--save-s must be a positive finite number, got 0"),
        (30, -2, 0, "--mtbf-h must be a positive finite number, got -2"),
        (30, 2, -1, "--restart-s must be a non-negative finite number, got -1"),
        (30, "nan", 0, "--mtbf-h must be a positive finite number, got nan"),
    ],
)
def test_checkpoint_interval_bad_input_is_one_line(save, mtbf, restart, says):
    with pytest.raises(ConfigError, match=says):
        checkpoint_interval_command(float(save), float(mtbf), restart_s=float(restart), console=_console())
    args = ["--save-s", str(save), "--mtbf-h", str(mtbf), "--restart-s", str(restart)]
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "plan", "checkpoint-interval", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert says in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_checkpoint_interval_cli_prints_minutes():
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "plan", "checkpoint-interval", "--save-s", "300", "--mtbf-h", "6"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "56.7 min" in r.stdout and "goodput" not in r.stdout
