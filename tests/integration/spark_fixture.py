"""Spark for the tests: one local session per test process, and one real standalone cluster (a master
and two workers started from pyspark's own jars with spark-class on 127.0.0.1, free ports), stopped
after the session even when a test fails. Import the fixtures into a test module to use them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# Every test JVM (the local session's, the cluster's master, workers, driver and executors) lives for
# seconds to minutes on tiny data: C2's optimising compiles and G1's parallel GC threads cost more CPU
# than they save there (a local session's start plus two curate runs: 59 s of CPU with them, 33 s
# without). Results do not depend on either.
JVM_TEST_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

SPARK_TEST_CONF = {
    "spark.driver.extraJavaOptions": JVM_TEST_OPTS,
    "spark.executor.extraJavaOptions": JVM_TEST_OPTS,
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.adaptive.enabled": "true",
    "spark.driver.memory": "1g",
    "spark.python.worker.reuse": "true",
}


def spark_conf_args() -> list[str]:
    """SPARK_TEST_CONF as `--spark-conf KEY=VALUE` arguments, for a driver started in a subprocess."""
    return [arg for k, v in SPARK_TEST_CONF.items() for arg in ("--spark-conf", f"{k}={v}")]


def _env_defaults() -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def spark():
    """The local[2] session every in-process Spark test shares (mltrain's spark_session reuses it)."""
    pytest.importorskip("pyspark")
    _env_defaults()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[2]").appName("mltrain-tests")
    for k, v in SPARK_TEST_CONF.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_workers(webui: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """`spark://127.0.0.1:PORT` of a standalone master with two 1-core workers."""
    pyspark = pytest.importorskip("pyspark")
    _env_defaults()
    home = Path(pyspark.__file__).parent
    spark_class = str(home / "bin" / "spark-class")
    logs = tmp_path_factory.mktemp("spark-cluster")
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_NO_DAEMONIZE": "1",
        "SPARK_DAEMON_JAVA_OPTS": JVM_TEST_OPTS,  # the master's and workers' JVMs
    }
    port, webui = _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the process)
        procs.append(
            subprocess.Popen(
                [spark_class, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
              "--webui-port", str(webui))  # fmt: skip
        for i in range(2):
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                  "--memory", "1g", "--webui-port", str(_free_port()), "--work-dir", str(logs / f"work{i}"),
                  master_url)  # fmt: skip
        deadline = time.monotonic() + 90
        while _alive_workers(webui) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                tails = {p.name: p.read_text()[-2000:] for p in logs.glob("*.log")}
                pytest.fail(f"the Spark standalone cluster did not come up: {tails}")
            time.sleep(0.5)
        yield master_url
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
