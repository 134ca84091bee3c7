"""`mltrain fleet status`: figures from a fleet record and synthetic run dirs, with a frozen clock.

Three models on a 16-node cluster at $50/node-hour, the fleet submitted at T0, looked at 10 days later:
alpha (6 nodes) is running behind its plan, beta (4 nodes) finished early, gamma (4 nodes) waits in the
queue without a run dir. Slurm is simulated by monkeypatching status.query_job (no Slurm in unit tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mltrain.errors import ClusterError, ConfigError
from mltrain.launch import fleet_status as fs_mod
from mltrain.launch import status as status_mod
from mltrain.launch.fleet_state import FleetState, ModelRecord, fleet_state_path, write_fleet_state
from mltrain.launch.fleet_status import collect_fleet_status, fleet_status_command

DAY = 86400.0
T0 = 1_790_000_000.0  # 2026-09-21, before the files' real mtimes (status compares exit_reason's mtime)
NOW = T0 + 10 * DAY
PRICE = 50.0
TOKENS_PER_STEP = 1_048_576
ALPHA_STEP_S = 60.0

JOB_STATES = {"101": "RUNNING", "103": "PENDING"}  # 102 (beta) has aged out of Slurm


def _fake_query_job(job_id: str):
    state = JOB_STATES.get(str(job_id))
    if state is None:
        return None
    nodes = "p5-[1-6]" if state == "RUNNING" else ""
    return {"state": state, "reason": "Resources" if state == "PENDING" else "None", "nodes": nodes, "restarts": ""}


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _train(t: float, step: int, loss: float, step_time: float) -> dict:
    return {
        "time": t,
        "kind": "train",
        "step": step,
        "loss": loss,
        "tokens_per_s": TOKENS_PER_STEP / step_time,
        "step_time_s": step_time,
        "mfu": 0.4,
    }


def _run_dir(
    base: Path, name: str, job_id: str, max_steps: int, records: list[dict], restarts: list[dict] | None = None
) -> Path:
    d = base / "runs" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "train": {"max_steps": max_steps}}))
    _jsonl(d / "metrics.jsonl", records)
    _jsonl(d / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": job_id, "time": records[0]["time"] - 60}])
    if restarts:
        _jsonl(d / "restarts.jsonl", restarts)
    return d


def _fleet_files(tmp_path: Path, run_configs: bool = False) -> tuple[Path, Path]:
    models = []
    for name in ("alpha", "beta", "gamma"):
        m = {"name": name, "preset": "llama3.2-1b", "tokens": "50B", "mfu": 0.3}
        if run_configs:
            run = tmp_path / f"{name}.yaml"
            run.write_text(yaml.safe_dump({"name": f"fleet-{name}", "model": {"preset": "tiny"}}))
            m["run_config"] = run.name
        models.append(m)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {"cluster": {"instance_type": "p5.48xlarge", "nodes": 16, "price_per_node_hour": PRICE}, "models": models}
        )
    )
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "instance_type": "p5.48xlarge",
                "nodes": 16,
                "gpus_per_node": 8,
                "run_base_dir": str(tmp_path / "shared"),
                "slurm": {"partition": "gpu"},
            }
        )
    )
    return fleet, cluster


def _fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The three-model fleet: record, run dirs, simulated Slurm."""
    monkeypatch.setattr(status_mod, "query_job", _fake_query_job)
    fleet, cluster = _fleet_files(tmp_path)
    base = tmp_path / "shared"
    # alpha: 6000 of 10000 steps at 60 s/step, restarted 3 times (2 preemptions, 1 node failure), running
    a_records = [{"time": T0 + 600, "kind": "start", "step": 0, "job_id": "101"}]
    a_records += [_train(T0 + 600 + s * 20, s, 4.0 - s / 4000, 20.0) for s in range(100, 3001, 100)]
    a_records += [{"time": T0 + 5 * DAY, "kind": "start", "step": 3000, "job_id": "101"}]
    a_records += [
        _train(NOW - (6000 - s) * ALPHA_STEP_S - 60, s, 3.2 - s / 20000, ALPHA_STEP_S) for s in range(3100, 6001, 100)
    ]
    a_records += [{"time": NOW - 30, "kind": "eval", "step": 6000, "val_loss": 2.95, "val_ppl": 19.1}]
    cause = {"action": "requeue", "counted": False, "job_id": "101"}
    a_restarts = [
        {**cause, "time": T0 + DAY, "cause": "preempted"},
        {**cause, "time": T0 + 2 * DAY, "cause": "preempted"},
        {**cause, "time": T0 + 3 * DAY, "cause": "node_failure", "action": "restart_in_place", "counted": True},
        {"time": T0 + 4 * DAY, "cause": "cancelled", "action": "none", "job_id": "101"},  # not a restart
    ]
    alpha = _run_dir(base, "fleet-alpha", "101", 10_000, a_records, a_restarts)
    # beta: finished all 2000 steps at T0 + 5.5 days; its plan said T0 + 6 days
    b_records = [{"time": T0 + DAY + 60, "kind": "start", "step": 0, "job_id": "102"}]
    b_records += [_train(T0 + DAY + 60 + s * 180, s, 3.5 - s / 2000, 180.0) for s in range(100, 2001, 100)]
    b_records += [{"time": T0 + 5.4 * DAY, "kind": "eval", "step": 2000, "val_loss": 2.5, "val_ppl": 12.2}]
    b_records += [{"time": T0 + 5.5 * DAY, "kind": "exit", "step": 2000, "reason": "done"}]
    beta = _run_dir(base, "fleet-beta", "102", 2000, b_records)
    (beta / "control").mkdir()
    (beta / "control" / "exit_reason").write_text("done\n")
    os.utime(beta / "control" / "exit_reason", (T0 + 5.5 * DAY, T0 + 5.5 * DAY))
    state = FleetState(
        fleet=str(fleet), cluster=str(cluster), submitted_at=T0, price_per_node_hour=PRICE, cluster_nodes=16
    )
    state.models["alpha"] = ModelRecord(str(alpha), 6, 12.0, T0, T0 + 12 * DAY, ["101"])
    state.models["beta"] = ModelRecord(str(beta), 4, 5.0, T0 + DAY, T0 + 6 * DAY, ["102"])
    # gamma: submitted, still queued, its run dir not written yet
    state.models["gamma"] = ModelRecord(str(base / "runs" / "fleet-gamma"), 4, 8.0, T0, T0 + 8 * DAY, ["103"])
    write_fleet_state(fleet_state_path(str(base), fleet), state)
    return fleet, cluster


