"""`mltrain config`: look at a run config as mltrain resolves it, or translate a DeepSpeed one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mltrain.cli.common import RunYaml, SetOpt, console, print_plain, run_config

app = typer.Typer(help="Inspect run configs.", no_args_is_help=True)


@app.command("from-deepspeed")
def config_from_deepspeed(
    ds_config: Annotated[Path, typer.Argument(help="DeepSpeed config JSON, e.g. ds_config.json", show_default=False)],
) -> None:
    """Print the mltrain train: settings equivalent to a DeepSpeed config, and what cannot be mapped."""
    from mltrain.integrations.from_deepspeed import from_deepspeed_command

    print_plain(from_deepspeed_command(ds_config), end="")


@app.command("show")
def config_show(run_yaml: RunYaml, set_: SetOpt = None) -> None:
    """Print the resolved run config (presets expanded, overrides applied, defaults filled)."""
    from mltrain.config import dump_yaml

    console.print(dump_yaml(run_config(run_yaml, set_, script_ok=True)), end="", highlight=False, markup=False)
