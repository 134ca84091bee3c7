"""What an EKS training cluster runs besides the jobs, rendered from the EKS spec and the fleet plan: Kueue
queues and priorities, the FSx for Lustre storage class and claim, scrape targets for the Prometheus operator,
the training operator's install reference, NCCL topology."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltrain.cluster.eks_workloads_spec import (
    FsxStorageSpec,
)
from mltrain.errors import ClusterError, ConfigError

if TYPE_CHECKING:
    from mltrain.cluster.spec import EksSpec

# The dashboard every path shares (the Slurm head node's Grafana too); found next to the source tree.
SHIPPED_DASHBOARD = Path(__file__).resolve().parents[3] / "dashboards" / "training.json"

# Where each operator's install lives: kustomize overlays pinned to a release tag (`kubectl apply -k` takes them).
OPERATORS: dict[str, dict[str, str]] = {
    "training-operator": {
        "version": "v1.9.3",
        "kustomize": "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.3",
        "job_kind": "PyTorchJob",
    },
    "trainer": {
        "version": "v2.1.0",
        "kustomize": "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.1.0",
        "runtimes": "github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=v2.1.0",
        "job_kind": "TrainJob",
    },
}
# Labels the operators put on the pods they create, so a PodMonitor finds the training pods of either kind.
OPERATOR_POD_SELECTOR: dict[str, dict[str, str]] = {
    "training-operator": {"training.kubeflow.org/operator-name": "pytorchjob-controller"},
    "trainer": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"},
}
# The pod label that carries the job's name (the run's DNS-safe name): it becomes the `run` label the dashboard
# selects on, as file_sd's `run` label does on Slurm.
OPERATOR_JOB_NAME_LABEL: dict[str, str] = {
    "training-operator": "training.kubeflow.org/job-name",
    "trainer": "jobset.sigs.k8s.io/jobset-name",
}
NODEGROUP_LABEL = "alpha.eksctl.io/nodegroup-name"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


# --------------------------------------------------------------------------- quota


def _node_quota(spec: EksSpec, spec_path: Path) -> tuple[int, list[tuple[str, int]]]:
    """Nodes the queue may admit and the per-model split: the fleet plan's, or the node group's size."""
    w = spec.workloads
    if w.fleet is None:
        return spec.max_nodes or spec.nodes, []
    from mltrain.cluster.fleet import load_fleet
    from mltrain.cluster.planner import plan_fleet

    path = Path(w.fleet)
    if not path.is_absolute():
        path = spec_path.resolve().parent / path
    if not path.is_file():
        raise ConfigError(f"{spec_path}: workloads.fleet: {w.fleet} does not exist")
    fleet = load_fleet(path)
    if fleet.cluster.instance_type.strip().lower() != spec.instance_type.strip().lower():
        raise ConfigError(
            f"{spec_path}: workloads.fleet: {w.fleet} plans {fleet.cluster.instance_type} nodes, the spec's node "
            f"group is {spec.instance_type}"
        )
    try:
        plan = plan_fleet(fleet)
    except ClusterError as e:
        raise ClusterError(f"{spec_path}: workloads.fleet: {w.fleet}: {e}") from None
    models = [(m.name, m.nodes) for m in plan.models]
    return sum(n for _, n in models), models


def _per_node(spec: EksSpec) -> dict[str, Any]:
    """What one node of the group brings to the queue: its GPUs, EFA devices, vCPUs and memory as the instance
    catalog has them (the pods request at most that, one pod per node)."""
    from mltrain.cluster.catalog import get_instance

    inst = get_instance(spec.instance_type)
    return {
        "gpu": inst.accelerators,
        "efa": inst.efa_interfaces,
        "cpu": inst.vcpus,
        "memory_gib": int(inst.memory_gib),
    }


def _queue_name(model: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")[:63].strip("-")
    return name or "model"


# --------------------------------------------------------------------------- objects


def _labels(spec: EksSpec) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "mltrain", "app.kubernetes.io/part-of": spec.name}


def _kueue(spec: EksSpec, spec_path: Path) -> list[dict[str, Any]]:
    w, q = spec.workloads, spec.workloads.queues
    nodes, models = _node_quota(spec, spec_path)
    per = _per_node(spec)
    labels = _labels(spec)
    node_labels = {INSTANCE_TYPE_LABEL: spec.instance_type}
    group = w.node_group or (spec.cluster.gpu_nodes.name if spec.cluster is not None else None)
    if group:  # the spec's own eksctl GPU node group when it renders the cluster
        node_labels[NODEGROUP_LABEL] = group
    quotas = [
        ("cpu", str(nodes * per["cpu"])),
        ("memory", f"{nodes * per['memory_gib']}Gi"),
        ("nvidia.com/gpu", str(nodes * per["gpu"])),
    ]
    if per["efa"]:
        quotas.append(("vpc.amazonaws.com/efa", str(nodes * per["efa"])))
    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "ResourceFlavor",
            "metadata": {"name": q.resource_flavor, "labels": labels},
            "spec": {"nodeLabels": node_labels},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "ClusterQueue",
            "metadata": {
                "name": q.cluster_queue,
                "labels": labels,
                "annotations": {"mltrain.io/nodes": str(nodes), "mltrain.io/quota-source": _quota_source(spec)},
            },
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": spec.namespace}},
                "queueingStrategy": q.queueing_strategy,
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": [name for name, _ in quotas],
                        "flavors": [
                            {
                                "name": q.resource_flavor,
                                "resources": [{"name": name, "nominalQuota": value} for name, value in quotas],
                            }
                        ],
                    }
                ],
            },
        },
    ]
    shared = q.local_queue or spec.scheduling.kueue_queue or "training"
    queues: list[tuple[str, dict[str, str]]] = [(shared, {})]
    if q.per_model:
        seen = {shared: "the shared queue"}
        for model, n in models:
            name = _queue_name(model)
            if name in seen:
                raise ConfigError(
                    f"{spec_path}: workloads.queues: model {model!r} gets LocalQueue {name!r}, the name of "
                    f"{seen[name]}; rename the model or set queues.per_model: false"
                )
            seen[name] = f"model {model!r}"
            queues.append(
                (
                    name,
                    {
                        "mltrain.io/model": model,
                        "mltrain.io/planned-nodes": str(n),
                        "mltrain.io/planned-gpus": str(n * per["gpu"]),
                    },
                )
            )
    for name, notes in queues:
        meta: dict[str, Any] = {"name": name, "namespace": spec.namespace, "labels": labels}
        if notes:
            meta["annotations"] = notes
        objs.append(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta1",
                "kind": "LocalQueue",
                "metadata": meta,
                "spec": {"clusterQueue": q.cluster_queue},
            }
        )
    for p in w.priority_classes:
        obj: dict[str, Any] = {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": p.name, "labels": labels},
            "value": p.value,
        }
        if p.description:
            obj["description"] = p.description
        objs.append(obj)
    return objs


def _quota_source(spec: EksSpec) -> str:
    if spec.workloads.fleet:
        return f"the plan of fleet {spec.workloads.fleet}"
    return "max_nodes" if spec.max_nodes else "nodes"


def _priority_class(spec: EksSpec, spec_path: Path) -> list[dict[str, Any]]:
    """The pods name scheduling.priority_class as their priorityClassName, which must exist; Kueue reads its
    value as the workload's priority. It never preempts on its own (Kueue preempts whole workloads)."""
    known_names = [p.name for p in spec.workloads.priority_classes]
    wpc = spec.scheduling.workload_priority_class
    if wpc and wpc not in known_names:  # the jobs' kueue.x-k8s.io/priority-class label must name one rendered here
        raise ConfigError(
            f"{spec_path}: scheduling.workload_priority_class {wpc!r} is not in workloads.priority_classes "
            f"(known: {', '.join(known_names) or 'none'})"
        )
    name = spec.scheduling.priority_class
    if not name:
        return []
    match = [p for p in spec.workloads.priority_classes if p.name == name]
    if not match:
        known = ", ".join(p.name for p in spec.workloads.priority_classes) or "none"
        raise ConfigError(
            f"{spec_path}: scheduling.priority_class {name!r} is not in workloads.priority_classes (known: {known})"
        )
    p = match[0]
    return [
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": p.name, "labels": _labels(spec)},
            "value": p.value,
            "preemptionPolicy": "Never",
            "globalDefault": False,
            "description": p.description or "mltrain training pods (Kueue preempts whole workloads)",
        }
    ]