def _json(fleet: Path, cluster: Path) -> dict:
    c = Console(record=True, width=200, color_system=None)
    fleet_status_command(fleet, cluster, json_out=True, console=c, now=NOW)
    return json.loads(c.export_text())


def test_json_figures_dollars_eta_restarts_and_idle_nodes(tmp_path, monkeypatch):
    doc = _json(*_fleet(tmp_path, monkeypatch))
    m = {x["name"]: x for x in doc["models"]}
    a, b, g = m["alpha"], m["beta"], m["gamma"]

    # alpha: running, 4000 steps left at 60 s = 240000 s; the plan said 12 days, it will take 12.78
    assert a["state"] == "running" and a["slurm_state"] == "RUNNING" and a["job_id"] == "101"
    assert (a["step"], a["total_steps"], a["progress"]) == (6000, 10_000, 0.6)
    assert a["tokens_per_step"] == TOKENS_PER_STEP and a["tokens"] == 6000 * TOKENS_PER_STEP
    assert a["total_tokens"] == 10_000 * TOKENS_PER_STEP
    assert a["val_loss"] == 2.95 and a["loss"] == pytest.approx(3.2 - 5550 / 20000)
    assert a["eta_s"] == pytest.approx(4000 * ALPHA_STEP_S)
    assert a["est_finish"] == pytest.approx(NOW + 240_000) and a["finish_basis"] == "eta"
    assert a["finish_delta_days"] == pytest.approx(240_000 / DAY - 2) and a["finish_delta_days"] > 0  # late
    assert a["restarts"] == 3 and a["preemptions"] == 2
    assert a["restarts_by_cause"] == {"preempt": 2, "node": 1}
    assert a["dollars_spent"] == 72_000.00  # 6 nodes x 240 h x $50
    assert a["dollars_projected"] == 92_000.00  # 6 x (864000 + 240000) s / 3600 x $50
    assert 0 < a["goodput"] <= 1

    # beta: done at T0 + 5.5 d (0.5 d early); it cost its nodes from its submit (T0 + 1 d) to then
    assert beta_figures(b)
    # gamma: pending without a run dir: "-" figures, the plan's pace for the finish, nodes held
    assert g["state"] == "pending" and g["slurm_state"] == "PENDING" and g["job_id"] == "103"
    assert g["step"] is None and g["loss"] is None and g["tokens"] is None and g["eta_s"] is None
    assert g["finish_basis"] == "plan" and g["est_finish"] == NOW + 8 * DAY
    assert g["finish_delta_days"] == pytest.approx(10.0)
    assert g["dollars_spent"] == 48_000.00 and g["dollars_projected"] == 86_400.00
    assert any("no run dir yet" in n for n in g["notes"])

    t = doc["totals"]
    assert t["cluster_nodes"] == 16 and t["nodes_busy"] == 10 and t["nodes_idle"] == 6  # beta's 4 are idle
    assert t["dollars_spent"] == 192_000.00  # 16 x 240 h x $50
    assert t["last_finish"] == NOW + 8 * DAY and t["dollars_projected"] == 345_600.00  # 16 x 432 h x $50
    assert doc["record"].endswith("fleets/fleet.json") and doc["now"] == NOW


