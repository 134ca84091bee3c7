"""`mltrain data`: tokenized training data made and checked locally, and moved to and from S3
with every object checked against the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NamedTuple, Optional

import typer

from mltrain.cli.common import (
    EndpointOpt,
    JsonOpt,
    ProfileOpt,
    RegionOpt,
    RunYaml,
    SetOpt,
    console,
    err_console,
    print_plain,
    run_config,
)

app = typer.Typer(help="Curate, prepare and validate training data; move it to and from S3.", no_args_is_help=True)

ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, help="parallel requests")]
PartOpt = Annotated[int, typer.Option("--part-size-mib", min=5, help="multipart part size and threshold")]
ChecksumOpt = Annotated[str, typer.Option("--checksum", help="sha256 | crc64nvme | auto (crc64nvme with awscrt)")]
UnlistedOpt = Annotated[
    bool,
    typer.Option(
        "--unlisted",
        help="also download objects the manifest does not list (checked against S3's stored checksum, "
        "by size where it stores none); without it they are skipped and named",
    ),
]


MasterOpt = Annotated[
    Optional[str],
    typer.Option("--master", help="Spark master: local[*], spark://HOST:7077, yarn; default curate.master"),
]
SparkConfOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--spark-conf", metavar="KEY=VALUE", help="a Spark setting, e.g. spark.executor.memory=8g (repeatable)"
    ),
]


@app.command("prepare")
def data_prepare(
    run_yaml: RunYaml,
    set_: SetOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="rewrite data that finished runs resume from (they then cannot)")
    ] = False,
    engine: Annotated[
        str, typer.Option("--engine", help="local (this machine) | spark (tokenize and pack on Spark executors)")
    ] = "local",
    master: MasterOpt = None,
    spark_conf: SparkConfOpt = None,
) -> None:
    """Tokenize the sources, pack fixed-size token shards and write manifest.json."""
    from mltrain.errors import DataError

    cfg = run_config(run_yaml, set_)
    if engine == "local":
        if master or spark_conf:
            raise DataError("--master/--spark-conf go with --engine spark")
        from mltrain.data.prepare import prepare_data

        prepare_data(cfg, console=console, force=force)
    elif engine == "spark":
        from mltrain.data.curate.session import parse_conf
        from mltrain.data.prepare_spark import prepare_data_spark

        prepare_data_spark(cfg, master=master, spark_conf=parse_conf(spark_conf), console=console, force=force)
    else:
        raise DataError(f"--engine {engine!r}: expected local or spark")


@app.command("curate")
def data_curate(
    run_yaml: RunYaml,
    set_: SetOpt = None,
    master: MasterOpt = None,
    spark_conf: SparkConfOpt = None,
    render_emr: Annotated[
        Optional[Path],
        typer.Option(
            "--render-emr", metavar="OUT_DIR", help="write EMR (Graviton) and EMR Serverless configs; run nothing"
        ),
    ] = None,
    emr_s3_prefix: Annotated[
        str, typer.Option("--emr-s3-prefix", help="where the job, config and bootstrap go (with --render-emr)")
    ] = "s3://YOUR-BUCKET/mltrain",
    emr_core_nodes: Annotated[
        int, typer.Option("--emr-core-nodes", min=1, help="r8g core nodes (with --render-emr)")
    ] = 4,
    json_out: JsonOpt = False,
) -> None:
    """Normalise, deduplicate (exact + MinHash) and filter the data.curate sources on Spark -> parquet + report."""
    import json

    from mltrain.errors import DataError

    cfg = run_config(run_yaml, set_, script_ok=True)
    cur = cfg.data.curate
    if cur is None:
        raise DataError(f"{run_yaml}: no data.curate section (see docs/curate.md)")
    if render_emr is not None:
        from mltrain.data.curate.emr import EmrPlan
        from mltrain.data.curate.emr import render_emr as render

        for path in render(
            render_emr, run_yaml, EmrPlan(s3_prefix=emr_s3_prefix.rstrip("/"), core_nodes=emr_core_nodes)
        ):
            print_plain(str(path))
        return
    from mltrain.data.curate.pipeline import curate
    from mltrain.data.curate.report import report_table
    from mltrain.data.curate.session import parse_conf

    report = curate(cur, master, parse_conf(spark_conf), console=err_console if json_out else console)
    if json_out:
        print_plain(json.dumps(report))
    else:
        console.print(report_table(report))


@app.command("validate")
def data_validate(
    target: Annotated[Path, typer.Argument(help="a prepared data dir, or a run config YAML")],
    set_: SetOpt = None,
) -> None:
    """Re-check every shard (checksum, header, token ids, counts). Exit 1 on any problem."""
    from mltrain.data.validate import validate_data_dir

    data_dir = target
    vocab_size = None
    if target.suffix in (".yaml", ".yml"):
        cfg = run_config(target, set_)
        data_dir, vocab_size = Path(cfg.data.dir), cfg.model.vocab_size
    ok = validate_data_dir(data_dir, model_vocab_size=vocab_size, console=console)
    raise typer.Exit(0 if ok else 1)


class _S3Args(NamedTuple):
    """The connection and transfer options every S3 transfer command takes."""

    endpoint_url: Optional[str]
    profile: Optional[str]
    region: Optional[str]
    concurrency: int
    part_mib: int


def _transfer(
    src: str,
    dst: str,
    s3: _S3Args,
    *,
    checksum: str,
    json_out: bool,
    to_s3: Optional[bool],
    delete: bool = False,
    yes: bool = False,
    unlisted: bool = False,
) -> None:
    """One S3 sync; `to_s3` True/False pins the direction (upload/download), None lets the URLs decide."""
    import json

    from mltrain.storage.client import S3Options
    from mltrain.storage.transfer import TransferSettings, sync
    from mltrain.storage.url import StorageError, is_s3

    if to_s3 is not None and (is_s3(dst) != to_s3 or is_s3(src) == to_s3):
        usage = "upload LOCAL s3://bucket/prefix" if to_s3 else "download s3://bucket/prefix LOCAL"
        raise StorageError(f"{src} -> {dst}: expected `mltrain data {usage}`")

    opts = S3Options(s3.endpoint_url, s3.profile, s3.region, max_pool_connections=max(10, s3.concurrency + 4))
    mib = s3.part_mib << 20
    settings = TransferSettings(concurrency=s3.concurrency, part_size=mib, threshold=mib, checksum=checksum)
    summary = sync(src, dst, opts, settings, delete=delete, yes=yes, console=err_console, unlisted=unlisted)
    print_plain(json.dumps(summary.as_dict()) if json_out else summary.line())


@app.command("upload")
def data_upload(
    local: Annotated[str, typer.Argument(help="a file or directory")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    concurrency: ConcurrencyOpt = 16,
    part_size_mib: PartOpt = 16,
    checksum: ChecksumOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Upload to S3 (parallel multipart, S3 checksums, manifest written last). A rerun sends only what is missing."""
    s3 = _S3Args(endpoint_url, profile, region, concurrency, part_size_mib)
    _transfer(local, dest, s3, checksum=checksum, json_out=json_out, to_s3=True)


