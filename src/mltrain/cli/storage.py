"""`mltrain storage`: the S3 buckets a cluster uses, created and configured from its spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mltrain.cli.common import EndpointOpt, JsonOpt, ProfileOpt, console, print_plain

app = typer.Typer(help="Create and configure the S3 buckets a cluster uses.", no_args_is_help=True)


@app.command("init")
def storage_init(
    cluster_yaml: Annotated[Path, typer.Argument(help="cluster spec YAML")],
    abort_multipart_days: Annotated[
        int, typer.Option(min=1, help="abort incomplete multipart uploads after N days")
    ] = 7,
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create the cluster's data and checkpoint buckets if missing; versioning and lifecycle rules (idempotent)."""
    import json

    from mltrain.storage.buckets import init_storage

    actions = init_storage(cluster_yaml, endpoint_url=endpoint_url, profile=profile, abort_days=abort_multipart_days)
    if json_out:
        print_plain(json.dumps(actions))
        return
    for a in actions:
        console.print(
            f"s3://{a['bucket']} ({a['role']}, {a['region']}): {'; '.join(a['actions'])}",
            highlight=False,
            markup=False,
        )
