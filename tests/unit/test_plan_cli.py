"""`mltrain plan` output (table, JSON, YAML) and `mltrain fleet submit` (one job per model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mltrain.cluster.fleet import Fleet
from mltrain.cluster.plan_cli import plan_command
from mltrain.cluster.planner import plan_fleet
from mltrain.cluster.spec import AwsSpec
from mltrain.config import validate_model
from mltrain.errors import ClusterError
from mltrain.launch.fleet import fleet_submit_command

ROOT = Path(__file__).resolve().parents[2]
SEVEN = ROOT / "configs" / "fleets" / "seven-models.yaml"


def _console() -> Console:
    return Console(record=True, width=220, color_system=None)


def test_plan_table_shows_models_seed_split_and_totals():
    c = _console()
    plan = plan_command(SEVEN, console=c)
    text = c.export_text()
    for m in plan.models:
        assert m.name in text
    for word in (
        "min nodes",
        "node-hours",
        "seed nodes",
        "seed days",
        "makespan",
        "idle",
        "$34.60/node-hour",
        "assumptions: FSDP",
    ):
        assert word in text
    assert f"{plan.totals.makespan_days:.2f}" in text and f"{plan.seed_totals.makespan_days:.2f}" in text
    assert "plan vs seed: makespan -" in text  # the planned split beats the hand split


def test_plan_json_and_yaml_round_trip():
    c = _console()
    plan_command(SEVEN, json_out=True, console=c)
    data = json.loads(c.export_text())
    assert data["nodes"] == 80 and len(data["models"]) == 7 and data["seed_totals"]["nodes_used"] == 80
    c = _console()
    plan_command(SEVEN, yaml_out=True, console=c)
    assert yaml.safe_load(c.export_text())["totals"]["nodes_used"] == 80
    with pytest.raises(ClusterError, match="exclusive"):
        plan_command(SEVEN, json_out=True, yaml_out=True, console=_console())


def test_plan_cli_error_is_one_line(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "cluster": {"instance_type": "p5e.48xlarg", "nodes": 80},
                "models": [{"name": "a", "preset": "llama3.2-1b", "tokens": "1B", "mfu": 0.3}],
            }
        )
    )
    r = subprocess.run([sys.executable, "-m", "mltrain", "plan", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "unknown instance type 'p5e.48xlarg'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # one message (rich may wrap it once)


# --------------------------------------------------------------------------- fleet submit


def _fleet_files(tmp_path: Path, with_run_configs: bool = True) -> tuple[Path, Path]:
    models = []
    for i, tokens in enumerate(["300B", "100B"]):
        m = {"name": f"m{i}", "preset": "llama3.2-1b", "tokens": tokens, "mfu": 0.3}
        if with_run_configs:
            run = tmp_path / f"run{i}.yaml"
            run.write_text(
                yaml.safe_dump(
                    {
                        "name": f"fleet-m{i}",
                        # heads that divide by any tp up to 8, untied: the planned layout validates
                        "model": {"preset": "tiny", "n_heads": 8, "n_kv_heads": 8, "tie_embeddings": False},
                        "train": {"parallel": "fsdp"},
                    }
                )
            )
            m["run_config"] = run.name  # relative to the fleet file
        models.append(m)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {"cluster": {"instance_type": "p5.48xlarge", "nodes": 8, "price_per_node_hour": 55.0}, "models": models}
        )
    )
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "instance_type": "p5.48xlarge",
                "nodes": 8,
                "gpus_per_node": 8,
                "run_base_dir": str(tmp_path / "shared"),
                "slurm": {"partition": "gpu"},
            }
        )
    )
    return fleet, cluster


def test_fleet_submit_dry_run_renders_one_job_per_model(tmp_path, monkeypatch):
    """Uses the real mltrain.launch.slurm.submit_run in dry-run mode (no Slurm needed)."""
    fleet, cluster = _fleet_files(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    c = _console()
    fleet_submit_command(fleet, cluster, dry_run=True, console=c)
    text = c.export_text()
    # 300B vs 100B tokens on 8 nodes: the min-makespan split is 6 + 2
    assert "m0: 6 nodes" in text and "m1: 2 nodes" in text
    assert text.count("#SBATCH --nodes=6") == 1 and text.count("#SBATCH --nodes=2") == 1
    assert "fleet-m0" in text and "fleet-m1" in text
    assert not (tmp_path / "shared").exists()  # dry run writes nothing: not the run dirs,
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "cwd"])


def test_fleet_submit_passes_planned_nodes_to_submit_run(tmp_path, monkeypatch):
    """The calls fleet submit makes (submit_run monkeypatched: no sbatch here)."""
    import mltrain.launch.slurm as slurm

    calls = []
    monkeypatch.setattr(slurm, "submit_run", lambda *a, **k: calls.append((a, k)) or f"job{len(calls)}")
    fleet, cluster = _fleet_files(tmp_path)
    ids = fleet_submit_command(fleet, cluster, dry_run=False, console=_console())
    assert ids == ["job1", "job2"]
    assert [(Path(a[0]).name, Path(a[1]), k["nodes"], k["time"], k["dry_run"]) for a, k in calls] == [
        ("run0.yaml", cluster, 6, None, False),
        ("run1.yaml", cluster, 2, None, False),
    ]


def test_fleet_submit_keeps_a_fleet_record_beside_the_runs(tmp_path, monkeypatch):
    """submit_run monkeypatched (no sbatch here): the record fleet status and rebalance read says which run
    dir, nodes and jobs serve each model and when the plan's clock started; a second submit keeps the clock."""
    import json

    import mltrain.launch.slurm as slurm
    from mltrain.launch.fleet_state import fleet_state_path, read_fleet_state

    ids = iter(["11", "12", "13", "14"])
    monkeypatch.setattr(slurm, "submit_run", lambda *a, **k: next(ids))
    fleet, cluster = _fleet_files(tmp_path)
    fleet_submit_command(fleet, cluster, console=_console())
    path = fleet_state_path(str(tmp_path / "shared"), fleet)
    assert path == tmp_path / "shared" / "fleets" / "fleet.json"
    state = read_fleet_state(path)
    plan = plan_command(fleet, console=_console())
    assert state is not None and state.cluster_nodes == 8 and state.price_per_node_hour == 55.0
    m0, m1 = state.models["m0"], state.models["m1"]
    assert (m0.nodes, m0.job_ids, m1.nodes, m1.job_ids) == (6, ["11"], 2, ["12"])
    assert m0.run_dir == str(tmp_path / "shared" / "runs" / "fleet-m0")
    assert m0.planned_days == pytest.approx(plan.models[0].days)
    assert m0.planned_finish == pytest.approx(m0.submitted_at + plan.models[0].days * 86400)
    first = m0.submitted_at
    fleet_submit_command(fleet, cluster, console=_console())
    again = read_fleet_state(path)
    assert again.models["m0"].submitted_at == first and again.models["m0"].job_ids == ["11", "13"]
    path.write_text("{not json")
    with pytest.raises(ClusterError, match=r"fleet\.json: cannot read the fleet record"):
        read_fleet_state(path)
    path.write_text(json.dumps({"fleet": "x", "surprise": 1}))
    with pytest.raises(ClusterError, match="not a fleet record"):
        read_fleet_state(path)


