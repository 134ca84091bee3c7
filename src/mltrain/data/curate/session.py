"""The Spark session: created here (pyspark imported only now), reused when the caller already has one.

Defaults that make a first run work on a laptop or a head node: PYSPARK_PYTHON is this interpreter
(executors need mltrain importable), SPARK_LOCAL_IP 127.0.0.1 for local and loopback masters (a
machine with several interfaces otherwise warns and may bind the wrong one; a real cluster's driver
must bind an address the workers reach, so it is not forced there).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mltrain.errors import DataError, MltrainError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

APP_NAME = "mltrain-curate"
DEFAULT_CONF = {
    "spark.sql.shuffle.partitions": "8",  # adaptive execution coalesces or splits from here
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
_LOOPBACK = re.compile(r"^(local(\[.*\])?|spark://(127\.0\.0\.1|localhost)(:\d+)?)$")


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands Python its gateway port; its --master then rules."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def set_env_defaults(master: str) -> None:
    """The environment pyspark reads when it starts the JVM and the Python workers."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if _LOOPBACK.match(master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def parse_conf(pairs: list[str] | None) -> dict[str, str]:
    """`--spark-conf k=v` pairs -> dict; a pair without '=' is a one-line error."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--spark-conf {pair!r}: expected KEY=VALUE, e.g. spark.executor.memory=8g")
        out[key.strip()] = value
    return out


def import_pyspark() -> Any:
    try:
        import pyspark
    except ImportError:
        raise DataError("Spark curation needs pyspark (pip install 'mltrain[spark]')") from None
    return pyspark


@contextmanager
def spark_session(master: str | None, conf: Mapping[str, str] | None = None) -> Iterator[SparkSession]:
    """An active session is reused as it is (tests share one); otherwise one is started on `master`
    (None: the one spark-submit or spark-defaults.conf names) and stopped when the block ends."""
    import_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    set_env_defaults(master or "")
    builder = SparkSession.builder.appName(APP_NAME)
    if master:
        builder = builder.master(master)
    for k, v in {**DEFAULT_CONF, **(conf or {})}.items():
        builder = builder.config(k, v)
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # the JVM did not start or the master is unreachable
        raise DataError(f"Spark master {master}: cannot start a session: {error_line(e)}") from None
    spark.sparkContext.setLogLevel("FATAL")  # a failed task becomes one DataError line, not pages of log
    try:
        yield spark
    finally:
        spark.stop()


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+?)\s*$")


def error_line(e: BaseException) -> str:
    """The one line worth showing from a Spark/Py4J error: an mltrain error raised in a task, else the
    innermost Python or Java exception message."""
    text = str(e)
    found = None
    for line in text.splitlines():
        m = _ERROR_LINE.match(line)
        if m is None:
            continue
        if m.group(1) in ("DataError", "StorageError", "ConfigError"):
            return m.group(2)
        found = found or f"{m.group(1)}: {m.group(2)}"
    return found or (text.strip().splitlines() or [type(e).__name__])[0][:300]


@contextmanager
def task_errors(what: str) -> Iterator[None]:
    """A failure inside Spark becomes one DataError line naming the step, not a JVM stack trace."""
    try:
        yield
    except MltrainError:
        raise
    except Exception as e:
        mod = type(e).__module__
        if mod.startswith(("pyspark", "py4j")):
            raise DataError(f"{what}: {error_line(e)}") from None
        raise
