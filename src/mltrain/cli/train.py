"""`mltrain train` and `mltrain report`: a run on this machine, and its curves afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mltrain.cli.common import RunRef, RunYaml, SetOpt, console, print_plain

if TYPE_CHECKING:
    from mltrain.train.dry_run import DryRun

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
    dry_run_ranks: Annotated[
        Optional[int],
        typer.Option(
            "--dry-run-ranks",
            metavar="N",
            help="train nothing: build the parallel layout for N GPU ranks in this one CPU process (fake process "
            "group, meta tensors) and print each rank's memory",
        ),
    ] = None,
    gpu_memory_gib: Annotated[
        float, typer.Option("--gpu-memory-gib", help="with --dry-run-ranks: each GPU's memory, to compare against")
    ] = 80.0,
    deadline: Annotated[
        Optional[str],
        typer.Option(
            metavar="TIME",
            help="checkpoint and stop before this time: UTC like 2026-12-20T11:30Z, or +90m / +2h / +1d from now",
        ),
    ] = None,
) -> None:
    """Train (or resume) a run on this machine: one process, or torchrun with --nproc N. With
    --dry-run-ranks N, train nothing: print the memory each of N GPU ranks would hold in the run's layout."""
    if dry_run_ranks is not None:
        _dry_run(run_yaml, set_ or [], dry_run_ranks, gpu_memory_gib)
        return
    if deadline is not None:
        import os

        from mltrain.train.deadline import given_deadline

        os.environ.update(given_deadline(deadline).env())  # the trainer reads it (in this process or torchrun's)
    from mltrain.launch.local import train_local

    script_rc = _train_script(run_yaml, set_ or [], nproc)
    raise typer.Exit(train_local(run_yaml, set_ or [], nproc=nproc) if script_rc is None else script_rc)


def _dry_run(run_yaml: Path, overrides: list[str], world_size: int, gpu_memory_gib: float) -> None:
    from mltrain.cli.common import builtin_only
    from mltrain.config import load_run_config
    from mltrain.errors import ConfigError
    from mltrain.train.dry_run import dry_run_ranks

    cfg = load_run_config(run_yaml, overrides)
    builtin_only(cfg, "--dry-run-ranks", run_yaml)
    try:
        result = dry_run_ranks(cfg, world_size, gpu_memory_gib)
    except ConfigError as e:
        raise ConfigError(f"{run_yaml}: --dry-run-ranks {world_size}: {e}") from None
    print_dry_run(result, run_yaml)


def print_dry_run(d: DryRun, source: Path) -> None:
    """The layout in one line, then a table with a column per kind of rank (rows: the memory parts, in
    GiB), how each row is counted, and what a fake run cannot check. Too many kinds for the terminal's
    width are split over several tables."""
    from rich import box
    from rich.table import Table

    from mltrain.train.dry_run import GIB

    small = all(p.bytes < GIB for kind in d.kinds for p in kind.parts if p.name != "overhead")
    unit, unit_name = (2**20, "MiB") if small else (GIB, "GiB")
    pp = ""
    if d.layout.pp > 1:
        split = "/".join(str(n) for n in d.stage_layers)
        pp = (
            f", {d.layout.pp_schedule} with {d.n_microbatches} micro batches of {d.micro_batch_size} "
            f"sequence{'s' if d.micro_batch_size != 1 else ''}, layers per stage {split}"
        )
    print_plain(
        f"dry run of {source} on {d.world_size} ranks: {d.layout_words()}{pp}; "
        f"{'bf16' if d.bf16 else 'fp32'} compute on {d.device}, activation checkpointing "
        f"{d.activation_checkpointing}; fake process group and meta tensors, "
        f"nothing allocated ({d.seconds:.1f} s)"
    )
    names = [p.name for p in d.kinds[0].parts]
    per_table = max(1, (console.width - 22) // 10)
    for at in range(0, len(d.kinds), per_table):
        kinds = d.kinds[at : at + per_table]
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column(f"{unit_name} per GPU")
        for kind in kinds:
            table.add_column(kind.column_words(), justify="right")
        table.add_row("parameters #", *(_count(kind.part("parameters").elements or 0) for kind in kinds))
        for name in names:
            table.add_row(name, *(f"{kind.part(name).bytes / unit:.2f}" for kind in kinds))
        table.add_section()
        table.add_row("total", *(f"{kind.total_bytes / unit:.2f}" for kind in kinds))
        table.add_row(
            f"of {d.gpu_memory_gib:g} GiB", *("fits" if d.fits(kind) else "[bold red]NO[/]" for kind in kinds)
        )
        console.print(table, highlight=False)
    tokens = f"{d.micro_batch_size} x {d.seq_len} tokens"
    for kind in d.kinds:
        flight = f"{kind.in_flight} micro batch{'es' if kind.in_flight != 1 else ''} of {tokens} in flight"
        print_plain(f"  {kind.ranks_words()}: {kind.holds_words()}; {flight}")
    print_plain(
        "How each row is counted (the rows above activations: from the local shard shapes of each kind's first rank):"
    )
    for part in d.kinds[0].parts:
        print_plain(f"  {part.name}: {part.how}")
    print_plain("A fake run cannot check:")
    for line in d.cannot_check:
        print_plain(f"  - {line}")


def _count(n: int) -> str:
    """829.8M, 1.2B, 14,679."""
    for scale, suffix in ((1e9, "B"), (1e6, "M")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:,}"


@commands.command()
def report(run: RunRef) -> None:
    """Write report.png (loss, val loss, tokens/s over steps) and print a summary."""
    from mltrain.report import write_report
    from mltrain.rundir import resolve_run

    write_report(resolve_run(run), console=console)
