"""The EKS cluster under the training jobs, from the same EKS spec: an eksctl ClusterConfig (VPC, node groups,
EFA, placement group, capacity reservation, IAM, addons) and its offline checks.

The GPU node group is derived from the job side of the spec (instance type, nodes, the taint the jobs
tolerate, the labels they select), so the nodes eksctl creates and the pods mltrain renders cannot drift
apart. A rendered config is checked twice before anything is created: against eksctl's own JSON schema
(shipped in schemas/, see SOURCE.md there) and by mltrain's semantic checks (EFA in one AZ, the capacity
reservation's AZ and instance type, GPUs per node), each problem one line.
"""

from __future__ import annotations

import ipaddress
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from mltrain.config import StrictModel
from mltrain.errors import ClusterError

if TYPE_CHECKING:
    from mltrain.cluster.spec import EksSpec

API_VERSION = "eksctl.io/v1alpha5"
KIND = "ClusterConfig"
SCHEMA_PATH = Path(__file__).with_name("schemas") / "eksctl-clusterconfig.schema.json"
CLUSTER_FILE = "cluster.yaml"
FSX_CSI_ADDON = "aws-fsx-csi-driver"
POD_IDENTITY_ADDON = "eks-pod-identity-agent"
FSX_CSI_SERVICE_ACCOUNT = "fsx-csi-controller-sa"  # the driver's controller, in the addon's namespace
FSX_POLICY = "policy/AmazonFSxFullAccess"  # the managed policy AWS documents for the FSx CSI driver
DEFAULT_ADDONS = ["vpc-cni", "coredns", "kube-proxy", POD_IDENTITY_ADDON, FSX_CSI_ADDON]
_AZ = r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$"
_SUBNET = r"^subnet-[0-9a-f]+$"


class EksNetworkOutputs(StrictModel):
    """The outputs of the `mltrain cluster network` stack (`aws cloudformation describe-stacks`), which
    create the VPC, a private and a public subnet in the capacity's AZ and the EFA security group."""

    vpc_id: str = Field(pattern=r"^vpc-[0-9a-f]+$", description="VpcId")
    private_subnet_id: str = Field(pattern=_SUBNET, description="PrivateSubnetId (the GPU nodes)")
    public_subnet_id: str | None = Field(default=None, pattern=_SUBNET, description="PublicSubnetId")
    availability_zone: str = Field(pattern=_AZ, description="AvailabilityZone")
    compute_security_group_id: str | None = Field(
        default=None, pattern=r"^sg-[0-9a-f]+$", description="ComputeSecurityGroupId (EFA: all traffic within)"
    )


class EksVpcSpec(StrictModel):
    """An existing VPC: the network stack's outputs, or a VPC of your own (its subnets keyed by AZ), or both
    (EKS places its control plane in subnets of two AZs at least: add the second AZ's subnets here)."""

    network: EksNetworkOutputs | None = None
    id: str | None = Field(default=None, pattern=r"^vpc-[0-9a-f]+$")
    private_subnets: dict[str, str] = Field(default_factory=dict, description="AZ -> private subnet id")
    public_subnets: dict[str, str] = Field(default_factory=dict, description="AZ -> public subnet id")
    security_group_ids: list[str] = Field(
        default_factory=list, description="extra security groups on the GPU nodes (sg-...)"
    )

    def resolved(self) -> tuple[str | None, dict[str, str], dict[str, str], list[str]]:
        """(vpc id, private subnets, public subnets, GPU security groups) with the network outputs merged in."""
        vpc_id, private, public, sgs = self.id, dict(self.private_subnets), dict(self.public_subnets), []
        n = self.network
        if n is not None:
            vpc_id = vpc_id or n.vpc_id
            private.setdefault(n.availability_zone, n.private_subnet_id)
            if n.public_subnet_id:
                public.setdefault(n.availability_zone, n.public_subnet_id)
            if n.compute_security_group_id:
                sgs.append(n.compute_security_group_id)
        sgs += [s for s in self.security_group_ids if s not in sgs]
        return vpc_id, private, public, sgs


class EksSystemNodesSpec(StrictModel):
    """The small node group for CoreDNS, the operators, Kueue and the CSI controllers (no GPU taint)."""

    instance_type: str = "m5.2xlarge"
    count: int = Field(default=2, gt=0)
    volume_size_gib: int = Field(default=100, ge=20)