def beta_figures(b: dict) -> bool:
    assert b["state"] == "done" and b["slurm_state"] is None and b["job_id"] == "102"
    assert b["finished_at"] == T0 + 5.5 * DAY and b["finish_basis"] == "done" and b["eta_s"] is None
    assert b["finish_delta_days"] == pytest.approx(-0.5)  # early
    assert b["dollars_spent"] == b["dollars_projected"] == 21_600.00  # 4 nodes x 108 h x $50
    assert b["restarts"] == 0 and b["restarts_by_cause"] == {}
    assert b["val_loss"] == 2.5 and b["progress"] == 1.0
    return True


def test_json_keys_are_stable(tmp_path, monkeypatch):
    """The keys the real-Slurm end-to-end test and scripts read."""
    doc = _json(*_fleet(tmp_path, monkeypatch))
    assert set(doc) == {"fleet", "cluster", "record", "now", "models", "totals", "notes"}
    assert set(doc["models"][0]) == {
        "name",
        "run_dir",
        "nodes",
        "state",
        "slurm_state",
        "job_id",
        "step",
        "total_steps",
        "progress",
        "tokens_per_step",
        "tokens",
        "total_tokens",
        "loss",
        "val_loss",
        "tokens_per_s",
        "eta_s",
        "submitted_at",
        "planned_days",
        "planned_finish",
        "finished_at",
        "est_finish",
        "finish_basis",
        "finish_delta_days",
        "restarts",
        "restarts_by_cause",
        "preemptions",
        "goodput",
        "dollars_spent",
        "dollars_projected",
        "detail",
        "notes",
    }
    assert set(doc["totals"]) == {
        "cluster_nodes",
        "nodes_busy",
        "nodes_idle",
        "price_per_node_hour",
        "submitted_at",
        "last_finish",
        "dollars_spent",
        "dollars_projected",
    }


def test_table_fits_80_columns_and_keeps_the_key_columns(tmp_path, monkeypatch):
    fleet, cluster = _fleet(tmp_path, monkeypatch)
    c = Console(record=True, width=80, color_system=None)
    fleet_status_command(fleet, cluster, console=c, now=NOW)
    text = c.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    header = next(line for line in lines if line.startswith("model"))
    for col in ("model", "state", "step", "ETA", "$ so far", "vs plan"):
        assert col in header
    alpha = next(line for line in lines if line.startswith("alpha "))
    assert "running" in alpha and "3 (2p)" in alpha and "6000/10000" in alpha and "2d18h" in alpha and "$72.0k" in alpha
    assert "+0.8d" in alpha
    beta = next(line for line in lines if line.startswith("beta "))
    assert "done" in beta and "-0.5d" in beta and "$21.6k" in beta
    gamma = next(line for line in lines if line.startswith("gamma "))
    assert "pending" in gamma and "-/?" in gamma and "+10.0d" in gamma  # missing run dir: "-" cells
    cluster_row = next(line for line in lines if line.startswith("cluster "))
    assert "6 idle" in cluster_row and "$192.0k" in cluster_row
    flat = " ".join(text.split())
    # the detail lines: exact dollars, restarts by cause, finish vs plan
    assert "$72,000.00 so far, $92,000.00 projected" in flat
    assert "restarts 3 (2 preempt, 1 node)" in flat and "job 102 (unknown to Slurm)" in flat
    assert "0.8d late" in flat and "0.5d early" in flat
    assert "cluster: 16 nodes, 10 held by running or waiting jobs, 6 idle" in flat
    assert "$192,000.00 so far" in flat and "$345,600.00 projected" in flat


