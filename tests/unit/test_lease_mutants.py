"""Lease details that mutation testing found unchecked: the holder line, the fields lease.json records,
the stale rules at their edges, the fallback when lease.json is unreadable, the heartbeat thread and
the live users of a data dir."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from tests.unit.test_lease import dead_pid, fake_lease

from mltrain import lease as L
from mltrain.errors import RunDirError


def test_describe_is_one_exact_line() -> None:
    info = {"host": "h1", "pid": 123, "job_id": "77", "started": 86400 + 3661.5}
    assert L.describe(info) == "host h1 pid 123 job 77 since 1970-01-02 01:01:01 UTC"
    assert L.describe({"host": "h1", "pid": 1, "started": 0, "job_id": None}) == (
        "host h1 pid 1 since 1970-01-01 00:00:00 UTC"
    )
    assert L.describe({}) == "host ? pid ? since 1970-01-01 00:00:00 UTC"


def test_heartbeat_interval_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(L.HEARTBEAT_ENV, raising=False)
    assert L._heartbeat_s() == 30.0
    monkeypatch.setenv(L.HEARTBEAT_ENV, "0.5")
    assert L._heartbeat_s() == 0.5
    monkeypatch.setenv(L.HEARTBEAT_ENV, "0")
    assert L._heartbeat_s() == 0.05
    monkeypatch.setenv(L.HEARTBEAT_ENV, "soon")
    assert L._heartbeat_s() == 30.0


def test_fresh_edges() -> None:
    info = {"heartbeat": 1000.0, "heartbeat_interval_s": 10.0}
    assert L._fresh(info, 1029.9) and not L._fresh(info, 1030.0)  # 3 x 10 s
    assert L._fresh({"heartbeat": 1000.0}, 1089.9) and not L._fresh({"heartbeat": 1000.0}, 1090.0)  # default 30 s
    assert L._fresh({"heartbeat": 1000.0, "heartbeat_interval_s": None}, 1089.0)
    assert not L._fresh({}, 90.0) and L._fresh({}, 89.9)  # no heartbeat at all: time 0


def test_alive_on_this_host_needs_a_live_pid() -> None:
    me = socket.gethostname()
    now = time.time()
    fresh = {"host": me, "heartbeat": now, "heartbeat_interval_s": 30.0}
    assert L._alive({**fresh, "pid": os.getpid()})
    assert not L._alive({**fresh, "pid": dead_pid()})
    assert not L._alive({**fresh, "pid": 0}) and not L._alive({**fresh, "pid": None}) and not L._alive(fresh)
    assert L._alive({**fresh, "pid": 1})  # init is alive (kill answers EPERM or succeeds)
    assert not L._alive({**fresh, "pid": os.getpid(), "heartbeat": now - 100})
    assert L._alive({**fresh, "pid": os.getpid(), "heartbeat": now - 50}, now=now)
    assert not L._alive({**fresh, "pid": os.getpid()}, now=now + 1000)  # `now` is used when given


def test_pid_alive() -> None:
    assert L._pid_alive(os.getpid()) and not L._pid_alive(dead_pid())
    assert L._pid_alive(1)


def test_read_only_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    (tmp_path / L.LEASE_FILE).write_text("[1, 2]")
    assert L._read(tmp_path) is None
    (tmp_path / L.LEASE_FILE).write_text("{broken")
    assert L._read(tmp_path) is None


def test_held_lock_with_unreadable_lease_json(tmp_path: Path) -> None:
    held = L.acquire_lease(tmp_path)
    try:
        (tmp_path / L.LEASE_FILE).write_text("{torn")
        assert L.lease_holder(tmp_path) == {"host": "?", "pid": "?", "started": 0}
        with pytest.raises(RunDirError) as e:
            L.acquire_lease(tmp_path)
        assert str(e.value) == (
            f"run dir {tmp_path} is in use by another process (its lease.json is unreadable); one writer per run: "
            f"wait for it, stop it with `mltrain stop {tmp_path}`, or pick another run name"
        )
    finally:
        held.release()


def test_refusal_names_the_run_dir(tmp_path: Path) -> None:
    fake_lease(tmp_path)  # another node, fresh heartbeat
    with pytest.raises(RunDirError) as e:
        L.acquire_lease(tmp_path, job_id="1")
    assert str(e.value).startswith(f"run dir {tmp_path} is in use by host other-node pid 4242 job 77 since ")


def test_holder_on_this_host_without_flock_is_judged_by_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without flock: a live holder on this host must still refuse a second start."""
    monkeypatch.setattr(L, "_try_flock", lambda fd: None)
    fake_lease(tmp_path, host=socket.gethostname(), pid=os.getpid())
    with pytest.raises(RunDirError):
        L.acquire_lease(tmp_path, job_id="1")
    fake_lease(tmp_path, host=socket.gethostname(), pid=dead_pid())
    said: list[str] = []
    L.acquire_lease(tmp_path, job_id="1", say=said.append).release()
    assert said and said[0].endswith("(its holder is gone)")
    assert said[0].startswith("taking over the run dir lease of host ")


