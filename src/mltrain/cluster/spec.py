"""The cluster spec: one short YAML that both the Slurm launcher and the ParallelCluster
renderer read, so partition, GPUs per node and mounts exist in exactly one place."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mltrain.config import StrictModel, load_yaml_model


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
    time: str = Field(default="24:00:00", pattern=r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")
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
        description="c10d rendezvous port on the first node; none = 29500 + job id % 2000, so jobs sharing a node differ",
    )
    exit_grace_s: int = Field(
        default=60, gt=0, description="after the trainer wrote its exit reason, kill ranks still running this long"
    )
    exclude_failed_nodes: bool = Field(
        default=True, description="on requeue after a failure, exclude the failing node when the partition has a spare"
    )


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


def load_cluster_spec(path: str | Path, overrides: list[str] | None = None) -> ClusterSpec:
    return load_yaml_model(path, ClusterSpec, overrides)
