"""Read-only checks of the AWS account before `pcluster create-cluster`: the things that make a
cluster fail to come up an hour in (instance type not in the AZ, reservation in another AZ, no EFA
rule, a missing bucket, a vCPU quota of 0) are found in seconds, each with its remedy.

Only Describe/Get/Head calls. Credentials and region come from the usual boto3 chain; the
endpoint can be redirected with AWS_ENDPOINT_URL (the tests point it at a local moto server).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mltrain.cluster.catalog import get_instance
from mltrain.cluster.pcluster import _bucket
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.errors import ClusterError

Status = Literal["PASS", "WARN", "FAIL"]

# EC2 vCPU quotas (Service Quotas, service code "ec2") by the instance family's first letters:
# (on-demand code, spot code, quota name). Families not listed fall into "Standard".
QUOTAS: dict[str, tuple[str, str, str]] = {
    "p": ("L-417A185B", "L-7212CCBC", "P instances"),
    "g": ("L-DB2E81BA", "L-3819A6DF", "G and VT instances"),
    "vt": ("L-DB2E81BA", "L-3819A6DF", "G and VT instances"),
    "trn": ("L-2C3B7624", "L-6B0D517C", "Trn instances"),
    "inf": ("L-1945791B", "L-B5D1601B", "Inf instances"),
    "dl": ("L-6E869C2A", "L-85EED4F7", "DL instances"),
    "f": ("L-74FC7D96", "L-88CF9481", "F instances"),
    "x": ("L-7295265B", "L-E3A00192", "X instances"),
    "standard": ("L-1216C47A", "L-34B43A08", "Standard (A, C, D, H, I, M, R, T, Z) instances"),
}
EFA_DOC = "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-start.html#efa-start-security"


@dataclass
class Check:
    """One line of the preflight table."""

    check: str
    status: Status
    detail: str
    remedy: str = ""


def quota_family(instance_type: str) -> str:
    """'p5e.48xlarge' -> 'p', 'trn1.32xlarge' -> 'trn', 'm5.8xlarge' -> 'standard'."""
    prefix = instance_type.split(".")[0].lower()
    for fam in ("trn", "inf", "dl", "vt"):
        if prefix.startswith(fam):
            return fam
    if prefix[:1] in ("p", "g", "f", "x"):
        return prefix[:1]
    return "standard"


def aws_session(session: Any, region: str) -> Any:
    """The given boto3 session, or a new one for `region` (the standard credential chain)."""
    if session is not None:
        return session
    try:
        import boto3
    except ImportError:
        raise ClusterError("boto3 is not installed: pip install 'mltrain[aws]'") from None
    return boto3.Session(region_name=region)


def _client(session: Any, name: str, region: str) -> Any:
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=30)
    return session.client(name, region_name=region, config=cfg)


def _code(e: Exception) -> str:
    resp = getattr(e, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", type(e).__name__))


def _fatal(e: Exception) -> None:
    """No credentials / no endpoint: every check would fail the same way; say it once."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError, NoRegionError

    if isinstance(e, NoCredentialsError):
        raise ClusterError(
            "preflight: no AWS credentials (set AWS_PROFILE, or run `aws configure` / `aws sso login`)"
        ) from None
    if isinstance(e, (EndpointConnectionError, NoRegionError)):
        raise ClusterError(f"preflight: cannot reach AWS: {e}") from None


def describe_reservation(ec2: Any, reservation_id: str) -> dict[str, Any]:
    out = ec2.describe_capacity_reservations(CapacityReservationIds=[reservation_id])
    found = out.get("CapacityReservations") or []
    if not found:
        raise LookupError(f"{reservation_id} not found")
    return found[0]


