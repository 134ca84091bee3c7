"""`mltrain plan` and `mltrain fleet`: nodes, time, capacity, failures and cost for a fleet of models; then
one Slurm job per model, the fleet's status, and moving nodes between its runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperGroup

from mltrain.cli.common import console

PLAN_SET_EXAMPLE = "constraints.deadline_days=12"  # tests/unit/test_cli_help.py runs it on the shipped fleet
PLAN_DEFAULT = "fleet"  # `mltrain plan FLEET.yaml` = `mltrain plan fleet FLEET.yaml` (hidden)


class _PlanGroup(TyperGroup):
    """`mltrain plan FLEET.yaml` keeps working beside `mltrain plan simulate|checkpoint-interval`: an argument
    that names no subcommand goes to the hidden default one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [PLAN_DEFAULT, *args]
        return super().parse_args(ctx, args)


plan_app = typer.Typer(
    cls=_PlanGroup,
    help="Plan a fleet. `mltrain plan FLEET.yaml [--json|--yaml] [--set KEY=VALUE]`: nodes, days, capacity, "
    f"dollars and checkpoint interval per model, e.g. --set {PLAN_SET_EXAMPLE} ; `plan simulate FLEET.yaml`: "
    "the fleet with failures, Monte Carlo; `plan checkpoint-interval --save-s S --mtbf-h H`.",
    no_args_is_help=True,
)
fleet_app = typer.Typer(help="Run a planned fleet of models on one cluster.", no_args_is_help=True)

PlanSetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help=f"override a fleet key, e.g. --set {PLAN_SET_EXAMPLE} or --set models.0.mfu=0.3 (repeatable)",
    ),
]
FleetArg = Annotated[Path, typer.Argument(help="fleet YAML, e.g. configs/fleets/seven-models.yaml")]
ClusterOpt = Annotated[Path, typer.Option(help="cluster spec YAML (where the runs live, the Slurm partition)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print it as JSON")]


@plan_app.command(PLAN_DEFAULT, hidden=True)
def plan(
    fleet_yaml: FleetArg,
    json_out: JsonOpt = False,
    yaml_out: Annotated[bool, typer.Option("--yaml", help="print the plan as YAML")] = False,
    set_: PlanSetOpt = None,
) -> None:
    """Nodes, days, node-hours and dollars for every model of a fleet, and the node split."""
    from mltrain.cluster.plan_cli import plan_command

    plan_command(fleet_yaml, json_out=json_out, yaml_out=yaml_out, console=console, overrides=set_ or [])


@plan_app.command("checkpoint-interval")
def checkpoint_interval(
    save_s: Annotated[float, typer.Option("--save-s", help="seconds one checkpoint save blocks training")],
    mtbf_h: Annotated[float, typer.Option("--mtbf-h", help="mean time between failures of the job, hours")],
    restart_s: Annotated[
        float, typer.Option("--restart-s", help="seconds from a failure to training again (for the goodput)")
    ] = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """The checkpoint interval that loses the least time (Young, and Daly's higher-order form), in minutes."""
    from mltrain.cluster.reliability import checkpoint_interval_command

    checkpoint_interval_command(save_s, mtbf_h, restart_s=restart_s, json_out=json_out, console=console)


@plan_app.command("simulate")
def simulate(
    fleet_yaml: FleetArg,
    runs: Annotated[int, typer.Option("--runs", help="Monte Carlo trials")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same figures)")] = 0,
    json_out: JsonOpt = False,
    set_: PlanSetOpt = None,
) -> None:
    """Monte Carlo of the fleet with failures: p10/p50/p90 finish days and dollars per model and in all."""
    from mltrain.cluster.simulate import simulate_command

    simulate_command(fleet_yaml, runs=runs, seed=seed, json_out=json_out, overrides=set_ or [], console=console)


@fleet_app.command("submit")
def fleet_submit(
    fleet_yaml: FleetArg,
    cluster: ClusterOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the scripts, submit nothing")] = False,
) -> None:
    """Submit one Slurm job per model of the fleet, each with its planned node count."""
    from mltrain.launch.fleet import fleet_submit_command

    fleet_submit_command(fleet_yaml, cluster, dry_run=dry_run, console=console)


@fleet_app.command("status")
def fleet_status(
    fleet_yaml: FleetArg,
    cluster: ClusterOpt,
    json_out: JsonOpt = False,
    watch: Annotated[
        Optional[float], typer.Option("--watch", metavar="SECONDS", help="redraw every SECONDS until Ctrl-C")
    ] = None,
    png: Annotated[
        Optional[Path], typer.Option("--png", help="also write the fleet report (progress vs plan) to this PNG")
    ] = None,
) -> None:
    """One row per model: progress, loss, speed, ETA vs plan, restarts, goodput, dollars, Slurm state."""
    from mltrain.launch.fleet_status import fleet_status_command

    fleet_status_command(fleet_yaml, cluster, json_out=json_out, watch_s=watch, png=png, console=console)


@fleet_app.command("rebalance")
def fleet_rebalance(
    fleet_yaml: FleetArg,
    cluster: ClusterOpt,
    apply: Annotated[
        bool, typer.Option("--apply", help="stop and resubmit the runs involved at a checkpoint boundary")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Propose moving nodes from finished or ahead models to those behind their date; --apply does it."""
    from mltrain.launch.rebalance import rebalance_command

    rebalance_command(fleet_yaml, cluster, apply=apply, json_out=json_out, console=console)