def _relative(base: str, path: str) -> str:
    rel = path[len(base.rstrip("/")) :].strip("/")
    return "/" + rel


def _dra_commands(spec: EksSpec, fsx: FsxStorageSpec, spec_path: Path) -> list[str]:
    """The data repository associations FSx needs for a PERSISTENT_2 file system: the CSI driver cannot create
    them, so these are the AWS CLI calls to run once the claim is bound (the PV's volumeHandle is the id)."""
    out = []
    if fsx.s3_import_path:
        events = {"NEW": "NEW", "NEW_CHANGED": "NEW,CHANGED", "NEW_CHANGED_DELETED": "NEW,CHANGED,DELETED"}
        auto = events.get(fsx.auto_import_policy)
        s3 = f" --s3 'AutoImportPolicy={{Events=[{auto}]}}'" if auto else ""
        out.append(
            "aws fsx create-data-repository-association --file-system-id FS_ID --file-system-path /data "
            f"--data-repository-path {fsx.s3_import_path} --batch-import-meta-data-on-create{s3}"
        )
    if fsx.s3_export_path:
        export_dir = _relative(spec.storage.mount_path, spec.storage.run_base_dir)
        if fsx.s3_import_path and export_dir == "/":
            raise ConfigError(
                f"{spec_path}: workloads.fsx: s3_export_path links storage.run_base_dir {spec.storage.run_base_dir}, the root "
                "of the file system, which holds the import link at /data; put run_base_dir in a directory"
            )
        out.append(
            f"aws fsx create-data-repository-association --file-system-id FS_ID --file-system-path {export_dir} "
            "--data-repository-path "
            f"{fsx.s3_export_path} --s3 'AutoExportPolicy={{Events=[NEW,CHANGED,DELETED]}}'"
        )
    return out


