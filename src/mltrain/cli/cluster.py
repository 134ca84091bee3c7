"""`mltrain cluster`: a ParallelCluster 3 config rendered and validated offline from a cluster spec,
its network template, read-only AWS checks, and create/update/delete/status through the `pcluster` CLI;
with `--kind eks` (or a spec of `kind: eks`), an eksctl ClusterConfig and `eksctl` instead."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mltrain.cli.common import OutOpt, console

app = typer.Typer(
    help="Render, validate, check and create AWS ParallelCluster clusters (or EKS clusters with --kind eks).",
    no_args_is_help=True,
)

ClusterYaml = Annotated[Path, typer.Argument(help="cluster spec YAML, e.g. configs/clusters/p5e-80.yaml")]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--config", help="where to write the rendered config; default ./<name>.pcluster.yaml (not on --dry-run)"
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="print the exact commands; call nothing, write nothing unless --config")
]
SkipPreflightOpt = Annotated[bool, typer.Option("--skip-preflight", help="do not run the AWS checks first")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="follow describe-cluster until done")]
PollOpt = Annotated[float, typer.Option("--poll-s", help="seconds between describe-cluster calls")]
TimeoutOpt = Annotated[float, typer.Option("--timeout-min", help="give up waiting after this many minutes")]
KindOpt = Annotated[
    Optional[str],
    typer.Option(
        "--kind", help="pcluster | eks; default: eks for a spec with `kind: eks`, else pcluster", show_default=False
    ),
]
EksDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "-o", "--out-dir", help="--kind eks: where to write cluster.yaml and the workloads; default ./<name>-eks"
    ),
]


def _kind(kind: str | None, cluster_yaml: Path) -> str:
    """The path to take: the one named, else what the spec says it is."""
    from mltrain.errors import ClusterError

    if kind is None:
        from mltrain.cluster.eks_create import spec_kind

        return spec_kind(cluster_yaml)
    if kind not in ("pcluster", "eks"):
        raise ClusterError(f"--kind {kind}: expected pcluster or eks")
    return kind


@app.command("render")
def cluster_render(
    cluster_yaml: Annotated[Path, typer.Argument(help="cluster spec YAML")],
    out: Annotated[
        Optional[Path],
        typer.Option("-o", "--out", help="write here instead of stdout (--kind eks: a directory)"),
    ] = None,
    kind: KindOpt = None,
) -> None:
    """Render a ParallelCluster 3 config from a cluster spec (--kind eks: an eksctl ClusterConfig and the
    cluster's workloads)."""
    if _kind(kind, cluster_yaml) == "eks":
        from mltrain.cluster.eks_create import render_command as eks_render

        eks_render(cluster_yaml, out, console=console)
        return
    from mltrain.cluster.pcluster import render_command

    render_command(cluster_yaml, out, console=console)


@app.command("validate")
def cluster_validate(
    pcluster_yaml: Annotated[Path, typer.Argument(help="ParallelCluster 3 config YAML (or an eksctl ClusterConfig)")],
) -> None:
    """Validate a ParallelCluster config (or an eksctl ClusterConfig) offline: the schema plus semantic checks."""
    from mltrain.cluster.eks_create import is_eks_file

    eks, data = is_eks_file(pcluster_yaml)
    if eks:
        from mltrain.cluster.eks_create import validate_command as eks_validate

        raise typer.Exit(eks_validate(pcluster_yaml, data, console=console))
    from mltrain.cluster.pcluster import validate_command

    raise typer.Exit(validate_command(pcluster_yaml, console=console))


@app.command("network")
def cluster_network(
    cluster_yaml: ClusterYaml,
    out: OutOpt = None,
    stack: Annotated[
        Optional[str], typer.Option("--stack", help="print the aws: keys from this deployed stack's outputs instead")
    ] = None,
) -> None:
    """Render the CloudFormation template of the cluster's VPC, subnets, NAT, S3 endpoint, security groups."""
    from mltrain.cluster.network import network_command

    network_command(cluster_yaml, out, stack=stack, console=console)


@app.command("preflight")
def cluster_preflight(
    cluster_yaml: ClusterYaml,
    json_out: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
) -> None:
    """Read-only AWS checks before creating: instance type, AZ, reservation, subnets, EFA rule, buckets, quota."""
    from mltrain.cluster.preflight import preflight_command

    raise typer.Exit(preflight_command(cluster_yaml, json_out=json_out, console=console))


def _cluster_action(
    action: str,
    cluster_yaml: Path,
    config: Optional[Path],
    dry_run: bool,
    skip_preflight: bool = False,
    wait: bool = True,
    poll_s: float = 30.0,
    timeout_min: float = 120.0,
    kind: str | None = None,
    out_dir: Path | None = None,
) -> None:
    if _kind(kind, cluster_yaml) == "eks":
        from mltrain.cluster.eks_create import eks_action

        eks_action(action, cluster_yaml, out_dir=out_dir, dry_run=dry_run, wait=wait, console=console)
        return
    from mltrain.cluster.create import cluster_action

    cluster_action(
        action,
        cluster_yaml,
        config_path=config,
        dry_run=dry_run,
        preflight=not skip_preflight,
        wait=wait,
        poll_s=poll_s,
        timeout_min=timeout_min,
        console=console,
    )


def _render_and_apply(action: str) -> None:
    """Register `mltrain cluster <action>` for create and update: the same options, one `pcluster` verb apart."""

    def command(
        cluster_yaml: ClusterYaml,
        config: ConfigOpt = None,
        dry_run: DryRunOpt = False,
        skip_preflight: SkipPreflightOpt = False,
        wait: WaitOpt = True,
        poll_s: PollOpt = 30.0,
        timeout_min: TimeoutOpt = 120.0,
        kind: KindOpt = None,
        out_dir: EksDirOpt = None,
    ) -> None:
        _cluster_action(action, cluster_yaml, config, dry_run, skip_preflight, wait, poll_s, timeout_min, kind, out_dir)

    command.__doc__ = (
        f"Render the config, run preflight, then `pcluster {action}-cluster` and follow it to "
        f"{action.upper()}_COMPLETE."
        + (" With --kind eks: `eksctl create cluster -f`, then the workloads applied." if action == "create" else "")
    )
    app.command(action)(command)


_render_and_apply("create")
_render_and_apply("update")


@app.command("delete")
def cluster_delete(
    cluster_yaml: ClusterYaml,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = True,
    poll_s: PollOpt = 30.0,
    timeout_min: TimeoutOpt = 120.0,
    kind: KindOpt = None,
    out_dir: EksDirOpt = None,
) -> None:
    """`pcluster delete-cluster` and follow it until the cluster is gone (FSx: aws.fsx.deletion_policy, Retain by default).
    With --kind eks: `eksctl delete cluster -f`."""
    _cluster_action("delete", cluster_yaml, None, dry_run, True, wait, poll_s, timeout_min, kind, out_dir)


@app.command("status")
def cluster_status(cluster_yaml: ClusterYaml, dry_run: DryRunOpt = False) -> None:
    """`pcluster describe-cluster`: status, stack, compute fleet, head node address, failures."""
    _cluster_action("status", cluster_yaml, None, dry_run)
