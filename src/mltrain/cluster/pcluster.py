"""AWS ParallelCluster 3 configs rendered from the cluster spec, and the `mltrain cluster render|validate`
commands.

render(): the same ClusterSpec the Slurm launcher reads (partition, GPUs per node, mounts, run dir),
so the queue the jobs are submitted to and the queue ParallelCluster creates cannot drift apart. A
rendered config is validated before it is written; the validation of any config is
pcluster_validate.py's.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from mltrain.cluster.catalog import get_instance
from mltrain.cluster.pcluster_validate import NAME_MAX, validate_report
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.errors import ClusterError
from mltrain.fsutil import atomic_write

PYXIS_SCRIPT = Path(__file__).with_name("scripts") / "enable-pyxis.sh"
CAPACITY_TYPES = {"ondemand": "ONDEMAND", "spot": "SPOT", "odcr": "ONDEMAND", "capacity_block": "CAPACITY_BLOCK"}

# --------------------------------------------------------------------------- render


def _bucket(url: str | None) -> str | None:
    if url and url.startswith("s3://"):
        return url[5:].split("/", 1)[0] or None
    return None


def _compute_resource_name(instance_type: str) -> str:
    """'p5e.48xlarge' -> 'p5e-48xlarge' (lowercase, '-' only, <= 25 chars: pcluster's rule)."""
    return re.sub(r"[^a-z0-9-]", "-", instance_type.lower())[:NAME_MAX]


def _fs_relative(path: str, mount_dir: str) -> str | None:
    """'/fsx/mltrain' under '/fsx' -> '/mltrain'; None when not under the mount."""
    p, m = PurePosixPath(path), PurePosixPath(mount_dir)
    try:
        rel = p.relative_to(m)
    except ValueError:
        return None
    return "/" + str(rel) if str(rel) != "." else "/"


def _iam(buckets: dict[str, bool], policies: list[dict[str, Any]]) -> dict[str, Any]:
    """A node's Iam section (head node or queue): S3Access to `buckets` (name -> write access) and the
    extra policies, only the keys that have something; empty if neither."""
    iam: dict[str, Any] = {}
    if buckets:
        iam["S3Access"] = [{"BucketName": b, **({"EnableWriteAccess": True} if w else {})} for b, w in buckets.items()]
    if policies:
        iam["AdditionalIamPolicies"] = policies
    return iam


def render(spec: ClusterSpec) -> dict[str, Any]:
    """A ParallelCluster 3 config (as a dict, keys in the documented order) for `spec`."""
    aws = spec.aws
    if aws is None:
        raise ClusterError(f"cluster {spec.name}: no aws: section, nothing to render for ParallelCluster")
    inst = get_instance(spec.instance_type, spec.instance_types)
    if spec.gpus_per_node != inst.accelerators:
        raise ClusterError(
            f"cluster {spec.name}: gpus_per_node {spec.gpus_per_node} but {inst.name} has {inst.accelerators} "
            f"{inst.accelerator}"
        )
    captype = CAPACITY_TYPES[aws.capacity_type]
    reserved = aws.capacity_type in ("odcr", "capacity_block")
    if reserved and not aws.capacity_reservation_id:
        raise ClusterError(
            f"cluster {spec.name}: aws.capacity_reservation_id is required for capacity_type {aws.capacity_type}"
        )
    if not reserved and aws.capacity_reservation_id:
        raise ClusterError(
            f"cluster {spec.name}: aws.capacity_reservation_id is set but capacity_type is "
            f"{aws.capacity_type}; use odcr or capacity_block"
        )
    if aws.min_nodes > spec.nodes:
        raise ClusterError(f"cluster {spec.name}: aws.min_nodes {aws.min_nodes} > nodes {spec.nodes}")
    pyxis = aws.pyxis if aws.pyxis is not None else spec.container is not None
    if pyxis and not aws.pyxis_script_url:
        raise ClusterError(
            f"cluster {spec.name}: aws.pyxis_script_url is required to enable Pyxis/Enroot: upload "
            f"{PYXIS_SCRIPT.name} (written next to the output by `mltrain cluster render -o`) to s3:// and set it"
        )

    # IAM: the bootstrap script bucket (read), the data bucket (read), the export bucket (write).
    s3: dict[str, bool] = {}
    for url, write in (
        (aws.pyxis_script_url if pyxis else None, False),
        (aws.fsx.s3_import_path if aws.fsx else None, False),
        (aws.fsx.s3_export_path if aws.fsx else None, True),
    ):
        b = _bucket(url)
        if b:
            s3[b] = s3.get(b, False) or write
    for extra in aws.buckets:
        s3[extra.name] = s3.get(extra.name, False) or extra.write
    script_bucket = _bucket(aws.pyxis_script_url) if pyxis else None
    # The head node: the bootstrap script (read) plus the buckets the spec names (staging data, images).
    head_s3: dict[str, bool] = {script_bucket: False} if script_bucket else {}
    for extra in aws.buckets:
        head_s3[extra.name] = head_s3.get(extra.name, False) or extra.write
    # ECR pull: a managed policy of the network stack (AdditionalIamPolicies takes ARNs only).
    policies = [{"Policy": aws.ecr_policy_arn}] if aws.ecr_policy_arn else []
    if aws.ecr_repository and not aws.ecr_policy_arn:
        raise ClusterError(
            f"cluster {spec.name}: aws.ecr_repository {aws.ecr_repository} needs aws.ecr_policy_arn (the "
            "EcrPullPolicyArn output of the `mltrain cluster network` stack) so the nodes may pull from it"
        )
    if bool(aws.head_node_security_group_id) != bool(aws.compute_security_group_id):
        raise ClusterError(
            f"cluster {spec.name}: set both aws.head_node_security_group_id and aws.compute_security_group_id "
            "(the network stack's outputs) or neither (ParallelCluster then creates its own)"
        )
    pyxis_action = {"OnNodeConfigured": {"Script": aws.pyxis_script_url}} if pyxis else None

    image: dict[str, Any] = {"Os": aws.os}
    if aws.custom_ami:
        image["CustomAmi"] = aws.custom_ami

    head: dict[str, Any] = {
        "InstanceType": aws.head_node_instance_type,
        "Networking": {"SubnetId": aws.head_node_subnet_id or aws.subnet_id},
    }
    if aws.head_node_security_group_id:
        head["Networking"]["SecurityGroups"] = [aws.head_node_security_group_id]
    if aws.ssh_key_name:
        head["Ssh"] = {"KeyName": aws.ssh_key_name}
    head["LocalStorage"] = {"RootVolume": {"Size": aws.head_node_root_volume_gib, "Encrypted": True}}
    if pyxis_action:
        head["CustomActions"] = pyxis_action
    if head_iam := _iam(head_s3, policies):
        head["Iam"] = head_iam

    cr: dict[str, Any] = {
        "Name": _compute_resource_name(inst.name),
        "InstanceType": inst.name,
        "MinCount": spec.nodes if aws.capacity_type == "capacity_block" else aws.min_nodes,
        "MaxCount": spec.nodes,
        "Efa": {"Enabled": inst.efa, "GdrSupport": inst.efa and inst.gpudirect_rdma},
    }
    if reserved:
        cr["CapacityReservationTarget"] = {"CapacityReservationId": aws.capacity_reservation_id}
    if inst.accelerator != "Trainium1":
        cr["HealthChecks"] = {"Gpu": {"Enabled": True}}

    local: dict[str, Any] = {"RootVolume": {"Size": aws.compute_root_volume_gib, "Encrypted": True}}
    if aws.scratch_dir:
        local["EphemeralVolume"] = {"MountDir": aws.scratch_dir}
    queue: dict[str, Any] = {
        "Name": spec.slurm.partition,
        "CapacityType": captype,
        "JobExclusiveAllocation": spec.slurm.exclusive,
        "ComputeSettings": {"LocalStorage": local},
        "Networking": {
            "SubnetIds": [aws.subnet_id],
            # A capacity block brings its own placement; a PG constraint there causes capacity errors.
            "PlacementGroup": {"Enabled": aws.placement_group and aws.capacity_type != "capacity_block"},
            **({"SecurityGroups": [aws.compute_security_group_id]} if aws.compute_security_group_id else {}),
        },
        "ComputeResources": [cr],
    }
    if pyxis_action:
        queue["CustomActions"] = pyxis_action
    if queue_iam := _iam(s3, policies):
        queue["Iam"] = queue_iam

    config: dict[str, Any] = {
        "Region": aws.region,
        "Image": image,
        "HeadNode": head,
        "Scheduling": {
            "Scheduler": "slurm",
            "SlurmSettings": {"ScaledownIdletime": aws.scaledown_idletime_min, "QueueUpdateStrategy": "DRAIN"},
            "SlurmQueues": [queue],
        },
    }
    if aws.fsx is not None:
        config["SharedStorage"] = [_render_fsx(spec)]
    config["Monitoring"] = {
        "DetailedMonitoring": aws.detailed_monitoring,
        "Logs": {"CloudWatch": {"Enabled": True, "RetentionInDays": aws.log_retention_days}},
        "Dashboards": {"CloudWatch": {"Enabled": True}},
    }
    config["Tags"] = [{"Key": "mltrain:cluster", "Value": spec.name}] + [
        {"Key": k, "Value": v} for k, v in aws.tags.items()
    ]
    return config


def _render_fsx(spec: ClusterSpec) -> dict[str, Any]:
    """FSx for Lustre with S3 links as data repository associations (DRAs): the only way on PERSISTENT_2
    (ImportPath/ExportPath are SCRATCH_1/legacy) and supported on every Lustre 2.12+ type but SCRATCH_1.
    Data: s3_import_path auto-imported at <mount>/data. Runs: run_base_dir auto-exported to s3_export_path
    (new, changed and deleted files: S3 mirrors the run dirs, checkpoint retention included)."""
    assert spec.aws is not None and spec.aws.fsx is not None
    fsx = spec.aws.fsx
    settings: dict[str, Any] = {"StorageCapacity": fsx.storage_capacity_gib, "DeploymentType": fsx.deployment_type}
    if fsx.deployment_type.startswith("PERSISTENT"):
        settings["PerUnitStorageThroughput"] = fsx.per_unit_storage_throughput
    if fsx.compression:
        settings["DataCompressionType"] = "LZ4"
    settings["DeletionPolicy"] = fsx.deletion_policy
    dras = []
    if fsx.s3_import_path:
        dras.append(
            {
                "Name": "data",
                "DataRepositoryPath": fsx.s3_import_path,
                "FileSystemPath": "/data",
                "BatchImportMetaDataOnCreate": True,
                "AutoImportPolicy": ["NEW", "CHANGED", "DELETED"],
            }
        )
    if fsx.s3_export_path:
        rel = _fs_relative(spec.run_base_dir, fsx.mount_dir)
        if rel is None or rel == "/":
            raise ClusterError(
                f"cluster {spec.name}: run_base_dir {spec.run_base_dir} must be a directory under aws.fsx.mount_dir "
                f"{fsx.mount_dir} for aws.fsx.s3_export_path to export the runs"
            )
        dras.append(
            {
                "Name": "runs",
                "DataRepositoryPath": fsx.s3_export_path,
                "FileSystemPath": rel,
                "AutoExportPolicy": ["NEW", "CHANGED", "DELETED"],
            }
        )
    if dras:
        settings["DataRepositoryAssociations"] = dras
    return {"Name": "fsx", "StorageType": "FsxLustre", "MountDir": fsx.mount_dir, "FsxLustreSettings": settings}


class _NoAliasDumper(yaml.SafeDumper):
    """Repeat shared sub-dicts (CustomActions) instead of emitting &id001 anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_config(config: dict[str, Any], source: str | None = None) -> str:
    head = "# AWS ParallelCluster 3 config rendered by `mltrain cluster render`"
    head += f" from {source}" if source else ""
    head += ".\n# Edit the cluster spec and render again rather than editing this file.\n"
    return head + yaml.dump(config, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False)


def render_command(cluster_yaml: Path, out: Path | None, console: Console | None = None) -> str:
    """`mltrain cluster render`: render, validate (refuse to write an invalid config), write atomically.
    With -o, enable-pyxis.sh is written next to the config for upload to aws.pyxis_script_url."""
    console = console or Console()
    spec = load_cluster_spec(cluster_yaml)
    config = render(spec)
    errors, warnings = validate_report(config)
    if errors:
        raise ClusterError(
            f"{cluster_yaml}: the rendered config is invalid: {errors[0]}"
            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    text = dump_config(config, str(cluster_yaml))
    if out is None:
        console.print(text, markup=False, highlight=False, soft_wrap=True, end="")
    else:
        atomic_write(out, text)
        uses_pyxis = "CustomActions" in config["HeadNode"]
        if uses_pyxis:
            script = out.parent / PYXIS_SCRIPT.name
            atomic_write(script, PYXIS_SCRIPT.read_text(), mode=0o755)
        console.print(
            f"wrote {out}"
            + (
                f" and {out.parent / PYXIS_SCRIPT.name} (upload it to {spec.aws.pyxis_script_url})"
                if uses_pyxis and spec.aws
                else ""
            ),
            highlight=False,
            soft_wrap=True,
        )
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    return text


def validate_command(pcluster_yaml: Path, console: Console | None = None) -> int:
    """`mltrain cluster validate`: print problems and warnings; 0 when valid, 1 otherwise."""
    console = console or Console()
    try:
        text = Path(pcluster_yaml).read_text()
    except OSError as e:
        raise ClusterError(f"{pcluster_yaml}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ClusterError(
            f"{pcluster_yaml}: not a text file (byte {e.start} is not UTF-8); expected a YAML config"
        ) from None
    if "\x00" in text:
        raise ClusterError(f"{pcluster_yaml}: not a text file (contains NUL bytes); expected a YAML config")
    errors, warnings = validate_report(text)
    for e in errors:
        console.print(f"[red]error:[/] {escape(e)}", highlight=False, soft_wrap=True)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    if errors:
        console.print(f"{pcluster_yaml}: {len(errors)} problem(s)", highlight=False, soft_wrap=True)
        return 1
    console.print(
        f"{pcluster_yaml}: valid (aws-parallelcluster schema + mltrain checks"
        f"{f', {len(warnings)} warning(s)' if warnings else ''})",
        highlight=False,
    )
    return 0


__all__ = ["render", "render_command", "validate_command", "dump_config", "PYXIS_SCRIPT"]