def test_fleet_submit_hands_each_job_its_capacity_end_as_deadline(tmp_path, monkeypatch):
    """submit_run monkeypatched (no sbatch here): a reservation held until a time makes that time the jobs'
    deadline; on a capacity-block cluster a block's end goes to `submit --deadline` as the end (submit takes
    the 30-minute termination lead off itself); on-demand capacity has no end and no deadline."""
    import mltrain.launch.slurm as slurm
    from mltrain.cluster.spec import load_cluster_spec
    from mltrain.launch.fleet import capacity_deadline

    calls = []
    monkeypatch.setattr(slurm, "submit_run", lambda *a, **k: calls.append(k) or "7")
    fleet, cluster = _fleet_files(tmp_path)
    fleet_submit_command(fleet, cluster, console=_console())
    assert [k["deadline"] for k in calls] == [None, None]

    data = yaml.safe_load(fleet.read_text())
    data["capacity"] = {"type": "odcr", "start": "2027-01-04T11:30:00Z", "end": "2027-02-04T11:30:00Z"}
    fleet.write_text(yaml.safe_dump(data))
    calls.clear()
    fleet_submit_command(fleet, cluster, console=_console())
    assert [k["deadline"] for k in calls] == ["2027-02-04T11:30:00Z"] * 2

    data["capacity"] = {"type": "capacity-block", "start": "2027-01-04T11:30:00Z", "end": "2027-02-01T11:30:00Z"}
    plan = plan_fleet(validate_model(Fleet, data, "fleet.yaml"))
    spec = load_cluster_spec(cluster)
    assert capacity_deadline(plan.capacity, "m0", spec) == "2027-02-01T11:00:00Z"  # the usable end
    block_spec = spec.model_copy(
        update={"aws": AwsSpec(region="us-east-1", subnet_id="subnet-1", capacity_type="capacity_block")}
    )
    assert capacity_deadline(plan.capacity, "m0", block_spec) == "2027-02-01T11:30:00Z"  # the block's end


