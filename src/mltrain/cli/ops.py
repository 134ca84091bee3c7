"""`mltrain doctor|health|bench`: checks of a machine before and during training, and the
interconnect measured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mltrain.cli.common import DeviceOpt, JsonTableOpt, console

commands = typer.Typer()
bench_app = typer.Typer(help="Measure the interconnect and devices.", no_args_is_help=True)


@commands.command()
def doctor(
    config: Annotated[Optional[Path], typer.Option(help="run config YAML (base_dir, S3 sources)")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="s3://bucket to check with the configured credentials")] = None,
    json_out: JsonTableOpt = False,
) -> None:
    """Pre-flight: versions, GPUs, EFA, run dir, S3, Slurm/Pyxis, harmful env. Exit 1 on any FAIL."""
    from mltrain.ops.doctor import doctor_command

    raise typer.Exit(doctor_command(config, bucket, json_out, console))


@bench_app.command("collectives")
def bench_collectives(
    nproc: Annotated[
        Optional[int], typer.Option(help="ranks on this machine, at least 2 (torchrun is started); default one per GPU")
    ] = None,
    ops: Annotated[str, typer.Option(help="comma-separated: all_reduce,all_gather,reduce_scatter")] = (
        "all_reduce,all_gather,reduce_scatter"
    ),
    max_bytes: Annotated[
        Optional[str], typer.Option(help="largest message, e.g. 64M, 4G; default 4G GPU, 8M CPU")
    ] = None,
    iters: Annotated[Optional[int], typer.Option(help="timed calls per size; default 20 GPU, 3 CPU")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="untimed calls per size; default 5 GPU, 1 CPU")] = None,
    device: DeviceOpt = "auto",
    instance_type: Annotated[Optional[str], typer.Option(help="reference to compare with, e.g. p5.48xlarge")] = None,
    json_out: JsonTableOpt = False,
    out: Annotated[Optional[Path], typer.Option(help="also write the JSON result here")] = None,
) -> None:
    """All-reduce / all-gather / reduce-scatter time, algbw and busbw (nccl-tests' definitions), 1 MB doubling."""
    from mltrain.ops.collectives import collectives_command

    raise typer.Exit(
        collectives_command(
            nproc=nproc,
            ops=ops,
            max_bytes=max_bytes,
            iters=iters,
            warmup=warmup,
            device=device,
            instance_type=instance_type,
            json_out=json_out,
            out=out,
            console=console,
        )
    )


@commands.command()
def health(
    burn_in_s: Annotated[float, typer.Option(help="seconds of matmul burn-in on every GPU; 0 skips it")] = 10.0,
    tolerance: Annotated[float, typer.Option(help="fail a GPU this fraction below the node median")] = 0.10,
    json_out: JsonTableOpt = False,
    slurm_prolog: Annotated[
        bool, typer.Option("--slurm-prolog", help="one line per node (prolog / HealthCheckProgram)")
    ] = False,
    record: Annotated[Optional[str], typer.Option(help="append the verdict as a JSON line to this file")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="on FAIL, drain this node with scontrol")] = False,
    failed_hosts: Annotated[
        Optional[str], typer.Option(help="print the FAIL hosts of a --record file, comma-separated")
    ] = None,
    job: Annotated[Optional[str], typer.Option(help="with --failed-hosts: only this Slurm job's records")] = None,
    attempt: Annotated[
        Optional[int], typer.Option(help="with --failed-hosts: only this attempt's records (SLURM_RESTART_COUNT)")
    ] = None,
    expect_hosts: Annotated[
        Optional[str], typer.Option(help="with --failed-hosts: comma-separated hosts; one without a record fails")
    ] = None,
) -> None:
    """GPU health through NVML (ECC, remapped rows, XIDs, throttling) and a burn-in vs the node median. Exit 1 on FAIL."""
    if failed_hosts is not None:
        from mltrain.ops.health import failed_hosts as read_failed

        expected = [h for h in (expect_hosts or "").split(",") if h]
        print(",".join(read_failed(failed_hosts, job, attempt, expected)))
        raise typer.Exit(0)
    from mltrain.ops.health import health_command

    raise typer.Exit(
        health_command(
            burn_in_s=burn_in_s,
            tolerance=tolerance,
            json_out=json_out,
            slurm_prolog=slurm_prolog,
            record=record,
            drain=drain,
            console=console,
        )
    )
