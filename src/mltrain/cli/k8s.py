"""`mltrain k8s`: a run on Kubernetes/EKS as a Kubeflow PyTorchJob or a Trainer v2 TrainJob."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mltrain.cli.common import FollowOpt, OutOpt, RunYaml, SetOpt, builtin_only, console

app = typer.Typer(help="Run on Kubernetes/EKS: Kubeflow PyTorchJob or Trainer v2 TrainJob.", no_args_is_help=True)

EksOpt = Annotated[
    Path, typer.Option("--cluster", help="EKS spec YAML (kind: eks), e.g. configs/clusters/eks-p5-2.yaml")
]
KindOpt = Annotated[str, typer.Option("--kind", help="pytorchjob (kubeflow.org/v1) or trainjob (Trainer v2)")]
K8sRun = Annotated[str, typer.Argument(help="run config YAML or run name")]


@app.command("render")
def k8s_render(
    run_yaml: RunYaml,
    cluster: EksOpt,
    kind: KindOpt = "pytorchjob",
    out: OutOpt = None,
    set_: SetOpt = None,
) -> None:
    """Render the run as a PyTorchJob, or a TrainJob with its TrainingRuntime."""
    from mltrain.launch.k8s.client import render_command

    builtin_only(run_yaml, "mltrain k8s render", set_)
    render_command(run_yaml, cluster, kind, out, set_ or [], console=console)


@app.command("submit")
def k8s_submit(run_yaml: RunYaml, cluster: EksOpt, kind: KindOpt = "pytorchjob", set_: SetOpt = None) -> None:
    """Create the job in the cluster's namespace (kubeconfig or in-cluster credentials)."""
    from mltrain.launch.k8s.client import submit

    builtin_only(run_yaml, "mltrain k8s submit", set_)
    submit(run_yaml, cluster, kind, set_ or [], console=console)


@app.command("status")
def k8s_status(run: K8sRun, cluster: EksOpt, kind: KindOpt = "pytorchjob") -> None:
    """Job state and pods from the API; step, loss and restarts from the run dir on the shared volume."""
    from mltrain.launch.k8s.client import status

    status(run, cluster, kind, console=console)


@app.command("watch")
def k8s_watch(
    run: K8sRun,
    cluster: EksOpt,
    kind: KindOpt = "pytorchjob",
    interval: Annotated[float, typer.Option("--interval", help="seconds between polls", min=1)] = 30.0,
    count: Annotated[Optional[int], typer.Option("--count", help="stop after this many polls", min=1)] = None,
) -> None:
    """Poll the job's pods and record each pod or node failure in restarts.jsonl until the job ends."""
    from mltrain.launch.k8s.client import watch

    watch(run, cluster, kind, interval, count, console=console)


@app.command("logs")
def k8s_logs(run: K8sRun, cluster: EksOpt, kind: KindOpt = "pytorchjob", follow: FollowOpt = False) -> None:
    """Print the rank-0 pod's log."""
    from mltrain.launch.k8s.client import logs

    logs(run, cluster, kind, follow, console=console)


@app.command("cancel")
def k8s_cancel(run: K8sRun, cluster: EksOpt, kind: KindOpt = "pytorchjob") -> None:
    """Delete the job: pods get SIGTERM, the trainer checkpoints; no restart."""
    from mltrain.launch.k8s.client import cancel

    cancel(run, cluster, kind, console=console)
