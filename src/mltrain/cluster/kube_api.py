"""A Kubernetes API client from the in-cluster service account, else the kubeconfig: the one loader both the
cluster commands (applying the workloads after eksctl) and the job commands (`mltrain k8s`) use."""

from __future__ import annotations

from typing import Any

from mltrain.errors import MltrainError


def kube_api_client(error: type[MltrainError]) -> Any:
    """An ApiClient; a missing client package or missing credentials raise `error` with one line."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise error("the kubernetes client is not installed: pip install 'mltrain[k8s]'") from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise error(f"no Kubernetes credentials (in-cluster or kubeconfig): {e}") from None
    return client.ApiClient()
