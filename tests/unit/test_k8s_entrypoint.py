"""The in-pod wrapper: exit reason -> container exit code -> restart, the budget, and the restarts.jsonl records.

The unit tests stand in for torchrun with a small script (MLTRAIN_TORCHRUN) that writes the exit reason the
trainer would; the slow test runs the real torchrun + trainer and stops it with SIGTERM as an eviction would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mltrain.fsutil import read_jsonl
from mltrain.launch.k8s import entrypoint, policy

STUB = """
import json, os, sys
run_dir = os.environ["MLTRAIN_RUN_DIR"]
with open(os.path.join(run_dir, "stub-calls.jsonl"), "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "node": os.environ.get("NODE_NAME")}) + "\\n")
reason = os.environ.get("STUB_REASON", "")
if reason:
    with open(os.path.join(run_dir, "control", "exit_reason"), "w") as f:
        f.write(reason + "\\n")
sys.exit(int(os.environ.get("STUB_RC", "0")))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    stub = tmp_path / "torchrun_stub.py"
    stub.write_text(STUB)
    return {
        **os.environ,
        "MLTRAIN_RUN_DIR": str(tmp_path / "runs" / "r"),
        "MLTRAIN_JOB_ID": "r-20261130",
        "MLTRAIN_MAX_RESTARTS": "2",
        "MLTRAIN_NPROC_PER_NODE": "8",
        "MLTRAIN_RUN_CONFIG": "name: r\nmodel: {preset: tiny}\n",
        "MLTRAIN_TORCHRUN": f"{sys.executable} {stub}",
        "PET_NNODES": "2",
        "PET_NODE_RANK": "0",
        "MASTER_ADDR": "r-master-0",
        "MASTER_PORT": "29500",
        "NODE_NAME": "ip-10-0-0-1",
        "POD_NAME": "r-master-0",
        **extra,
    }


@pytest.mark.parametrize(
    ("reason", "rc", "exit_code", "action"),
    [
        ("done", 0, 0, None),
        ("config_error", 1, 2, "none"),
        ("preempted", 1, 203, "requeue"),
        ("hang", 1, 204, "requeue"),
        ("failed", 1, 129, "requeue"),
        ("", 137, 129, "requeue"),  # no reason: a rank was killed (lost rank)
    ],
)
def test_exit_reason_to_exit_code(tmp_path: Path, reason: str, rc: int, exit_code: int, action: str | None) -> None:
    env = _env(tmp_path, STUB_REASON=reason, STUB_RC=str(rc))
    assert entrypoint.main(env) == exit_code
    run_dir = Path(env["MLTRAIN_RUN_DIR"])
    assert yaml.safe_load((run_dir / "k8s" / "run.yaml").read_text())["name"] == "r"
    (call,) = read_jsonl(run_dir / "stub-calls.jsonl")
    assert call["argv"] == [
        "--nnodes=2",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=r-master-0:29500",
        "--rdzv-id=r-20261130",
        "--max-restarts=0",
        "-m",
        "mltrain",
        "train",
        str(run_dir / "k8s" / "run.yaml"),
    ]
    recs = read_jsonl(run_dir / "restarts.jsonl")
    if action is None:
        assert recs == []
    else:
        (rec,) = recs
        assert rec["action"] == action and rec["job_id"] == "r-20261130" and rec["scheduler"] == "kubernetes"
        assert rec["cause"] == (reason or "lost_rank")
        assert rec["counted"] is (reason not in ("preempted", "config_error"))
        assert rec["node"] == ("ip-10-0-0-1" if rc >= 128 else "")  # only a signal death names the node


def test_budget_from_max_restarts(tmp_path: Path) -> None:
    """Two charged failures are restarted; the third gives up with a permanent code; preemptions are free."""
    codes = []
    for reason in ("hang", "preempted", "failed", "preempted", "hang"):
        codes.append(entrypoint.main(_env(tmp_path, STUB_REASON=reason, STUB_RC="1")))
    assert codes == [204, 203, 129, 203, 1]
    recs = read_jsonl(tmp_path / "runs" / "r" / "restarts.jsonl")
    assert [r["action"] for r in recs] == ["requeue"] * 4 + ["give_up"]
    assert [r["failures"] for r in recs] == [1, 1, 2, 2, 2]
    # another job id (a new submit) starts with a fresh budget
    assert entrypoint.main(_env(tmp_path, STUB_REASON="hang", STUB_RC="1", MLTRAIN_JOB_ID="r-2")) == 204


def test_worker_pods_record_only_their_own_node_failures(tmp_path: Path) -> None:
    env = _env(tmp_path, STUB_REASON="", STUB_RC="1", PET_NODE_RANK="1", NODE_NAME="ip-b")
    assert entrypoint.main(env) == 129
    assert read_jsonl(tmp_path / "runs" / "r" / "restarts.jsonl") == []
    env = _env(tmp_path, STUB_REASON="", STUB_RC="139", PET_NODE_RANK="1", NODE_NAME="ip-b")
    assert entrypoint.main(env) == 129
    (rec,) = read_jsonl(tmp_path / "runs" / "r" / "restarts.jsonl")
    assert rec["action"] == "node_failed" and rec["node"] == "ip-b" and rec["counted"] is False
    assert policy.failed_nodes(tmp_path / "runs" / "r") == ["ip-b"]
    assert policy.failures_so_far(tmp_path / "runs" / "r", "r-20261130") == 0


def test_trainer_v2_env_names(tmp_path: Path) -> None:
    env = _env(tmp_path, PET_MASTER_ADDR="r-node-0-0.r", PET_MASTER_PORT="29400")
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(k)
    cmd = entrypoint.torchrun_command(env, Path("/x.yaml"))
    assert "--rdzv-endpoint=r-node-0-0.r:29400" in cmd
    assert entrypoint.node_rank({"JOB_COMPLETION_INDEX": "3"}) == 3


@pytest.mark.slow
def test_real_torchrun_sigterm_checkpoints_then_resumes(tmp_path: Path, tiny_data_dir: Path) -> None:
    """The real wrapper + torchrun + trainer on CPU (1 pod, 2 gloo processes): SIGTERM as in a pod eviction
    -> control/stop -> checkpoint -> `preempted` -> exit 203 (restart); the next start resumes and ends `done`."""
    from tests.helpers import tiny_run_config

    cfg = tiny_run_config(tmp_path, tiny_data_dir, name="r", parallel="ddp", max_steps=400, device="cpu")
    cfg["checkpoint"] = {"every_steps": 0, "keep_last": 2}
    run_dir = tmp_path / "runs" / "r"
    env = _env(tmp_path, MLTRAIN_RUN_CONFIG=yaml.safe_dump(cfg), MLTRAIN_NPROC_PER_NODE="2", PET_NNODES="1")
    env.pop("MLTRAIN_TORCHRUN")
    with socket.socket() as s:  # a free port for the c10d store
        s.bind(("127.0.0.1", 0))
        env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(s.getsockname()[1])
    env["MLTRAIN_JOB_ID"] = "r-real"
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    p = subprocess.Popen([sys.executable, "-m", "mltrain.launch.k8s.entrypoint"], env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not any(r.get("kind") == "train" for r in read_jsonl(run_dir / "metrics.jsonl")):
        time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=240) == policy.EXIT_PREEMPTED
    assert (run_dir / "control" / "exit_reason").read_text().strip() == "preempted"
    (rec,) = read_jsonl(run_dir / "restarts.jsonl")
    assert rec["cause"] == "preempted" and rec["action"] == "requeue" and rec["resume_step"] is not None
    resumed_from = rec["resume_step"]
    cfg["train"]["max_steps"] = resumed_from + 3
    env["MLTRAIN_RUN_CONFIG"] = yaml.safe_dump(cfg)
    assert subprocess.run([sys.executable, "-m", "mltrain.launch.k8s.entrypoint"], env=env, timeout=240).returncode == 0
    starts = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "start"]
    assert len(starts) == 2 and starts[1]["step"] == resumed_from
    assert json.loads((run_dir / "restarts.jsonl").read_text().splitlines()[-1])["cause"] == "preempted"
