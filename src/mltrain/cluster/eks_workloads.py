"""What an EKS training cluster runs besides the jobs, rendered from the EKS spec and the fleet plan: Kueue
queues and priorities, the FSx for Lustre storage class and claim, scrape targets for the Prometheus operator,
the training operator's install reference, NCCL topology."""

from __future__ import annotations

from mltrain.config import StrictModel


class EksWorkloadsSpec(StrictModel):
    """`workloads:` of an EKS spec: the cluster-wide objects `mltrain cluster render --kind eks` writes."""
