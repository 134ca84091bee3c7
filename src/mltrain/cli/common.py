"""What every command module shares: the two consoles, the option types used by more than one
group, the run-config helpers, and `run_app`, which turns library errors into one line and an exit code.

Light imports only: this module is loaded for `mltrain --help`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mltrain.errors import MltrainError

if TYPE_CHECKING:
    from mltrain.config import RunConfig

err_console = Console(stderr=True)
console = Console()


def plain_flags() -> None:
    """typer's help labels every flag `<bool>` although a flag takes no value: show nothing there
    (tests/unit/test_cli_help.py fails if a typer update brings the label back)."""
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - another typer layout: keep its labels
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:  # typer before 0.29 prints no label for a flag: nothing to hide
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


RunYaml = Annotated[Path, typer.Argument(help="run config YAML, e.g. configs/demo.yaml", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", "-s", metavar="KEY=VALUE", help="override a config key, e.g. --set train.max_steps=50 (repeatable)"
    ),
]
RunRef = Annotated[str, typer.Argument(help="run name (under ./runs or $MLTRAIN_BASE_DIR/runs) or run dir")]
StepOpt = Annotated[Optional[int], typer.Option(help="checkpoint step; default the newest")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda")]
FollowOpt = Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")]
OutOpt = Annotated[Optional[Path], typer.Option("-o", "--out", help="write here instead of stdout")]
JsonTableOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]

# S3 access, shared by `data upload|download|sync|verify` and `storage init`
EndpointOpt = Annotated[
    Optional[str], typer.Option("--endpoint-url", help="S3-compatible endpoint; default boto3's (AWS_ENDPOINT_URL)")
]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="AWS profile; default boto3's chain")]
RegionOpt = Annotated[Optional[str], typer.Option("--region", help="AWS region; default boto3's chain")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout (progress goes to stderr)")]


def run_config(path: Path, overrides: list[str] | None, script_ok: bool = False) -> RunConfig:
    """The run config; commands of the built-in trainer refuse a script run (script:) with one line."""
    from mltrain.config import load_run_config

    cfg = load_run_config(path, overrides or [])
    if not script_ok:
        builtin_only(cfg, "this command", path)
    return cfg


def builtin_only(cfg_or_yaml: RunConfig | Path, what: str, source_or_overrides: Path | list[str] | None = None) -> None:
    """Commands of the built-in trainer refuse a script run (script: in the run config) with one line."""
    from mltrain.config import RunConfig, load_run_config, require_builtin

    if isinstance(cfg_or_yaml, RunConfig):
        require_builtin(cfg_or_yaml, what, source_or_overrides or "")
        return
    require_builtin(load_run_config(cfg_or_yaml, list(source_or_overrides or [])), what, cfg_or_yaml)


def print_plain(text: str, **kw) -> None:
    """One line (or block) on stdout as it is: no markup, highlighting or wrapping."""
    console.print(text, highlight=False, markup=False, soft_wrap=True, **kw)


def run_app(app: typer.Typer) -> NoReturn:
    """Run the app: user errors become one line and an exit code, never a traceback."""
    try:
        rc = app(standalone_mode=False)  # click returns Exit codes instead of raising in this mode
        sys.exit(rc if isinstance(rc, int) else 0)
    except MltrainError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # usage errors (typer's own click copy or click) arrive here
        if type(e).__name__ == "Abort":
            sys.exit(1)
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        raise
