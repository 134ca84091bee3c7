"""`mltrain submit|status|logs|cancel|stop`: a run sent to Slurm, watched, and ended."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mltrain.cli.common import FollowOpt, JsonTableOpt, RunRef, SetOpt, console

commands = typer.Typer()


@commands.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    run_yaml: Annotated[
        Optional[Path], typer.Argument(help="run config YAML, e.g. configs/demo.yaml", show_default=False)
    ] = None,
    cluster: Annotated[Path, typer.Option(help="cluster spec YAML, e.g. configs/clusters/p5e-80.yaml")] = ...,
    nodes: Annotated[Optional[int], typer.Option(help="nodes for this job; default all of the cluster's")] = None,
    time: Annotated[
        Optional[str],
        typer.Option(
            help="time limit in any Slurm form: minutes (90), MM:SS, HH:MM:SS, D-HH[:MM[:SS]]; default the cluster's"
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the sbatch script, submit nothing")] = False,
    deadline: Annotated[
        Optional[str],
        typer.Option(
            metavar="TIME",
            help="the allocation's hard end (on a capacity-block cluster: the block's end): the run checkpoints and "
            "stops before it, not requeued; UTC like 2026-12-20T11:30Z, or +90m / +2h / +1d from now",
        ),
    ] = None,
    set_: SetOpt = None,
    script: Annotated[
        Optional[Path],
        typer.Option(help="your training script instead of RUN_YAML: submit --script train.py --cluster C -- ARGS"),
    ] = None,
) -> None:
    """Render the sbatch script into the run dir and submit it to Slurm (the built-in trainer or the run's script:)."""
    from mltrain.launch.slurm import generated_script_run, submit_run

    def send(run: Path) -> None:
        submit_run(
            run,
            cluster,
            overrides=set_ or [],
            nodes=nodes,
            time=time,
            dry_run=dry_run,
            console=console,
            deadline=deadline,
        )

    if script is None:
        import click

        unknown = [a for a in ctx.args if a.startswith("-") and a != "--"]
        if unknown:  # unknown options are let through for --script's ARGS; without --script they are typos
            raise click.NoSuchOption(unknown[0], ctx=ctx)
        if ctx.args:
            raise click.UsageError(f"unexpected extra argument(s): {' '.join(ctx.args)}", ctx=ctx)
        if run_yaml is None:
            raise typer.BadParameter("give one RUN_YAML (or --script train.py -- ARGS)")
        send(run_yaml)
        return
    # with --script every argument after `--` is the script's (click hands the first one over as RUN_YAML)
    with generated_script_run(script, [*([str(run_yaml)] if run_yaml else []), *ctx.args]) as gen:
        send(gen)


@commands.command()
def status(
    runs: Annotated[Optional[list[str]], typer.Argument(help="run names or dirs; default all runs")] = None,
    json_out: JsonTableOpt = False,
) -> None:
    """State and progress of runs: step, loss, ETA, goodput, restarts, checkpoint, nodes, stragglers, why it stopped."""
    from mltrain.launch.status import show_status

    show_status(runs or None, console=console, json_out=json_out)


@commands.command()
def logs(run: RunRef, follow: FollowOpt = False) -> None:
    """Print the run's newest log (local run or Slurm job; -f interleaves stdout and stderr by time)."""
    from mltrain.launch.logs import show_logs

    show_logs(run, follow_=follow, console=console)


@commands.command()
def cancel(run: RunRef) -> None:
    """Cancel the run's Slurm job (no requeue)."""
    from mltrain.launch.slurm import cancel_run

    cancel_run(run, console=console)


@commands.command()
def stop(run: RunRef) -> None:
    """Ask a running trainer to checkpoint at its next step boundary and exit 75; train again to resume."""
    from mltrain.launch.local import stop_run

    stop_run(run, console=console)
