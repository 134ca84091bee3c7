"""The curate job as a script for spark-submit (and `python -m mltrain.data.curate`):

    spark-submit --master spark://HEAD:7077 .../mltrain/data/curate/job.py run.yaml [--prepare] [--spark-conf k=v ...]

--prepare then tokenizes and packs the run config's data.sources (point them at curate.output) in the
same Spark application, as `mltrain data prepare --engine spark` would: one job from raw text to shards.

The run config may be a local path or s3:// (EMR steps), in which case the driver downloads it first.
Errors are one line and a non-zero exit, as from the `mltrain` CLI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def _local_config(path: str) -> Path:
    if not path.startswith("s3://"):
        return Path(path)
    from mltrain.storage.source import read_object

    local = Path(tempfile.mkdtemp(prefix="mltrain-curate-")) / path.rsplit("/", 1)[-1]
    local.write_bytes(read_object(path))
    return local


def main(argv: list[str] | None = None) -> int:
    from mltrain.errors import DataError, MltrainError

    ap = argparse.ArgumentParser(prog="mltrain-curate-job", description="mltrain data curate, as a Spark job")
    ap.add_argument("config", help="run config YAML with a data.curate section (local or s3://)")
    ap.add_argument("--master", default=None, help="default: spark-submit's, else curate.master")
    ap.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    ap.add_argument("--prepare", action="store_true", help="then `data prepare --engine spark` in the same job")
    args = ap.parse_args(argv)
    try:
        from rich.console import Console

        from mltrain.config import load_run_config
        from mltrain.data.curate.pipeline import curate
        from mltrain.data.curate.report import report_table
        from mltrain.data.curate.session import parse_conf, spark_session, under_spark_submit

        cfg = load_run_config(_local_config(args.config), args.overrides)
        cur = cfg.data.curate
        if cur is None:
            raise DataError(f"{args.config}: no data.curate section")
        console = Console()
        master = args.master or (None if under_spark_submit() else cur.master)
        conf = {**cur.spark_conf, **parse_conf(args.spark_conf)}
        with spark_session(master, conf):  # one application for both steps: executors start once
            report = curate(cur, master, conf, console=console)
            console.print(report_table(report))
            if args.prepare:
                from mltrain.data.prepare_spark import prepare_data_spark

                prepare_data_spark(cfg, master, conf, console=console)
    except MltrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
