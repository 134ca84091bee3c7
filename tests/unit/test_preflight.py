"""`mltrain cluster preflight` against moto's standalone server on 127.0.0.1 (real HTTP, unchanged boto3):
the rendered network template is deployed with CloudFormation create_stack, buckets and the ECR
repository are created, then one thing at a time is broken and the check that names it is asserted.

Where moto cannot stand in, the test says so:
- moto 5 implements no EC2 capacity reservations, so DescribeCapacityReservations alone is answered
  by a botocore `before-send` hook with a canned EC2 response (every other call goes to moto);
- moto's CloudFormation skips AWS::EC2::SecurityGroupEgress, so the EFA egress self rule is added with
  the EC2 API after the deploy (and the missing rule is first caught by preflight itself);
- moto's Service Quotas knows only the "vpc" service: the EC2 vCPU quota check must then say
  "could not check" (WARN), never PASS; the quota arithmetic is checked by `quota_verdict` directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml
from rich.console import Console

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from botocore.awsrequest import AWSResponse  # noqa: E402

from mltrain.cluster.network import dump_template, render_network  # noqa: E402
from mltrain.cluster.preflight import (  # noqa: E402
    Check,
    print_checks,
    quota_family,
    quota_verdict,
    run_preflight,
)
from mltrain.cluster.spec import ClusterSpec  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..EC2..SecurityGroupEgress")

REGION = "us-east-1"
CR_ID = "cr-0123456789abcdef0"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


@pytest.fixture(scope="session")
def moto_url():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_kw):
        yield self.body


RESERVATIONS: dict[str, dict] = {}


def _reservation_hook(request, **_kw):
    """Stand-in for EC2 DescribeCapacityReservations (not implemented by moto 5)."""
    body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
    wanted = parse_qs(body).get("CapacityReservationId.1", [""])[0]
    cr = RESERVATIONS.get(wanted)
    if cr is None:
        xml = (
            "<Response><Errors><Error><Code>InvalidCapacityReservationId.NotFound</Code>"
            f"<Message>The capacity reservation ID '{wanted}' does not exist</Message></Error></Errors>"
            "<RequestID>x</RequestID></Response>"
        )
        return AWSResponse(request.url, 400, {}, _Raw(xml.encode()))
    items = "".join(f"<{k}>{v}</{k}>" for k, v in cr.items())
    xml = (
        '<DescribeCapacityReservationsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>x</requestId><capacityReservationSet><item><capacityReservationId>{wanted}"
        f"</capacityReservationId>{items}</item></capacityReservationSet></DescribeCapacityReservationsResponse>"
    )
    return AWSResponse(request.url, 200, {}, _Raw(xml.encode()))


@pytest.fixture(scope="session")
def session(moto_url):
    s = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    s.events.register("before-send.ec2.DescribeCapacityReservations", _reservation_hook)
    return _MotoSession(s, moto_url)


class _MotoSession:
    """A boto3 session whose clients talk to the moto server (what AWS_ENDPOINT_URL does for the CLI,
    without changing this test process's environment)."""

    def __init__(self, session, url: str) -> None:
        self.session, self.url = session, url

    def client(self, name: str, **kw):
        return self.session.client(name, endpoint_url=self.url, **kw)


def _base_spec(**aws) -> ClusterSpec:
    base = {
        "region": REGION,
        "availability_zone": "us-east-1a",
        "ssh_cidr": "203.0.113.0/24",
        "ssh_key_name": "mltrain",
        "subnet_id": "subnet-00000000000000000",
        "capacity_type": "odcr",
        "capacity_reservation_id": CR_ID,
        "pyxis_script_url": "s3://mltrain-boot/enable-pyxis.sh",
        "fsx": {"s3_import_path": "s3://mltrain-data/data", "s3_export_path": "s3://mltrain-data/ckpt"},
        "buckets": [{"name": "mltrain-extra", "write": True}],
        "ecr_repository": "mltrain",
    }
    base.update(aws)
    return ClusterSpec.model_validate(
        {
            "name": "pf",
            "instance_type": "p5.48xlarge",
            "nodes": 4,
            "gpus_per_node": 8,
            "container": {"image": "/fsx/x.sqsh"},
            "aws": base,
        }
    )


@pytest.fixture(scope="session")
def deployed(session):
    """The network stack from our template, deployed through moto's CloudFormation, plus the buckets,
    the pyxis script, the ECR repository and an ODCR in the compute subnet's AZ."""
    template = dump_template(render_network(_base_spec()))
    cf = session.client("cloudformation")
    cf.create_stack(StackName="pf-network", TemplateBody=template, Capabilities=["CAPABILITY_IAM"])
    stack = cf.describe_stacks(StackName="pf-network")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    outs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    s3 = session.client("s3")
    for b in ("mltrain-boot", "mltrain-data", "mltrain-extra"):
        s3.create_bucket(Bucket=b)
    s3.put_object(Bucket="mltrain-boot", Key="enable-pyxis.sh", Body=b"#!/bin/bash\n")
    session.client("ecr").create_repository(repositoryName="mltrain")
    session.client("ec2").create_key_pair(KeyName="mltrain")
    RESERVATIONS[CR_ID] = {
        "instanceType": "p5.48xlarge",
        "availabilityZone": "us-east-1a",
        "totalInstanceCount": 4,
        "availableInstanceCount": 4,
        "state": "active",
    }
    spec = _base_spec(
        subnet_id=outs["PrivateSubnetId"],
        head_node_subnet_id=outs["PublicSubnetId"],
        head_node_security_group_id=outs["HeadNodeSecurityGroupId"],
        compute_security_group_id=outs["ComputeSecurityGroupId"],
        ecr_policy_arn=outs["EcrPullPolicyArn"],
    )
    # moto's CloudFormation skips AWS::EC2::SecurityGroupEgress: preflight must see the gap...
    checks = run_preflight(spec, session=session)
    efa = [c for c in checks if c.check == "EFA rule"]
    assert [c.status for c in efa] == ["FAIL"] and "(outbound)" in efa[0].detail, efa
    assert "authorize-security-group-egress" in efa[0].remedy
    # ...then the rule the template declares is added the way its remedy says.
    g = outs["ComputeSecurityGroupId"]
    session.client("ec2").authorize_security_group_egress(
        GroupId=g, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": g}]}]
    )
    return spec, outs


def _by(checks: list[Check], status: str) -> list[Check]:
    return [c for c in checks if c.status == status]


def test_deployed_foundation_passes(deployed, session):
    spec, _ = deployed
    checks = run_preflight(spec, session=session)
    assert _by(checks, "FAIL") == [], checks
    names = {c.check for c in _by(checks, "PASS")}
    assert names >= {
        "compute type",
        "head node type",
        "subnet",
        "type in AZ",
        "reservation",
        "EFA rule",
        "head<->compute",
        "key pair",
        "bucket",
        "pyxis script",
        "ECR repository",
        "ECR policy",
    }, checks
    assert sum(c.check == "bucket" and c.status == "PASS" for c in checks) == 3
    quota = [c for c in checks if c.check == "vCPU quota"]
    # moto has no EC2 quotas: an honest "could not check", not a fake PASS
    assert [c.status for c in quota] == ["WARN"] and "could not check" in quota[0].detail
    assert "L-417A185B" in quota[0].detail and "need 768 vCPUs" in quota[0].detail


def test_table_fits_80_columns(deployed, session):
    spec, _ = deployed
    checks = run_preflight(spec.model_copy(update={"nodes": 9}), session=session)
    c = Console(width=80, record=True, color_system=None)
    print_checks(checks, c, title="preflight pf")
    text = c.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "FAIL" in text and "-> lower nodes or extend the reservation" in text.replace("\n", " ").replace("  ", " ")


def _aws(spec: ClusterSpec, **changes) -> ClusterSpec:
    data = spec.model_dump(mode="json", exclude_none=True)
    data["aws"] = {k: v for k, v in {**data["aws"], **changes}.items() if v is not None}
    return ClusterSpec.model_validate(data)


def _fails(spec: ClusterSpec, session) -> list[Check]:
    return _by(run_preflight(spec, session=session), "FAIL")


def test_odcr_in_the_wrong_az_is_named(deployed, session):
    spec, _ = deployed
    RESERVATIONS["cr-0aaaaaaaaaaaaaaaa"] = {**RESERVATIONS[CR_ID], "availabilityZone": "us-east-1b"}
    fails = _fails(_aws(spec, capacity_reservation_id="cr-0aaaaaaaaaaaaaaaa"), session)
    assert [c.check for c in fails] == ["reservation"], fails
    assert "is in us-east-1b but the compute subnet" in fails[0].detail and "us-east-1a" in fails[0].detail
    assert "aws.availability_zone: us-east-1b" in fails[0].remedy


def test_odcr_too_small_wrong_type_or_missing(deployed, session):
    spec, _ = deployed
    RESERVATIONS["cr-0bbbbbbbbbbbbbbbb"] = {
        **RESERVATIONS[CR_ID],
        "totalInstanceCount": 2,
        "instanceType": "p5e.48xlarge",
    }
    details = [c.detail for c in _fails(_aws(spec, capacity_reservation_id="cr-0bbbbbbbbbbbbbbbb"), session)]
    assert any("holds 2 instances, the spec needs 4" in d for d in details), details
    assert any("reserves p5e.48xlarge" in d for d in details), details
    fails = _fails(_aws(spec, capacity_reservation_id="cr-0cccccccccccccccc"), session)
    assert [c.check for c in fails] == ["reservation"] and "does not exist" in fails[0].detail


def test_missing_efa_rule_is_named(deployed, session):
    spec, outs = deployed
    ec2 = session.client("ec2")
    sg = ec2.create_security_group(GroupName="no-efa", Description="no self rule", VpcId=outs["VpcId"])["GroupId"]
    head = outs["HeadNodeSecurityGroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=sg, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": head}]}]
    )
    ec2.authorize_security_group_ingress(
        GroupId=head, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg}]}]
    )
    fails = _fails(_aws(spec, compute_security_group_id=sg), session)
    assert [c.check for c in fails] == ["EFA rule"], fails
    assert f"{sg} lacks the EFA all-traffic self rule (inbound and outbound)" in fails[0].detail
    assert f"--group-id {sg} --protocol -1 --source-group {sg}" in fails[0].remedy


