"""The cluster-wide objects of an EKS training cluster (mltrain.cluster.eks_workloads): golden files, the Kueue
objects against the Kueue CRDs, the monitors against the Prometheus operator's CRDs (jsonschema, vendored in
tests/data/k8s/ with their source), the core kinds with kubernetes-validate, and the queue quotas against the
fleet plan.

Regenerate the golden files after an intended change:
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_eks_workloads.py
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from tests.helpers import strict_schema

from mltrain.cluster.eks_workloads import OPERATORS, render_workloads
from mltrain.cluster.spec import load_eks_spec
from mltrain.errors import ClusterError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "eks-workloads"
CRDS = ROOT / "tests" / "data" / "k8s"
P5_2 = ROOT / "configs" / "clusters" / "eks-p5-2.yaml"
P5E_80 = ROOT / "tests" / "data" / "eks-workloads" / "eks-p5e-80.yaml"
SEVEN = ROOT / "configs" / "fleets" / "seven-models.yaml"
SPECS = [P5_2, P5E_80]

CRD_FILES = {
    ("kueue.x-k8s.io/v1beta1", "ResourceFlavor"): "kueue/kueue.x-k8s.io_resourceflavors.yaml",
    ("kueue.x-k8s.io/v1beta1", "ClusterQueue"): "kueue/kueue.x-k8s.io_clusterqueues.yaml",
    ("kueue.x-k8s.io/v1beta1", "LocalQueue"): "kueue/kueue.x-k8s.io_localqueues.yaml",
    ("kueue.x-k8s.io/v1beta1", "WorkloadPriorityClass"): "kueue/kueue.x-k8s.io_workloadpriorityclasses.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator/monitoring.coreos.com_podmonitors.yaml",
}
CORE = {"Namespace", "StorageClass", "PersistentVolumeClaim", "ConfigMap", "PriorityClass"}


@cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    """The openAPIV3Schema of the CRD version the object names."""
    crd = yaml.safe_load((CRDS / CRD_FILES[(api_version, kind)]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    version = api_version.split("/")[1]
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"]
    schema = strict_schema(entry["schema"]["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta (checked by kubernetes-validate for core kinds); here a name.
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"]}
    return jsonschema.Draft7Validator(schema)


def _crd_errors(obj: dict) -> list[str]:
    v = _crd_validator(obj["apiVersion"], obj["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(obj)]


def _core_validate(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def _render(path: Path = P5_2, **workloads) -> dict[str, list[dict]]:
    spec = load_eks_spec(path)
    if workloads:
        data = spec.workloads.model_dump(exclude_unset=True)
        data.update(workloads)
        spec = spec.model_copy(update={"workloads": type(spec.workloads).model_validate(data)})
    return render_workloads(spec, path)


def _write_spec(tmp_path: Path, base: Path = P5_2, **changes) -> Path:
    data = yaml.safe_load(base.read_text())
    data.update(changes)
    out = tmp_path / "spec.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _all(files: dict[str, list[dict]]) -> list[dict]:
    return [obj for objs in files.values() for obj in objs]


def _one(files: dict[str, list[dict]], kind: str, name: str | None = None) -> dict:
    found = [o for o in _all(files) if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]


@cache
def _rendered(path: Path) -> dict[str, list[dict]]:
    return render_workloads(load_eks_spec(path), path)


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_golden(spec_path: Path) -> None:
    files = _rendered(spec_path)
    folder = GOLDEN / spec_path.stem
    if os.environ.get("UPDATE_GOLDEN") == "1":
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.yaml"):
            old.unlink()
        for name, objs in files.items():
            (folder / name).write_text(yaml.safe_dump_all(objs, sort_keys=False))
    assert folder.is_dir(), f"{folder} missing: run with UPDATE_GOLDEN=1 to create it"
    assert sorted(files) == sorted(p.name for p in folder.glob("*.yaml"))
    for name, objs in files.items():
        text = yaml.safe_dump_all(objs, sort_keys=False)
        assert text == (folder / name).read_text(), f"{folder / name} differs (UPDATE_GOLDEN=1 to accept)"
        assert "&id" not in text  # no YAML anchors: every object stands on its own


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_every_object_valid_against_its_crd_or_the_core_schemas(spec_path: Path) -> None:
    objs = _all(_rendered(spec_path))
    kinds = {o["kind"] for o in objs}
    assert {"ResourceFlavor", "ClusterQueue", "LocalQueue", "WorkloadPriorityClass"} <= kinds
    assert {"ServiceMonitor", "PodMonitor", "ConfigMap"} <= kinds
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_FILES:
            assert _crd_errors(obj) == [], obj["kind"]
        else:
            assert obj["kind"] in CORE, obj["kind"]
            _core_validate(obj)


def test_crd_schemas_catch_a_wrong_field() -> None:
    files = _rendered(P5E_80)
    cq = json.loads(json.dumps(_one(files, "ClusterQueue")))
    cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQouta"] = "1"
    assert any("nominalQouta" in e for e in _crd_errors(cq))
    cq = json.loads(json.dumps(_one(files, "ClusterQueue")))
    cq["spec"]["queueingStrategy"] = "LIFO"
    assert any("queueingStrategy" in e for e in _crd_errors(cq))
    pm = json.loads(json.dumps(_one(files, "PodMonitor")))
    pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rewrite"
    assert _crd_errors(pm)
    wpc = json.loads(json.dumps(_one(files, "WorkloadPriorityClass", "mltrain-high")))
    wpc["spec"] = {"value": 1}
    assert _crd_errors(wpc)


def test_core_schema_catches_a_wrong_field() -> None:
    import kubernetes_validate

    pvc = json.loads(json.dumps(_one(_rendered(P5E_80), "PersistentVolumeClaim")))
    pvc["spec"]["accesModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(kubernetes_validate.ValidationError):
        _core_validate(pvc)


# --------------------------------------------------------------------------- Kueue quotas


def _quota(cq: dict) -> dict[str, str]:
    (group,) = cq["spec"]["resourceGroups"]
    (flavor,) = group["flavors"]
    assert group["coveredResources"] == [r["name"] for r in flavor["resources"]]
    return {r["name"]: r["nominalQuota"] for r in flavor["resources"]}


def test_seven_model_fleet_quota_is_the_plan_80_p5e_nodes() -> None:
    from mltrain.cluster.fleet import load_fleet
    from mltrain.cluster.planner import plan_fleet

    files = _rendered(P5E_80)
    plan = plan_fleet(load_fleet(SEVEN))
    assert sum(m.nodes for m in plan.models) == 80
    assert _quota(_one(files, "ClusterQueue")) == {
        "cpu": str(80 * 192),
        "memory": f"{80 * 2048}Gi",
        "nvidia.com/gpu": "640",
        "vpc.amazonaws.com/efa": str(80 * 32),
    }
    flavor = _one(files, "ResourceFlavor")
    assert flavor["spec"]["nodeLabels"] == {
        "node.kubernetes.io/instance-type": "p5e.48xlarge",
        "alpha.eksctl.io/nodegroup-name": "p5e-80",
    }
    queues = {q["metadata"]["name"]: q for q in _all(files) if q["kind"] == "LocalQueue"}
    assert set(queues) == {"training"} | {m.name for m in plan.models}
    assert all(
        q["spec"]["clusterQueue"] == "mltrain" and q["metadata"]["namespace"] == "training" for q in queues.values()
    )
    for m in plan.models:
        ann = queues[m.name]["metadata"]["annotations"]
        assert ann["mltrain.io/planned-nodes"] == str(m.nodes)
        assert ann["mltrain.io/planned-gpus"] == str(m.nodes * 8)
    assert (
        sum(int(q["metadata"].get("annotations", {}).get("mltrain.io/planned-gpus", 0)) for q in queues.values()) == 640
    )


def test_without_a_fleet_the_quota_is_the_node_group() -> None:
    files = _rendered(P5_2)
    # eks-p5-2: max_nodes 3 x p5.48xlarge (8 H100, 32 EFA, 192 vCPU, 2048 GiB)
    assert _quota(_one(files, "ClusterQueue")) == {
        "cpu": "576",
        "memory": "6144Gi",
        "nvidia.com/gpu": "24",
        "vpc.amazonaws.com/efa": "96",
    }
    # the spec renders its own cluster (cluster:), so the flavor pins that cluster's GPU node group too
    assert _one(files, "ResourceFlavor")["spec"]["nodeLabels"] == {
        "node.kubernetes.io/instance-type": "p5.48xlarge",
        "alpha.eksctl.io/nodegroup-name": "gpu",
    }
    (lq,) = [o for o in _all(files) if o["kind"] == "LocalQueue"]
    assert lq["metadata"]["name"] == "training"  # scheduling.kueue_queue, what the jobs are labelled with
    cq = _one(files, "ClusterQueue")
    assert cq["spec"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "mltrain"}}


def test_no_efa_no_efa_quota(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, instance_type="g5.xlarge", gpus_per_node=1, efa_per_node=0, max_nodes=4)
    quota = _quota(_one(render_workloads(load_eks_spec(path), path), "ClusterQueue"))
    assert quota["nvidia.com/gpu"] == "4" and "vpc.amazonaws.com/efa" not in quota


def test_shared_queue_only_when_per_model_is_off() -> None:
    files = _render(P5E_80, queues={"per_model": False, "local_queue": "all-models"})
    assert [o["metadata"]["name"] for o in _all(files) if o["kind"] == "LocalQueue"] == ["all-models"]


def test_priority_classes_and_the_pods_priority_class() -> None:
    files = _rendered(P5E_80)
    wpcs = {o["metadata"]["name"]: o["value"] for o in _all(files) if o["kind"] == "WorkloadPriorityClass"}
    assert wpcs == {"mltrain-high": 1000, "mltrain-normal": 100}
    pc = _one(files, "PriorityClass")
    assert (pc["metadata"]["name"], pc["value"], pc["preemptionPolicy"]) == ("mltrain-normal", 100, "Never")
    assert not [o for o in _all(_rendered(P5_2)) if o["kind"] == "PriorityClass"]  # no scheduling.priority_class


# --------------------------------------------------------------------------- bad input: one line each


def test_fleet_file_that_does_not_exist(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, workloads={"fleet": "nope.yaml"})
    with pytest.raises(ConfigError) as e:
        render_workloads(load_eks_spec(path), path)
    msg = str(e.value)
    assert "\n" not in msg and "workloads.fleet" in msg and "nope.yaml does not exist" in msg and str(path) in msg


def test_fleet_of_another_instance_type(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, workloads={"fleet": str(SEVEN)})  # eks-p5-2 is p5.48xlarge, the fleet p5e
    with pytest.raises(ConfigError) as e:
        render_workloads(load_eks_spec(path), path)
    msg = str(e.value)
    assert "\n" not in msg and "p5e.48xlarge" in msg and "p5.48xlarge" in msg and "workloads.fleet" in msg


def test_fleet_the_planner_refuses_names_the_spec(tmp_path: Path) -> None:
    fleet = yaml.safe_load(SEVEN.read_text())
    fleet["cluster"] = {"instance_type": "p5.48xlarge", "nodes": 3, "region": "us-east-1"}
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    path = _write_spec(tmp_path, workloads={"fleet": "fleet.yaml"})
    with pytest.raises(ClusterError) as e:
        render_workloads(load_eks_spec(path), path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: workloads.fleet: fleet.yaml: ") and "at most 3" in msg


def test_priority_class_the_spec_does_not_define(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, scheduling={"kueue_queue": "training", "priority_class": "urgent"})
    with pytest.raises(ConfigError, match=r"scheduling.priority_class 'urgent' is not in workloads.priority_classes"):
        render_workloads(load_eks_spec(path), path)


@pytest.mark.parametrize(
    ("fsx", "needle"),
    [
        ({"storage_capacity_gib": 1000}, "storage_capacity_gib"),
        ({"per_unit_storage_throughput": 200}, "per_unit_storage_throughput"),
        ({"security_group_ids": ["default"]}, "security_group_ids"),
        ({"deployment_type": "SCRATCH_1"}, "deployment_type"),
    ],
)
def test_bad_fsx_keys_are_config_errors(tmp_path: Path, fsx: dict, needle: str) -> None:
    base = {"subnet_id": "subnet-0abc", "security_group_ids": ["sg-0abc"]}
    path = _write_spec(tmp_path, workloads={"fsx": {**base, **fsx}})
    with pytest.raises(ConfigError, match=needle):
        load_eks_spec(path)


def test_export_link_at_the_file_system_root_would_hold_the_import_link(tmp_path: Path) -> None:
    fsx = {"subnet_id": "subnet-0abc", "security_group_ids": ["sg-0abc"], "s3_import_path": "s3://b/in"}
    fsx["s3_export_path"] = "s3://b/out"
    storage = {"pvc_name": "fsx", "mount_path": "/fsx", "run_base_dir": "/fsx"}
    path = _write_spec(tmp_path, storage=storage, workloads={"fsx": fsx})
    with pytest.raises(ConfigError, match=r"workloads.fsx: s3_export_path links storage.run_base_dir /fsx, the root"):
        render_workloads(load_eks_spec(path), path)


def test_missing_dashboard(tmp_path: Path) -> None:
    path = _write_spec(tmp_path, workloads={"monitoring": {"dashboard": "nope.json"}})
    with pytest.raises(ConfigError, match=r"workloads.monitoring.dashboard: nope.json does not exist"):
        render_workloads(load_eks_spec(path), path)


# --------------------------------------------------------------------------- storage


def test_persistent_2_links_s3_through_data_repository_associations() -> None:
    files = _rendered(P5E_80)
    sc, pvc = files["storage.yaml"]
    assert sc["provisioner"] == "fsx.csi.aws.com" and sc["reclaimPolicy"] == "Retain"
    assert sc["parameters"] == {
        "subnetId": "subnet-0a1b2c3d4e5f60718",
        "securityGroupIds": "sg-0123456789abcdef0",
        "deploymentType": "PERSISTENT_2",
        "dataCompressionType": "LZ4",
        "fileSystemTypeVersion": "2.12",
        "perUnitStorageThroughput": "250",
    }
    assert all(isinstance(v, str) for v in sc["parameters"].values())
    assert pvc["metadata"]["name"] == "fsx-lustre" and pvc["metadata"]["namespace"] == "training"
    assert pvc["spec"]["storageClassName"] == "fsx-lustre"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "76800Gi"
    import_dra, export_dra = pvc["metadata"]["annotations"]["mltrain.io/data-repository-associations"].split("\n")
    assert "--file-system-path /data --data-repository-path s3://example-training-data/corpora" in import_dra
    assert "AutoImportPolicy={Events=[NEW,CHANGED,DELETED]}" in import_dra
    # run_base_dir /fsx/mltrain is /mltrain on the file system: checkpoints and logs auto-export to S3
    assert "--file-system-path /mltrain --data-repository-path s3://example-training-data/runs" in export_dra
    assert "AutoExportPolicy={Events=[NEW,CHANGED,DELETED]}" in export_dra


def test_scratch_2_uses_the_drivers_s3_parameters() -> None:
    fsx = {
        "subnet_id": "subnet-0abc",
        "security_group_ids": ["sg-0abc", "sg-0def"],
        "deployment_type": "SCRATCH_2",
        "s3_import_path": "s3://b/in",
        "s3_export_path": "s3://b/out",
        "auto_import_policy": "NEW_CHANGED",
    }
    files = _render(fsx=fsx)
    sc, pvc = files["storage.yaml"]
    assert sc["parameters"]["s3ImportPath"] == "s3://b/in"
    assert sc["parameters"]["s3ExportPath"] == "s3://b/out"
    assert sc["parameters"]["autoImportPolicy"] == "NEW_CHANGED"
    assert sc["parameters"]["securityGroupIds"] == "sg-0abc,sg-0def"
    assert "perUnitStorageThroughput" not in sc["parameters"]
    assert "annotations" not in pvc["metadata"]
    _core_validate(sc), _core_validate(pvc)


def test_no_fsx_key_no_storage_file() -> None:
    assert "storage.yaml" not in _rendered(P5_2)  # storage.pvc_name is a claim that already exists


# --------------------------------------------------------------------------- monitoring, operator, namespace


def test_dashboard_configmap_is_the_shipped_dashboard() -> None:
    files = _rendered(P5_2)
    cm = _one(files, "ConfigMap", "mltrain-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    shipped = json.loads((ROOT / "dashboards" / "training.json").read_text())
    assert json.loads(cm["data"]["mltrain-training.json"]) == shipped


@pytest.mark.parametrize("operator", ["training-operator", "trainer"])
def test_pod_monitor_finds_the_training_pods_on_the_exporter_port(operator: str) -> None:
    files = _render(operator=operator, monitoring={"metrics_port": 9555, "release": "prom"})
    pm = _one(files, "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["mltrain"]}
    selector = pm["spec"]["selector"]["matchLabels"]
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    run = [r["sourceLabels"] for r in ep["relabelings"] if r.get("targetLabel") == "run"]
    if operator == "trainer":
        assert selector == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
        assert run == [["__meta_kubernetes_pod_label_jobset_sigs_k8s_io_jobset_name"]]
    else:
        assert selector == {"training.kubeflow.org/operator-name": "pytorchjob-controller"}
        assert run == [["__meta_kubernetes_pod_label_training_kubeflow_org_job_name"]]
    addr = [r for r in ep["relabelings"] if r.get("targetLabel") == "__address__"]
    assert addr == [
        {
            "action": "replace",
            "sourceLabels": ["__meta_kubernetes_pod_ip"],
            "regex": "(.+)",
            "targetLabel": "__address__",
            "replacement": "$1:9555",
        }
    ]
    sm = _one(files, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "gpu-metrics"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["gpu-operator"]}
    assert _crd_errors(pm) == [] and _crd_errors(sm) == []


def test_monitoring_off() -> None:
    assert "monitoring.yaml" not in _render(monitoring={"enabled": False})


def test_operator_reference_is_pinned() -> None:
    v1 = _one(_rendered(P5_2), "ConfigMap", "mltrain-training-operator")["data"]
    assert v1["operator"] == "training-operator" and v1["job-kind"] == "PyTorchJob"
    assert v1["kustomize"].endswith("?ref=" + v1["version"]) and v1["version"] == "v1.9.3"
    assert v1["install"] == f'kubectl apply --server-side -k "{v1["kustomize"]}"\n'
    v2 = _one(_rendered(P5E_80), "ConfigMap", "mltrain-training-operator")["data"]
    assert v2["job-kind"] == "TrainJob" and v2["runtimes"] == OPERATORS["trainer"]["runtimes"]
    assert v2["install"].count("kubectl apply") == 2


def test_namespace_first_and_not_for_default(tmp_path: Path) -> None:
    files = _rendered(P5_2)
    assert next(iter(files)) == "namespace.yaml"
    assert files["namespace.yaml"][0]["metadata"]["name"] == "mltrain"
    path = _write_spec(tmp_path, namespace="default")
    assert "namespace.yaml" not in render_workloads(load_eks_spec(path), path)


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_no_nccl_topology_for_p5_and_p5e(spec_path: Path) -> None:
    # the aws-ofi-nccl plugin in the image sets NCCL_TOPO_FILE where it has a topology; nothing to render
    assert "nccl.yaml" not in _rendered(spec_path)


def test_jobs_carry_the_workload_priority_class_the_cluster_renders(tmp_path: Path) -> None:
    """scheduling.workload_priority_class labels the job for Kueue, and must be one of the WorkloadPriorityClasses
    rendered for the cluster: an unknown one is one line naming the key."""
    from mltrain.config import load_run_config
    from mltrain.launch.k8s.manifests import KUEUE_PRIORITY_LABEL, render_pytorchjob

    spec_path = ROOT / "configs" / "clusters" / "eks-p5e-80.yaml"
    spec = load_eks_spec(spec_path)
    assert spec.scheduling.workload_priority_class == "mltrain-normal"
    job = render_pytorchjob(load_run_config(ROOT / "configs" / "qwen2.5-0.5b.yaml"), spec).job
    assert job["metadata"]["labels"][KUEUE_PRIORITY_LABEL] == "mltrain-normal"
    names = {
        o["metadata"]["name"] for o in _all(render_workloads(spec, spec_path)) if o["kind"] == "WorkloadPriorityClass"
    }
    assert "mltrain-normal" in names
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(spec_path.read_text())
    data["scheduling"]["workload_priority_class"] = "urgent"
    data["workloads"]["fleet"] = str(ROOT / "configs" / "fleets" / "seven-models.yaml")
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: scheduling.workload_priority_class 'urgent' is not in"):
        render_workloads(load_eks_spec(bad), bad)
