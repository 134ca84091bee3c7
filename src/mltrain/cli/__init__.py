"""The `mltrain` command, assembled from one module per command group.

Each command is a thin call into a library module: parse, call, print. Heavy imports (torch, boto3,
transformers, pcluster) happen inside the commands so `mltrain --help` stays fast. Library code
raises `MltrainError`; `main()` turns it into one line on stderr and its exit code (common.run_app).

    train.py    train, report             (a run on this machine)
    infer.py    export, eval, sample      (a trained checkpoint)
    launch.py   submit, status, logs, cancel, stop
    plan.py     plan [simulate|checkpoint-interval], fleet submit|status|rebalance
    ops.py      doctor, health, bench collectives
    config.py   config show|from-deepspeed
    data.py     data prepare|validate|upload|download|sync|verify
    cluster.py  cluster render|validate|network|preflight|create|update|delete|status
    k8s.py      k8s render|submit|status|logs|cancel
    storage.py  storage init
    pipeline.py pipeline run|watch           (an S3 upload to a registered model)
"""

from __future__ import annotations

import sys

from mltrain import startup

startup.begin()  # the GC waits while typer, rich and the command modules load (mltrain/startup.py)

import typer  # noqa: E402

from mltrain.cli import cluster, config, data, infer, k8s, launch, ops, pipeline, plan, storage, train  # noqa: E402
from mltrain.cli.common import plain_flags, run_app  # noqa: E402

plain_flags()

app = typer.Typer(
    help="Plan, provision, feed, train, launch, watch and recover LLM training "
    "(AWS ParallelCluster/Slurm, Kubernetes/EKS, or one machine).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# `mltrain --help` lists commands in the order they are added; a Typer added without a name adds its commands
app.add_typer(train.commands)
app.add_typer(infer.commands)
app.add_typer(launch.commands)
app.add_typer(plan.plan_app, name="plan")
app.add_typer(ops.commands)
app.add_typer(config.app, name="config")
app.add_typer(data.app, name="data")
app.add_typer(cluster.app, name="cluster")
app.add_typer(plan.fleet_app, name="fleet")
app.add_typer(k8s.app, name="k8s")
app.add_typer(storage.app, name="storage")
app.add_typer(ops.bench_app, name="bench")
app.add_typer(pipeline.app, name="pipeline")
startup.settle()


def main() -> None:
    """Entry point: user errors become one line and an exit code, never a traceback."""
    if next((a for a in sys.argv[1:] if not a.startswith("-")), None) == "train":
        from mltrain.train.host_alloc import reexec_for_hugepages

        reexec_for_hugepages(sys.argv[1:])  # glibc reads its tunables only at process start
    run_app(app)


__all__ = ["app", "main"]