def test_missing_bucket_and_script_are_named(deployed, session):
    spec, _ = deployed
    fails = _fails(
        _aws(
            spec,
            buckets=[{"name": "mltrain-missing"}],
            pyxis_script_url="s3://mltrain-boot/not-uploaded.sh",
        ),
        session,
    )
    assert [c.check for c in fails] == ["bucket", "pyxis script"], fails
    assert fails[0].detail == "s3://mltrain-missing (aws.buckets) does not exist"
    assert fails[0].remedy == "aws s3 mb s3://mltrain-missing --region us-east-1"


def test_missing_subnet_sg_repo_and_policy(deployed, session):
    spec, _ = deployed
    checks = run_preflight(
        _aws(
            spec,
            subnet_id="subnet-0deadbeefdeadbeef",
            compute_security_group_id="sg-0deadbeefdeadbeef",
            ecr_repository="nope",
            ssh_key_name="nobody",
            ecr_policy_arn="arn:aws:iam::123456789012:policy/nope",
        ),
        session=session,
    )
    details = [c.detail for c in _by(checks, "FAIL")]
    assert "aws.subnet_id subnet-0deadbeefdeadbeef does not exist in us-east-1" in details, details
    assert "aws.compute_security_group_id sg-0deadbeefdeadbeef does not exist" in details
    assert "nope does not exist in us-east-1" in details
    assert "arn:aws:iam::123456789012:policy/nope does not exist" in details
    assert "aws.ssh_key_name nobody does not exist in us-east-1" in details


