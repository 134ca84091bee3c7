"""The EKS cluster under the training jobs, from the same EKS spec: an eksctl ClusterConfig (VPC, node groups,
EFA, placement group, capacity reservation, IAM, addons) and its offline checks."""

from __future__ import annotations

from mltrain.config import StrictModel


class EksClusterSpec(StrictModel):
    """`cluster:` of an EKS spec: what eksctl needs to create the cluster the jobs run on."""