def test_fleet_submit_needs_run_configs_and_a_matching_cluster(tmp_path):
    fleet, cluster = _fleet_files(tmp_path, with_run_configs=False)
    with pytest.raises(ClusterError, match="models.run_config is missing for m0, m1"):
        fleet_submit_command(fleet, cluster, dry_run=True, console=_console())
    fleet, cluster = _fleet_files(tmp_path)
    cluster.write_text(cluster.read_text().replace("p5.48xlarge", "p5e.48xlarge"))
    with pytest.raises(ClusterError, match="instance_type p5e.48xlarge differs from the fleet's p5.48xlarge"):
        fleet_submit_command(fleet, cluster, dry_run=True, console=_console())
    cluster.write_text(cluster.read_text().replace("p5e.48xlarge", "p5.48xlarge").replace("nodes: 8", "nodes: 4"))
    with pytest.raises(ClusterError, match="nodes 4 < the 8 nodes the plan uses"):
        fleet_submit_command(fleet, cluster, dry_run=True, console=_console())


# --------------------------------------------------------------------------- pinned figures, 80 columns


def test_seven_models_headline_figures_are_pinned():
    """The README's headline (10.9 days instead of 12.6, $111k less), from `mltrain plan --json` on
    2026-11-30. A planner change that moves them must update this test and the README together."""
    plan = plan_command(SEVEN, console=_console())
    t, s = plan.totals, plan.seed_totals
    assert t.makespan_days == pytest.approx(10.9167, abs=5e-4)
    assert t.cluster_dollars == pytest.approx(725_218, abs=1)
    assert t.busy_node_hours == pytest.approx(20_464.6, abs=0.1)
    assert s.makespan_days == pytest.approx(12.5904, abs=5e-4)
    assert s.cluster_dollars == pytest.approx(836_404, abs=1)
    assert s.cluster_dollars - t.cluster_dollars == pytest.approx(111_185, abs=2)
    assert [m.nodes for m in plan.models] == [8, 9, 10, 13, 11, 13, 16]
    assert t.nodes_used == 80


def test_plan_table_fits_80_columns_without_truncating_a_cell():
    """The plan table fits 80 columns with no cell truncated (no `qwe…`); --json has the columns left out."""
    c = Console(record=True, width=80, color_system=None)
    plan = plan_command(SEVEN, console=c)
    text = c.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in text
    for m in plan.models:
        row = next(line for line in lines if line.startswith(m.name + " "))
        assert f"{m.days:.2f}" in row and f"{m.nodes}" in row and f"${m.dollars:,.0f}" in row
    assert "not shown; --json has every figure" in " ".join(text.split())


# --------------------------------------------------------------------------- the wrong kind of file, a type the catalog lacks


def _mltrain(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "mltrain", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)  # fmt: skip


@pytest.mark.parametrize(
    "path, kind",
    [
        (ROOT / "configs" / "demo.yaml", "a run config"),
        (ROOT / "configs" / "clusters" / "p5e-80.yaml", "a cluster spec"),
        (ROOT / "configs" / "clusters" / "eks-p5-2.yaml", "an EKS spec"),
    ],
)
def test_plan_given_another_kind_of_file_says_so_in_one_line(path, kind):
    r = _mltrain("plan", str(path))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].endswith(f"{path} is {kind}; plan takes a fleet file (cluster: and models:, e.g. "
                             "configs/fleets/seven-models.yaml)")  # fmt: skip


