"""`mltrain train` and `mltrain report`: a run on this machine, and its curves afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mltrain.cli.common import RunRef, RunYaml, SetOpt, console

commands = typer.Typer()


def _train_script(run_yaml: Path, overrides: list[str], nproc: int) -> int | None:
    """`mltrain train` of a script run: the user's script under torchrun (launch/script.py); None otherwise."""
    from mltrain.config import check_nproc, load_run_config

    cfg = load_run_config(run_yaml, overrides)
    if cfg.script is None:
        return None
    from mltrain.launch.script import run_script_local

    check_nproc(cfg, nproc, run_yaml)
    return run_script_local(cfg, run_yaml, nproc)


@commands.command()
def train(
    run_yaml: RunYaml,
    set_: SetOpt = None,
    nproc: Annotated[int, typer.Option(help="processes on this machine; >1 launches torchrun")] = 1,
) -> None:
    """Train (or resume) a run on this machine: one process, or torchrun with --nproc N."""
    from mltrain.launch.local import train_local

    script_rc = _train_script(run_yaml, set_ or [], nproc)
    raise typer.Exit(train_local(run_yaml, set_ or [], nproc=nproc) if script_rc is None else script_rc)


@commands.command()
def report(run: RunRef) -> None:
    """Write report.png (loss, val loss, tokens/s over steps) and print a summary."""
    from mltrain.report import write_report
    from mltrain.rundir import resolve_run

    write_report(resolve_run(run), console=console)