def test_stack_outputs_become_spec_keys(deployed, session):
    """`mltrain cluster network SPEC --stack NAME`: the deployed stack's outputs as the aws: keys."""
    from mltrain.cluster.network import network_command, stack_outputs_to_spec

    spec, outs = deployed
    keys = stack_outputs_to_spec("pf-network", REGION, session)
    assert keys["subnet_id"] == outs["PrivateSubnetId"] == spec.aws.subnet_id
    assert keys["head_node_subnet_id"] == outs["PublicSubnetId"]
    assert keys["compute_security_group_id"] == outs["ComputeSecurityGroupId"]
    assert keys["head_node_security_group_id"] == outs["HeadNodeSecurityGroupId"]
    assert keys["ecr_policy_arn"].startswith("arn:aws:iam::")
    c = Console(record=True, width=200, color_system=None)
    p = Path(__file__).resolve().parents[2] / "configs" / "clusters" / "p5-16.yaml"
    text = network_command(p, None, stack="pf-network", console=c, session=session)
    assert yaml.safe_load(text)["aws"]["subnet_id"] == outs["PrivateSubnetId"]
    from mltrain.errors import ClusterError

    with pytest.raises(ClusterError, match="stack nope in us-east-1"):
        stack_outputs_to_spec("nope", REGION, session)


def test_quota_arithmetic_and_families():
    assert quota_family("p5e.48xlarge") == "p" and quota_family("g5.8xlarge") == "g"
    assert quota_family("trn1.32xlarge") == "trn" and quota_family("m5.8xlarge") == "standard"
    [(status, detail, remedy)] = quota_verdict(192, 768, "Running On-Demand P instances", "L-417A185B", "odcr", REGION)
    assert status == "FAIL" and "192 vCPUs < 768 needed" in detail
    assert "--quota-code L-417A185B --desired-value 768" in remedy
    assert quota_verdict(1000, 768, "x", "L-417A185B", "ondemand", REGION)[0][0] == "PASS"
    assert quota_verdict(0, 768, "x", "L-417A185B", "capacity_block", REGION)[0][0] == "WARN"


def _cli(spec: ClusterSpec, tmp_path: Path, moto_url: str, *args: str) -> subprocess.CompletedProcess:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL": moto_url, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "mltrain", "cluster", "preflight", str(p), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_cli_json_and_exit_codes(deployed, moto_url, tmp_path):
    """The command as a user runs it: endpoint from AWS_ENDPOINT_URL, no session injected. Without the
    reservation stand-in, an on-demand spec is used (moto cannot answer reservations)."""
    spec, _ = deployed
    ondemand = _aws(spec, capacity_type="ondemand", capacity_reservation_id=None)
    r = _cli(ondemand, tmp_path, moto_url, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and {c["status"] for c in doc["checks"]} == {"PASS", "WARN"}
    r = _cli(_aws(ondemand, buckets=[{"name": "mltrain-missing"}]), tmp_path, moto_url)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "mltrain-missing" in r.stdout and "FAIL" in r.stdout and "Traceback" not in r.stderr


def test_no_credentials_is_one_line(tmp_path, monkeypatch):
    """Without credentials every call would fail the same way: one line, not a table of failures."""
    from mltrain.errors import ClusterError

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(ClusterError, match="no AWS credentials"):
        run_preflight(_base_spec())