def _storage(spec: EksSpec, spec_path: Path) -> list[dict[str, Any]]:
    fsx = spec.workloads.fsx
    if fsx is None:
        return []
    params: dict[str, str] = {
        "subnetId": fsx.subnet_id,
        "securityGroupIds": ",".join(fsx.security_group_ids),
        "deploymentType": fsx.deployment_type,
        "dataCompressionType": "LZ4" if fsx.compression else "NONE",
        "fileSystemTypeVersion": fsx.lustre_version,
    }
    if fsx.deployment_type != "SCRATCH_2":
        params["perUnitStorageThroughput"] = str(fsx.per_unit_storage_throughput)
    pvc_annotations: dict[str, str] = {}
    if fsx.deployment_type == "PERSISTENT_2":
        dras = _dra_commands(spec, fsx, spec_path)
        if dras:
            pvc_annotations["mltrain.io/data-repository-associations"] = "\n".join(dras)
    else:
        # The file system's own (legacy) S3 link: import, auto-import and a manual export path; no auto-export.
        if fsx.s3_import_path:
            params["s3ImportPath"] = fsx.s3_import_path
            params["autoImportPolicy"] = fsx.auto_import_policy
        if fsx.s3_export_path:
            params["s3ExportPath"] = fsx.s3_export_path
    labels = _labels(spec)
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": spec.storage.pvc_name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": fsx.storage_class,
            "resources": {"requests": {"storage": f"{fsx.storage_capacity_gib}Gi"}},
        },
    }
    if pvc_annotations:
        pvc["metadata"]["annotations"] = pvc_annotations
    return [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": fsx.storage_class, "labels": labels},
            "provisioner": "fsx.csi.aws.com",
            "parameters": params,
            "reclaimPolicy": fsx.reclaim_policy,
            "volumeBindingMode": "Immediate",
            "mountOptions": ["flock"],
        },
        pvc,
    ]


def _dashboard(spec: EksSpec, spec_path: Path) -> dict[str, Any]:
    m = spec.workloads.monitoring
    if m.dashboard is None:
        path = SHIPPED_DASHBOARD
        key = "the shipped dashboards/training.json"
    else:
        path = Path(m.dashboard)
        path = path if path.is_absolute() else spec_path.resolve().parent / path
        key = f"workloads.monitoring.dashboard: {m.dashboard}"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        hint = "" if m.dashboard else "; set workloads.monitoring.dashboard to its path"
        raise ConfigError(f"{spec_path}: {key} does not exist{hint}") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{spec_path}: {key}: not a dashboard JSON: {e}") from None


