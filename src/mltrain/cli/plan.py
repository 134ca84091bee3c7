"""`mltrain plan` and `mltrain fleet`: nodes, time and cost for a fleet of models, then one Slurm
job per model with its planned node count."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mltrain.cli.common import console

commands = typer.Typer()
fleet_app = typer.Typer(help="Run a planned fleet of models on one cluster.", no_args_is_help=True)

PLAN_SET_EXAMPLE = "constraints.deadline_days=12"  # tests/unit/test_cli_help.py runs it on the shipped fleet
PlanSetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help=f"override a fleet key, e.g. --set {PLAN_SET_EXAMPLE} or --set models.0.mfu=0.3 (repeatable)",
    ),
]


@commands.command()
def plan(
    fleet_yaml: Annotated[Path, typer.Argument(help="fleet YAML, e.g. configs/fleets/seven-models.yaml")],
    json_out: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    yaml_out: Annotated[bool, typer.Option("--yaml", help="print the plan as YAML")] = False,
    set_: PlanSetOpt = None,
) -> None:
    """Nodes, days, node-hours and dollars for every model of a fleet, and the node split."""
    from mltrain.cluster.plan_cli import plan_command

    plan_command(fleet_yaml, json_out=json_out, yaml_out=yaml_out, console=console, overrides=set_ or [])


@fleet_app.command("submit")
def fleet_submit(
    fleet_yaml: Annotated[Path, typer.Argument(help="fleet YAML")],
    cluster: Annotated[Path, typer.Option(help="cluster spec YAML")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the scripts, submit nothing")] = False,
) -> None:
    """Submit one Slurm job per model of the fleet, each with its planned node count."""
    from mltrain.launch.fleet import fleet_submit_command

    fleet_submit_command(fleet_yaml, cluster, dry_run=dry_run, console=console)
