"""The AWS foundation of a cluster as one CloudFormation template, rendered from the cluster spec.

Done by hand, the network is where clusters fail to come up: EFA needs a security group that allows
all traffic to and from itself (in AND out), P5 capacity lives in one Availability Zone and the
compute subnet must be in it, private nodes need a NAT gateway to reach the internet. The template
puts the compute nodes in a private subnet in the capacity's AZ, the head node in a public subnet
of the same AZ, and outputs the ids the cluster spec's `aws:` section takes.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from mltrain.cluster.pcluster import _NoAliasDumper  # repeat shared dicts: CloudFormation rejects aliases
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.errors import ClusterError
from mltrain.fsutil import atomic_write

# Output name -> the aws: key of the cluster spec that takes its value.
OUTPUT_TO_SPEC = {
    "PrivateSubnetId": "subnet_id",
    "PublicSubnetId": "head_node_subnet_id",
    "HeadNodeSecurityGroupId": "head_node_security_group_id",
    "ComputeSecurityGroupId": "compute_security_group_id",
    "EcrPullPolicyArn": "ecr_policy_arn",
    "AvailabilityZone": "availability_zone",
}
ECR_PULL_ACTIONS = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
ALL = "-1"  # IpProtocol: all traffic


def subnet_cidrs(vpc_cidr: str) -> tuple[str, str]:
    """(private, public): the first half of the VPC for the compute nodes (large fleets need many
    addresses: each EFA card of a p5 takes one), a small block after it for the head node and NAT."""
    vpc = ipaddress.IPv4Network(vpc_cidr)
    if vpc.prefixlen > 26:
        raise ClusterError(f"aws.vpc_cidr {vpc_cidr}: too small, use /26 or larger (e.g. 10.0.0.0/16)")
    private, rest = vpc.subnets(new_prefix=vpc.prefixlen + 1)
    public = next(rest.subnets(new_prefix=max(rest.prefixlen, 24)))
    return str(private), str(public)


def _tags(spec: ClusterSpec, name: str) -> list[dict[str, str]]:
    assert spec.aws is not None
    tags = [{"Key": "Name", "Value": f"{spec.name}-{name}"}, {"Key": "mltrain:cluster", "Value": spec.name}]
    return tags + [{"Key": k, "Value": v} for k, v in spec.aws.tags.items()]


def _ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def _subnet(spec: ClusterSpec, side: str, cidr: str, az: Any) -> dict[str, Any]:
    """The `side` ("public" or "private") subnet; only the public one gives its instances public IPs."""
    return {
        "Type": "AWS::EC2::Subnet",
        "Properties": {
            "VpcId": _ref("Vpc"),
            "CidrBlock": cidr,
            "AvailabilityZone": az,
            "MapPublicIpOnLaunch": side == "public",
            "Tags": _tags(spec, side),
        },
    }


def _add_routes(
    r: dict[str, Any], spec: ClusterSpec, side: str, gateway: dict[str, Any], depends_on: str | None = None
) -> None:
    """The `side` subnet's route table, its default route through `gateway` and the subnet's association."""
    prefix = side.capitalize()
    table = f"{prefix}RouteTable"
    r[table] = {"Type": "AWS::EC2::RouteTable", "Properties": {"VpcId": _ref("Vpc"), "Tags": _tags(spec, side)}}
    route: dict[str, Any] = {"Type": "AWS::EC2::Route"}
    if depends_on:
        route["DependsOn"] = depends_on
    route["Properties"] = {"RouteTableId": _ref(table), "DestinationCidrBlock": "0.0.0.0/0", **gateway}
    r[f"{prefix}DefaultRoute"] = route
    r[f"{prefix}SubnetRoutes"] = {
        "Type": "AWS::EC2::SubnetRouteTableAssociation",
        "Properties": {"SubnetId": _ref(f"{prefix}Subnet"), "RouteTableId": _ref(table)},
    }


def render_network(spec: ClusterSpec, availability_zone: str | None = None) -> dict[str, Any]:
    """The CloudFormation template (a dict) for `spec`'s VPC, subnets, gateways, security groups and
    ECR pull policy. `availability_zone` overrides aws.availability_zone (e.g. the ODCR's, looked up)."""
    aws = spec.aws
    if aws is None:
        raise ClusterError(f"cluster {spec.name}: no aws: section, nothing to render for the network")
    az = availability_zone or aws.availability_zone
    private_cidr, public_cidr = subnet_cidrs(aws.vpc_cidr)
    params: dict[str, Any] = {}
    if az:
        # A parameter (not a literal) so the same template can be re-pointed at another AZ at deploy time.
        params["AvailabilityZone"] = {
            "Type": "AWS::EC2::AvailabilityZone::Name",
            "Default": az,
            "Description": "AZ of the compute capacity (the capacity reservation's)",
        }
        az_value: Any = _ref("AvailabilityZone")
    else:
        az_value = {"Fn::Select": [0, {"Fn::GetAZs": ""}]}
    r: dict[str, Any] = {}
    r["Vpc"] = {
        "Type": "AWS::EC2::VPC",
        "Properties": {
            "CidrBlock": aws.vpc_cidr,
            "EnableDnsSupport": True,  # ParallelCluster requires both
            "EnableDnsHostnames": True,
            "Tags": _tags(spec, "vpc"),
        },
    }
    r["InternetGateway"] = {"Type": "AWS::EC2::InternetGateway", "Properties": {"Tags": _tags(spec, "igw")}}
    r["InternetGatewayAttachment"] = {
        "Type": "AWS::EC2::VPCGatewayAttachment",
        "Properties": {"VpcId": _ref("Vpc"), "InternetGatewayId": _ref("InternetGateway")},
    }
    r["PublicSubnet"] = _subnet(spec, "public", public_cidr, az_value)
    r["PrivateSubnet"] = _subnet(spec, "private", private_cidr, az_value)
    _add_routes(r, spec, "public", {"GatewayId": _ref("InternetGateway")}, depends_on="InternetGatewayAttachment")
    r["NatEip"] = {
        "Type": "AWS::EC2::EIP",
        "DependsOn": "InternetGatewayAttachment",
        "Properties": {"Domain": "vpc", "Tags": _tags(spec, "nat")},
    }
    r["NatGateway"] = {
        "Type": "AWS::EC2::NatGateway",
        "Properties": {
            "AllocationId": {"Fn::GetAtt": ["NatEip", "AllocationId"]},
            "SubnetId": _ref("PublicSubnet"),
            "Tags": _tags(spec, "nat"),
        },
    }
    _add_routes(r, spec, "private", {"NatGatewayId": _ref("NatGateway")})
    # S3 traffic (FSx data repository, checkpoints, images) bypasses the NAT gateway: no per-GB NAT fee.
    r["S3GatewayEndpoint"] = {
        "Type": "AWS::EC2::VPCEndpoint",
        "Properties": {
            "VpcId": _ref("Vpc"),
            "ServiceName": {"Fn::Sub": "com.amazonaws.${AWS::Region}.s3"},
            "VpcEndpointType": "Gateway",
            "RouteTableIds": [_ref("PrivateRouteTable"), _ref("PublicRouteTable")],
        },
    }
    head_in: list[dict[str, Any]] = []
    if aws.ssh_cidr:
        head_in.append(
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": aws.ssh_cidr, "Description": "SSH"}
        )
        if aws.monitoring:
            head_in.append(
                {
                    "IpProtocol": "tcp",
                    "FromPort": aws.grafana_port,
                    "ToPort": aws.grafana_port,
                    "CidrIp": aws.ssh_cidr,
                    "Description": "Grafana",
                }
            )
    all_out = [{"IpProtocol": ALL, "CidrIp": "0.0.0.0/0", "Description": "all outbound"}]
    head_props: dict[str, Any] = {
        "GroupDescription": f"mltrain {spec.name} head node",
        "VpcId": _ref("Vpc"),
        "SecurityGroupEgress": all_out,
        "Tags": _tags(spec, "head"),
    }
    if head_in:
        head_props["SecurityGroupIngress"] = head_in
    r["HeadNodeSecurityGroup"] = {"Type": "AWS::EC2::SecurityGroup", "Properties": head_props}
    r["ComputeSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": f"mltrain {spec.name} compute nodes (EFA: all traffic within the group)",
            "VpcId": _ref("Vpc"),
            "SecurityGroupEgress": all_out,
            "Tags": _tags(spec, "compute"),
        },
    }
    # Rules that reference a group are separate resources: inline they would be circular.
    for name, rtype, group, peer, desc in (
        ("ComputeEfaIngress", "Ingress", "ComputeSecurityGroup", "ComputeSecurityGroup", "EFA: all from itself"),
        ("ComputeEfaEgress", "Egress", "ComputeSecurityGroup", "ComputeSecurityGroup", "EFA: all to itself"),
        ("ComputeFromHeadIngress", "Ingress", "ComputeSecurityGroup", "HeadNodeSecurityGroup", "all from head node"),
        ("HeadFromComputeIngress", "Ingress", "HeadNodeSecurityGroup", "ComputeSecurityGroup", "all from compute"),
    ):
        peer_key = "SourceSecurityGroupId" if rtype == "Ingress" else "DestinationSecurityGroupId"
        r[name] = {
            "Type": f"AWS::EC2::SecurityGroup{rtype}",
            "Properties": {
                "GroupId": {"Fn::GetAtt": [group, "GroupId"]},
                "IpProtocol": ALL,
                peer_key: {"Fn::GetAtt": [peer, "GroupId"]},
                "Description": desc,
            },
        }
    outputs: dict[str, Any] = {
        "VpcId": {"Description": "the cluster VPC", "Value": _ref("Vpc")},
        "PublicSubnetId": {"Description": "-> aws.head_node_subnet_id", "Value": _ref("PublicSubnet")},
        "PrivateSubnetId": {"Description": "-> aws.subnet_id (compute nodes)", "Value": _ref("PrivateSubnet")},
        "AvailabilityZone": {
            "Description": "-> aws.availability_zone",
            "Value": {"Fn::GetAtt": ["PrivateSubnet", "AvailabilityZone"]},
        },
        "HeadNodeSecurityGroupId": {
            "Description": "-> aws.head_node_security_group_id",
            "Value": {"Fn::GetAtt": ["HeadNodeSecurityGroup", "GroupId"]},
        },
        "ComputeSecurityGroupId": {
            "Description": "-> aws.compute_security_group_id",
            "Value": {"Fn::GetAtt": ["ComputeSecurityGroup", "GroupId"]},
        },
    }
    if aws.ecr_repository:
        repo_arn = {
            "Fn::Sub": f"arn:${{AWS::Partition}}:ecr:${{AWS::Region}}:${{AWS::AccountId}}:repository/{aws.ecr_repository}"
        }
        r["EcrPullPolicy"] = {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "Description": f"mltrain {spec.name}: pull images from ECR repository {aws.ecr_repository} only",
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        # GetAuthorizationToken has no resource-level permissions: "*" is the only form.
                        {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
                        {"Sid": "EcrPull", "Effect": "Allow", "Action": ECR_PULL_ACTIONS, "Resource": repo_arn},
                    ],
                },
            },
        }
        outputs["EcrPullPolicyArn"] = {"Description": "-> aws.ecr_policy_arn", "Value": _ref("EcrPullPolicy")}
    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"mltrain cluster {spec.name}: VPC, subnets, NAT, S3 endpoint, security groups"
        + (", ECR pull policy" if aws.ecr_repository else ""),
    }
    if params:
        template["Parameters"] = params
    template["Resources"] = r
    template["Outputs"] = outputs
    return template


