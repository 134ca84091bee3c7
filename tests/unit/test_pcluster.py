"""ParallelCluster render + offline validation: golden files, render -> validate round trip against the
real aws-parallelcluster 3.16 schema, the seed's hand-written config, and each semantic check.

UPDATE_GOLDEN=1 pytest tests/unit/test_pcluster.py   rewrites tests/golden/pcluster/*.yaml
"""

from __future__ import annotations

import copy
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mltrain.cluster.pcluster import dump_config, render, render_command, validate_command
from mltrain.cluster.pcluster_validate import flatten_messages, schema_problems, validate, validate_report
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.errors import ClusterError

# Only the tests that run the official schema need aws-parallelcluster; render, golden files and the
# error paths do not, so a missing package must not hide them (strict CI fails on this skip anyway).
needs_pcluster = pytest.mark.skipif(
    importlib.util.find_spec("pcluster") is None, reason="aws-parallelcluster not installed (make venv)"
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "pcluster"
SEED = ROOT / "tests" / "data" / "seed-pcluster.yaml"
SPECS = sorted(p for p in (ROOT / "configs" / "clusters").glob("*.yaml") if "aws" in yaml.safe_load(p.read_text()))


def _console() -> Console:
    return Console(record=True, width=200, color_system=None)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connect fails the test: validation must be offline."""

    def refuse(self, addr):
        raise AssertionError(f"network access during validation: {addr}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_every_shipped_spec_with_aws_is_covered():
    assert {p.stem for p in SPECS} >= {"p5e-80", "p5-16", "g5-8xl-2"}


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_golden(spec_path):
    text = dump_config(render(load_cluster_spec(spec_path)), f"configs/clusters/{spec_path.name}")
    golden = GOLDEN / spec_path.name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"{golden} differs: review, then UPDATE_GOLDEN=1 to accept"


@needs_pcluster
@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_render_validate_round_trip(spec_path, no_network):
    spec = load_cluster_spec(spec_path)
    config = render(spec)
    text = dump_config(config)
    errors, warnings = validate_report(text)
    assert errors == []
    assert warnings == []
    # one source of truth with the Slurm launcher: partition, node count and mount
    q = config["Scheduling"]["SlurmQueues"][0]
    assert q["Name"] == spec.slurm.partition
    assert q["ComputeResources"][0]["MaxCount"] == spec.nodes
    assert q["ComputeResources"][0]["InstanceType"] == spec.instance_type
    assert config["SharedStorage"][0]["MountDir"] == spec.aws.fsx.mount_dir
    assert spec.run_base_dir.startswith(spec.aws.fsx.mount_dir + "/")


@needs_pcluster
def test_seed_config_reports_misplaced_slurmqueues_and_unsupported_os(no_network):
    errors = validate(SEED.read_text())
    assert any(e.startswith("Image.Os: Must be one of: alinux2023") for e in errors), errors
    assert any(
        e.startswith("SlurmQueues: Unknown field.") and "belongs under Scheduling.SlurmQueues" in e for e in errors
    ), errors
    assert "Scheduling.SlurmQueues: Missing data for required field." in errors
    c = _console()
    assert validate_command(SEED, console=c) == 1
    assert "problem(s)" in c.export_text()


@needs_pcluster
def test_seed_cli_exit_code():
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "cluster", "validate", str(SEED)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1
    assert "Image.Os" in r.stdout and "SlurmQueues" in r.stdout and "Traceback" not in r.stderr


@needs_pcluster
def test_aws_calls_pcluster_attempts_are_refused_not_sent(no_network):
    blocked: list[str] = []
    config = render(load_cluster_spec(ROOT / "configs" / "clusters" / "p5e-80.yaml"))
    assert schema_problems(config, blocked=blocked) == []
    assert blocked == ["ec2.DescribeCapacityReservations"]  # loading an ODCR config tries this call
    assert "AWS_ACCESS_KEY_ID" not in os.environ or os.environ["AWS_ACCESS_KEY_ID"] != "mltrain-offline"


def test_flatten_messages():
    msgs = {"Scheduling": {"SlurmQueues": {0: {"Name": ["bad"], "_schema": ["whole queue"]}}}, "X": ["u"]}
    assert flatten_messages(msgs) == [
        "Scheduling.SlurmQueues[0].Name: bad",
        "Scheduling.SlurmQueues[0]: whole queue",
        "X: u",
    ]


# --------------------------------------------------------------------------- semantic checks


@pytest.fixture(scope="module")
def p5e() -> dict:
    return render(load_cluster_spec(ROOT / "configs" / "clusters" / "p5e-80.yaml"))


def _mutate(base: dict, fn) -> list[str]:
    cfg = copy.deepcopy(base)
    fn(cfg)
    return validate(cfg)


def _q(cfg):
    return cfg["Scheduling"]["SlurmQueues"][0]


def _cr(cfg):
    return _q(cfg)["ComputeResources"][0]


def _fsx(cfg):
    return cfg["SharedStorage"][0]["FsxLustreSettings"]


@needs_pcluster
@pytest.mark.parametrize(
    "name, fn, expect",
    [
        (
            "queue name",
            lambda c: _q(c).update(Name="gpu_Queue"),
            "Scheduling.SlurmQueues[0].Name: queue name 'gpu_Queue'",
        ),
        ("queue too long", lambda c: _q(c).update(Name="q" * 26), "at most 25"),
        ("cr name", lambda c: _cr(c).update(Name="P5e"), "ComputeResources[0].Name: compute resource name 'P5e'"),
        (
            "min > max",
            lambda c: _cr(c).update(MinCount=81),
            "ComputeResources[0].MinCount: 81 is greater than MaxCount 80",
        ),
        (
            "fsx capacity",
            lambda c: _fsx(c).update(StorageCapacity=3000),
            "SharedStorage[0].FsxLustreSettings.StorageCapacity: 3000 GiB; PERSISTENT_2 takes 1200 or a multiple of 2400",
        ),
        ("fsx throughput", lambda c: _fsx(c).update(PerUnitStorageThroughput=300), "PERSISTENT_2 SSD takes [125, 250"),
        (
            "p2 import path",
            lambda c: _fsx(c).update(ImportPath="s3://b/x"),
            "ImportPath: not supported on PERSISTENT_2",
        ),
        ("dra name", lambda c: _fsx(c)["DataRepositoryAssociations"][0].update(Name="my-data"), "letters and digits"),
        (
            "dra overlap",
            lambda c: _fsx(c)["DataRepositoryAssociations"][1].update(FileSystemPath="/data/ckpt"),
            "overlaps DataRepositoryAssociations[0]",
        ),
        (
            "efa unsupported",
            lambda c: _cr(c).update(InstanceType="g5.xlarge", Name="g5"),
            "ComputeResources[0].Efa.Enabled: g5.xlarge does not support EFA",
        ),
        (
            "capacity block + pg",
            lambda c: (_q(c).update(CapacityType="CAPACITY_BLOCK"), _cr(c).update(MinCount=80)),
            "Networking.PlacementGroup.Enabled: must be false with CapacityType CAPACITY_BLOCK",
        ),
        (
            "capacity block no id",
            lambda c: (
                _q(c).update(CapacityType="CAPACITY_BLOCK"),
                _q(c)["Networking"]["PlacementGroup"].update(Enabled=False),
                _cr(c).pop("CapacityReservationTarget"),
            ),
            "CapacityReservationTarget: a CapacityReservationId is required with CapacityType CAPACITY_BLOCK",
        ),
        (
            "capacity block counts",
            lambda c: (
                _q(c).update(CapacityType="CAPACITY_BLOCK"),
                _q(c)["Networking"]["PlacementGroup"].update(Enabled=False),
                _cr(c).update(MinCount=10),
            ),
            "must equal MaxCount and be > 0 with CapacityType CAPACITY_BLOCK (got 10/80)",
        ),
        ("spot + reservation", lambda c: _q(c).update(CapacityType="SPOT"), "do not apply to SPOT queues"),
        (
            "subnets + pg",
            lambda c: _q(c)["Networking"]["SubnetIds"].append("subnet-0aaaaaaaaaaaaaaaa"),
            "a placement group lives in one Availability Zone; it cannot be used with 2 subnets",
        ),
        (
            "duplicate subnets",
            lambda c: _q(c)["Networking"]["SubnetIds"].append(_q(c)["Networking"]["SubnetIds"][0]),
            "SubnetIds: duplicate subnet ids",
        ),
        ("gdr without efa", lambda c: _cr(c)["Efa"].update(Enabled=False), "Efa.GdrSupport: needs Efa.Enabled: true"),
    ],
)
def test_semantic_checks_catch(p5e, name, fn, expect):
    errors = _mutate(p5e, fn)
    assert any(expect in e for e in errors), (name, errors)


@needs_pcluster
def test_semantic_warnings(p5e):
    cfg = copy.deepcopy(p5e)
    _cr(cfg)["HealthChecks"]["Gpu"]["Enabled"] = False
    _cr(cfg)["Efa"] = {"Enabled": False}
    errors, warnings = validate_report(cfg)
    assert errors == []
    assert any("HealthChecks.Gpu.Enabled: off" in w for w in warnings)
    assert any("supports EFA (32 interfaces, 3200 Gbps)" in w for w in warnings)


@needs_pcluster
def test_fsx_rules_for_other_deployment_types(p5e):
    cfg = copy.deepcopy(p5e)
    _fsx(cfg).update(DeploymentType="SCRATCH_2")
    assert any("PerUnitStorageThroughput: only for PERSISTENT" in e for e in validate(cfg))
    _fsx(cfg).pop("PerUnitStorageThroughput")
    _fsx(cfg).pop("DataRepositoryAssociations")
    _fsx(cfg).update(ExportPath="s3://b/out")
    assert any("ExportPath: needs ImportPath" in e for e in validate(cfg))
    _fsx(cfg).update(ImportPath="s3://b/in", StorageCapacity=1200)
    assert validate(cfg) == []


@needs_pcluster
def test_bad_yaml_is_a_problem_line(tmp_path):
    assert validate("Region: [unclosed")[0].startswith("line ")
    assert validate("- a list") == ["(top level): must be a mapping, got list"]
    assert validate("Region: a\nRegion: b\n")  # duplicate keys are rejected like pcluster's CLI does


# --------------------------------------------------------------------------- render errors / command


def _spec(**aws) -> ClusterSpec:
    base = {
        "region": "us-east-1",
        "subnet_id": "subnet-0123456789abcdef0",
        "pyxis_script_url": "s3://b/enable-pyxis.sh",
    }
    base.update(aws)
    return ClusterSpec.model_validate(
        {
            "name": "t",
            "instance_type": "p5.48xlarge",
            "nodes": 4,
            "gpus_per_node": 8,
            "container": {"image": "/fsx/x.sqsh"},
            "aws": base,
        }
    )


@pytest.mark.parametrize(
    "spec, match",
    [
        (lambda: _spec(capacity_type="odcr"), "capacity_reservation_id is required for capacity_type odcr"),
        (lambda: _spec(capacity_reservation_id="cr-1"), "use odcr or capacity_block"),
        (lambda: _spec(pyxis_script_url=None), "aws.pyxis_script_url is required"),
        (lambda: _spec(min_nodes=5), "aws.min_nodes 5 > nodes 4"),
        (
            lambda: _spec(fsx={"s3_export_path": "s3://b/runs"}).model_copy(update={"run_base_dir": "/home/runs"}),
            "run_base_dir /home/runs must be a directory under aws.fsx.mount_dir /fsx",
        ),
        (lambda: _spec().model_copy(update={"gpus_per_node": 4}), "gpus_per_node 4 but p5.48xlarge has 8"),
        (lambda: _spec().model_copy(update={"instance_type": "p5.48xl"}), "did you mean: p5.48xlarge"),
        (lambda: _spec().model_copy(update={"aws": None}), "no aws: section"),
    ],
)
def test_render_refuses_bad_specs(spec, match):
    with pytest.raises(ClusterError, match=match):
        render(spec())


@needs_pcluster
def test_capacity_block_render_has_no_placement_group_and_static_nodes():
    cfg = render(_spec(capacity_type="capacity_block", capacity_reservation_id="cr-0fedcba9876543210"))
    q = cfg["Scheduling"]["SlurmQueues"][0]
    assert q["CapacityType"] == "CAPACITY_BLOCK" and q["Networking"]["PlacementGroup"] == {"Enabled": False}
    assert q["ComputeResources"][0]["MinCount"] == q["ComputeResources"][0]["MaxCount"] == 4
    assert validate(cfg) == []


@needs_pcluster
def test_render_command_writes_config_and_script_atomically(tmp_path):
    out = tmp_path / "out" / "pcluster.yaml"
    c = _console()
    render_command(ROOT / "configs" / "clusters" / "p5-16.yaml", out, console=c)
    assert validate(out.read_text()) == []
    script = out.parent / "enable-pyxis.sh"
    assert script.exists() and os.access(script, os.X_OK) and "plugstack.conf" in script.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["enable-pyxis.sh", "pcluster.yaml"]  # no temp files
    assert "upload it to s3://my-training-bucket/mltrain/enable-pyxis.sh" in c.export_text()
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_pcluster  # render_command validates what it writes
def test_render_command_stdout(tmp_path):
    c = _console()
    text = render_command(ROOT / "configs" / "clusters" / "g5-8xl-2.yaml", None, console=c)
    assert yaml.safe_load(text)["Scheduling"]["SlurmQueues"][0]["Name"] == "g5"
    assert "Scheduler: slurm" in c.export_text()


@pytest.mark.parametrize("content", [bytes(range(256)), b"Region: us-east-1\n\x00\x01\x02"], ids=["binary", "nul"])
def test_validate_binary_file_is_one_line(tmp_path, content):
    """A binary file is one line naming the file and exit 1, not a UnicodeDecodeError traceback."""
    f = tmp_path / "cluster.yaml"
    f.write_bytes(content)
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "cluster", "validate", str(f)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(f) in lines[0] and "not a text file" in lines[0], r.stderr
