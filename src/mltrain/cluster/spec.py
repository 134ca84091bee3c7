"""The cluster spec: one short YAML that both the Slurm launcher and the ParallelCluster
renderer read, so partition, GPUs per node and mounts exist in exactly one place."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mltrain.cluster.catalog import InstanceType
from mltrain.cluster.eks_cluster import EksClusterSpec
from mltrain.cluster.eks_workloads_spec import EksWorkloadsSpec
from mltrain.config import StrictModel, _read_yaml, load_yaml_model, refuse_other_kind
from mltrain.errors import ConfigError
from mltrain.slurm_time import parse_slurm_time


class ContainerSpec(StrictModel):
    """Pyxis/Enroot container the job runs in; without one the job uses `venv`."""

    image: str = Field(description="an enroot .sqsh path or a registry URI (docker://...)")
    mounts: list[str] = Field(default_factory=list, description="SRC:DST[:ro] bind mounts")
    workdir: str | None = None


class SlurmSpec(StrictModel):
    """Scheduler-side settings of the cluster (owned by the Slurm launcher)."""

    partition: str = "gpu"
    account: str | None = None
    qos: str | None = None
    time: str = Field(default="24:00:00", description="default time limit, any form sbatch takes (normalised)")
    exclusive: bool = True
    hyperpod: bool | None = Field(default=None, description="SageMaker HyperPod; none = detect")
    extra_sbatch: list[str] = Field(default_factory=list, description="extra '#SBATCH' options, verbatim")
    nproc_per_node: int | None = Field(
        default=None, gt=0, description="torchrun processes per node; none = gpus_per_node, or 1 without GPUs"
    )
    rdzv_port: int | None = Field(
        default=None,
        gt=0,
        lt=65536,
        description="c10d rendezvous port on the first node; none = a free port the first node's OS hands out at each start",
    )
    exit_grace_s: int = Field(
        default=60, gt=0, description="after the trainer wrote its exit reason, kill ranks still running this long"
    )
    exclude_failed_nodes: bool = Field(
        default=True, description="on requeue after a failure, exclude the failing node when the partition has a spare"
    )

    @field_validator("time", mode="before")
    @classmethod
    def _slurm_time(cls, v: object) -> str:
        """Any form sbatch takes (YAML reads `time: 90` as a number), stored normalised."""
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise ValueError(f"expected a Slurm time limit, got {type(v).__name__}")
        return parse_slurm_time(v)[0]


class FsxSpec(StrictModel):
    """FSx for Lustre shared file system, with an optional S3 data repository."""

    mount_dir: str = "/fsx"
    storage_capacity_gib: int = Field(default=1200, gt=0)
    deployment_type: Literal["SCRATCH_2", "PERSISTENT_1", "PERSISTENT_2"] = "PERSISTENT_2"
    per_unit_storage_throughput: int = Field(default=250, gt=0)
    s3_import_path: str | None = Field(
        default=None, description="s3://bucket/prefix linked (auto-import) at <mount_dir>/data"
    )
    s3_export_path: str | None = Field(
        default=None, description="s3://bucket/prefix that run_base_dir (checkpoints, logs) auto-exports to"
    )
    deletion_policy: Literal["Delete", "Retain"] = Field(
        default="Retain", description="keep the file system when the cluster is deleted"
    )
    compression: bool = Field(default=True, description="LZ4 data compression")


class BucketSpec(StrictModel):
    """An S3 bucket the nodes use: read-only unless `write` (least privilege via ParallelCluster S3Access)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    write: bool = False