class _Preflight:
    def __init__(self, spec: ClusterSpec, session: Any) -> None:
        assert spec.aws is not None
        self.spec, self.aws = spec, spec.aws
        self.region = spec.aws.region
        self.session = aws_session(session, self.region)
        self.ec2 = _client(self.session, "ec2", self.region)
        self.checks: list[Check] = []
        self.subnet_az: str | None = None
        self.vpc_id: str | None = None
        self.inst = get_instance(spec.instance_type, spec.instance_types)

    def add(self, check: str, status: Status, detail: str, remedy: str = "") -> None:
        self.checks.append(Check(check, status, detail, remedy))

    def _call(self, fn: Any, **kw: Any) -> Any:
        try:
            return fn(**kw)
        except Exception as e:
            _fatal(e)
            raise

    def run(self) -> list[Check]:
        from botocore.exceptions import BotoCoreError, ClientError

        for step in (
            self.instance_in_region,
            self.subnets,
            self.instance_in_az,
            self.reservation,
            self.security_groups,
            self.key_pair,
            self.buckets,
            self.ecr,
            self.quota,
        ):
            try:
                step()
            except ClusterError:
                raise
            except (ClientError, BotoCoreError) as e:  # an API this account/endpoint does not answer: say so
                self.add(step.__name__.replace("_", " "), "WARN", f"could not check: {_code(e)}: {e}"[:300])
        return self.checks

    # ------------------------------------------------------------------ checks

    def _offered(self, itype: str, location_type: str, location: str | None = None) -> bool:
        filters = [{"Name": "instance-type", "Values": [itype]}]
        if location:
            filters.append({"Name": "location", "Values": [location]})
        out = self._call(self.ec2.describe_instance_type_offerings, LocationType=location_type, Filters=filters)
        return bool(out.get("InstanceTypeOfferings"))

    def instance_in_region(self) -> None:
        for itype, what in ((self.inst.name, "compute"), (self.aws.head_node_instance_type, "head node")):
            if self._offered(itype, "region"):
                self.add(f"{what} type", "PASS", f"{itype} is offered in {self.region}")
            else:
                self.add(
                    f"{what} type",
                    "FAIL",
                    f"{itype} is not offered in {self.region}",
                    f"choose a region that offers it: aws ec2 describe-instance-type-offerings --location-type "
                    f"region --filters Name=instance-type,Values={itype} --region <r>",
                )

    def subnets(self) -> None:
        ids = [self.aws.subnet_id] + [s for s in [self.aws.head_node_subnet_id] if s and s != self.aws.subnet_id]
        found: dict[str, dict[str, Any]] = {}
        for sid in ids:
            try:
                out = self._call(self.ec2.describe_subnets, SubnetIds=[sid])
                found[sid] = out["Subnets"][0]
            except Exception as e:
                if not _code(e).startswith("InvalidSubnet"):
                    raise
        for sid, key in (
            (self.aws.subnet_id, "aws.subnet_id"),
            (self.aws.head_node_subnet_id, "aws.head_node_subnet_id"),
        ):
            if not sid:
                continue
            if sid not in found:
                self.add(
                    "subnet",
                    "FAIL",
                    f"{key} {sid} does not exist in {self.region}",
                    "deploy `mltrain cluster network` and copy its subnet outputs into the spec",
                )
        compute = found.get(self.aws.subnet_id)
        if compute:
            self.subnet_az, self.vpc_id = compute["AvailabilityZone"], compute["VpcId"]
            self.add("subnet", "PASS", f"compute subnet {self.aws.subnet_id} in {self.subnet_az} ({self.vpc_id})")
            if self.aws.availability_zone and self.aws.availability_zone != self.subnet_az:
                self.add(
                    "subnet AZ",
                    "FAIL",
                    f"compute subnet is in {self.subnet_az}, aws.availability_zone says {self.aws.availability_zone}",
                    "use a subnet in the capacity's AZ (render the network with that AZ)",
                )
        head = found.get(self.aws.head_node_subnet_id or "")
        if head and compute and head["VpcId"] != compute["VpcId"]:
            self.add(
                "subnet",
                "FAIL",
                f"head node subnet is in {head['VpcId']}, compute subnet in {compute['VpcId']}",
                "put both subnets in the same VPC",
            )

    def instance_in_az(self) -> None:
        if not self.subnet_az:
            return
        if self._offered(self.inst.name, "availability-zone", self.subnet_az):
            self.add("type in AZ", "PASS", f"{self.inst.name} is offered in {self.subnet_az}")
        else:
            self.add(
                "type in AZ",
                "FAIL",
                f"{self.inst.name} is not offered in {self.subnet_az} (the compute subnet's AZ)",
                f"put the compute subnet in an AZ that offers it: aws ec2 describe-instance-type-offerings "
                f"--location-type availability-zone --filters Name=instance-type,Values={self.inst.name}",
            )

    def reservation(self) -> None:
        rid = self.aws.capacity_reservation_id
        if not rid:
            return
        try:
            cr = describe_reservation(self.ec2, rid)
        except Exception as e:
            _fatal(e)
            code = _code(e)
            if isinstance(e, LookupError) or code.startswith("InvalidCapacityReservationId"):
                self.add(
                    "reservation",
                    "FAIL",
                    f"{rid} does not exist in {self.region}",
                    "check aws.capacity_reservation_id and aws.region: aws ec2 describe-capacity-reservations",
                )
                return
            raise
        problems: list[tuple[Status, str, str]] = []
        if cr.get("InstanceType") != self.inst.name:
            problems.append(
                (
                    "FAIL",
                    f"{rid} reserves {cr.get('InstanceType')}, the spec uses {self.inst.name}",
                    "fix instance_type",
                )
            )
        cr_az = cr.get("AvailabilityZone")
        if self.subnet_az and cr_az != self.subnet_az:
            problems.append(
                (
                    "FAIL",
                    f"{rid} is in {cr_az} but the compute subnet {self.aws.subnet_id} is in {self.subnet_az}",
                    f"render the network with aws.availability_zone: {cr_az} and use its private subnet",
                )
            )
        total = int(cr.get("TotalInstanceCount") or 0)
        avail = int(cr.get("AvailableInstanceCount") or 0)
        if total < self.spec.nodes:
            problems.append(
                (
                    "FAIL",
                    f"{rid} holds {total} instances, the spec needs {self.spec.nodes}",
                    "lower nodes or extend the reservation",
                )
            )
        elif avail < self.spec.nodes:
            problems.append(
                ("WARN", f"{rid}: {avail} of {total} instances free (others in use)", "free them or lower nodes")
            )
        state = cr.get("State", "")
        if state in ("expired", "cancelled", "failed", "payment-failed"):
            problems.append(("FAIL", f"{rid} is {state}", "reserve capacity again"))
        elif state != "active":
            problems.append(("WARN", f"{rid} is {state}, not active yet", "nodes start once it is active"))
        for status, detail, remedy in problems:
            self.add("reservation", status, detail, remedy)
        if not problems:
            self.add("reservation", "PASS", f"{rid}: {avail}/{total} x {self.inst.name} free in {cr_az}, {state}")

    def _sg(self, gid: str) -> dict[str, Any] | None:
        try:
            return self._call(self.ec2.describe_security_groups, GroupIds=[gid])["SecurityGroups"][0]
        except Exception as e:
            if _code(e).startswith("InvalidGroup"):
                return None
            raise

    @staticmethod
    def _allows_all_from(perms: list[dict[str, Any]], gid: str) -> bool:
        """pcluster's EFA validator's rule: IpProtocol -1 with a UserIdGroupPair naming `gid`."""
        return any(
            p.get("IpProtocol") == "-1" and any(g.get("GroupId") == gid for g in p.get("UserIdGroupPairs", []))
            for p in perms
        )

    def security_groups(self) -> None:
        head_id, comp_id = self.aws.head_node_security_group_id, self.aws.compute_security_group_id
        if not head_id and not comp_id:
            self.add("security groups", "PASS", "none named: ParallelCluster creates its own (EFA rule included)")
            return
        groups: dict[str, dict[str, Any]] = {}
        for gid, key in ((head_id, "aws.head_node_security_group_id"), (comp_id, "aws.compute_security_group_id")):
            if not gid:
                continue
            sg = self._sg(gid)
            if sg is None:
                self.add(
                    "security groups",
                    "FAIL",
                    f"{key} {gid} does not exist",
                    "deploy `mltrain cluster network` and copy its security group outputs",
                )
                continue
            groups[gid] = sg
            if self.vpc_id and sg.get("VpcId") != self.vpc_id:
                self.add("security groups", "FAIL", f"{gid} is in {sg.get('VpcId')}, the subnets in {self.vpc_id}")
        comp = groups.get(comp_id or "")
        if comp and self.inst.efa:
            ins = self._allows_all_from(comp.get("IpPermissions", []), comp["GroupId"])
            outs = self._allows_all_from(comp.get("IpPermissionsEgress", []), comp["GroupId"])
            missing = [w for w, ok in (("inbound", ins), ("outbound", outs)) if not ok]
            if missing:
                g = comp["GroupId"]
                fix = (
                    f"aws ec2 authorize-security-group-ingress --group-id {g} --protocol -1 --source-group {g}"
                    if "inbound" in missing
                    else f"aws ec2 authorize-security-group-egress --group-id {g} --ip-permissions "
                    f"IpProtocol=-1,UserIdGroupPairs=[{{GroupId={g}}}]"
                )
                self.add("EFA rule", "FAIL", f"{g} lacks the EFA all-traffic self rule ({' and '.join(missing)})", fix)
            else:
                self.add("EFA rule", "PASS", f"{comp['GroupId']} allows all traffic to and from itself")
        head = groups.get(head_id or "")
        if head and comp and head_id != comp_id:
            gaps = []
            if not self._allows_all_from(comp.get("IpPermissions", []), head["GroupId"]):
                gaps.append(f"{comp['GroupId']} does not allow the head node in")
            if not self._allows_all_from(head.get("IpPermissions", []), comp["GroupId"]):
                gaps.append(f"{head['GroupId']} does not allow the compute nodes in")
            for g in gaps:
                self.add("head<->compute", "FAIL", g, "allow all traffic between the two groups (network template)")
            if not gaps:
                self.add("head<->compute", "PASS", "all traffic allowed between head node and compute groups")

    def key_pair(self) -> None:
        name = self.aws.ssh_key_name
        if not name:
            return
        try:
            self._call(self.ec2.describe_key_pairs, KeyNames=[name])
            self.add("key pair", "PASS", f"{name} exists in {self.region}")
        except Exception as e:
            if not _code(e).startswith("InvalidKeyPair"):
                raise
            self.add(
                "key pair",
                "FAIL",
                f"aws.ssh_key_name {name} does not exist in {self.region}",
                f"aws ec2 create-key-pair --key-name {name} --region {self.region} --query KeyMaterial "
                f"--output text > {name}.pem && chmod 600 {name}.pem",
            )

    def _buckets(self) -> dict[str, str]:
        """bucket -> which spec key names it."""
        out: dict[str, str] = {}
        fsx = self.aws.fsx
        for url, key in (
            (self.aws.pyxis_script_url, "aws.pyxis_script_url"),
            (fsx.s3_import_path if fsx else None, "aws.fsx.s3_import_path"),
            (fsx.s3_export_path if fsx else None, "aws.fsx.s3_export_path"),
        ):
            b = _bucket(url)
            if b:
                out.setdefault(b, key)
        for b in self.aws.buckets:
            out.setdefault(b.name, "aws.buckets")
        return out

    def buckets(self) -> None:
        s3 = _client(self.session, "s3", self.region)
        for name, key in self._buckets().items():
            try:
                head = self._call(s3.head_bucket, Bucket=name)
            except Exception as e:
                code = _code(e)
                if code in ("404", "NoSuchBucket", "NotFound"):
                    self.add(
                        "bucket",
                        "FAIL",
                        f"s3://{name} ({key}) does not exist",
                        f"aws s3 mb s3://{name} --region {self.region}",
                    )
                elif code in ("403", "AccessDenied"):
                    self.add("bucket", "FAIL", f"s3://{name} ({key}): access denied", "use a bucket of this account")
                else:
                    raise
                continue
            where = (head.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}).get("x-amz-bucket-region")
            if where and where != self.region:
                self.add(
                    "bucket",
                    "WARN",
                    f"s3://{name} is in {where}, the cluster in {self.region}",
                    "FSx data repositories need a bucket in the cluster's region",
                )
            else:
                self.add("bucket", "PASS", f"s3://{name} exists ({key})")
        url = self.aws.pyxis_script_url
        if url and url.startswith("s3://") and "/" in url[5:] and (self.aws.pyxis or self.spec.container):
            b, k = url[5:].split("/", 1)
            if b in self._buckets():
                try:
                    self._call(s3.head_object, Bucket=b, Key=k)
                    self.add("pyxis script", "PASS", f"{url} is uploaded")
                except Exception as e:
                    if _code(e) not in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                        raise
                    self.add(
                        "pyxis script",
                        "FAIL",
                        f"{url} is missing",
                        f"mltrain cluster render SPEC -o DIR/pcluster.yaml; aws s3 cp DIR/enable-pyxis.sh {url}",
                    )

    def ecr(self) -> None:
        repo = self.aws.ecr_repository
        if not repo:
            return
        ecr = _client(self.session, "ecr", self.region)
        try:
            self._call(ecr.describe_repositories, repositoryNames=[repo])
            self.add("ECR repository", "PASS", f"{repo} exists")
        except Exception as e:
            if _code(e) != "RepositoryNotFoundException":
                raise
            self.add(
                "ECR repository",
                "FAIL",
                f"{repo} does not exist in {self.region}",
                f"aws ecr create-repository --repository-name {repo} --region {self.region}",
            )
        arn = self.aws.ecr_policy_arn
        if not arn:
            self.add(
                "ECR policy",
                "WARN",
                "aws.ecr_policy_arn is not set: the nodes cannot pull from ECR",
                "deploy `mltrain cluster network` and copy its EcrPullPolicyArn output",
            )
            return
        iam = _client(self.session, "iam", self.region)
        try:
            self._call(iam.get_policy, PolicyArn=arn)
            self.add("ECR policy", "PASS", f"{arn.rsplit('/', 1)[-1]} exists")
        except Exception as e:
            if _code(e) != "NoSuchEntity":
                raise
            self.add("ECR policy", "FAIL", f"{arn} does not exist", "copy EcrPullPolicyArn from the network stack")

    def quota(self) -> None:
        fam = quota_family(self.inst.name)
        spot = self.aws.capacity_type == "spot"
        od_code, spot_code, qname = QUOTAS[fam]
        code = spot_code if spot else od_code
        need = self.spec.nodes * self.inst.vcpus
        head_vcpus = _head_vcpus(self.aws.head_node_instance_type)
        if quota_family(self.aws.head_node_instance_type) == fam and not spot and head_vcpus:
            need += head_vcpus
        label = f"{'All ' + qname.split(' (')[0] + ' Spot Instance Requests' if spot else 'Running On-Demand ' + qname}"
        sq = _client(self.session, "service-quotas", self.region)
        try:
            value = float(self._call(sq.get_service_quota, ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
        except Exception as e:
            _fatal(e)
            self.add(
                "vCPU quota",
                "WARN",
                f"could not check {label} ({code}): {_code(e)}; need {need} vCPUs",
                f"check it: aws service-quotas get-service-quota --service-code ec2 --quota-code {code}",
            )
            return
        for status, detail, remedy in quota_verdict(value, need, label, code, self.aws.capacity_type, self.region):
            self.add("vCPU quota", status, detail, remedy)


def _head_vcpus(itype: str) -> int | None:
    from mltrain.cluster.catalog import load_catalog

    info = load_catalog().get(itype)
    return info.vcpus if info else None


def quota_verdict(
    value: float, need: int, label: str, code: str, capacity_type: str, region: str
) -> list[tuple[Status, str, str]]:
    """PASS when the quota covers the vCPUs; FAIL otherwise (WARN for a capacity block, whose
    accounting against on-demand quotas we have not verified)."""
    if value >= need:
        return [("PASS", f"{label}: {value:g} vCPUs >= {need} needed", "")]
    status: Status = "WARN" if capacity_type == "capacity_block" else "FAIL"
    return [
        (
            status,
            f"{label}: {value:g} vCPUs < {need} needed",
            f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
            f"--desired-value {need} --region {region}",
        )
    ]


def run_preflight(spec: ClusterSpec, session: Any = None) -> list[Check]:
    """Every check, in order; raises ClusterError only when AWS cannot be reached at all."""
    if spec.aws is None:
        raise ClusterError(f"cluster {spec.name}: no aws: section, nothing to check")
    return _Preflight(spec, session).run()


def failed(checks: list[Check]) -> bool:
    return any(c.status == "FAIL" for c in checks)


STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


def print_checks(checks: list[Check], console: Console, title: str | None = None) -> None:
    """The table: check | status | detail, with each remedy on the line below (fits 80 columns)."""
    table = Table(title=title, show_lines=False, expand=False, pad_edge=False)
    table.add_column("check", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("detail / remedy", overflow="fold")
    for c in checks:
        detail = escape(c.detail)
        if c.remedy and c.status != "PASS":
            detail += f"\n[dim]-> {escape(c.remedy)}[/]"
        table.add_row(c.check, f"[{STYLE[c.status]}]{c.status}[/]", detail)
    console.print(table)
    n = {s: sum(c.status == s for c in checks) for s in ("PASS", "WARN", "FAIL")}
    console.print(f"{n['PASS']} passed, {n['WARN']} warning(s), {n['FAIL']} failed", highlight=False)


def preflight_command(cluster_yaml: Path, *, json_out: bool = False, console: Console | None = None) -> int:
    """`mltrain cluster preflight`: 1 when any check FAILs, else 0."""
    console = console or Console()
    spec = load_cluster_spec(cluster_yaml)
    checks = run_preflight(spec)
    if json_out:
        doc = {"cluster": spec.name, "ok": not failed(checks), "checks": [asdict(c) for c in checks]}
        console.print(json.dumps(doc, indent=2), markup=False, highlight=False, soft_wrap=True)
    else:
        print_checks(checks, console, title=f"preflight {spec.name} ({spec.aws.region if spec.aws else ''})")
    return 1 if failed(checks) else 0