@pytest.mark.parametrize(
    "args, kind", [(["cluster", "render"], "a fleet file"), (["cluster", "create", "--dry-run"], "a fleet file")]
)
def test_cluster_commands_given_a_fleet_file_say_so(args, kind, tmp_path):
    r = _mltrain(*args, str(SEVEN), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"{SEVEN} is {kind}; this command takes a cluster spec" in lines[0], r.stderr
    r = _mltrain("cluster", "render", str(ROOT / "configs" / "demo.yaml"))
    assert r.returncode == 2 and "demo.yaml is a run config; this command takes a cluster spec" in r.stderr


def test_unknown_instance_type_points_at_the_users_own_file(tmp_path):
    """Not at the installed package's catalog.yaml (a file the next upgrade overwrites): at the fleet file's
    `instance_types:` key."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({
        "cluster": {"instance_type": "p6-b300.48xlarge", "nodes": 4},
        "models": [{"name": "a", "preset": "llama3.2-1b", "tokens": "1B", "mfu": 0.3}],
    }))  # fmt: skip
    r = _mltrain("plan", str(fleet))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    msg = " ".join(r.stderr.split())
    assert "unknown instance type 'p6-b300.48xlarge'" in msg
    assert "catalog.yaml" not in msg and "site-packages" not in msg and "src/mltrain" not in msg
    assert "instance_types:" in msg and "fleet file" in msg


def _custom_fleet(tmp_path: Path, **entry) -> Path:
    itype = {"accelerators": 8, "accelerator": "B300", "gpu_memory_gib": 268, "vcpus": 192, "memory_gib": 2048,
             "network_gbps": 6400, "efa_interfaces": 16, "peak_bf16_tflops": 2000.0, "prices": {"us-east-1": 100.0},
             **entry}  # fmt: skip
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({
        "cluster": {"instance_type": "p6-b300.48xlarge", "nodes": 4, "region": "us-east-1"},
        "instance_types": {"p6-b300.48xlarge": itype},
        "models": [{"name": "a", "params": 1e9, "n_layers": 10, "hidden_size": 1000, "seq_len": 1000,
                    "tokens": 1e12, "mfu": 0.5}],
    }))  # fmt: skip
    return fleet


def test_fleet_file_instance_types_describe_a_type_the_catalog_lacks(tmp_path):
    plan = plan_command(_custom_fleet(tmp_path), console=_console())
    assert (plan.instance_type, plan.gpu, plan.gpus_per_node, plan.peak_tflops) == ("p6-b300.48xlarge", "B300", 8, 2000)
    assert plan.price_per_node_hour == 100.0 and plan.price_source == "catalog, us-east-1"
    # 1e12 tokens x 6.12e9 FLOPs on 4 nodes x 8 x 2000 TFLOP/s x 0.5, by hand
    assert plan.models[0].days == pytest.approx(1e12 * 6.12e9 / (4 * 8 * 2000e12 * 0.5) / 86400, rel=1e-12)


def test_fleet_file_instance_types_are_validated_strictly(tmp_path):
    r = _mltrain("plan", str(_custom_fleet(tmp_path, peak_tflops=5.0)))
    assert r.returncode == 2
    msg = " ".join(r.stderr.split())
    assert "instance_types.p6-b300.48xlarge.peak_tflops: unknown key (typo?)" in msg and "Traceback" not in msg


@pytest.mark.parametrize(
    "args, path, kind",
    [
        (["train"], SEVEN, "a fleet file"),
        (["train"], ROOT / "configs" / "clusters" / "p5-16.yaml", "a cluster spec"),
        (
            ["submit", "--dry-run", "--cluster", str(ROOT / "configs" / "clusters" / "p5-16.yaml")],
            SEVEN,
            "a fleet file",
        ),
    ],
)
def test_run_commands_given_another_kind_of_file_say_so(args, path, kind, tmp_path):
    r = _mltrain(*args, str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"{path} is {kind}; this command takes a run config" in lines[0], r.stderr
