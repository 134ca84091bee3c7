"""Kubernetes (EKS) launcher: the same run config as a Kubeflow PyTorchJob or Trainer v2 TrainJob.

manifests.py renders, policy.py maps exit reasons to restarts, entrypoint.py runs inside each pod,
client.py talks to the API server (the `kubernetes` package is an optional extra, imported lazily).
"""
