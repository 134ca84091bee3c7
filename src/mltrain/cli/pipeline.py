"""`mltrain pipeline run|watch`: an uploaded dataset version to a registered model, without Airflow."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from mltrain.cli.common import console, print_plain

app = typer.Typer(
    help="From an S3 upload to a registered model: verify, prepare, train, eval, export, register.",
    no_args_is_help=True,
)

PipelineOpt = Annotated[Path, typer.Option("--run", help="PIPELINE.yaml (run config, cluster, eval, registry)")]


@app.command("run")
def pipeline_run(
    data_uri: Annotated[str, typer.Argument(help="s3://bucket/prefix/<version>/ that `data upload` wrote")],
    pipeline: PipelineOpt,
) -> None:
    """Every step for one dataset version, here; a step that already succeeded says so and is not redone."""
    import json

    from mltrain.integrations.pipeline import Pipeline
    from mltrain.integrations.pipeline_config import load_pipeline

    results = Pipeline(load_pipeline(pipeline), data_uri, log=lambda m: console.print(m, highlight=False)).run()
    reg = results.get("register") or {}
    print_plain(json.dumps({"run_name": results["verify"]["run_name"], "registered": reg.get("registered"),
                            "version": reg.get("version"), "eval_loss": results["eval"]["eval_loss"]}))  # fmt: skip


@app.command("watch")
def pipeline_watch(
    root: Annotated[str, typer.Argument(help="s3://bucket/prefix/ whose sub-prefixes are dataset versions")],
    pipeline: PipelineOpt,
    sqs_queue: Annotated[
        Optional[str], typer.Option("--sqs-queue", help="read S3 event notifications from this SQS queue URL")
    ] = None,
    interval: Annotated[float, typer.Option("--interval", min=1, help="seconds between listings")] = 60.0,
    state: Annotated[
        Optional[Path], typer.Option("--state", help="watch state file; default beside PIPELINE.yaml")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="look once, start what is new, exit")] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="versions already there when the watch starts are not started")
    ] = False,
) -> None:
    """Start the pipeline (`mltrain pipeline run`, detached) once for each new version under ROOT."""
    from mltrain.integrations.pipeline_config import load_pipeline
    from mltrain.integrations.pipeline_watch import WatchState, spawn_run, watch
    from mltrain.storage.client import S3Options, make_client
    from mltrain.storage.manifest import MANIFEST_NAME
    from mltrain.storage.url import parse_s3_url

    cfg = load_pipeline(pipeline)
    parse_s3_url(root)
    tag = hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:8]
    state_path = state or pipeline.resolve().parent / f".mltrain-watch-{tag}.json"
    client = make_client(S3Options(cfg.endpoint_url))
    sqs = None
    if sqs_queue:
        import boto3

        sqs = boto3.client("sqs", endpoint_url=cfg.endpoint_url)
    watch(
        root,
        spawn_run(str(pipeline.resolve()), state_path.with_name(state_path.name + ".logs")),
        WatchState(state_path),
        client=client,
        sqs=sqs,
        queue_url=sqs_queue,
        markers=(*cfg.markers, MANIFEST_NAME),
        interval_s=interval,
        once=once,
        skip_existing=skip_existing,
        log=lambda m: console.print(m, highlight=False, soft_wrap=True),
    )