def test_takeover_messages(tmp_path: Path) -> None:
    first = L.acquire_lease(tmp_path, job_id="5")
    said: list[str] = []
    second = L.acquire_lease(tmp_path, job_id="5", say=said.append)
    assert said == [f"taking over the run dir lease of {L.describe(first.info)} (same job id, a requeue)"]
    first.release()
    second.release()


def test_lock_is_kept_while_held_and_dropped_on_release(tmp_path: Path) -> None:
    held = L.acquire_lease(tmp_path)
    fd = os.open(tmp_path / L.LOCK_FILE, os.O_RDONLY)
    try:
        assert L._try_flock(fd) is False  # held by the lease's own descriptor
        held.release()
        assert L._try_flock(fd) is True
    finally:
        os.close(fd)
    held.release()  # twice: fine


def test_cannot_create_the_lease_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError) as e:
        L.acquire_lease(tmp_path / "file" / "run")
    assert str(e.value).startswith(f"{tmp_path / 'file' / 'run' / L.LOCK_FILE}: cannot create the run dir lease: ")
    assert str(e.value).endswith("Not a directory")


def test_cannot_write_lease_json_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path, text, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(L, "atomic_write", full)
    with pytest.raises(RunDirError) as e:
        L.acquire_lease(tmp_path)
    assert str(e.value) == f"{tmp_path / L.LEASE_FILE}: cannot write the run dir lease: No space left on device"
    monkeypatch.undo()
    L.acquire_lease(tmp_path).release()  # the lock file was closed: free again


def test_heartbeat_thread_beats_until_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(L.HEARTBEAT_ENV, "0.05")
    held = L.acquire_lease(tmp_path)
    try:
        assert held._thread.daemon and held._thread.name == "mltrain-lease" and held._thread.is_alive()
        first = L._read(tmp_path)["heartbeat"]
        deadline = time.time() + 10
        while L._read(tmp_path)["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.02)
        assert L._read(tmp_path)["heartbeat"] > first
    finally:
        held.release()
    held._thread.join(timeout=5)
    assert not held._thread.is_alive()
    assert not (tmp_path / L.LEASE_FILE).exists()
    held.heartbeat()  # after release: writes nothing
    assert not (tmp_path / L.LEASE_FILE).exists()


def test_live_users_of_data(tmp_path: Path) -> None:
    data = tmp_path / "data" / "d"
    data.mkdir(parents=True)
    runs = tmp_path / "runs"
    reader = L.acquire_lease(runs / "r1", data_dir=data)
    other = L.acquire_lease(runs / "r2", data_dir=tmp_path / "elsewhere")
    fake_lease(runs / "r3", data_dir=str(data.resolve()), heartbeat=time.time() - 1000)  # stale
    try:
        users = L.live_users_of_data(data, tmp_path)
        assert [u["run_dir"] for u in users] == [str(runs / "r1")]
        assert users[0]["token"] == reader.token and users[0]["data_dir"] == str(data.resolve())
        assert L.live_users_of_data(tmp_path / "nothing", tmp_path) == []
    finally:
        reader.release()
        other.release()
    assert L.live_users_of_data(data, tmp_path) == []


def test_release_from_another_thread_is_safe(tmp_path: Path) -> None:
    held = L.acquire_lease(tmp_path)
    t = threading.Thread(target=held.release)
    t.start()
    t.join()
    held.release()
    assert L.lease_holder(tmp_path) is None
