"""The run-dir lease: flock, the stale rules, a Slurm requeue of the same job, the holder's one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mltrain import lease as L
from mltrain.errors import RunDirError


def fake_lease(run_dir, **over) -> None:
    info = {
        "host": "other-node",
        "pid": 4242,
        "job_id": "77",
        "started": time.time() - 600,
        "heartbeat": time.time(),
        "heartbeat_interval_s": 30.0,
        "data_dir": None,
        "token": "x",
        **over,
    }
    (run_dir / "control").mkdir(parents=True, exist_ok=True)
    (run_dir / L.LEASE_FILE).write_text(json.dumps(info))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_holder_refused_with_one_line_naming_the_first(tmp_path):
    first = L.acquire_lease(tmp_path, job_id="123", data_dir=tmp_path / "data")
    try:
        with pytest.raises(RunDirError) as e:
            L.acquire_lease(tmp_path)  # a second open file description: flock refuses it
        msg = str(e.value)
        assert "\n" not in msg
        assert f"pid {first.info['pid']}" in msg and "job 123" in msg and "since " in msg
        holder = L.lease_holder(tmp_path)
        assert holder is not None and holder["pid"] == first.info["pid"]
        assert holder["data_dir"] == str((tmp_path / "data").resolve())
    finally:
        first.release()
    assert L.lease_holder(tmp_path) is None
    assert not (tmp_path / L.LEASE_FILE).exists()
    L.acquire_lease(tmp_path).release()  # free again


def test_same_job_id_takes_over_a_held_lease(tmp_path):
    first = L.acquire_lease(tmp_path, job_id="555")
    said: list[str] = []
    second = L.acquire_lease(tmp_path, job_id="555", say=said.append)
    assert "same job id" in said[0]
    assert L.lease_holder(tmp_path)["token"] == second.token
    first.release()  # the old attempt's release must not remove the new holder's lease
    assert L.lease_holder(tmp_path)["token"] == second.token
    second.release()


def test_dead_pid_on_this_host_is_stale(tmp_path):
    import socket

    fake_lease(tmp_path, host=socket.gethostname(), pid=dead_pid())
    assert L.lease_holder(tmp_path) is None
    said: list[str] = []
    L.acquire_lease(tmp_path, say=said.append).release()
    assert "its holder is gone" in said[0]


def test_other_host_live_while_heartbeat_fresh(tmp_path):
    fake_lease(tmp_path, heartbeat=time.time() - 10)  # 10 s < 3 x 30 s
    assert L.lease_holder(tmp_path)["host"] == "other-node"
    with pytest.raises(RunDirError, match=r"in use by host other-node pid 4242 job 77 since "):
        L.acquire_lease(tmp_path, job_id="78")
    L.acquire_lease(tmp_path, job_id="77").release()  # a requeue of job 77 may take it

    fake_lease(tmp_path, heartbeat=time.time() - 100)  # > 90 s: the node died
    assert L.lease_holder(tmp_path) is None
    L.acquire_lease(tmp_path, job_id="78").release()


def test_heartbeat_refreshes_and_respects_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setenv(L.HEARTBEAT_ENV, "3600")
    held = L.acquire_lease(tmp_path)
    before = L.lease_holder(tmp_path)["heartbeat"]
    time.sleep(0.01)
    held.heartbeat()
    assert L.lease_holder(tmp_path)["heartbeat"] > before
    fake_lease(tmp_path, token="someone-else")
    held.heartbeat()  # must not overwrite the new holder
    assert json.loads((tmp_path / L.LEASE_FILE).read_text())["token"] == "someone-else"
    held.release()
    assert (tmp_path / L.LEASE_FILE).exists()


def test_inherited_token(tmp_path, monkeypatch):
    held = L.acquire_lease(tmp_path)
    assert not L.inherited(tmp_path)
    monkeypatch.setenv(L.TOKEN_ENV, held.token)
    assert L.inherited(tmp_path)
    held.release()
    assert not L.inherited(tmp_path)
