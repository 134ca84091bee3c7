"""The `mltrain` command. Each command is a thin call into a module; heavy imports (torch,
boto3, transformers, pcluster) happen inside the command so `mltrain --help` stays fast.

Library code raises `MltrainError`; `main()` turns it into one line on stderr and its exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mltrain.errors import MltrainError

err_console = Console(stderr=True)
console = Console()

app = typer.Typer(
    help="Plan, provision, feed, train, launch, watch and recover LLM training "
    "(AWS ParallelCluster/Slurm, Kubernetes, or one machine).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect run configs.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare and validate tokenized training data.", no_args_is_help=True)
cluster_app = typer.Typer(help="Render and validate AWS ParallelCluster configs.", no_args_is_help=True)
fleet_app = typer.Typer(help="Run a planned fleet of models on one cluster.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(cluster_app, name="cluster")
app.add_typer(fleet_app, name="fleet")

RunYaml = Annotated[Path, typer.Argument(help="run config YAML, e.g. configs/demo.yaml", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a config key, e.g. --set train.max_steps=50 (repeatable)"),
]
RunRef = Annotated[str, typer.Argument(help="run name (under ./runs or $MLTRAIN_BASE_DIR/runs) or run dir")]


def _run_config(path: Path, overrides: list[str] | None):
    from mltrain.config import load_run_config

    return load_run_config(path, overrides or [])


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(run_yaml: RunYaml, set_: SetOpt = None) -> None:
    """Print the resolved run config (presets expanded, overrides applied, defaults filled)."""
    from mltrain.config import dump_yaml

    console.print(dump_yaml(_run_config(run_yaml, set_)), end="", highlight=False, markup=False)


# --------------------------------------------------------------------------- data


@data_app.command("prepare")
def data_prepare(run_yaml: RunYaml, set_: SetOpt = None) -> None:
    """Tokenize the sources, pack fixed-size token shards and write manifest.json."""
    from mltrain.data.prepare import prepare_data

    prepare_data(_run_config(run_yaml, set_), console=console)


@data_app.command("validate")
def data_validate(
    target: Annotated[Path, typer.Argument(help="a prepared data dir, or a run config YAML")],
    set_: SetOpt = None,
) -> None:
    """Re-check every shard (checksum, header, token ids, counts). Exit 1 on any problem."""
    from mltrain.data.validate import validate_data_dir

    data_dir = target
    vocab_size = None
    if target.suffix in (".yaml", ".yml"):
        cfg = _run_config(target, set_)
        data_dir, vocab_size = Path(cfg.data.dir), cfg.model.vocab_size
    ok = validate_data_dir(data_dir, model_vocab_size=vocab_size, console=console)
    raise typer.Exit(0 if ok else 1)


# --------------------------------------------------------------------------- train


@app.command()
def train(
    run_yaml: RunYaml,
    set_: SetOpt = None,
    nproc: Annotated[int, typer.Option(help="processes on this machine; >1 launches torchrun")] = 1,
) -> None:
    """Train (or resume) a run on this machine: one process, or torchrun with --nproc N."""
    from mltrain.launch.local import train_local

    raise typer.Exit(train_local(run_yaml, set_ or [], nproc=nproc))


@app.command()
def report(run: RunRef) -> None:
    """Write report.png (loss, val loss, tokens/s over steps) and print a summary."""
    from mltrain.report import write_report
    from mltrain.rundir import resolve_run

    write_report(resolve_run(run), console=console)


@app.command()
def export(
    run: RunRef,
    hf: Annotated[Path, typer.Option("--hf", help="output directory in Hugging Face format")],
    step: Annotated[Optional[int], typer.Option(help="checkpoint step; default the newest")] = None,
    dtype: Annotated[str, typer.Option(help="bf16 | fp16 | fp32")] = "bf16",
    max_shard_gb: Annotated[float, typer.Option(help="split model.safetensors above this size")] = 5.0,
    force: Annotated[bool, typer.Option("--force", help="replace an existing export directory")] = False,
) -> None:
    """Export a checkpoint as a Hugging Face model directory (config, safetensors, tokenizer)."""
    from mltrain.model.hf import export_run
    from mltrain.rundir import resolve_run

    out = export_run(resolve_run(run), hf, step=step, dtype=dtype, overwrite=force, max_shard_gb=max_shard_gb)
    console.print(f"exported to {out}")


# --------------------------------------------------------------------------- launch


@app.command()
def submit(
    run_yaml: RunYaml,
    cluster: Annotated[Path, typer.Option(help="cluster spec YAML, e.g. configs/clusters/p5e-80.yaml")],
    nodes: Annotated[Optional[int], typer.Option(help="nodes for this job; default all of the cluster's")] = None,
    time: Annotated[Optional[str], typer.Option(help="time limit HH:MM:SS; default the cluster's")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the sbatch script, submit nothing")] = False,
    set_: SetOpt = None,
) -> None:
    """Render the sbatch script into the run dir and submit it to Slurm."""
    from mltrain.launch.slurm import submit_run

    submit_run(run_yaml, cluster, overrides=set_ or [], nodes=nodes, time=time, dry_run=dry_run, console=console)


@app.command()
def status(run: Annotated[Optional[str], typer.Argument(help="run name or dir; default all runs")] = None) -> None:
    """Scheduler state and training progress: step, loss, tokens/s, MFU, ETA, restarts, goodput."""
    from mltrain.launch.status import show_status

    show_status(run, console=console)


@app.command()
def logs(
    run: RunRef,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
) -> None:
    """Print the run's scheduler log."""
    from mltrain.launch.slurm import print_logs

    print_logs(run, follow=follow, console=console)