class AwsSpec(StrictModel):
    """What ParallelCluster needs beyond the compute shape (owned by cluster/ render)."""

    region: str
    os: str = "ubuntu2204"
    subnet_id: str
    head_node_subnet_id: str | None = None
    ssh_key_name: str | None = None
    head_node_instance_type: str = "m5.8xlarge"
    capacity_type: Literal["ondemand", "spot", "capacity_block", "odcr"] = "ondemand"
    capacity_reservation_id: str | None = None
    placement_group: bool = True
    min_nodes: int = Field(default=0, ge=0)
    fsx: FsxSpec | None = Field(default_factory=FsxSpec)
    custom_ami: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    pyxis: bool | None = Field(default=None, description="enable Pyxis/Enroot; none = when the spec has a container")
    pyxis_script_url: str | None = Field(
        default=None,
        pattern=r"^(s3|https)://",
        description="where you uploaded mltrain's enable-pyxis.sh (`mltrain cluster render -o` writes it)",
    )
    head_node_root_volume_gib: int = Field(default=200, ge=35)
    compute_root_volume_gib: int = Field(default=200, ge=35)
    scratch_dir: str | None = Field(default="/scratch", description="instance-store NVMe mount on compute nodes")
    scaledown_idletime_min: int = Field(default=10, ge=-1)
    detailed_monitoring: bool = True
    log_retention_days: int = Field(default=14, gt=0)
    # --- the AWS foundation (`mltrain cluster network` / `preflight`); all optional, additive
    availability_zone: str | None = Field(
        default=None,
        pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$",
        description="AZ of the capacity (the ODCR's AZ); the private compute subnet goes there",
    )
    vpc_cidr: str = Field(default="10.0.0.0/16", description="CIDR of the VPC `cluster network` creates")
    ssh_cidr: str | None = Field(
        default=None, description="CIDR allowed to SSH (and reach Grafana) on the head node; none = no inbound"
    )
    monitoring: bool = Field(default=False, description="Grafana on the head node: open grafana_port to ssh_cidr")
    grafana_port: int = Field(default=3000, gt=0, lt=65536)
    head_node_security_group_id: str | None = Field(default=None, pattern=r"^sg-[0-9a-f]+$")
    compute_security_group_id: str | None = Field(
        default=None, pattern=r"^sg-[0-9a-f]+$", description="must allow all traffic to/from itself (EFA)"
    )
    buckets: list[BucketSpec] = Field(
        default_factory=list, description="S3 buckets the nodes use beyond the FSx/pyxis ones"
    )
    ecr_repository: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9._/-]*$", description="ECR repository the nodes pull images from"
    )
    ecr_policy_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:iam::\d{12}:policy/",
        description="the EcrPullPolicyArn output of the `cluster network` stack (attached to head and compute)",
    )

    @field_validator("vpc_cidr", "ssh_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ipaddress.IPv4Network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"not an IPv4 CIDR block: {e}") from None
        return v


class ClusterSpec(StrictModel):
    """A GPU cluster as mltrain sees it."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    instance_type: str
    nodes: int = Field(gt=0, description="compute nodes in the queue (its MaxCount)")
    gpus_per_node: int = Field(ge=0)
    price_per_node_hour: float | None = Field(default=None, ge=0, description="override the catalog")
    run_base_dir: str = Field(default="/fsx/mltrain", description="shared dir holding runs/<name>/")
    venv: str | None = Field(default=None, description="virtualenv to activate when no container")
    container: ContainerSpec | None = None
    env: dict[str, str] = Field(default_factory=dict, description="extra env, overrides the defaults")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    aws: AwsSpec | None = None
    instance_types: dict[str, InstanceType] = Field(
        default_factory=dict, description="instance types the shipped catalog lacks (or your own figures): its fields"
    )


def load_cluster_spec(path: str | Path, overrides: list[str] | None = None) -> ClusterSpec:
    """A cluster spec; a fleet file or run config given instead is one line saying so."""
    try:
        return load_yaml_model(path, ClusterSpec, overrides)
    except ConfigError:
        path = Path(path)
        data = _read_yaml(path)
        refuse_other_kind(
            path, data, "a cluster spec", "this command takes a cluster spec (e.g. configs/clusters/p5-16.yaml)"
        )
        raise


# --------------------------------------------------------------------------- EKS (Kubernetes)
# A model of its own (`kind: eks`), read by the `mltrain k8s` commands only: a node group, an image, a
# namespace and volumes instead of Slurm queues and mounts. See docs/kubernetes.md.

# A registry reference as `docker pull` takes it: [host[:port]/]path[:tag][@sha256:digest].
_IMAGE_REF = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class EksStorageSpec(StrictModel):
    """The FSx for Lustre PersistentVolumeClaim that holds the run dirs, so checkpoints outlive pods."""

    pvc_name: str = Field(pattern=_DNS_LABEL, max_length=253, description="the Lustre PVC in the namespace")
    mount_path: str = Field(default="/fsx", pattern=r"^/", description="where the PVC is mounted in the pods")
    run_base_dir: str = Field(
        default="/fsx/mltrain", pattern=r"^/", description="shared dir holding runs/<name>/ (under mount_path)"
    )
    local_run_base_dir: str | None = Field(
        default=None,
        description="the same directory as mounted where `mltrain k8s` runs (e.g. a login node's /fsx/mltrain); "
        "none = run_base_dir if it exists here. Read for status and the failed-node list",
    )

    @model_validator(mode="after")
    def _base_under_mount(self) -> EksStorageSpec:
        if not (self.run_base_dir.rstrip("/") + "/").startswith(self.mount_path.rstrip("/") + "/"):
            raise ValueError(f"run_base_dir {self.run_base_dir} is not under mount_path {self.mount_path}")
        return self


class EksToleration(StrictModel):
    """A pod toleration (the Kubernetes fields, snake_case)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class EksSchedulingSpec(StrictModel):
    """Gang scheduling: all pods of a job start together or none do."""

    kueue_queue: str | None = Field(default=None, description="Kueue LocalQueue; sets kueue.x-k8s.io/queue-name")
    pod_group: Literal["volcano", "coscheduling"] | None = Field(
        default=None, description="without Kueue: a PodGroup of this scheduler (min members = nodes)"
    )
    schedule_timeout_s: int = Field(default=600, gt=0, description="PodGroup: give up gang scheduling after this")
    priority_class: str | None = None
    workload_priority_class: str | None = Field(
        default=None,
        description="with kueue_queue: a Kueue WorkloadPriorityClass (workloads.priority_classes); sets "
        "kueue.x-k8s.io/priority-class, the priority Kueue admits and preempts by",
    )


class EksSpec(StrictModel):
    """A GPU node group on Amazon EKS with the Kubeflow training operator (or Trainer v2) installed."""

    kind: Literal["eks"]
    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    instance_type: str = Field(description="node group instance type, e.g. p5.48xlarge")
    nodes: int = Field(gt=0, description="nodes (pods) per job")
    max_nodes: int | None = Field(
        default=None, gt=0, description="nodes in the node group; none = nodes (no spare to route around bad nodes)"
    )
    gpus_per_node: int = Field(ge=0)
    efa_per_node: int = Field(default=0, ge=0, description="vpc.amazonaws.com/efa devices requested per pod")
    nproc_per_node: int | None = Field(
        default=None, gt=0, description="torchrun processes per pod; none = gpus_per_node, or 1 without GPUs"
    )
    namespace: str = Field(default="default", pattern=_DNS_LABEL, max_length=63)
    image: str = Field(
        description="container registry reference, e.g. <account>.dkr.ecr.<region>.amazonaws.com/mltrain:TAG"
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = None
    storage: EksStorageSpec
    scheduling: EksSchedulingSpec = Field(default_factory=EksSchedulingSpec)
    shm_size_gib: int = Field(default=64, gt=0, description="/dev/shm (memory emptyDir) size")
    cpu_per_node: float | None = Field(default=None, gt=0, description="CPU request per pod; none = no request")
    memory_per_node_gib: int | None = Field(default=None, gt=0, description="memory request per pod")
    node_selector: dict[str, str] = Field(default_factory=dict, description="extra node labels to require")
    tolerations: list[EksToleration] = Field(
        default_factory=lambda: [EksToleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    rdzv_port: int = Field(default=29500, gt=0, lt=65536, description="c10d rendezvous port on the first pod")
    exclude_failed_nodes: bool = Field(default=True, description="keep pods off nodes that failed this run before")
    env: dict[str, str] = Field(default_factory=dict, description="extra env, overrides the defaults")
    cluster: EksClusterSpec | None = Field(
        default=None, description="the EKS cluster itself (eksctl ClusterConfig); none = a cluster you already run"
    )
    workloads: EksWorkloadsSpec = Field(
        default_factory=EksWorkloadsSpec, description="cluster-wide objects: queues, storage class, monitoring"
    )

    @field_validator("image")
    @classmethod
    def _registry_ref(cls, v: str) -> str:
        if "://" in v or v.startswith(("/", ".")) or v.endswith(".sqsh") or not _IMAGE_REF.match(v):
            raise ValueError(
                f"{v!r} is not a registry reference (want e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/"
                "mltrain:0.1.0; an enroot .sqsh or docker:// URI is for the Slurm spec)"
            )
        return v

    @field_validator("nproc_per_node")
    @classmethod
    def _nproc_fits(cls, v: int | None, info: ValidationInfo) -> int | None:
        gpus = info.data.get("gpus_per_node")
        if v is not None and gpus and v > gpus:
            raise ValueError(f"{v} processes per node but only gpus_per_node={gpus} GPUs (one process per GPU)")
        return v

    @field_validator("max_nodes")
    @classmethod
    def _max_fits(cls, v: int | None, info: ValidationInfo) -> int | None:
        nodes = info.data.get("nodes")
        if v is not None and nodes and v < nodes:
            raise ValueError(f"max_nodes {v} is less than nodes {nodes}")
        return v

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1


def load_eks_spec(path: str | Path, overrides: list[str] | None = None) -> EksSpec:
    """An EKS spec; a ParallelCluster/Slurm spec (no `kind: eks`) is one clear error, not a list of unknown keys."""
    path = Path(path)
    data = _read_yaml(path)
    if data.get("kind") != "eks":
        raise ConfigError(
            f"{path}: kind: {data.get('kind')!r} is not 'eks'; the k8s commands need an EKS spec "
            "(see configs/clusters/eks-p5-2.yaml); Slurm specs go to `mltrain submit`"
        )
    return load_yaml_model(path, EksSpec, overrides)