def _meta_label(pod_label: str) -> str:
    """Prometheus' service-discovery name of a pod label (every character outside [a-zA-Z0-9_] becomes '_')."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def _monitoring(spec: EksSpec, spec_path: Path) -> list[dict[str, Any]]:
    m = spec.workloads.monitoring
    if not m.enabled:
        return []
    labels = _labels(spec)
    monitor_labels = {**labels, **({"release": m.release} if m.release else {})}
    interval = f"{m.scrape_interval_s}s"
    dashboard = _dashboard(spec, spec_path)
    return [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "dcgm-exporter", "namespace": m.namespace, "labels": monitor_labels},
            "spec": {
                "namespaceSelector": {"matchNames": [m.dcgm_namespace]},
                "selector": {"matchLabels": dict(m.dcgm_selector)},
                "endpoints": [{"port": m.dcgm_port, "path": "/metrics", "interval": interval}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "mltrain", "namespace": m.namespace, "labels": monitor_labels},
            "spec": {
                "namespaceSelector": {"matchNames": [spec.namespace]},
                "selector": {"matchLabels": dict(OPERATOR_POD_SELECTOR[spec.workloads.operator])},
                "podMetricsEndpoints": [
                    {
                        "path": "/metrics",
                        "interval": interval,
                        # The training pods declare only their rendezvous port; the exporter listens on
                        # metrics_port of the same pod, so the target's address is rewritten to it.
                        "relabelings": [
                            {
                                "action": "replace",
                                "sourceLabels": ["__meta_kubernetes_pod_ip"],
                                "regex": "(.+)",
                                "targetLabel": "__address__",
                                "replacement": f"$1:{m.metrics_port}",
                            },
                            {
                                "action": "replace",
                                "sourceLabels": [_meta_label(OPERATOR_JOB_NAME_LABEL[spec.workloads.operator])],
                                "targetLabel": "run",
                            },
                            {
                                "action": "replace",
                                "sourceLabels": ["__meta_kubernetes_pod_node_name"],
                                "targetLabel": "node",
                            },
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "mltrain-dashboard",
                "namespace": m.namespace,
                "labels": {**labels, "grafana_dashboard": "1"},
            },
            "data": {"mltrain-training.json": json.dumps(dashboard, indent=2, sort_keys=False) + "\n"},
        },
    ]


def _operator(spec: EksSpec) -> list[dict[str, Any]]:
    """The operator is installed from its own release manifests (pinned here), not copied into mltrain: a
    ConfigMap records which one this cluster is meant to run and the command that installs it."""
    choice = spec.workloads.operator
    op = OPERATORS[choice]
    apply = [f'kubectl apply --server-side -k "{op["kustomize"]}"']
    if "runtimes" in op:
        apply.append(f'kubectl apply --server-side -k "{op["runtimes"]}"')
    data = {"operator": choice, "version": op["version"], "job-kind": op["job_kind"], "kustomize": op["kustomize"]}
    if "runtimes" in op:
        data["runtimes"] = op["runtimes"]
    data["install"] = "\n".join(apply) + "\n"
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "mltrain-training-operator", "namespace": spec.namespace, "labels": _labels(spec)},
            "data": data,
        }
    ]


def _namespace(spec: EksSpec) -> list[dict[str, Any]]:
    if spec.namespace == "default":
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": spec.namespace,
                "labels": {**_labels(spec), "kubernetes.io/metadata.name": spec.namespace},
            },
        }
    ]


def render_workloads(spec: EksSpec, spec_path: Path) -> dict[str, list[dict[str, Any]]]:
    """File name -> the Kubernetes objects it holds, in apply order (namespace first). Files with nothing to
    hold are left out. No NCCL topology file is rendered: the aws-ofi-nccl plugin in the image sets
    NCCL_TOPO_FILE itself on the platforms it ships a topology XML for (p4d, p4de, p5), matched to its own
    version, and NCCL reads the PCIe topology of the others (p5e, p5en) from the node."""
    spec_path = Path(spec_path)
    files = {
        "namespace.yaml": _namespace(spec),
        "kueue.yaml": _kueue(spec, spec_path) + _priority_class(spec, spec_path),
        "storage.yaml": _storage(spec, spec_path),
        "monitoring.yaml": _monitoring(spec, spec_path),
        "operator.yaml": _operator(spec),
    }
    # A fresh copy of every object (no dict shared between two objects, so YAML writes no anchors).
    return {name: json.loads(json.dumps(objs)) for name, objs in files.items() if objs}
