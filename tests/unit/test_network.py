"""`mltrain cluster network`: the CloudFormation template rendered from the cluster spec, linted by the
real cfn-lint (every shipped spec with an aws: section plus edge cases, all in one cfn-lint call)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mltrain.cluster.network import dump_template, render_network, subnet_cidrs
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(p for p in (ROOT / "configs" / "clusters").glob("*.yaml") if "aws" in yaml.safe_load(p.read_text()))
CFN_LINT = shutil.which("cfn-lint") or str(Path(sys.executable).with_name("cfn-lint"))


def _spec(**aws) -> ClusterSpec:
    base = {"region": "us-east-1", "subnet_id": "subnet-0123456789abcdef0", "fsx": None}
    base.update(aws)
    return ClusterSpec.model_validate(
        {"name": "t", "instance_type": "p5.48xlarge", "nodes": 4, "gpus_per_node": 8, "aws": base}
    )


EDGE = {
    "no-az-no-ssh": _spec(),
    "ssh-monitoring-ecr": _spec(
        availability_zone="us-east-1d", ssh_cidr="198.51.100.7/32", monitoring=True, ecr_repository="team/mltrain"
    ),
    "monitoring-without-ssh": _spec(monitoring=True, availability_zone="us-east-1a"),
    "small-vpc": _spec(vpc_cidr="192.168.10.0/26", ssh_cidr="0.0.0.0/0", tags={"team": "ml"}),
}


def _templates() -> dict[str, str]:
    out = {p.stem: dump_template(render_network(load_cluster_spec(p), availability_zone=None)) for p in SPECS}
    out.update({k: dump_template(render_network(s)) for k, s in EDGE.items()})
    return out


def _broken() -> str:
    """A template with a dangling Ref: proves the lint is not vacuous (linted in the same call)."""
    t = render_network(EDGE["ssh-monitoring-ecr"])
    t["Resources"]["PrivateSubnet"]["Properties"]["VpcId"] = {"Ref": "NoSuchVpc"}
    return dump_template(t)


@pytest.fixture(scope="module")
def lint(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """One cfn-lint run over every template (it is slow to start)."""
    d = tmp_path_factory.mktemp("cfn")
    texts = _templates()
    for name, text in {**texts, "zz-broken": _broken()}.items():
        (d / f"{name}.yaml").write_text(text)
    r = subprocess.run(
        [CFN_LINT, "--format", "parseable", *sorted(str(p) for p in d.glob("*.yaml"))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode & 2, "the broken template must fail the lint"
    return r.stdout + r.stderr, texts


def test_cfn_lint_is_clean_on_every_template(lint):
    out, texts = lint
    assert set(texts) >= {"p5e-80", "p5-16", "g5-8xl-2", "small-vpc"}
    findings = [line for line in out.splitlines() if line.strip()]
    # no errors, and no warnings either (e.g. W1101 YAML aliases), on every real template
    assert all("zz-broken.yaml" in line for line in findings), out
    assert any("NoSuchVpc" in line for line in findings), out


def _rules(t: dict, rtype: str) -> list[dict]:
    return [r["Properties"] for r in t["Resources"].values() if r["Type"] == f"AWS::EC2::SecurityGroup{rtype}"]


def test_efa_self_rule_in_and_out_and_head_compute():
    t = render_network(load_cluster_spec(ROOT / "configs" / "clusters" / "p5e-80.yaml"))
    comp = {"Fn::GetAtt": ["ComputeSecurityGroup", "GroupId"]}
    head = {"Fn::GetAtt": ["HeadNodeSecurityGroup", "GroupId"]}
    ing, eg = _rules(t, "Ingress"), _rules(t, "Egress")
    assert {"GroupId": comp, "IpProtocol": "-1", "SourceSecurityGroupId": comp} in [
        {k: r[k] for k in ("GroupId", "IpProtocol", "SourceSecurityGroupId")} for r in ing
    ]
    assert [(r["GroupId"], r["IpProtocol"], r["DestinationSecurityGroupId"]) for r in eg] == [(comp, "-1", comp)]
    pairs = {(r["GroupId"]["Fn::GetAtt"][0], r["SourceSecurityGroupId"]["Fn::GetAtt"][0]) for r in ing}
    assert pairs == {
        ("ComputeSecurityGroup", "ComputeSecurityGroup"),
        ("ComputeSecurityGroup", "HeadNodeSecurityGroup"),
        ("HeadNodeSecurityGroup", "ComputeSecurityGroup"),
    }
    head_in = t["Resources"]["HeadNodeSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["CidrIp"]) for r in head_in] == [(22, "203.0.113.0/24"), (3000, "203.0.113.0/24")]
    assert head not in [r["SourceSecurityGroupId"] for r in ing if r["GroupId"] == head]


def test_subnets_in_the_capacity_az_with_nat_igw_and_s3_endpoint():
    t = render_network(load_cluster_spec(ROOT / "configs" / "clusters" / "p5e-80.yaml"))
    res = t["Resources"]
    assert t["Parameters"]["AvailabilityZone"]["Default"] == "ap-southeast-3a"
    assert res["PrivateSubnet"]["Properties"]["AvailabilityZone"] == {"Ref": "AvailabilityZone"}
    assert res["PublicSubnet"]["Properties"]["MapPublicIpOnLaunch"] is True
    assert res["PrivateDefaultRoute"]["Properties"]["NatGatewayId"] == {"Ref": "NatGateway"}
    assert res["PublicDefaultRoute"]["Properties"]["GatewayId"] == {"Ref": "InternetGateway"}
    assert res["NatGateway"]["Properties"]["SubnetId"] == {"Ref": "PublicSubnet"}
    ep = res["S3GatewayEndpoint"]["Properties"]
    assert ep["VpcEndpointType"] == "Gateway" and {"Ref": "PrivateRouteTable"} in ep["RouteTableIds"]
    # an explicit AZ (e.g. looked up from the ODCR) wins over the spec's
    t2 = render_network(load_cluster_spec(ROOT / "configs" / "clusters" / "p5e-80.yaml"), "ap-southeast-3c")
    assert t2["Parameters"]["AvailabilityZone"]["Default"] == "ap-southeast-3c"
    # no AZ known: the region's first, via GetAZs (no hard-coded guess)
    t3 = render_network(EDGE["no-az-no-ssh"])
    assert "Parameters" not in t3
    assert t3["Resources"]["PrivateSubnet"]["Properties"]["AvailabilityZone"] == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}


def test_outputs_map_to_spec_keys_and_ecr_policy_is_scoped():
    t = render_network(EDGE["ssh-monitoring-ecr"])
    assert set(t["Outputs"]) >= {
        "PrivateSubnetId",
        "PublicSubnetId",
        "HeadNodeSecurityGroupId",
        "ComputeSecurityGroupId",
        "EcrPullPolicyArn",
    }
    stmts = t["Resources"]["EcrPullPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert stmts[0]["Action"] == "ecr:GetAuthorizationToken" and stmts[0]["Resource"] == "*"
    assert "repository/team/mltrain" in stmts[1]["Resource"]["Fn::Sub"]
    assert not any(a.endswith("*") or "Put" in a or "Delete" in a for a in stmts[1]["Action"])
    assert "EcrPullPolicy" not in render_network(_spec())["Resources"]


def test_ssh_and_grafana_only_when_asked():
    assert "SecurityGroupIngress" not in render_network(_spec())["Resources"]["HeadNodeSecurityGroup"]["Properties"]
    no_ssh = render_network(EDGE["monitoring-without-ssh"])["Resources"]["HeadNodeSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in no_ssh  # Grafana is opened to ssh_cidr only
    head_in = render_network(_spec(ssh_cidr="10.1.0.0/16"))["Resources"]["HeadNodeSecurityGroup"]["Properties"]
    assert [r["FromPort"] for r in head_in["SecurityGroupIngress"]] == [22]


def test_subnet_cidrs():
    assert subnet_cidrs("10.0.0.0/16") == ("10.0.0.0/17", "10.0.128.0/24")
    assert subnet_cidrs("192.168.10.0/26") == ("192.168.10.0/27", "192.168.10.32/27")
    with pytest.raises(ClusterError, match="too small"):
        subnet_cidrs("10.0.0.0/28")


@pytest.mark.parametrize(
    "aws, match",
    [
        ({"ssh_cidr": "10.0.0.1/8"}, "ssh_cidr"),
        ({"vpc_cidr": "not-a-cidr"}, "vpc_cidr"),
        ({"availability_zone": "us-east-1"}, "availability_zone"),
    ],
)
def test_bad_spec_values_are_one_line(tmp_path, aws, match):
    spec = {
        "name": "t",
        "instance_type": "p5.48xlarge",
        "nodes": 1,
        "gpus_per_node": 8,
        "aws": {"region": "us-east-1", "subnet_id": "subnet-1", **aws},
    }
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(spec))
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "cluster", "network", str(p)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_writes_the_template(tmp_path):
    out = tmp_path / "network.yaml"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mltrain",
            "cluster",
            "network",
            str(ROOT / "configs/clusters/p5-16.yaml"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "compute subnet in us-east-1a" in r.stdout and "PrivateSubnetId -> aws.subnet_id" in r.stdout
    assert yaml.safe_load(out.read_text())["Resources"]["Vpc"]["Type"] == "AWS::EC2::VPC"
    assert [p.name for p in tmp_path.iterdir()] == ["network.yaml"]


def test_odcr_without_az_and_without_aws_is_one_line(tmp_path, monkeypatch):
    """An ODCR spec with no aws.availability_zone needs the reservation's AZ; without AWS access the
    command says which key to set (the lookup is refused: no endpoint listens on port 9)."""
    from mltrain.cluster.network import network_command

    spec = yaml.safe_load((ROOT / "configs/clusters/p5e-80.yaml").read_text())
    del spec["aws"]["availability_zone"]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(ClusterError, match="set aws.availability_zone"):
        network_command(p, tmp_path / "n.yaml")
    assert not (tmp_path / "n.yaml").exists()
