"""The pipeline's head-node path (`ssh:` in the pipeline file, as on MWAA) through a real OpenSSH server on
127.0.0.1 (sshd_fixture.py): the mltrain commands, the step records and the files travel over ssh, the
quoting survives the remote shell, and an ssh that cannot get through is one line that names the head
node, never a file taken for absent (which would redo a step or submit a run twice)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from sshd_fixture import Sshd, free_port, keygen

from mltrain.integrations.pipeline import STEP_DIR, Pipeline
from mltrain.integrations.pipeline_config import load_pipeline
from mltrain.integrations.pipeline_runner import PipelineError, SshRunner

ROOT = Path(__file__).resolve().parents[2]

RUN_YAML = """
name: ssh-lm
seed: 3
model: {preset: tiny, n_layers: 2, hidden_size: 64, n_heads: 4, n_kv_heads: 2, ffn_hidden_size: 128, vocab_size: 512}
data: {sources: [unused], dir: unused, shard_tokens: 65536, val_fraction: 0.05}
train: {parallel: none, device: cpu, seq_len: 32, micro_batch_size: 4, max_steps: 2, tensorboard: false}
"""


def head_node_mltrain(env: dict[str, str]) -> str:
    """The mltrain command on the "head node": this checkout's, with the S3 credentials that a real head
    node would take from its instance role (an ssh session inherits nothing from this process)."""
    keep = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE")  # fmt: skip
    assigns = [f"{k}={shlex.quote(env[k])}" for k in keep if k in env]
    assigns += [f"PYTHONPATH={shlex.quote(str(ROOT / 'src'))}", "OMP_NUM_THREADS=1"]
    return f"env {' '.join(assigns)} {shlex.quote(sys.executable)} -m mltrain"


def runner(s: Sshd, **kw) -> SshRunner:
    opts = {"user": s.user, "port": s.port, "key_file": str(s.key_file), "known_hosts": str(s.known_hosts), **kw}
    return SshRunner(s.host, **opts)


def test_commands_env_and_files_survive_the_remote_shell(sshd: Sshd, tmp_path: Path) -> None:
    work = tmp_path / "work dir"
    work.mkdir()
    r = runner(sshd, mltrain_cmd="printenv AWS_ENDPOINT_URL && printf '%s|'", workdir=str(work),
               env={"AWS_ENDPOINT_URL": "http://x y"})  # fmt: skip
    p = r.mltrain(["status", "run one", "--json", "it's $HOME"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "http://x y\nstatus|run one|--json|it's $HOME|"
    r.write_text("sub/state.json", '{"a": "it\'s"}')  # through ssh's stdin, moved into place
    assert (work / "sub" / "state.json").read_text() == '{"a": "it\'s"}'
    assert not (work / "sub" / "state.json.tmp").exists()
    assert r.exists("sub/state.json") and not r.exists("missing")
    assert r.read_text("sub/state.json") == '{"a": "it\'s"}' and r.read_text("missing") is None
    assert r.abspath("x") == f"{work}/x"
    failing = runner(sshd, mltrain_cmd="""sh -c 'echo "no such run: $1" >&2; exit 3' sh""", workdir=str(work))
    p = failing.mltrain(["status"])
    assert p.returncode == 3 and p.stderr.strip() == "no such run: status"  # the remote command's own failure


def test_verify_and_prepare_run_on_the_head_node_and_are_not_redone(
    sshd: Sshd, s3_env: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    from mltrain.data.manifest import MANIFEST_FILE
    from mltrain.storage.client import S3Options
    from mltrain.storage.transfer import sync

    upload = tmp_path / "upload"
    upload.mkdir()
    text = (ROOT / "src" / "mltrain" / "config.py").read_text()
    for i in range(2):
        lines = [json.dumps({"text": text[j : j + 2000]}) for j in range(i * 2000, len(text), 4000)]
        (upload / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    data_uri = f"s3://{bucket}/corpus/v1/"
    sync(str(upload), data_uri, S3Options(s3_env["AWS_ENDPOINT_URL"]), progress=False)

    head = tmp_path / "head node"  # the pipeline's relative paths are taken from here, on the head node
    head.mkdir()
    (head / "run.yaml").write_text(RUN_YAML)
    runs = tmp_path / "runs"
    ssh = {
        "host": sshd.host, "port": sshd.port, "user": sshd.user, "key_file": str(sshd.key_file),
        "known_hosts": str(sshd.known_hosts), "workdir": str(head), "mltrain": head_node_mltrain(s3_env),
    }  # fmt: skip
    (tmp_path / "pipeline.yaml").write_text(
        json.dumps(
            {
                "name": "ssh-lm",
                "run": "run.yaml",
                "cluster": "local.yaml",
                "run_base_dir": str(runs),
                "ssh": ssh,
                "endpoint_url": s3_env["AWS_ENDPOINT_URL"],
                "data": {"sources": ["*.jsonl"]},
            }  # fmt: skip
        )
    )
    logs: list[str] = []
    pipe = Pipeline(load_pipeline(tmp_path / "pipeline.yaml"), data_uri, log=logs.append)
    assert isinstance(pipe.runner, SshRunner) and pipe.runner.known_hosts == str(sshd.known_hosts)

    assert pipe.verify()["objects"] == 2  # both parts, against the manifest
    assert pipe.prepare()["data_dir"] == pipe.data_dir
    data_dir = Path(pipe.data_dir)
    assert data_dir.is_relative_to(runs) and (data_dir / MANIFEST_FILE).is_file()
    assert sorted(p.name for p in Path(pipe.run_dir, STEP_DIR).glob("*.json")) == ["prepare.json", "verify.json"]
    assert pipe.status() is None  # never submitted: nothing of the run on the head node yet

    again = Pipeline(load_pipeline(tmp_path / "pipeline.yaml"), data_uri, log=logs.append)
    before = (data_dir / MANIFEST_FILE).stat().st_mtime_ns
    again.verify()
    again.prepare()
    assert "already verified" in logs[-2] and "already prepared" in logs[-1]
    assert (data_dir / MANIFEST_FILE).stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("key not authorized", "Permission denied"),
        ("host key unknown", "Host key verification failed"),
        ("nothing listening", "Connection refused"),
    ],
)
def test_an_ssh_that_cannot_get_through_is_one_line_not_an_absent_file(
    sshd: Sshd, tmp_path: Path, case: str, expect: str
) -> None:
    kw: dict = {}
    if case == "key not authorized":
        keygen(tmp_path / "other_key")
        kw["key_file"] = str(tmp_path / "other_key")
    elif case == "host key unknown":
        (tmp_path / "known_hosts").write_text("")
        kw["known_hosts"] = str(tmp_path / "known_hosts")
    else:
        kw["port"] = free_port()
    r = runner(sshd, **kw)
    for call in (lambda: r.exists("x"), lambda: r.read_text("x"), lambda: r.write_text("x", "y"),
                 lambda: r.mltrain(["status"])):  # fmt: skip
        with pytest.raises(PipelineError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"cannot run commands on the head node {sshd.user}@127.0.0.1")
        assert expect in msg, msg
    assert not (tmp_path / "x").exists()


def test_submit_to_a_head_node_that_cannot_be_reached_fails_in_status_with_the_ssh_line(
    sshd: Sshd, tmp_path: Path
) -> None:
    """submit() first asks status() whether the run has a job, by looking for its files over ssh. Before,
    an ssh that failed read as "no such file", so status() said "never submitted" and submit went on to
    send a new job (which, on a flaky link, could get through: a second training of the same run). Now the
    unreadable answer stops it there, naming the head node."""
    (tmp_path / "pipeline.yaml").write_text(
        json.dumps(
            {
                "run": "run.yaml",
                "cluster": "c.yaml",
                "run_base_dir": "/nowhere",
                "ssh": {"host": sshd.host, "port": free_port(), "mltrain": "false"},
            }
        )  # fmt: skip
    )
    pipe = Pipeline(load_pipeline(tmp_path / "pipeline.yaml"), "s3://b/v1/", manifest_sha256="ab" * 32, log=print)
    pipe.cfg.name = "lm"
    sent: list[list[str]] = []
    pipe.runner.mltrain = lambda args, timeout_s=None: sent.append(args)  # type: ignore[method-assign]
    with pytest.raises(PipelineError, match="cannot run commands on the head node 127.0.0.1"):
        pipe.submit()
    assert sent == []  # no submit command was sent
