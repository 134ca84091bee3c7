"""moto's real S3 server (ThreadedMotoServer) on 127.0.0.1, port 0, spoken to over HTTP by unchanged
boto3 code: only the endpoint differs from AWS. moto accepts any credentials and never rejects a
wrong client checksum, so tests never rely on the server refusing anything."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_MAX_ATTEMPTS": "3",
}


@pytest.fixture(scope="session")
def moto_s3() -> str:
    """The endpoint URL of a moto S3 server shared by the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_s3, monkeypatch) -> dict[str, str]:
    """Environment for this process and for `mltrain` subprocesses: dummy credentials, the endpoint the
    boto3 way (AWS_ENDPOINT_URL), no profile files from the machine."""
    env = {
        **DUMMY_ENV,
        "AWS_ENDPOINT_URL": moto_s3,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {**os.environ, **env}


@pytest.fixture
def s3(s3_env):
    """A boto3 client on the moto server."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])


@pytest.fixture
def bucket(s3) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def moto_s3_with_auth():
    """A second moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0: every request is
    authenticated against moto's IAM, where no key exists), in its own process because moto reads
    the setting at import."""
    code = (
        "import sys,time\n"
        "from moto.server import ThreadedMotoServer\n"
        "s=ThreadedMotoServer(ip_address='127.0.0.1',port=0,verbose=False);s.start()\n"
        "print(s.get_host_and_port()[1],flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}"
    proc.stdin.close()
    proc.wait(timeout=10)


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`mltrain ARGS` through its real entry point (main(): error lines, exit codes), in this process
    with `env` as the environment: a subprocess would spend a second importing boto3 per call."""
    import contextlib
    import io
    import sys

    from mltrain.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["mltrain", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