def odcr_availability_zone(spec: ClusterSpec, session: Any = None) -> str | None:
    """The AZ of the spec's capacity reservation, looked up with boto3 (read-only); None without one."""
    aws = spec.aws
    if aws is None or not aws.capacity_reservation_id:
        return None
    from mltrain.cluster.preflight import aws_session, describe_reservation

    try:
        cr = describe_reservation(aws_session(session, aws.region).client("ec2"), aws.capacity_reservation_id)
    except Exception as e:
        raise ClusterError(
            f"cluster {spec.name}: cannot look up the AZ of {aws.capacity_reservation_id} ({type(e).__name__}: "
            f"{e}); set aws.availability_zone in the cluster spec"
        ) from None
    return cr.get("AvailabilityZone")


def stack_outputs_to_spec(stack_name: str, region: str, session: Any = None) -> dict[str, str]:
    """The aws: keys of the cluster spec from a deployed network stack's outputs (read-only)."""
    import re

    from mltrain.cluster.preflight import aws_session

    cf = aws_session(session, region).client("cloudformation", region_name=region)
    try:
        stack = cf.describe_stacks(StackName=stack_name)["Stacks"][0]
    except Exception as e:
        raise ClusterError(
            f"stack {stack_name} in {region}: {getattr(e, 'response', {}).get('Error', {}).get('Message') or e}"
        ) from None
    if not str(stack.get("StackStatus", "")).endswith("_COMPLETE") or "ROLLBACK" in stack.get("StackStatus", ""):
        raise ClusterError(f"stack {stack_name} is {stack.get('StackStatus')}; wait for CREATE_COMPLETE")
    outs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}
    keys = {OUTPUT_TO_SPEC[k]: v for k, v in outs.items() if k in OUTPUT_TO_SPEC}
    if "availability_zone" in keys and not re.match(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$", keys["availability_zone"]):
        del keys["availability_zone"]  # not an AZ name (some emulators do not resolve GetAtt in outputs)
    return keys


def dump_template(template: dict[str, Any], source: str | None = None) -> str:
    head = "# CloudFormation template rendered by `mltrain cluster network`"
    head += f" from {source}" if source else ""
    head += "\n# Deploy: aws cloudformation deploy --template-file THIS --stack-name NAME; then copy the\n"
    head += "# Outputs into the cluster spec's aws: section (the Description of each says which key).\n"
    return head + yaml.dump(template, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=120)


def network_command(
    cluster_yaml: Path,
    out: Path | None,
    *,
    lookup_az: bool = True,
    stack: str | None = None,
    console: Console | None = None,
    session: Any = None,
) -> str:
    """`mltrain cluster network`: write (or print) the template; with an ODCR and no
    aws.availability_zone, look the reservation's AZ up first. With `stack`: print the aws: keys
    from that deployed stack's outputs instead, ready to paste into the cluster spec."""
    console = console or Console()
    spec = load_cluster_spec(cluster_yaml)
    if stack:
        if spec.aws is None:
            raise ClusterError(f"cluster {spec.name}: no aws: section")
        keys = stack_outputs_to_spec(stack, spec.aws.region, session)
        text = f"# from stack {stack}: paste under aws: in {cluster_yaml}\n" + yaml.safe_dump(
            {"aws": keys}, sort_keys=False
        )
        console.print(text, end="", highlight=False, markup=False, soft_wrap=True)
        return text
    az = None
    if spec.aws is not None and not spec.aws.availability_zone and lookup_az:
        az = odcr_availability_zone(spec)
    template = render_network(spec, availability_zone=az)
    text = dump_template(template, str(cluster_yaml))
    if out is None:
        console.print(text, end="", highlight=False, markup=False, soft_wrap=True)
        return text
    atomic_write(out, text)
    outs = ", ".join(f"{k} -> aws.{v}" for k, v in OUTPUT_TO_SPEC.items() if k in template["Outputs"])
    where = (template.get("Parameters") or {}).get("AvailabilityZone", {}).get("Default", "the region's first AZ")
    console.print(f"wrote {out} (compute subnet in {where}); stack outputs: {outs}", highlight=False, soft_wrap=True)
    return text
