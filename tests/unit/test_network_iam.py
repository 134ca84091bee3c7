"""IAM in the rendered ParallelCluster config: S3Access per named bucket (read unless `write`), the
network stack's ECR pull policy by ARN, our security groups; no broad AWS managed policies. Every
variant is checked against the real aws-parallelcluster 3.16 schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pcluster.schemas.cluster_schema", reason="aws-parallelcluster not installed (make venv)")

from pydantic import ValidationError  # noqa: E402

from mltrain.cluster.pcluster import render  # noqa: E402
from mltrain.cluster.pcluster_validate import validate  # noqa: E402
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec  # noqa: E402
from mltrain.errors import ClusterError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARN = "arn:aws:iam::123456789012:policy/pf-network-EcrPullPolicy-ABC"


def _spec(**aws) -> ClusterSpec:
    base = {"region": "us-east-1", "subnet_id": "subnet-0123456789abcdef0", "fsx": None}
    base.update(aws)
    return ClusterSpec.model_validate(
        {"name": "t", "instance_type": "p5.48xlarge", "nodes": 2, "gpus_per_node": 8, "aws": base}
    )


def test_p5e_seed_gets_scoped_access_only():
    cfg = render(load_cluster_spec(ROOT / "configs" / "clusters" / "p5e-80.yaml"))
    head, queue = cfg["HeadNode"], cfg["Scheduling"]["SlurmQueues"][0]
    assert head["Iam"]["S3Access"] == [{"BucketName": "my-training-bucket", "EnableWriteAccess": True}]
    assert queue["Iam"]["S3Access"] == [{"BucketName": "my-training-bucket", "EnableWriteAccess": True}]
    assert head["Iam"]["AdditionalIamPolicies"] == queue["Iam"]["AdditionalIamPolicies"]
    assert head["Iam"]["AdditionalIamPolicies"][0]["Policy"].endswith(":policy/mltrain-p5e-80-network-EcrPullPolicy")
    assert head["Networking"]["SecurityGroups"] == ["sg-0a1b2c3d4e5f60718"]
    assert queue["Networking"]["SecurityGroups"] == ["sg-0f1e2d3c4b5a69788"]
    assert "arn:aws:iam::aws:policy/" not in json.dumps(cfg)  # no AWS managed (broad) policies
    assert validate(cfg) == []


def test_buckets_read_or_write_on_head_and_compute():
    cfg = render(
        _spec(buckets=[{"name": "data-ro"}, {"name": "ckpt-rw", "write": True}], ecr_repository="m", ecr_policy_arn=ARN)
    )
    want = [{"BucketName": "data-ro"}, {"BucketName": "ckpt-rw", "EnableWriteAccess": True}]
    assert cfg["HeadNode"]["Iam"]["S3Access"] == want
    assert cfg["Scheduling"]["SlurmQueues"][0]["Iam"]["S3Access"] == want
    assert cfg["Scheduling"]["SlurmQueues"][0]["Iam"]["AdditionalIamPolicies"] == [{"Policy": ARN}]
    assert validate(cfg) == []


def test_no_buckets_no_ecr_no_iam_section():
    cfg = render(_spec())
    assert "Iam" not in cfg["HeadNode"] and "Iam" not in cfg["Scheduling"]["SlurmQueues"][0]
    assert "SecurityGroups" not in cfg["HeadNode"]["Networking"]
    assert validate(cfg) == []


@pytest.mark.parametrize(
    "aws, match",
    [
        ({"ecr_repository": "mltrain"}, "needs aws.ecr_policy_arn"),
        ({"compute_security_group_id": "sg-0123"}, "set both aws.head_node_security_group_id"),
    ],
)
def test_incomplete_foundation_is_refused(aws, match):
    with pytest.raises(ClusterError, match=match):
        render(_spec(**aws))


@pytest.mark.parametrize(
    "aws",
    [
        {"buckets": [{"name": "Bad_Bucket"}]},
        {"ecr_policy_arn": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"},
        {"head_node_security_group_id": "default"},
    ],
)
def test_bad_values_fail_validation(aws):
    with pytest.raises(ValidationError):
        _spec(**aws)
