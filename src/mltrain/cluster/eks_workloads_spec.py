"""The `workloads:` keys of an EKS spec (queues, priority classes, FSx storage, monitoring): the schema only,
so that loading a spec does not load the planner that `mltrain.cluster.eks_workloads` renders them with."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from mltrain.config import PrometheusLogConfig, StrictModel

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class QueuesSpec(StrictModel):
    """Kueue: one ClusterQueue holding the node group's quota, and the LocalQueues jobs are submitted to."""

    cluster_queue: str = Field(default="mltrain", pattern=_DNS_SUBDOMAIN, max_length=253)
    resource_flavor: str = Field(default="gpu", pattern=_DNS_SUBDOMAIN, max_length=253)
    local_queue: str | None = Field(
        default=None,
        pattern=_DNS_SUBDOMAIN,
        description="the shared LocalQueue; none = scheduling.kueue_queue, or 'training' without one",
    )
    per_model: bool = Field(default=True, description="with a fleet: one LocalQueue per model as well")
    queueing_strategy: Literal["BestEffortFIFO", "StrictFIFO"] = Field(
        default="BestEffortFIFO", description="BestEffortFIFO: a big gang that does not fit does not block small ones"
    )


class PriorityClassSpec(StrictModel):
    """A Kueue WorkloadPriorityClass (and, when scheduling.priority_class names it, the pods' PriorityClass)."""

    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253)
    value: int = Field(ge=-2147483648, le=1000000000)
    description: str = ""


class FsxStorageSpec(StrictModel):
    """FSx for Lustre, provisioned by the FSx CSI driver from a StorageClass when the PVC is created."""

    storage_class: str = Field(default="fsx-lustre", pattern=_DNS_SUBDOMAIN, max_length=253)
    subnet_id: str = Field(pattern=r"^subnet-[0-9a-f]+$", description="the subnet of the GPU nodes (one AZ)")
    security_group_ids: list[str] = Field(
        min_length=1, description="must allow Lustre (TCP 988, 1018-1023) from the nodes"
    )
    deployment_type: Literal["SCRATCH_2", "PERSISTENT_1", "PERSISTENT_2"] = "PERSISTENT_2"
    per_unit_storage_throughput: int = Field(default=250, description="MB/s per TiB (PERSISTENT_* only)")
    storage_capacity_gib: int = Field(default=1200, gt=0, description="1200, 2400, then multiples of 2400")
    compression: bool = Field(default=True, description="LZ4 data compression")
    lustre_version: Literal["2.12", "2.15"] = Field(
        default="2.12", description="Lustre version (PERSISTENT_2 and data repository associations need 2.12+)"
    )
    s3_import_path: str | None = Field(default=None, pattern=r"^s3://", description="linked (auto-import) at /data")
    s3_export_path: str | None = Field(
        default=None, pattern=r"^s3://", description="where storage.run_base_dir (checkpoints, logs) is exported"
    )
    auto_import_policy: Literal["NONE", "NEW", "NEW_CHANGED", "NEW_CHANGED_DELETED"] = "NEW_CHANGED_DELETED"
    reclaim_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="Retain: the file system outlives the claim"
    )

    @model_validator(mode="after")
    def _check(self) -> FsxStorageSpec:
        for sg in self.security_group_ids:
            if not re.match(r"^sg-[0-9a-f]+$", sg):
                raise ValueError(f"security_group_ids: {sg!r} is not a security group id (sg-...)")
        c = self.storage_capacity_gib
        if c != 1200 and c % 2400:
            raise ValueError(f"storage_capacity_gib {c}: FSx for Lustre takes 1200, 2400 or a multiple of 2400")
        allowed = {"PERSISTENT_1": (50, 100, 200), "PERSISTENT_2": (125, 250, 500, 1000)}
        ok = allowed.get(self.deployment_type)
        if ok and self.per_unit_storage_throughput not in ok:
            raise ValueError(
                f"per_unit_storage_throughput {self.per_unit_storage_throughput}: {self.deployment_type} takes "
                f"{', '.join(map(str, ok))}"
            )
        return self


class MonitoringSpec(StrictModel):
    """Scrape targets for the Prometheus operator (e.g. kube-prometheus-stack) and the Grafana dashboard."""

    enabled: bool = True
    namespace: str = Field(
        default="monitoring", pattern=_DNS_LABEL, max_length=63, description="where Prometheus and Grafana run"
    )
    release: str | None = Field(
        default="kube-prometheus-stack",
        description="the `release` label the Prometheus selects monitors by; none = no label",
    )
    metrics_port: int = Field(
        default=PrometheusLogConfig.model_fields["port"].default,
        gt=0,
        lt=65536,
        description="the port of mltrain's exporter in the pods (the run config's logging.prometheus.port)",
    )
    dcgm_namespace: str = Field(default="gpu-operator", pattern=_DNS_LABEL, max_length=63)
    dcgm_selector: dict[str, str] = Field(
        default_factory=lambda: {"app": "nvidia-dcgm-exporter"}, description="labels of the dcgm-exporter Service"
    )
    dcgm_port: str = Field(default="gpu-metrics", description="name of the dcgm-exporter Service's port")
    scrape_interval_s: int = Field(default=15, gt=0)
    dashboard: str | None = Field(
        default=None, description="Grafana dashboard JSON, relative to the spec; none = the shipped one"
    )


class EksWorkloadsSpec(StrictModel):
    """`workloads:` of an EKS spec: the cluster-wide objects `mltrain cluster render --kind eks` writes."""

    fleet: str | None = Field(
        default=None, description="fleet file (relative to the spec): the queue's quota is its plan's nodes"
    )
    node_group: str | None = Field(
        default=None,
        description="the eksctl node group of the GPU nodes (default: cluster.gpu_nodes.name when the spec has a "
        "cluster:); the ResourceFlavor pins its label",
    )
    operator: Literal["training-operator", "trainer"] = Field(
        default="training-operator", description="Kubeflow training operator v1 (PyTorchJob) or Trainer v2 (TrainJob)"
    )
    queues: QueuesSpec = Field(default_factory=QueuesSpec)
    priority_classes: list[PriorityClassSpec] = Field(
        default_factory=lambda: [
            PriorityClassSpec(name="mltrain-high", value=1000, description="preempts mltrain-normal workloads"),
            PriorityClassSpec(name="mltrain-normal", value=100, description="the default for training runs"),
        ]
    )
    fsx: FsxStorageSpec | None = Field(default=None, description="none = storage.pvc_name already exists")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @model_validator(mode="after")
    def _unique(self) -> EksWorkloadsSpec:
        names = [p.name for p in self.priority_classes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"priority_classes: duplicate names: {', '.join(dup)}")
        return self
