"""The EKS cluster from the EKS spec: the eksctl ClusterConfig against eksctl's published JSON schema (the
copy shipped in the package, schemas/SOURCE.md), golden files for the shipped specs, each semantic check
as one line, and the CLI (render -o DIR, validate, create/delete dry runs, the refusals).

UPDATE_GOLDEN=1 pytest tests/unit/test_eks_cluster.py   rewrites tests/golden/eks/*.yaml
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from mltrain.cluster import eks_create
from mltrain.cluster.eks_cluster import (
    SCHEMA_PATH,
    check_config,
    check_spec,
    dump_yaml,
    render_cluster_config,
    schema_errors,
    validate_config,
    validate_spec,
)
from mltrain.cluster.eks_create import apply_objects, eks_action, render_files
from mltrain.cluster.spec import EksSpec, load_eks_spec
from mltrain.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "eks"
P5 = ROOT / "configs" / "clusters" / "eks-p5-2.yaml"
P5E = ROOT / "configs" / "clusters" / "eks-p5e-80.yaml"
SPECS = [P5, P5E]


def _console() -> Console:
    return Console(record=True, width=200, color_system=None)


def _data(path: Path = P5) -> dict:
    return yaml.safe_load(path.read_text())


def _spec(data: dict) -> EksSpec:
    return EksSpec.model_validate(data)


def _with(path: Path, **cluster) -> EksSpec:
    """The shipped spec with `cluster:` keys replaced (None removes the key)."""
    data = _data(path)
    for k, v in cluster.items():
        if v is None:
            data["cluster"].pop(k, None)
        else:
            data["cluster"][k] = v
    return _spec(data)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connect fails the test: validation is offline."""

    def refuse(self, addr):
        raise AssertionError(f"network access during validation: {addr}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


# --------------------------------------------------------------------------- render + schema


def test_schema_is_eksctls_with_its_notice():
    """The shipped schema is eksctl's ClusterConfig schema, with its source and licence beside it."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert schema["$ref"] == "#/definitions/ClusterConfig"
    assert "ManagedNodeGroup" in schema["definitions"]
    source = (SCHEMA_PATH.parent / "SOURCE.md").read_text()
    assert "eksctl" in source and "Apache" in source
    assert "Apache License" in (SCHEMA_PATH.parent / "LICENSE").read_text()


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_rendered_config_validates_against_eksctl_schema(spec_path, no_network):
    spec = load_eks_spec(spec_path)
    assert check_spec(spec) == []
    config = render_cluster_config(spec)
    assert schema_errors(config) == []
    assert check_config(config) == []


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_golden(spec_path):
    text = dump_yaml(render_cluster_config(load_eks_spec(spec_path)), f"configs/clusters/{spec_path.name}")
    golden = GOLDEN / f"{spec_path.stem}.cluster.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"{golden} differs: review, then UPDATE_GOLDEN=1 to accept"


def test_gpu_group_follows_the_job_side_of_the_spec():
    """Instance type, size, EFA, AZ, taint and labels come from the spec the jobs are rendered from."""
    spec = load_eks_spec(P5)
    gpu = render_cluster_config(spec)["managedNodeGroups"][1]
    assert gpu["instanceType"] == "p5.48xlarge"
    assert (gpu["minSize"], gpu["desiredCapacity"], gpu["maxSize"]) == (2, 2, 3)
    assert gpu["efaEnabled"] is True and gpu["availabilityZones"] == ["us-east-1a"]
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]  # the jobs' default toleration
    assert "placement" not in gpu  # eksctl creates a cluster placement group for an EFA group
    data = _data(P5)
    data["node_selector"] = {"pool": "train"}
    data["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}]
    data["cluster"]["gpu_nodes"]["placement_group"] = "my-pg"
    gpu = render_cluster_config(_spec(data))["managedNodeGroups"][1]
    assert gpu["labels"]["pool"] == "train"
    assert gpu["taints"] == [{"key": "dedicated", "effect": "NoExecute", "value": "ml"}]
    assert gpu["placement"] == {"groupName": "my-pg"}


def test_capacity_block_and_network_outputs():
    cfg = render_cluster_config(load_eks_spec(P5E))
    gpu = cfg["managedNodeGroups"][1]
    assert gpu["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert gpu["capacityReservation"]["capacityReservationTarget"]["capacityReservationID"] == "cr-0123456789abcdef0"
    assert gpu["subnets"] == ["subnet-0123456789abcdef0"]  # the network stack's private subnet, in the block's AZ
    assert gpu["securityGroups"] == {"attachIDs": ["sg-0f1e2d3c4b5a69788"]}
    assert cfg["vpc"]["id"] == "vpc-0123456789abcdef0"
    assert set(cfg["vpc"]["subnets"]["private"]) == {"ap-southeast-3a", "ap-southeast-3b"}
    assert (gpu["minSize"], gpu["maxSize"]) == (80, 80)


def test_odcr_targets_the_reservation_without_capacity_block_market():
    spec = _with(P5, capacity={"type": "odcr", "reservation_id": "cr-0abc"})
    gpu = render_cluster_config(spec)["managedNodeGroups"][1]
    assert gpu["capacityReservation"] == {"capacityReservationTarget": {"capacityReservationID": "cr-0abc"}}
    assert "instanceMarketOptions" not in gpu


def test_irsa_mode(no_network):
    data = _data(P5)
    data["cluster"]["iam"]["mode"] = "irsa"
    data["cluster"]["addons"] = ["vpc-cni", "coredns", "kube-proxy", "aws-fsx-csi-driver"]
    cfg = render_cluster_config(_spec(data))
    assert cfg["iam"]["withOIDC"] is True
    sa = cfg["iam"]["serviceAccounts"][0]
    assert sa["metadata"] == {"name": "mltrain", "namespace": "mltrain"}
    assert "s3:PutObject" in sa["attachPolicy"]["Statement"][2]["Action"]
    fsx = next(a for a in cfg["addons"] if a["name"] == "aws-fsx-csi-driver")
    assert fsx["attachPolicyARNs"] == ["arn:aws:iam::aws:policy/AmazonFSxFullAccess"]
    assert schema_errors(cfg) == []


def test_pod_identity_read_only_bucket():
    data = _data(P5)
    data["cluster"]["iam"]["buckets"] = [{"name": "data-only"}]
    assoc = render_cluster_config(_spec(data))["iam"]["podIdentityAssociations"][0]
    assert [s["Sid"] for s in assoc["permissionPolicy"]["Statement"]] == ["List", "Read"]


def test_schema_catches_what_eksctl_would_reject():
    """The schema is really applied: a bad amiFamily, an unknown key and a wrong type are each one line."""
    cfg = render_cluster_config(load_eks_spec(P5))
    bad = copy.deepcopy(cfg)
    bad["managedNodeGroups"][1]["amiFamily"] = "AmazonLinux2023Nvidia"
    bad["managedNodeGroups"][1]["efaEnable"] = True
    bad["metadata"]["version"] = 1.33
    errors = schema_errors(bad)
    assert len(errors) == 3, errors
    assert all("\n" not in e for e in errors)
    assert any(e.startswith("managedNodeGroups.1.amiFamily: 'AmazonLinux2023Nvidia' is not one of") for e in errors)
    assert any("efaEnable" in e and "not allowed" in e for e in errors)
    assert any(e.startswith("metadata.version: 1.33 is not of type 'string'") for e in errors)


# --------------------------------------------------------------------------- semantic checks: one line each


BAD = [
    (
        "efa-multi-az",
        P5,
        {"availability_zone": None},
        "cluster.availability_zone: EFA needs the GPU nodes in a single AZ",
    ),
    (
        "capacity-block-no-az",
        P5E,
        {"availability_zone": None},
        "cluster.availability_zone: a capacity block is bought for one AZ",
    ),
    (
        "capacity-block-other-type",
        P5E,
        {
            "capacity": {
                "type": "capacity-block",
                "reservation_id": "cr-0123456789abcdef0",
                "instance_type": "p5.48xlarge",
            }
        },
        "cluster.capacity.instance_type: the reservation is for p5.48xlarge, but the node group runs p5e.48xlarge",
    ),
    (
        "capacity-block-other-az",
        P5E,
        {
            "capacity": {
                "type": "capacity-block",
                "reservation_id": "cr-0123456789abcdef0",
                "availability_zone": "ap-southeast-3b",
            }
        },
        "cluster.capacity.availability_zone: the reservation is in ap-southeast-3b, but the GPU nodes are in ap-southeast-3a",
    ),
    (
        "reservation-without-id",
        P5,
        {"capacity": {"type": "odcr"}},
        "cluster.capacity.reservation_id: required for capacity type odcr",
    ),
    (
        "on-demand-with-id",
        P5,
        {"capacity": {"type": "on-demand", "reservation_id": "cr-0abc"}},
        "cluster.capacity.reservation_id: set, but type is on-demand",
    ),
    (
        "one-az-cluster",
        P5,
        {"availability_zones": ["us-east-1a"]},
        "cluster.availability_zones: EKS needs two AZs at least",
    ),
    (
        "gpu-az-not-in-cluster",
        P5,
        {"availability_zones": ["us-east-1b", "us-east-1c"]},
        "cluster.availability_zones: does not include the GPU nodes' AZ us-east-1a",
    ),
    (
        "no-subnet-in-gpu-az",
        P5E,
        {"availability_zone": "ap-southeast-3c", "capacity": {"type": "on-demand"}},
        "cluster.vpc.private_subnets: no subnet in the GPU nodes' AZ ap-southeast-3c",
    ),
    (
        "pod-identity-without-agent",
        P5,
        {"addons": ["vpc-cni", "coredns", "kube-proxy", "aws-fsx-csi-driver"]},
        "cluster.addons: iam.mode pod-identity needs the eks-pod-identity-agent addon",
    ),
    (
        "fsx-without-driver",
        P5,
        {"addons": ["vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent"]},
        "cluster.addons: iam.fsx_csi needs the aws-fsx-csi-driver addon",
    ),
    (
        "capacity-block-with-placement-group",
        P5E,
        {"gpu_nodes": {"placement_group": "my-pg"}},
        "cluster.gpu_nodes.placement_group: a capacity block brings its own placement",
    ),
]


@pytest.mark.parametrize(("spec_path", "cluster", "line"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_each_semantic_check_is_one_line(spec_path, cluster, line):
    problems = check_spec(_with(spec_path, **cluster))
    assert len(problems) == 1, problems
    assert problems[0].startswith(line), problems[0]
    assert "\n" not in problems[0]


def test_gpus_per_node_must_match_the_instance_type():
    data = _data(P5)
    data["gpus_per_node"] = 4
    data["nproc_per_node"] = 4
    assert check_spec(_spec(data)) == ["gpus_per_node: 4, but p5.48xlarge has 8 H100-80GB GPUs"]


def test_efa_devices_beyond_the_instance_type():
    data = _data(P5)
    data["efa_per_node"] = 64
    assert check_spec(_spec(data)) == ["efa_per_node: 64, but p5.48xlarge has 32 EFA interfaces"]


def test_capacity_block_cannot_scale_past_the_block():
    data = _data(P5E)
    data["max_nodes"] = 81
    assert check_spec(_spec(data)) == ["max_nodes: 81 nodes, but a capacity block runs the 80 it was bought for"]


def test_config_level_checks():
    """`cluster validate FILE` on a ClusterConfig: EFA groups across AZs, a capacity block without a target."""
    cfg = render_cluster_config(load_eks_spec(P5E))
    gpu = cfg["managedNodeGroups"][1]
    gpu["subnets"] = ["subnet-a", "subnet-b"]
    del gpu["capacityReservation"]
    assert validate_config(cfg) == [
        "managedNodeGroups[1] (gpu): efaEnabled needs one AZ (availabilityZones or subnets: exactly one)",
        "managedNodeGroups[1] (gpu): a capacity block needs capacityReservation.capacityReservationTarget",
    ]


def test_validate_spec_skips_schema_after_a_semantic_problem():
    config, problems = validate_spec(_with(P5, availability_zone=None))
    assert config == {} and len(problems) == 1


def test_no_cluster_section_is_one_line():
    data = _data(P5)
    del data["cluster"]
    with pytest.raises(ClusterError, match="no cluster: section in the EKS spec"):
        render_cluster_config(_spec(data))


# --------------------------------------------------------------------------- workloads hook


def test_workloads_written_when_the_renderer_exists(tmp_path, monkeypatch):
    """With render_workloads present, its files land beside cluster.yaml as multi-document YAML."""
    objs = {"kueue.yaml": [{"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ClusterQueue", "metadata": {"name": "q"}}]}
    seen = {}

    def fake(spec, spec_path):
        seen["args"] = (spec.name, spec_path)
        return objs

    monkeypatch.setattr(eks_create, "workloads_renderer", lambda: fake)
    eks_create.render_command(P5, tmp_path / "out", console=_console())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cluster.yaml", "kueue.yaml"]
    assert list(yaml.safe_load_all((tmp_path / "out" / "kueue.yaml").read_text())) == objs["kueue.yaml"]
    assert seen["args"] == ("eks-p5-2", P5)


def test_cluster_config_only_without_renderer(monkeypatch):
    monkeypatch.setattr(eks_create, "workloads_renderer", lambda: None)
    _spec_, files, problems = render_files(P5)
    assert problems == [] and list(files) == ["cluster.yaml"]


# --------------------------------------------------------------------------- apply (kubernetes client)


class _ApiError(Exception):
    pass


class _FakeResource:
    def __init__(self, namespaced: bool, existing: set, log: list):
        self.namespaced, self.existing, self.log = namespaced, existing, log

    def create(self, body, namespace=None):
        from kubernetes.client.exceptions import ApiException

        key = (namespace, body["metadata"]["name"])
        if key in self.existing:
            raise ApiException(status=409, reason="AlreadyExists")
        self.existing.add(key)
        self.log.append(("create", body["kind"], namespace))

    def get(self, name, namespace=None):
        return SimpleNamespace(metadata=SimpleNamespace(resourceVersion="7"))

    def replace(self, body, namespace=None):
        self.log.append(("replace", body["kind"], namespace, body["metadata"]["resourceVersion"]))


def test_apply_creates_or_replaces_namespace_aware():
    pytest.importorskip("kubernetes")
    log: list = []
    existing = {("mltrain", "fsx-lustre")}
    namespaced = {"PersistentVolumeClaim": True, "StorageClass": False, "LocalQueue": True}
    dyn = SimpleNamespace(
        resources=SimpleNamespace(get=lambda api_version, kind: _FakeResource(namespaced[kind], existing, log))
    )
    objs = [
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fsx"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "fsx-lustre"}},
        {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "LocalQueue", "metadata": {"name": "q", "namespace": "team"}},
    ]
    lines = apply_objects(objs, dyn, default_namespace="mltrain")
    assert lines == [
        "created StorageClass/fsx",
        "replaced PersistentVolumeClaim/fsx-lustre in mltrain",
        "created LocalQueue/q in team",
    ]
    assert log == [
        ("create", "StorageClass", None),
        ("replace", "PersistentVolumeClaim", "mltrain", "7"),
        ("create", "LocalQueue", "team"),
    ]


def test_apply_skips_kinds_the_cluster_does_not_serve_and_says_what_to_install():
    """A fresh cluster has no Kueue or Prometheus operator CRDs: those objects are skipped with the install
    hint (the dynamic client's ResourceNotFoundError, not a traceback), the rest is applied."""
    pytest.importorskip("kubernetes")
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    log: list = []

    def get(api_version, kind):
        if api_version.startswith(("kueue.x-k8s.io", "monitoring.coreos.com")):
            raise ResourceNotFoundError(f"No matches found for {{'api_version': '{api_version}', 'kind': '{kind}'}}")
        return _FakeResource(False, set(), log)

    objs = [
        {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "ClusterQueue", "metadata": {"name": "cq"}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fsx"}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "m"}},
    ]
    lines = apply_objects(objs, SimpleNamespace(resources=SimpleNamespace(get=get)), default_namespace="mltrain")
    assert lines[1] == "created StorageClass/fsx" and log == [("create", "StorageClass", None)]
    assert lines[0].startswith("skipped ClusterQueue/cq: kueue.x-k8s.io/v1beta1 is not served here; install Kueue")
    assert lines[2].startswith("skipped PodMonitor/m: monitoring.coreos.com/v1 is not served here; install the Prom")


def test_real_create_runs_eksctl_then_applies(tmp_path, monkeypatch):
    """With eksctl on PATH and credentials: eksctl create cluster -f DIR/cluster.yaml, then the workloads."""
    pytest.importorskip("kubernetes")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    (bindir / "eksctl").write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    (bindir / "eksctl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(eks_create, "aws_credentials", lambda: True)
    objs = {"sc.yaml": [{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fsx"}}]}
    monkeypatch.setattr(eks_create, "workloads_renderer", lambda: lambda spec, path: objs)
    log: list = []
    dyn = SimpleNamespace(resources=SimpleNamespace(get=lambda api_version, kind: _FakeResource(False, set(), log)))
    c = _console()
    out = tmp_path / "out"
    assert eks_action("create", P5, out_dir=out, console=c, dynamic=dyn) == 0
    assert record.read_text().split() == ["create", "cluster", "-f", str(out / "cluster.yaml")]
    assert (out / "cluster.yaml").exists() and (out / "sc.yaml").exists()
    assert log == [("create", "StorageClass", None)]
    assert "sc.yaml: created StorageClass/fsx" in c.export_text()


def test_create_without_credentials_is_one_line(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "eksctl").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "eksctl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(eks_create, "aws_credentials", lambda: False)
    with pytest.raises(ClusterError, match=r"^no AWS credentials"):
        eks_action("create", P5, out_dir=tmp_path / "out", console=_console())
    assert not (tmp_path / "out").exists()  # refused before writing anything


# --------------------------------------------------------------------------- CLI


def _mltrain(*args: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT / "src")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "mltrain", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def test_cli_render_dir_validate(tmp_path):
    """render -o DIR (kind detected from `kind: eks`) writes cluster.yaml, exit 0; validate FILE sees an
    eksctl ClusterConfig and validates it."""
    out = tmp_path / "out"
    r = _mltrain("cluster", "render", str(P5E), "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "cluster.yaml").exists() and "wrote" in r.stdout
    r = _mltrain("cluster", "validate", str(out / "cluster.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid (eksctl ClusterConfig schema" in r.stdout
    bad = yaml.safe_load((out / "cluster.yaml").read_text())
    bad["managedNodeGroups"][1]["amiFamily"] = "Windows95"
    (out / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = _mltrain("cluster", "validate", str(out / "bad.yaml"), cwd=tmp_path)
    assert r.returncode == 1
    assert "eksctl schema: managedNodeGroups.1.amiFamily: 'Windows95' is not one of" in r.stdout


def test_cli_bad_spec_is_one_line(tmp_path):
    data = _data(P5)
    del data["cluster"]["availability_zone"]
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(data))
    r = _mltrain("cluster", "render", str(spec), "--kind", "eks", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "EFA needs the GPU nodes in a single AZ" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_create_dry_run_prints_eksctl(tmp_path):
    r = _mltrain("cluster", "create", str(P5), "--kind", "eks", "--dry-run", cwd=tmp_path, path=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "eksctl create cluster -f eks-p5-2-eks/cluster.yaml" in r.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing it was not asked to
    r = _mltrain("cluster", "delete", str(P5), "--dry-run", cwd=tmp_path, path=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "eksctl delete cluster -f eks-p5-2-eks/cluster.yaml --wait" in r.stdout


def test_cli_create_without_eksctl_is_one_line(tmp_path):
    r = _mltrain("cluster", "create", str(P5), "--kind", "eks", cwd=tmp_path, path=str(tmp_path))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "eksctl is not on PATH" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_kind_pcluster_default_for_slurm_specs(tmp_path):
    """A Slurm/ParallelCluster spec still renders a ParallelCluster config by default."""
    r = _mltrain("cluster", "render", str(ROOT / "configs" / "clusters" / "p5e-80.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "HeadNode:" in r.stdout and "apiVersion: eksctl.io" not in r.stdout


def test_cli_unknown_kind(tmp_path):
    r = _mltrain("cluster", "render", str(P5), "--kind", "gke", cwd=tmp_path)
    assert r.returncode != 0 and "--kind gke: expected pcluster or eks" in r.stderr


def test_buckets_need_the_jobs_service_account():
    data = _data(P5)
    del data["service_account"]
    assert check_spec(_spec(data)) == [
        "service_account: cluster.iam.buckets grants S3 access to the account the jobs run as; name it "
        "(e.g. service_account: mltrain) rather than binding a role to the namespace's `default`"
    ]


def test_missing_jsonschema_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(ClusterError, match=r"^validating an eksctl ClusterConfig needs jsonschema: pip install"):
        schema_errors({})


def test_vpc_cidr_is_checked():
    data = _data(P5)
    data["cluster"]["vpc_cidr"] = "10.0.0.1/16"
    with pytest.raises(ValueError, match="not an IPv4 CIDR block"):
        _spec(data)
