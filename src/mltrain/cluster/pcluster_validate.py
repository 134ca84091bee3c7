"""Validate any AWS ParallelCluster 3 config offline (`mltrain cluster validate`, and every render).

The aws-parallelcluster package's own marshmallow schema (no AWS calls: every request it tries is
refused in-process), plus the semantic checks that ParallelCluster only runs against live AWS APIs
(names, counts, FSx sizes, EFA support, placement group vs capacity block, reservations, subnets),
re-done here offline. Every problem is one line, `path.to.key: message`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import yaml

from mltrain.cluster.catalog import load_catalog
from mltrain.errors import ClusterError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
NAME_MAX = 25  # pcluster.validators.cluster_validators.NAME_MAX_LENGTH
DRA_NAME_RE = re.compile(r"^[A-Za-z0-9]+$")  # used in a CloudFormation logical id
SSD_THROUGHPUT = {"PERSISTENT_1": [50, 100, 200], "PERSISTENT_2": [125, 250, 500, 1000]}
HDD_THROUGHPUT = [12, 40]


def flatten_messages(messages: Any, path: str = "") -> list[str]:
    """marshmallow's nested `e.messages` -> ['Scheduling.SlurmQueues[0].Name: message', ...]."""
    out: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":
                sub = path
            elif isinstance(key, int):
                sub = f"{path}[{key}]"
            else:
                sub = f"{path}.{key}" if path else str(key)
            out.extend(flatten_messages(value, sub))
    elif isinstance(messages, list | tuple):
        for item in messages:
            out.extend(flatten_messages(item, path))
    else:
        out.append(f"{path or '(top level)'}: {messages}")
    return out


# Keys people put at the top level that ParallelCluster 3 wants elsewhere (v2 habits, hand edits).
MISPLACED = {
    "SlurmQueues": "Scheduling.SlurmQueues",
    "SlurmSettings": "Scheduling.SlurmSettings",
    "Scheduler": "Scheduling.Scheduler",
    "ComputeResources": "Scheduling.SlurmQueues[].ComputeResources",
    "Os": "Image.Os",
    "InstanceType": "HeadNode.InstanceType",
}


_ENV_KEYS = (
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_EC2_METADATA_DISABLED",
)


@contextlib.contextmanager
def _offline(region: Any) -> Iterator[list[str]]:
    """Load pcluster's schema with AWS out of reach. Its resource classes read the region from the
    environment, and SlurmClusterConfig tries DescribeCapacityReservations while loading (it tolerates
    failure): dummy credentials keep botocore from looking for real ones, every request is refused before
    it leaves the process (recorded in the yielded list), and pcluster's log lines are swallowed."""
    import logging

    import botocore.endpoint
    from botocore.exceptions import EndpointConnectionError

    blocked: list[str] = []
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ.update(
        AWS_DEFAULT_REGION=region if isinstance(region, str) and region else "us-east-1",
        AWS_ACCESS_KEY_ID="mltrain-offline",
        AWS_SECRET_ACCESS_KEY="mltrain-offline",
        AWS_SESSION_TOKEN="mltrain-offline",
        AWS_EC2_METADATA_DISABLED="true",
    )
    original = botocore.endpoint.Endpoint.make_request

    def refuse(self: Any, operation_model: Any, request_dict: Any) -> Any:
        blocked.append(f"{operation_model.service_model.service_name}.{operation_model.name}")
        raise EndpointConnectionError(endpoint_url="(blocked: mltrain validates offline)")

    botocore.endpoint.Endpoint.make_request = refuse  # type: ignore[method-assign]
    root = logging.getLogger()
    null = logging.NullHandler()
    root.addHandler(null)  # so pcluster's logging.warning() does not install a stderr handler
    previous_disable = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield blocked
    finally:
        logging.disable(previous_disable)
        root.removeHandler(null)
        botocore.endpoint.Endpoint.make_request = original  # type: ignore[method-assign]
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def schema_problems(
    data: dict[str, Any], cluster_name: str = "mltrain-validate", blocked: list[str] | None = None
) -> list[str]:
    """The official aws-parallelcluster schema, offline (ClusterSchema(...).load). AWS requests that
    pcluster attempts while loading are refused and appended to `blocked`."""
    try:
        from marshmallow import ValidationError
        from pcluster.schemas.cluster_schema import ClusterSchema
    except ImportError as e:
        raise ClusterError(
            f"aws-parallelcluster is not installed ({e.name}): pip install --no-deps aws-parallelcluster==3.16.1 "
            "plus the mltrain[aws] extra"
        ) from None
    with _offline(data.get("Region")) as refused:
        try:
            ClusterSchema(cluster_name=cluster_name).load(data)
        except ValidationError as e:
            lines = flatten_messages(e.messages)
            out = []
            for line in lines:
                key = line.split(":", 1)[0]
                if key in MISPLACED and "Unknown field" in line:
                    line += f" ({key} belongs under {MISPLACED[key]})"
                out.append(line)
            return out
        except Exception as e:  # a resource constructor that is unhappy with a value that passed the fields
            return [f"(schema): {type(e).__name__}: {e}"]
        finally:
            if blocked is not None:
                blocked.extend(refused)
    return []


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _check_name(kind: str, name: Any, where: str, errors: list[str], seen: set[Any]) -> None:
    """A queue's or compute resource's Name: ParallelCluster's naming rules, and not one of `seen` (the names
    of its siblings so far, which this one joins)."""
    if isinstance(name, str):
        if not NAME_RE.match(name):
            errors.append(
                f"{where}.Name: {kind} name {name!r} must start with a letter and contain only lowercase "
                "letters, digits and hyphens (no '_', no capitals)"
            )
        if len(name) > NAME_MAX:
            errors.append(f"{where}.Name: {kind} name {name!r} is {len(name)} characters, at most {NAME_MAX}")
        if name == "default":
            errors.append(f"{where}.Name: 'default' is not allowed as a {kind} name")
    if name in seen:
        errors.append(f"{where}.Name: duplicate {kind} name {name!r}")
    seen.add(name)


