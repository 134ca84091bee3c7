"""On a REAL Slurm 22.05 (3 local nodes, jobs of 2): the rendezvous port cannot collide with a port another
process holds on the first node, and a SIGTERM that reaches a rank but not the batch script (what torchrun's
agent sends its workers when it tears them down) is a counted rank failure, not a preemption (status `1`,
not `1 (1p)`). The held ports are every port a job-id rule (29500 + job id % 2000) could pick: under such a
rule job 4015 would join job 2015's c10d store on a shared node.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_fixture import (
    Env,
    make_env,
    records,
    starts,
    wait_job,
    wait_step,
)

from mltrain.launch.status import _cells, run_status

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
]
# rank 0 waits before step 13 until a stop request (the SIGTERM below) arrives: the signal lands mid-run however
# fast or loaded the machine is, and no step is slowed down
HOLD_AT_13 = {"MLTRAIN_FAULT": "wait:13:0"}
JOB_ID_RULE_PORTS = range(29500, 31500)  # 29500 + job id % 2000: every port a job-id rule could pick


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return make_env(tmp_path_factory, "slurm-port-signal")


@pytest.fixture
def held_ports() -> Iterator[set[int]]:
    """Another job's stores: every port of a job-id rule, listening on this host (all local nodes are it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    socks, held = [], set()
    try:
        for port in JOB_ID_RULE_PORTS:
            s = socket.socket()
            try:
                s.bind(("", port))
                s.listen()
            except OSError:  # in use already: held by someone else, just as good
                s.close()
                continue
            socks.append(s)
            held.add(port)
        yield held
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _rank0_worker(run: Path) -> int:
    """The pid of the training process of global rank 0 of this run (not its torchrun agent)."""
    config = str(run / "slurm" / "run.yaml").encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if config in argv and b"train" in argv and not any(b"torchrun" in a for a in argv) and b"RANK=0" in environ:
            return int(proc.name)
    raise AssertionError(f"no rank-0 worker of {run} found")


def test_held_port_is_not_chosen_and_a_rank_sigterm_is_a_counted_failure(env: Env, held_ports: set[int]) -> None:
    job, run = env.submit("portsig", "train.max_steps=40", env=HOLD_AT_13)
    wait_step(run, 12, timeout_s=150)  # it trains: its agents found their own store
    os.kill(_rank0_worker(run), signal.SIGTERM)  # as torchrun's agent would; Slurm and the batch script: nothing
    assert wait_job(job, 240) == "COMPLETED"
    out = (run / "slurm" / f"{job}.out").read_text()
    ports = [int(p) for p in re.findall(r"rendezvous at node\d+:(\d+) \(run \d+\)", out)]
    assert len(ports) == 2 and not set(ports) & held_ports, (ports, out[-2000:])
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"]) == ("rank_failure", "restart_in_place", True), rec
    assert "which neither Slurm nor a user sent" in out
    # the trainer's SIGTERM checkpoint is what the next torchrun resumed from, and what was recorded
    assert rec["step"] == starts(run)[1]["step"] > 12
    st = run_status(run)
    assert st.state == "done" and st.restarts == 1 and st.preemptions == 0
    assert _cells(st)[6] == "1"  # a counted restart, no preemption: not "1 (1p)"
    assert st.notes == ["last restart: rank_failure"]
    time.sleep(0.5)