@app.command()
def cancel(run: RunRef) -> None:
    """Cancel the run's Slurm job (no requeue)."""
    from mltrain.launch.slurm import cancel_run

    cancel_run(run, console=console)


# --------------------------------------------------------------------------- plan / cluster


@app.command()
def plan(
    fleet_yaml: Annotated[Path, typer.Argument(help="fleet YAML, e.g. configs/fleets/seven-models.yaml")],
    json_out: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    yaml_out: Annotated[bool, typer.Option("--yaml", help="print the plan as YAML")] = False,
    set_: SetOpt = None,
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
    from mltrain.cluster.plan_cli import fleet_submit_command

    fleet_submit_command(fleet_yaml, cluster, dry_run=dry_run, console=console)


@cluster_app.command("render")
def cluster_render(
    cluster_yaml: Annotated[Path, typer.Argument(help="cluster spec YAML")],
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="write here instead of stdout")] = None,
) -> None:
    """Render a ParallelCluster 3 config from a cluster spec."""
    from mltrain.cluster.pcluster import render_command

    render_command(cluster_yaml, out, console=console)


@cluster_app.command("validate")
def cluster_validate(
    pcluster_yaml: Annotated[Path, typer.Argument(help="ParallelCluster 3 config YAML")],
) -> None:
    """Validate a ParallelCluster config offline: the official schema plus semantic checks."""
    from mltrain.cluster.pcluster import validate_command

    raise typer.Exit(validate_command(pcluster_yaml, console=console))


# --------------------------------------------------------------------------- operate (doctor, health, bench)
# Pre-flight and node checks (src/mltrain/ops/). Kept in one block so other commands' diffs stay apart.

bench_app = typer.Typer(help="Measure the interconnect and devices.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def doctor(
    config: Annotated[Optional[Path], typer.Option(help="run config YAML (base_dir, S3 sources)")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="s3://bucket to check with the configured credentials")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Pre-flight: versions, GPUs, EFA, run dir, S3, Slurm/Pyxis, harmful env. Exit 1 on any FAIL."""
    from mltrain.ops.doctor import doctor_command

    raise typer.Exit(doctor_command(config, bucket, json_out, console))


@bench_app.command("collectives")
def bench_collectives(
    nproc: Annotated[int, typer.Option(help="processes on this machine; >1 launches torchrun")] = 1,
    ops: Annotated[str, typer.Option(help="comma-separated: all_reduce,all_gather,reduce_scatter")] = (
        "all_reduce,all_gather,reduce_scatter"
    ),
    max_bytes: Annotated[
        Optional[str], typer.Option(help="largest message, e.g. 64M, 4G; default 4G GPU, 8M CPU")
    ] = None,
    iters: Annotated[Optional[int], typer.Option(help="timed calls per size; default 20 GPU, 3 CPU")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="untimed calls per size; default 5 GPU, 1 CPU")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    instance_type: Annotated[Optional[str], typer.Option(help="reference to compare with, e.g. p5.48xlarge")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
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


@app.command()
def health(
    burn_in_s: Annotated[float, typer.Option(help="seconds of matmul burn-in on every GPU; 0 skips it")] = 10.0,
    tolerance: Annotated[float, typer.Option(help="fail a GPU this fraction below the node median")] = 0.10,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    slurm_prolog: Annotated[
        bool, typer.Option("--slurm-prolog", help="one line per node (prolog / HealthCheckProgram)")
    ] = False,
    record: Annotated[Optional[str], typer.Option(help="append the verdict as a JSON line to this file")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="on FAIL, drain this node with scontrol")] = False,
    failed_hosts: Annotated[
        Optional[str], typer.Option(help="print the FAIL hosts of a --record file, comma-separated")
    ] = None,
    job: Annotated[Optional[str], typer.Option(help="with --failed-hosts: only this Slurm job's records")] = None,
) -> None:
    """GPU health through NVML (ECC, remapped rows, XIDs, throttling) and a burn-in vs the node median. Exit 1 on FAIL."""
    if failed_hosts is not None:
        from mltrain.ops.health import failed_hosts as read_failed

        print(",".join(read_failed(failed_hosts, job)))
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


def main() -> None:
    """Entry point: user errors become one line and an exit code, never a traceback."""
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


if __name__ == "__main__":
    main()