class EksGpuNodesSpec(StrictModel):
    """The GPU node group; its instance type and size come from the spec (instance_type, nodes, max_nodes)."""

    name: str = Field(default="gpu", pattern=r"^[a-z][a-z0-9-]*$")
    ami_family: Literal["AmazonLinux2023", "Bottlerocket"] = Field(
        default="AmazonLinux2023", description="eksctl picks the NVIDIA variant of the family for GPU types"
    )
    volume_size_gib: int = Field(default=500, ge=20, description="root volume (images, container layers)")
    placement_group: str | None = Field(
        default=None, description="an existing cluster placement group; none = eksctl creates one for EFA"
    )
    labels: dict[str, str] = Field(default_factory=dict, description="labels beyond the spec's node_selector")


class EksCapacitySpec(StrictModel):
    """What the GPU nodes run on: on-demand, an On-Demand Capacity Reservation, or a Capacity Block for ML."""

    type: Literal["on-demand", "odcr", "capacity-block"] = "on-demand"
    reservation_id: str | None = Field(default=None, pattern=r"^cr-[0-9a-f]+$")
    instance_type: str | None = Field(default=None, description="the reservation's instance type, as bought")
    availability_zone: str | None = Field(default=None, pattern=_AZ, description="the reservation's AZ")


class EksBucket(StrictModel):
    """An S3 bucket the training pods use: read-only unless `write`."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    write: bool = False


class EksIamSpec(StrictModel):
    """AWS access of the pods: the FSx CSI driver's and the training service account's S3 access."""

    mode: Literal["pod-identity", "irsa"] = "pod-identity"
    fsx_csi: bool = Field(default=True, description="give the FSx for Lustre CSI driver its IAM role")
    buckets: list[EksBucket] = Field(
        default_factory=list, description="S3 access of the spec's service_account (the one the jobs run as)"
    )


class EksClusterSpec(StrictModel):
    """`cluster:` of an EKS spec: what eksctl needs to create the cluster the jobs run on."""

    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    kubernetes_version: str = Field(default="1.33", pattern=r"^1\.\d+$")
    availability_zone: str | None = Field(
        default=None, pattern=_AZ, description="the GPU nodes' AZ (the capacity's); EFA needs exactly one"
    )
    availability_zones: list[str] = Field(
        default_factory=list, description="when eksctl creates the VPC: its AZs (two at least, EKS's rule)"
    )
    vpc_cidr: str = Field(default="10.0.0.0/16", description="when eksctl creates the VPC")
    vpc: EksVpcSpec | None = Field(default=None, description="an existing VPC; none = eksctl creates one")
    system_nodes: EksSystemNodesSpec = Field(default_factory=EksSystemNodesSpec)
    gpu_nodes: EksGpuNodesSpec = Field(default_factory=EksGpuNodesSpec)
    capacity: EksCapacitySpec = Field(default_factory=EksCapacitySpec)
    iam: EksIamSpec = Field(default_factory=EksIamSpec)
    addons: list[str] = Field(default_factory=lambda: list(DEFAULT_ADDONS))
    log_types: list[str] = Field(
        default_factory=lambda: ["api", "audit", "authenticator"], description="control plane logs to CloudWatch"
    )
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            ipaddress.IPv4Network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"not an IPv4 CIDR block: {e}") from None
        return v


# --------------------------------------------------------------------------- checks


def _cluster(spec: EksSpec) -> EksClusterSpec:
    if spec.cluster is None:
        raise ClusterError(f"{spec.name}: no cluster: section in the EKS spec; nothing to render for eksctl")
    return spec.cluster


def check_spec(spec: EksSpec) -> list[str]:
    """mltrain's semantic checks of the spec's cluster, one line per problem (empty: fine)."""
    from mltrain.cluster.catalog import get_instance

    c = _cluster(spec)
    problems: list[str] = []
    try:
        inst = get_instance(spec.instance_type)
    except ClusterError as e:
        return [f"instance_type: {e}"]
    if spec.gpus_per_node != inst.accelerators:
        problems.append(
            f"gpus_per_node: {spec.gpus_per_node}, but {inst.name} has {inst.accelerators} {inst.accelerator} GPUs"
        )
    if spec.efa_per_node > inst.efa_interfaces:
        problems.append(f"efa_per_node: {spec.efa_per_node}, but {inst.name} has {inst.efa_interfaces} EFA interfaces")
    az = c.availability_zone
    cap = c.capacity
    if az is None and cap.type == "capacity-block":
        problems.append("cluster.availability_zone: a capacity block is bought for one AZ; set it to the block's AZ")
    elif inst.efa and az is None:
        problems.append(
            f"cluster.availability_zone: EFA needs the GPU nodes in a single AZ; without it the {inst.name} node "
            "group spans every AZ of the cluster (set it to the capacity's AZ)"
        )
    if c.vpc is not None:
        vpc_id, private, public, _ = c.vpc.resolved()
        if vpc_id is None:
            problems.append("cluster.vpc: no VPC id (set vpc.id or vpc.network from the network stack's outputs)")
        if az is not None and az not in private:
            problems.append(f"cluster.vpc.private_subnets: no subnet in the GPU nodes' AZ {az}")
        if len(set(private) | set(public)) < 2:
            problems.append(
                f"cluster.vpc: subnets in {len(set(private) | set(public))} AZ; EKS needs subnets in two AZs at "
                "least for its control plane (add a second AZ's subnet)"
            )
    else:
        if len(set(c.availability_zones)) < 2:
            problems.append("cluster.availability_zones: EKS needs two AZs at least when eksctl creates the VPC")
        elif az is not None and az not in c.availability_zones:
            problems.append(f"cluster.availability_zones: does not include the GPU nodes' AZ {az}")
    if cap.type == "on-demand" and cap.reservation_id:
        problems.append("cluster.capacity.reservation_id: set, but type is on-demand (use odcr or capacity-block)")
    if cap.type != "on-demand" and not cap.reservation_id:
        problems.append(f"cluster.capacity.reservation_id: required for capacity type {cap.type} (cr-...)")
    if cap.type != "on-demand":
        if cap.availability_zone and az and cap.availability_zone != az:
            problems.append(
                f"cluster.capacity.availability_zone: the reservation is in {cap.availability_zone}, but the GPU "
                f"nodes are in {az}"
            )
        if cap.instance_type and cap.instance_type != spec.instance_type:
            problems.append(
                f"cluster.capacity.instance_type: the reservation is for {cap.instance_type}, but the node group "
                f"runs {spec.instance_type}"
            )
    if cap.type == "capacity-block" and c.gpu_nodes.placement_group:
        problems.append("cluster.gpu_nodes.placement_group: a capacity block brings its own placement; remove it")
    if c.iam.buckets and not spec.service_account:
        problems.append(
            "service_account: cluster.iam.buckets grants S3 access to the account the jobs run as; name it "
            "(e.g. service_account: mltrain) rather than binding a role to the namespace's `default`"
        )
    if c.iam.mode == "pod-identity" and POD_IDENTITY_ADDON not in c.addons:
        problems.append(f"cluster.addons: iam.mode pod-identity needs the {POD_IDENTITY_ADDON} addon")
    if c.iam.fsx_csi and FSX_CSI_ADDON not in c.addons:
        problems.append(f"cluster.addons: iam.fsx_csi needs the {FSX_CSI_ADDON} addon")
    if spec.max_nodes is not None and cap.type == "capacity-block" and spec.max_nodes > spec.nodes:
        problems.append(
            f"max_nodes: {spec.max_nodes} nodes, but a capacity block runs the {spec.nodes} it was bought for"
        )
    return problems


def check_config(config: dict[str, Any]) -> list[str]:
    """The checks that need only a ClusterConfig (for `mltrain cluster validate FILE`): EFA node groups in
    one AZ, a capacity block targeting a reservation."""
    problems: list[str] = []
    for kind in ("managedNodeGroups", "nodeGroups"):
        for i, ng in enumerate(config.get(kind) or []):
            if not isinstance(ng, dict):
                continue
            where = f"{kind}[{i}] ({ng.get('name', '?')})"
            zones = ng.get("availabilityZones") or []
            subnets = ng.get("subnets") or []
            if ng.get("efaEnabled") and not (len(zones) == 1 or (not zones and len(subnets) == 1)):
                problems.append(f"{where}: efaEnabled needs one AZ (availabilityZones or subnets: exactly one)")
            market = (ng.get("instanceMarketOptions") or {}).get("marketType")
            target = ((ng.get("capacityReservation") or {}).get("capacityReservationTarget") or {}).get(
                "capacityReservationID"
            )
            if market == "capacity-block" and not target:
                problems.append(f"{where}: a capacity block needs capacityReservation.capacityReservationTarget")
    return problems


# --------------------------------------------------------------------------- render


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def s3_policy(buckets: list[EksBucket], partition: str = "aws") -> dict[str, Any]:
    """Least-privilege S3 access: list and read every bucket, write (and abort uploads) only where `write`."""
    arn = f"arn:{partition}:s3:::"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "List",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": [arn + b.name for b in buckets],
        },
        {
            "Sid": "Read",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [f"{arn}{b.name}/*" for b in buckets],
        },
    ]
    writable = [f"{arn}{b.name}/*" for b in buckets if b.write]
    if writable:
        statements.append(
            {
                "Sid": "Write",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": writable,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _taints(spec: EksSpec) -> list[dict[str, str]]:
    """The GPU nodes' taints: one per toleration of the jobs that names a key and an effect, so only the
    training pods (and daemonsets that tolerate them) land on the GPU nodes."""
    out: list[dict[str, str]] = []
    for t in spec.tolerations:
        if t.key and t.effect:
            taint = {"key": t.key, "effect": t.effect}
            if t.operator == "Equal" and t.value:
                taint["value"] = t.value
            if taint not in out:
                out.append(taint)
    return out


def _gpu_group(spec: EksSpec, c: EksClusterSpec, private: dict[str, str], sgs: list[str]) -> dict[str, Any]:
    from mltrain.cluster.catalog import get_instance

    inst = get_instance(spec.instance_type)
    g = c.gpu_nodes
    ng: dict[str, Any] = {
        "name": g.name,
        "instanceType": spec.instance_type,
        "amiFamily": g.ami_family,
        "minSize": spec.nodes,
        "desiredCapacity": spec.nodes,
        "maxSize": spec.max_nodes or spec.nodes,
        "volumeSize": g.volume_size_gib,
        "volumeType": "gp3",
        "volumeEncrypted": True,
        "privateNetworking": True,
    }
    if c.availability_zone:
        if c.vpc is not None and c.availability_zone in private:
            ng["subnets"] = [private[c.availability_zone]]
        else:
            ng["availabilityZones"] = [c.availability_zone]
    if inst.efa:
        ng["efaEnabled"] = True
    if g.placement_group:
        ng["placement"] = {"groupName": g.placement_group}
    labels = {"mltrain.io/role": "gpu", "mltrain.io/cluster": spec.name, **spec.node_selector, **g.labels}
    ng["labels"] = labels
    if taints := _taints(spec):
        ng["taints"] = taints
    cap = c.capacity
    if cap.type != "on-demand" and cap.reservation_id:
        ng["capacityReservation"] = {"capacityReservationTarget": {"capacityReservationID": cap.reservation_id}}
    if cap.type == "capacity-block":
        ng["instanceMarketOptions"] = {"marketType": "capacity-block"}
    if sgs:
        ng["securityGroups"] = {"attachIDs": sgs}
    ng["tags"] = {"mltrain:cluster": spec.name, **c.tags}
    return ng


def render_cluster_config(spec: EksSpec) -> dict[str, Any]:
    """The eksctl ClusterConfig (a dict, keys in eksctl's documented order) for the spec's `cluster:`."""
    c = _cluster(spec)
    partition = _partition(c.region)
    config: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": spec.name,
            "region": c.region,
            "version": c.kubernetes_version,
            "tags": {"mltrain:cluster": spec.name, **c.tags},
        },
    }
    private: dict[str, str] = {}
    sgs: list[str] = []
    if c.vpc is not None:
        vpc_id, private, public, sgs = c.vpc.resolved()
        subnets: dict[str, Any] = {}
        if private:
            subnets["private"] = {az: {"id": sid} for az, sid in sorted(private.items())}
        if public:
            subnets["public"] = {az: {"id": sid} for az, sid in sorted(public.items())}
        config["vpc"] = {"id": vpc_id, "subnets": subnets}
    else:
        config["availabilityZones"] = list(c.availability_zones)
        config["vpc"] = {"cidr": c.vpc_cidr, "nat": {"gateway": "Single"}}

    sa = spec.service_account or "default"
    iam: dict[str, Any] = {}
    if c.iam.mode == "irsa":
        iam["withOIDC"] = True
        if c.iam.buckets:
            iam["serviceAccounts"] = [
                {
                    "metadata": {"name": sa, "namespace": spec.namespace},
                    "attachPolicy": s3_policy(c.iam.buckets, partition),
                }
            ]
    elif c.iam.buckets:
        iam["podIdentityAssociations"] = [
            {
                "namespace": spec.namespace,
                "serviceAccountName": sa,
                "createServiceAccount": True,
                "permissionPolicy": s3_policy(c.iam.buckets, partition),
            }
        ]
    if iam:
        config["iam"] = iam

    system = c.system_nodes
    config["managedNodeGroups"] = [
        {
            "name": "system",
            "instanceType": system.instance_type,
            "minSize": system.count,
            "desiredCapacity": system.count,
            "maxSize": system.count,
            "volumeSize": system.volume_size_gib,
            "volumeType": "gp3",
            "volumeEncrypted": True,
            "privateNetworking": True,
            "labels": {"mltrain.io/role": "system"},
            "tags": {"mltrain:cluster": spec.name, **c.tags},
        },
        _gpu_group(spec, c, private, sgs),
    ]

    addons: list[dict[str, Any]] = []
    fsx_policy = f"arn:{partition}:iam::aws:{FSX_POLICY}"
    for name in c.addons:
        addon: dict[str, Any] = {"name": name}
        if name == FSX_CSI_ADDON and c.iam.fsx_csi:
            if c.iam.mode == "pod-identity":
                addon["podIdentityAssociations"] = [
                    {"serviceAccountName": FSX_CSI_SERVICE_ACCOUNT, "permissionPolicyARNs": [fsx_policy]}
                ]
            else:
                addon["attachPolicyARNs"] = [fsx_policy]
        addons.append(addon)
    config["addons"] = addons
    if c.log_types:
        config["cloudWatch"] = {"clusterLogging": {"enableTypes": list(c.log_types), "logRetentionInDays": 30}}
    return config


# --------------------------------------------------------------------------- schema validation


@cache
def _schema() -> dict[str, Any]:
    try:
        return json.loads(SCHEMA_PATH.read_text())
    except (OSError, ValueError) as e:
        raise ClusterError(f"{SCHEMA_PATH}: cannot read eksctl's schema: {e}") from None


def schema_errors(config: Any) -> list[str]:
    """eksctl's JSON schema errors of a ClusterConfig, one line each ('path: message')."""
    try:
        import jsonschema
    except ImportError:
        raise ClusterError("validating an eksctl ClusterConfig needs jsonschema: pip install 'mltrain[k8s]'") from None
    validator = jsonschema.Draft7Validator(_schema())
    out = []
    for e in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        out.append(f"{where}: {e.message}")
    return out


def validate_spec(spec: EksSpec) -> tuple[dict[str, Any], list[str]]:
    """(the rendered config, its problems): the semantic checks, then eksctl's schema on the render."""
    problems = check_spec(spec)
    if problems:
        return {}, problems
    config = render_cluster_config(spec)
    return config, [f"eksctl schema: {p}" for p in schema_errors(config)] + check_config(config)


def is_eksctl_config(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and str(data.get("apiVersion", "")).startswith("eksctl.io/")
        and (data.get("kind") == KIND)
    )


def validate_config(config: dict[str, Any]) -> list[str]:
    """Problems of an eksctl ClusterConfig read from a file: its schema, then the config-level checks."""
    return [f"eksctl schema: {p}" for p in schema_errors(config)] + check_config(config)


def dump_yaml(config: dict[str, Any], source: str | None = None) -> str:
    import yaml

    from mltrain.cluster.pcluster import _NoAliasDumper

    head = "# eksctl ClusterConfig rendered by `mltrain cluster render --kind eks`"
    head += f" from {source}" if source else ""
    head += ".\n# Edit the EKS spec and render again rather than editing this file.\n"
    return head + yaml.dump(config, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=120)


def dump_objects(objects: list[dict[str, Any]], source: str | None = None) -> str:
    """Kubernetes objects as one multi-document YAML file."""
    import yaml

    from mltrain.cluster.pcluster import _NoAliasDumper

    head = f"# rendered by `mltrain cluster render --kind eks`{f' from {source}' if source else ''}\n"
    return head + yaml.dump_all(objects, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=120)