@app.command("download")
def data_download(
    src: Annotated[str, typer.Argument(help="s3://bucket/prefix (or one object)")],
    local: Annotated[str, typer.Argument(help="local directory")],
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    concurrency: ConcurrencyOpt = 16,
    part_size_mib: PartOpt = 16,
    unlisted: UnlistedOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Download what the manifest lists; every file is hashed against it before it replaces anything."""
    s3 = _S3Args(endpoint_url, profile, region, concurrency, part_size_mib)
    _transfer(src, local, s3, checksum="auto", json_out=json_out, to_s3=False, unlisted=unlisted)


@app.command("sync")
def data_sync(
    src: Annotated[str, typer.Argument(help="local dir or s3://bucket/prefix")],
    dst: Annotated[str, typer.Argument(help="s3://bucket/prefix or local dir")],
    delete: Annotated[
        bool, typer.Option("--delete", help="delete what the source does not have (needs --yes)")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="really delete what --delete lists")] = False,
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    concurrency: ConcurrencyOpt = 16,
    part_size_mib: PartOpt = 16,
    checksum: ChecksumOpt = "auto",
    unlisted: UnlistedOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy only changed files (size + checksum) in either direction; --delete lists, --yes deletes."""
    s3 = _S3Args(endpoint_url, profile, region, concurrency, part_size_mib)
    _transfer(src, dst, s3, checksum=checksum, json_out=json_out, to_s3=None, delete=delete, yes=yes, unlisted=unlisted)


@app.command("verify")
def data_verify(
    url: Annotated[str, typer.Argument(help="s3://bucket/prefix that `data upload` wrote")],
    deep: Annotated[bool, typer.Option("--deep", help="also download and sha256 every object")] = False,
    endpoint_url: EndpointOpt = None,
    profile: ProfileOpt = None,
    region: RegionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check every object against the manifest. Exit 1 naming every missing, extra or mismatched object."""
    import json

    from mltrain.storage.client import S3Options, make_client
    from mltrain.storage.url import parse_s3_url
    from mltrain.storage.verify import verify_prefix

    s3url = parse_s3_url(url)
    client = make_client(S3Options(endpoint_url, profile, region), validate_responses=False)  # --deep hashes itself
    rep = verify_prefix(client, s3url, deep=deep, console=err_console)
    if json_out:
        print_plain(json.dumps(rep.as_dict()))
        raise typer.Exit(0 if rep.ok else 1)
    for label, items in (("MISSING", rep.missing), ("EXTRA", rep.extra), ("MISMATCH", rep.mismatched)):
        for item in items:
            console.print(f"{label:<9} {item}", highlight=False, markup=False)
    what = "downloaded and hashed" if deep else "size + S3 checksum"
    verdict = (
        "OK"
        if rep.ok
        else f"FAILED: {len(rep.missing)} missing, {len(rep.extra)} extra, {len(rep.mismatched)} mismatched"
    )
    console.print(
        f"{url}: {rep.checked} objects, {rep.bytes / 2**20:.1f} MiB checked ({what}): {verdict}",
        highlight=False,
        markup=False,
    )
    raise typer.Exit(0 if rep.ok else 1)