def test_png_report_is_written(tmp_path, monkeypatch):
    fleet, cluster = _fleet(tmp_path, monkeypatch)
    out = tmp_path / "out" / "fleet.png"
    fleet_status_command(fleet, cluster, png=out, console=Console(record=True, width=80), now=NOW)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert not list(out.parent.glob("*.tmp.png"))
    from PIL import Image

    img = Image.open(out)
    assert (
        img.size[0] > 500 and len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20
    )  # lines in several colours


def test_progress_points_follow_the_records():
    from mltrain.launch.fleet_report import progress_points

    recs = [
        {"time": 1.0, "kind": "start", "step": 0},
        {"time": 2.0, "kind": "train", "step": 50},
        {"time": 3.0, "kind": "eval", "step": 50},
        {"time": 4.0, "kind": "start", "step": 40},
        {"time": 5.0, "kind": "exit", "step": 100},
    ]
    assert progress_points(recs, 100) == [(1.0, 0.0), (2.0, 0.5), (4.0, 0.4), (5.0, 1.0)]


def test_without_a_fleet_record_the_run_configs_find_the_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(status_mod, "query_job", lambda job_id: None)
    fleet, cluster = _fleet_files(tmp_path, run_configs=True)
    base = tmp_path / "shared"
    recs = [{"time": T0, "kind": "start", "step": 0}] + [_train(T0 + s, s, 3.0, 1.0) for s in (10, 20)]
    _run_dir(base, "fleet-alpha", "7", 100, recs)
    fs = collect_fleet_status(fleet, cluster, now=NOW)
    m = {x.name: x for x in fs.models}
    assert fs.record is None and any("no plan clock" in n for n in fs.notes)
    assert m["alpha"].run_dir == str(base / "runs" / "fleet-alpha") and m["alpha"].step == 20
    assert m["alpha"].tokens == 20 * TOKENS_PER_STEP
    assert m["beta"].step is None and m["beta"].run_dir == str(base / "runs" / "fleet-beta")
    for x in fs.models:
        assert x.dollars_spent is None and x.planned_finish is None and x.finish_delta_days is None
        assert x.nodes is not None  # the plan's split
    assert fs.totals.dollars_spent is None and fs.totals.cluster_nodes == 16
    c = Console(record=True, width=80, color_system=None)
    fleet_status_command(fleet, cluster, console=c, now=NOW)
    text = c.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "no plan clock" in " ".join(text.split())
    # a run config that does not load: that model's row is all "-", the others still show
    (tmp_path / "gamma.yaml").write_text("model: [unclosed\n")
    fs = collect_fleet_status(fleet, cluster, now=NOW)
    g = next(x for x in fs.models if x.name == "gamma")
    assert g.run_dir is None and g.step is None and g.state == "-"
    assert any(n.startswith("gamma: ") and "gamma.yaml" in n for n in fs.notes)
    assert next(x for x in fs.models if x.name == "alpha").step == 20


def test_bad_input_is_one_clear_error(tmp_path):
    fleet, cluster = _fleet_files(tmp_path)  # no run_config, no record
    with pytest.raises(ClusterError, match="models.run_config is missing for alpha, beta, gamma and there is no fleet"):
        collect_fleet_status(fleet, cluster)
    with pytest.raises(ConfigError, match="is a fleet file; this command takes a cluster spec"):
        collect_fleet_status(fleet, fleet)
    with pytest.raises(ClusterError, match="--watch"):
        fleet_status_command(fleet, cluster, watch_s=0, console=Console(record=True))


def test_cli_error_is_one_line_without_traceback(tmp_path):
    fleet, cluster = _fleet_files(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "fleet", "status", str(fleet), "--cluster", str(fleet)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "is a fleet file" in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_watch_redraws_until_ctrl_c(tmp_path, monkeypatch):
    fleet, cluster = _fleet(tmp_path, monkeypatch)
    calls = []

    def fake_sleep(s):
        calls.append(s)
        if len(calls) >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fs_mod.time, "sleep", fake_sleep)
    c = Console(record=True, width=80, color_system=None, force_terminal=False)
    fs = fleet_status_command(fleet, cluster, watch_s=5, console=c, now=NOW)
    assert calls == [5, 5] and [m.name for m in fs.models] == ["alpha", "beta", "gamma"]
    assert "alpha" in c.export_text()
    # --json with --watch: one JSON document per line until Ctrl-C
    calls.clear()
    c = Console(record=True, width=80, color_system=None)
    fleet_status_command(fleet, cluster, watch_s=5, json_out=True, console=c, now=NOW)
    docs = [json.loads(line) for line in c.export_text().splitlines() if line.strip()]
    assert len(docs) == 2 and all(len(d["models"]) == 3 for d in docs)