def semantic_problems(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Checks ParallelCluster runs only with AWS access: (errors, warnings), each `path: message`."""
    errors: list[str] = []
    warnings: list[str] = []
    catalog = load_catalog()
    scheduling = _as_dict(data.get("Scheduling"))
    queues = _as_list(scheduling.get("SlurmQueues"))
    if not queues and isinstance(data.get("SlurmQueues"), list):
        queues = data["SlurmQueues"]  # misplaced (reported by the schema): still check its contents
        qbase = "SlurmQueues"
    else:
        qbase = "Scheduling.SlurmQueues"
    seen_q: set[str] = set()
    fsx_subnet = None
    for qi, q in enumerate(queues):
        q = _as_dict(q)
        qp = f"{qbase}[{qi}]"
        _check_name("queue", q.get("Name"), qp, errors, seen_q)
        captype = q.get("CapacityType", "ONDEMAND")
        net = _as_dict(q.get("Networking"))
        subnets = [s for s in _as_list(net.get("SubnetIds")) if isinstance(s, str)]
        if fsx_subnet is None and subnets:
            fsx_subnet = subnets[0]  # ParallelCluster creates a managed FSx in the first compute subnet
        if len(set(subnets)) != len(subnets):
            errors.append(f"{qp}.Networking.SubnetIds: duplicate subnet ids")
        q_pg = _as_dict(net.get("PlacementGroup")).get("Enabled") is True
        q_crt = _as_dict(q.get("CapacityReservationTarget"))
        if len(subnets) > 1 and q_pg:
            errors.append(
                f"{qp}.Networking.PlacementGroup: a placement group lives in one Availability Zone; "
                f"it cannot be used with {len(subnets)} subnets"
            )
        if captype == "CAPACITY_BLOCK" and q_pg:
            errors.append(
                f"{qp}.Networking.PlacementGroup.Enabled: must be false with CapacityType CAPACITY_BLOCK "
                "(the block brings its own placement; a PG constraint causes capacity errors)"
            )
        if subnets and fsx_subnet not in subnets and data.get("SharedStorage"):
            warnings.append(
                f"{qp}.Networking.SubnetIds: the managed file systems are created in {fsx_subnet}; if "
                "that is another Availability Zone, this queue's storage traffic crosses AZs"
            )
        seen_cr: set[str] = set()
        for ci, cr in enumerate(_as_list(q.get("ComputeResources"))):
            cr = _as_dict(cr)
            cp = f"{qp}.ComputeResources[{ci}]"
            _check_name("compute resource", cr.get("Name"), cp, errors, seen_cr)
            mn, mx = cr.get("MinCount", 0), cr.get("MaxCount", 10)
            if isinstance(mn, int) and isinstance(mx, int):
                if mn > mx:
                    errors.append(f"{cp}.MinCount: {mn} is greater than MaxCount {mx}")
                if captype == "CAPACITY_BLOCK" and (mn != mx or mn == 0):
                    errors.append(
                        f"{cp}.MinCount: must equal MaxCount and be > 0 with CapacityType CAPACITY_BLOCK "
                        f"(got {mn}/{mx})"
                    )
            crt = _as_dict(cr.get("CapacityReservationTarget")) or q_crt
            if captype == "CAPACITY_BLOCK" and not (
                crt.get("CapacityReservationId") or crt.get("CapacityReservationResourceGroupArn")
            ):
                errors.append(
                    f"{cp}.CapacityReservationTarget: a CapacityReservationId is required with "
                    "CapacityType CAPACITY_BLOCK"
                )
            if crt and captype == "SPOT":
                errors.append(f"{cp}.CapacityReservationTarget: capacity reservations do not apply to SPOT queues")
            if crt and len(subnets) > 1:
                warnings.append(
                    f"{cp}.CapacityReservationTarget: a reservation is in one Availability Zone but the "
                    f"queue spans {len(subnets)} subnets"
                )
            cr_pg = _as_dict(_as_dict(cr.get("Networking")).get("PlacementGroup")).get("Enabled") is True
            if captype == "CAPACITY_BLOCK" and cr_pg:
                errors.append(f"{cp}.Networking.PlacementGroup.Enabled: must be false with CapacityType CAPACITY_BLOCK")
            itype = cr.get("InstanceType")
            efa = _as_dict(cr.get("Efa"))
            if isinstance(itype, str):
                info = catalog.get(itype)
                if info is None:
                    warnings.append(f"{cp}.InstanceType: {itype} is not in mltrain's catalog; EFA/GPU not checked")
                else:
                    if efa.get("Enabled") is True and not info.efa:
                        errors.append(f"{cp}.Efa.Enabled: {itype} does not support EFA")
                    if info.efa and efa.get("Enabled") is not True:
                        warnings.append(
                            f"{cp}.Efa.Enabled: {itype} supports EFA ({info.efa_interfaces} "
                            f"interfaces, {info.network_gbps:g} Gbps); multi-node training wants it on"
                        )
                    if efa.get("GdrSupport") is True and not info.gpudirect_rdma:
                        warnings.append(
                            f"{cp}.Efa.GdrSupport: {itype} has no GPUDirect RDMA; the setting has no effect"
                        )
                    if info.efa and efa.get("Enabled") is True and len(subnets) > 1:
                        warnings.append(
                            f"{cp}.Efa: EFA traffic does not cross Availability Zones; the queue spans "
                            f"{len(subnets)} subnets"
                        )
                    gpu = info.accelerator != "Trainium1"
                    hc = _as_dict(
                        _as_dict(_as_dict(cr.get("HealthChecks")).get("Gpu"))
                        or _as_dict(_as_dict(q.get("HealthChecks")).get("Gpu"))
                    )
                    if gpu and hc.get("Enabled") is not True:
                        warnings.append(
                            f"{cp}.HealthChecks.Gpu.Enabled: off; a bad GPU then fails jobs instead of "
                            "being drained before they start"
                        )
            if efa.get("GdrSupport") is True and efa.get("Enabled") is not True:
                errors.append(f"{cp}.Efa.GdrSupport: needs Efa.Enabled: true")
    for si, st in enumerate(_as_list(data.get("SharedStorage"))):
        st = _as_dict(st)
        if st.get("StorageType") == "FsxLustre":
            _check_fsx(_as_dict(st.get("FsxLustreSettings")), f"SharedStorage[{si}].FsxLustreSettings", errors)
    return errors, warnings


def _check_fsx(fs: dict[str, Any], p: str, errors: list[str]) -> None:
    """FSx for Lustre rules (FSx CreateFileSystem API; pcluster's FSx validators)."""
    if fs.get("FileSystemId"):
        return  # an existing file system: its settings are not ours to check
    dep = fs.get("DeploymentType", "SCRATCH_2")
    cap = fs.get("StorageCapacity")
    stype = fs.get("StorageType", "SSD")
    tput = fs.get("PerUnitStorageThroughput")
    if cap is None:
        errors.append(f"{p}.StorageCapacity: required for a new file system")
    elif isinstance(cap, int):
        if dep == "SCRATCH_1" and not (cap in (1200, 2400) or cap % 3600 == 0):
            errors.append(f"{p}.StorageCapacity: {cap} GiB; SCRATCH_1 takes 1200, 2400 or multiples of 3600")
        elif dep == "PERSISTENT_1" and stype == "HDD":
            step = 6000 if tput == 12 else 1800
            if cap % step:
                errors.append(
                    f"{p}.StorageCapacity: {cap} GiB; PERSISTENT_1 HDD at {tput} MB/s/TiB takes multiples of {step}"
                )
        elif dep in ("SCRATCH_2", "PERSISTENT_1", "PERSISTENT_2") and not (cap == 1200 or cap % 2400 == 0):
            errors.append(f"{p}.StorageCapacity: {cap} GiB; {dep} takes 1200 or a multiple of 2400")
    if dep.startswith("PERSISTENT"):
        allowed = HDD_THROUGHPUT if stype == "HDD" else SSD_THROUGHPUT.get(dep, [])
        if tput is None:
            errors.append(f"{p}.PerUnitStorageThroughput: required for {dep}")
        elif tput not in allowed:
            errors.append(f"{p}.PerUnitStorageThroughput: {tput} MB/s/TiB; {dep} {stype} takes {allowed}")
    elif tput is not None:
        errors.append(f"{p}.PerUnitStorageThroughput: only for PERSISTENT_1/PERSISTENT_2, not {dep}")
    legacy = [k for k in ("ImportPath", "ExportPath", "AutoImportPolicy", "ImportedFileChunkSize") if fs.get(k)]
    dras = _as_list(fs.get("DataRepositoryAssociations"))
    if dep == "PERSISTENT_2" and legacy:
        errors.append(f"{p}.{legacy[0]}: not supported on PERSISTENT_2; link S3 with DataRepositoryAssociations")
    if fs.get("ExportPath") and not fs.get("ImportPath"):
        errors.append(f"{p}.ExportPath: needs ImportPath")
    if dras and legacy:
        errors.append(f"{p}.DataRepositoryAssociations: cannot be combined with {', '.join(legacy)}")
    if dras and dep == "SCRATCH_1":
        errors.append(f"{p}.DataRepositoryAssociations: not supported on SCRATCH_1")
    if len(dras) > 8:
        errors.append(f"{p}.DataRepositoryAssociations: {len(dras)} associations, at most 8")
    paths: list[tuple[int, str]] = []
    for di, dra in enumerate(dras):
        dra = _as_dict(dra)
        name = dra.get("Name")
        if isinstance(name, str) and not DRA_NAME_RE.match(name):
            errors.append(
                f"{p}.DataRepositoryAssociations[{di}].Name: {name!r} must be letters and digits only "
                "(it becomes part of a CloudFormation logical id)"
            )
        repo = dra.get("DataRepositoryPath")
        if isinstance(repo, str) and not repo.startswith("s3://"):
            errors.append(f"{p}.DataRepositoryAssociations[{di}].DataRepositoryPath: {repo!r} is not an s3:// path")
        fpath = dra.get("FileSystemPath")
        if isinstance(fpath, str):
            if not fpath.startswith("/"):
                errors.append(f"{p}.DataRepositoryAssociations[{di}].FileSystemPath: must start with '/'")
            for dj, other in paths:
                a, b = fpath.rstrip("/") + "/", other.rstrip("/") + "/"
                if a.startswith(b) or b.startswith(a):
                    errors.append(
                        f"{p}.DataRepositoryAssociations[{di}].FileSystemPath: {fpath} overlaps "
                        f"DataRepositoryAssociations[{dj}] ({other})"
                    )
            paths.append((di, fpath))


def _load_text(text_or_dict: str | dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    if isinstance(text_or_dict, dict):
        return text_or_dict, []
    try:
        from pcluster.utils import yaml_load  # rejects duplicate keys, like `pcluster create-cluster`
    except ImportError:
        yaml_load = yaml.safe_load
    try:
        data = yaml_load(text_or_dict)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(yaml)"
        return None, [f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}"]
    except Exception as e:  # pcluster's duplicate-key constructor raises its own error type
        return None, [f"(yaml): {e}"]
    if not isinstance(data, dict):
        return None, [f"(top level): must be a mapping, got {type(data).__name__}"]
    return data, []


def validate_report(text_or_dict: str | dict[str, Any]) -> tuple[list[str], list[str]]:
    """(errors, warnings): schema errors first, then ours; every line `path.to.key: message`."""
    data, errors = _load_text(text_or_dict)
    if data is None:
        return errors, []
    errors = schema_problems(data)
    sem_errors, warnings = semantic_problems(data)
    return errors + [e for e in sem_errors if e not in errors], warnings


def validate(text_or_dict: str | dict[str, Any]) -> list[str]:
    """Every problem (not the warnings) in a ParallelCluster config, as `path.to.key: message` lines."""
    return validate_report(text_or_dict)[0]
